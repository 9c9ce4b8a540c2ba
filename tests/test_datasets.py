"""Loaders: round trips on generated data (VOC, custom, COCO JSON), empty targets, seeding, bad input."""
from __future__ import annotations

import json
import os
import shutil
import warnings
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data import (COCO_CLASSES, COCO_LABEL_MAP, COCO_LABEL_MAP_INV, VOC_CLASSES, COCODetection, CustomDetection,
                  VOCDetection, build_dataset, detection_collate, read_labels, unwrap_worker_error,
                  worker_init_fn)
from data.coco import category_maps
from data.synthetic import SHAPE_CLASSES, generate_dataset
from data.transforms import SSDAugmentation
from utils.errors import UserError

# shapes -> VOC names, so the generated data can pose as a VOCdevkit (same 0-based labels)
SHAPE_TO_VOC = dict(zip(SHAPE_CLASSES, VOC_CLASSES[:5]))


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    # not the shared 6-image tiny_dataset: these tests need difficult objects and several images per split,
    # which 14 images of seed 3 have
    root = tmp_path_factory.mktemp("data") / "shapes"
    generate_dataset(str(root), 14, seed=3)
    return str(root)


def _xml(width, height, objects, filename="x.jpg"):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def make_custom(root, images=None, split="train", labels=("cat", "dog")):
    """A tiny custom dataset: ``images = {id: [(name, xmin, ymin, xmax, ymax, difficult), ...]}`` on 40x30 images."""
    images = images if images is not None else {"a": [("cat", 2, 3, 20, 25, 0)], "b": [("dog", 10, 5, 39, 29, 0)]}
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rs = np.random.RandomState(0)
    for image_id, objs in images.items():
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), rs.randint(0, 255, (30, 40, 3), np.uint8))
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as fh:
            fh.write(_xml(40, 30, objs, f"{image_id}.jpg"))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as fh:
        fh.write("".join(f"{i}\n" for i in images))
    if labels is not None:
        with open(os.path.join(root, "labels.txt"), "w") as fh:
            fh.write("".join(f"{n}\n" for n in labels))
    return str(root)


def _voc_devkit_from(synthetic, dest):
    """VOCdevkit/VOC2007 holding the generated images with the class names mapped to VOC names."""
    voc = os.path.join(dest, "VOCdevkit", "VOC2007")
    shutil.copytree(os.path.join(synthetic, "JPEGImages"), os.path.join(voc, "JPEGImages"))
    shutil.copytree(os.path.join(synthetic, "ImageSets"), os.path.join(voc, "ImageSets"))
    os.makedirs(os.path.join(voc, "Annotations"))
    for name in os.listdir(os.path.join(synthetic, "Annotations")):
        tree = ET.parse(os.path.join(synthetic, "Annotations", name))
        for el in tree.getroot().iter("name"):
            el.text = " " + SHAPE_TO_VOC[el.text].upper() + " "  # VOC names match case-insensitively, stripped
        tree.write(os.path.join(voc, "Annotations", name))
    return os.path.join(dest, "VOCdevkit")


def _expected_targets(xml_path, keep_difficult=False):
    root = ET.parse(xml_path).getroot()
    w, h = int(root.find("size/width").text), int(root.find("size/height").text)
    rows = []
    for obj in root.iter("object"):
        if obj.find("difficult").text == "1" and not keep_difficult:
            continue
        b = [float(obj.find(f"bndbox/{t}").text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
        rows.append([b[0] / w, b[1] / h, b[2] / w, b[3] / h, SHAPE_CLASSES.index(obj.find("name").text)])
    return np.array(rows, np.float32).reshape(-1, 5), (h, w)


# ----------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------
def test_custom_round_trip_reproduces_the_xml_boxes(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # generated data needs no clipping or dropping
        ds = CustomDetection(synthetic, "train")
    split = open(os.path.join(synthetic, "ImageSets", "Main", "train.txt")).read().split()
    assert ds.ids == split and len(ds) == len(split)
    assert ds.class_names == list(SHAPE_CLASSES) == read_labels(synthetic)
    for i in range(len(ds)):
        img, target, h, w = ds.pull_item(i)
        expected, size = _expected_targets(ds.annotation_file(i))
        assert (h, w) == size and img.shape == (3, h, w) and img.dtype == torch.float32
        assert target.dtype == np.float32
        np.testing.assert_allclose(target, expected, atol=1e-6)
        image_id, anno = ds.pull_anno(i)
        assert image_id == ds.image_id(i) == ds.ids[i]
        np.testing.assert_allclose(np.array(anno, np.float32).reshape(-1, 5)[:, :4],
                                   expected[:, :4] * [w, h, w, h], atol=1e-3)
        rgb = ds.pull_image(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3)
        np.testing.assert_array_equal(rgb, cv2.imread(ds.image_path(i))[:, :, ::-1])  # RGB, not BGR


def test_keep_difficult_adds_the_difficult_objects(synthetic):
    easy = CustomDetection(synthetic, "trainval")
    all_ = CustomDetection(synthetic, "trainval", keep_difficult=True)
    n_easy = sum(len(easy.pull_anno(i)[1]) for i in range(len(easy)))
    n_all = sum(len(all_.pull_anno(i)[1]) for i in range(len(all_)))
    n_difficult = sum(int(r.difficult.sum()) for r in all_.records)
    assert n_difficult > 0 and n_all == n_easy + n_difficult


def test_voc_round_trip_on_a_vocdevkit_built_from_generated_data(synthetic, tmp_path):
    devkit = _voc_devkit_from(synthetic, str(tmp_path))
    voc = VOCDetection(devkit, [("2007", "train")])
    custom = CustomDetection(synthetic, "train")
    assert voc.name == "VOC0712" and voc.class_names == list(VOC_CLASSES)
    assert [i for _, i in voc.ids] == custom.ids
    assert voc.ids[0][0] == os.path.join(devkit, "VOC2007")
    for i in range(len(voc)):
        np.testing.assert_allclose(voc.pull_item(i)[1], custom.pull_item(i)[1], atol=1e-6)
    test = build_dataset("VOC", devkit, "test", None, year="2007")
    assert len(test) == len(CustomDetection(synthetic, "test"))
    with pytest.warns(UserWarning, match="VOC2012"):
        default = build_dataset("VOC", devkit, None, None)  # 07+12 trainval, 2012 absent
    assert len(default) == len(CustomDetection(synthetic, "trainval"))


def test_coco_json_round_trip_through_pycocotools(synthetic):
    coco = COCODetection(synthetic, "train")  # images found in JPEGImages/
    custom = CustomDetection(synthetic, "train")
    assert coco.class_names == list(SHAPE_CLASSES)
    assert coco.label_map == {i + 1: i for i in range(5)} and coco.inverse_label_map[0] == 1
    assert sorted(coco.coco.getImgIds()) == coco.ids == [int(i) for i in custom.ids]
    before = json.dumps(coco.coco.dataset["annotations"])
    for i in range(len(coco)):
        np.testing.assert_allclose(coco.pull_item(i)[1], custom.pull_item(i)[1], atol=1e-6)
        coco.pull_item(i)
    assert json.dumps(coco.coco.dataset["annotations"]) == before  # cached annotations never mutated
    explicit = COCODetection(synthetic, "train", image_dir=os.path.join(synthetic, "JPEGImages"))
    assert explicit.ids == coco.ids and explicit.annotation_file(0).endswith("instances_train.json")


def test_coco_classes_and_label_maps_are_defined_in_code():
    assert len(COCO_CLASSES) == 80 and len(COCO_LABEL_MAP) == 80
    assert COCO_LABEL_MAP[1] == 0 and COCO_LABEL_MAP[90] == 79 and 12 not in COCO_LABEL_MAP
    assert COCO_CLASSES[COCO_LABEL_MAP[11]] == "fire hydrant" and COCO_CLASSES[COCO_LABEL_MAP[13]] == "stop sign"
    assert all(COCO_LABEL_MAP_INV[v] == k for k, v in COCO_LABEL_MAP.items())
    cats = [{"id": cid, "name": COCO_CLASSES[i]} for cid, i in COCO_LABEL_MAP.items()]
    assert category_maps(cats) == (list(COCO_CLASSES), COCO_LABEL_MAP)


def test_coco_ignores_crowd_and_drops_degenerate_boxes(tmp_path):
    root = tmp_path / "coco"
    (root / "images" / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    cv2.imwrite(str(root / "images" / "val" / "1.jpg"), np.zeros((30, 40, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 30}],
            "categories": [{"id": cid, "name": COCO_CLASSES[i]} for cid, i in COCO_LABEL_MAP.items()],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 18, "bbox": [4, 3, 20, 12], "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1},
                {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="instances_val.json"):
        ds = COCODetection(str(root), "val")
    np.testing.assert_allclose(ds[0][1], [[4 / 40, 3 / 30, 24 / 40, 15 / 30, COCO_LABEL_MAP[18]]], atol=1e-6)
    assert COCO_CLASSES[int(ds[0][1][0, 4])] == "dog"


# ----------------------------------------------------------------------------------------------------
# empty targets, batching, seeding
# ----------------------------------------------------------------------------------------------------
def test_images_without_objects_or_only_difficult_ones_train_fine(tmp_path):
    root = make_custom(tmp_path / "d", {"empty": [], "hard": [("cat", 2, 2, 30, 20, 1)],
                                        "one": [("dog", 5, 5, 25, 25, 0)]})
    ds = CustomDetection(root, "train", transform=SSDAugmentation(32, rng=np.random.RandomState(0)))
    for i in range(2):
        img, target = ds[i]
        assert img.shape == (3, 32, 32) and target.shape == (0, 5) and target.dtype == np.float32
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=detection_collate)))
    assert images.shape == (3, 3, 32, 32)
    assert [tuple(t.shape) for t in targets] == [(0, 5), (0, 5), (1, 5)]
    assert all(t.dtype == torch.float32 for t in targets)


def _epoch(ds, seed):
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, collate_fn=detection_collate,
                        worker_init_fn=worker_init_fn(seed), generator=torch.Generator().manual_seed(seed))
    return [(x.clone(), [t.clone() for t in ts]) for x, ts in loader]


def test_dataloader_workers_give_reproducible_augmentation(synthetic):
    ds = CustomDetection(synthetic, "train", transform=SSDAugmentation(48))
    a, b, c = _epoch(ds, 11), _epoch(ds, 11), _epoch(ds, 12)
    for (xa, ta), (xb, tb) in zip(a, b):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        for u, v in zip(ta, tb):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_worker_errors_unwrap_to_the_one_line_user_error(tmp_path):
    root = make_custom(tmp_path / "d")
    with open(os.path.join(root, "JPEGImages", "a.jpg"), "wb") as fh:
        fh.write(b"not a jpeg at all")
    ds = CustomDetection(root, "train")
    with pytest.raises(UserError) as info:
        list(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=detection_collate))
    err = unwrap_worker_error(info.value)
    assert "\n" not in err.message and os.path.join(root, "JPEGImages", "a.jpg") in err.message


# ----------------------------------------------------------------------------------------------------
# bad input: a UserError naming the file
# ----------------------------------------------------------------------------------------------------
def _remove(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


BAD_CUSTOM = {
    "root missing": (lambda r: _remove(r), "", "dataset root not found"),
    "no Annotations": (lambda r: _remove(os.path.join(r, "Annotations")), "Annotations", "not found"),
    "no JPEGImages": (lambda r: _remove(os.path.join(r, "JPEGImages")), "JPEGImages", "not found"),
    "split file missing": (lambda r: _remove(os.path.join(r, "ImageSets", "Main", "train.txt")), os.path.join("ImageSets", "Main", "train.txt"),
                           "split file not found"),
    "empty split": (lambda r: _write(os.path.join(r, "ImageSets", "Main", "train.txt"), "\n\n"), os.path.join("ImageSets", "Main", "train.txt"),
                    "split is empty"),
    "malformed XML": (lambda r: _write(os.path.join(r, "Annotations", "a.xml"), "<annotation><object>"), os.path.join("Annotations", "a.xml"),
                      "malformed XML"),
    "unknown class": (lambda r: _write(os.path.join(r, "Annotations", "a.xml"),
                                       _xml(40, 30, [("zebra", 1, 1, 9, 9, 0)])), os.path.join("Annotations", "a.xml"),
                      "unknown class 'zebra'"),
    "non-numeric box": (lambda r: _write(os.path.join(r, "Annotations", "a.xml"),
                                         _xml(40, 30, [("cat", "one", 1, 9, 9, 0)])), os.path.join("Annotations", "a.xml"),
                        "<xmin>"),
    "annotation missing": (lambda r: _remove(os.path.join(r, "Annotations", "b.xml")), os.path.join("Annotations", "b.xml"),
                           "annotation missing"),
    "image missing": (lambda r: _remove(os.path.join(r, "JPEGImages", "b.jpg")), os.path.join("JPEGImages", "b.jpg"),
                      "missing"),
    "labels.txt missing": (lambda r: _remove(os.path.join(r, "labels.txt")), "labels.txt", "not found"),
    "labels.txt empty": (lambda r: _write(os.path.join(r, "labels.txt"), "\n \n"), "labels.txt", "empty"),
    "labels.txt duplicates": (lambda r: _write(os.path.join(r, "labels.txt"), "cat\ndog\nCat\n"), "labels.txt",
                              "duplicate"),
}


@pytest.mark.parametrize("case", sorted(BAD_CUSTOM))
def test_bad_custom_dataset_raises_a_user_error_naming_the_file(tmp_path, case):
    root = make_custom(tmp_path / "d")
    damage, fname, words = BAD_CUSTOM[case]
    damage(root)
    with pytest.raises(UserError) as info:
        CustomDetection(root, "train")
    msg = info.value.message
    assert words in msg and (os.path.join(root, fname) if fname else root) in msg
    assert "\n" not in msg and " — " in msg  # one line: what is wrong — what to do


@pytest.mark.parametrize("damage, words", [
    (lambda r: _remove(r), "dataset root not found"),
    (lambda r: _remove(os.path.join(r, "VOC2007", "ImageSets", "Main", "test.txt")), "split file not found"),
    (lambda r: _write(os.path.join(r, "VOC2007", "Annotations", "a.xml"), _xml(40, 30, [("cat", 1, 1, 9, 9, 0),
                                                                                       ("unicorn", 1, 1, 5, 5, 0)])),
     "unknown class 'unicorn'"),
])
def test_bad_voc_dataset_raises_a_user_error(tmp_path, damage, words):
    devkit = tmp_path / "VOCdevkit"
    make_custom(devkit / "VOC2007", split="test", labels=None,
                images={"a": [("cat", 2, 3, 20, 25, 0)], "b": [("dog", 10, 5, 39, 29, 0)]})
    damage(str(devkit))
    with pytest.raises(UserError, match=words):
        VOCDetection(str(devkit), [("2007", "test")])


def test_unreadable_image_fails_at_load_time_naming_the_file(tmp_path):
    root = make_custom(tmp_path / "d")
    bad = os.path.join(root, "JPEGImages", "b.jpg")
    _write(bad, "garbage")
    ds = CustomDetection(root, "train")
    ds[0]
    with pytest.raises(UserError, match="cannot be decoded") as info:
        ds[1]
    assert bad in info.value.message


def test_box_outside_the_image_is_clipped_with_a_warning(tmp_path):
    root = make_custom(tmp_path / "d", {"a": [("cat", -5, 3, 60, 25, 0)]})
    with pytest.warns(UserWarning, match="a.xml") as rec:
        ds = CustomDetection(root, "train")
    assert "clipped" in str(rec[0].message)
    np.testing.assert_allclose(ds[0][1], [[0, 2 / 30, 39 / 40, 24 / 30, 0]], atol=1e-6)


def test_zero_area_box_is_dropped_with_a_warning(tmp_path):
    root = make_custom(tmp_path / "d", {"a": [("cat", 5, 3, 5, 25, 0), ("dog", 50, 3, 70, 25, 0),
                                              ("dog", 2, 2, 10, 10, 0)]})
    with pytest.warns(UserWarning) as rec:
        ds = CustomDetection(root, "train")
    messages = [str(w.message) for w in rec]
    assert any("zero-area" in m and os.path.join(root, "Annotations", "a.xml") in m for m in messages)
    assert any("clipped" in m for m in messages)  # the box right of the image is clipped to nothing
    np.testing.assert_allclose(ds[0][1], [[1 / 40, 1 / 30, 9 / 40, 9 / 30, 1]], atol=1e-6)


def _coco_root(tmp_path, data=None, text=None):
    root = tmp_path / "coco"
    (root / "images" / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    cv2.imwrite(str(root / "images" / "val" / "1.jpg"), np.zeros((30, 40, 3), np.uint8))
    if data is not None or text is not None:
        (root / "annotations" / "instances_val.json").write_text(text if text is not None else json.dumps(data))
    return str(root)


_GOOD_COCO = {"images": [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 30}],
              "categories": [{"id": 1, "name": "thing"}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}]}


@pytest.mark.parametrize("data, text, words", [
    (None, None, "COCO annotation file not found"),
    (None, '{"images": [', "malformed COCO JSON"),
    ({"images": []}, None, "missing list 'annotations'"),
    (dict(_GOOD_COCO, annotations=[{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]), None,
     "category_id 7"),
    (dict(_GOOD_COCO, annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": "1,1,5,5"}]), None,
     "numeric bbox"),
    (dict(_GOOD_COCO, images=[{"id": 1, "file_name": "2.jpg", "width": 40, "height": 30}]), None, "missing"),
])
def test_bad_coco_json_raises_a_user_error_naming_the_file(tmp_path, data, text, words):
    root = _coco_root(tmp_path, data, text)
    with pytest.raises(UserError, match=words) as info:
        COCODetection(root, "val")
    assert os.path.join(root, "annotations", "instances_val.json") in info.value.message


def test_good_tiny_coco_loads(tmp_path):
    ds = COCODetection(_coco_root(tmp_path, _GOOD_COCO), "val")
    assert ds.class_names == ["thing"] and len(ds) == 1
    np.testing.assert_allclose(ds[0][1], [[1 / 40, 1 / 30, 6 / 40, 6 / 30, 0]], atol=1e-6)


def test_unknown_dataset_name_is_a_usage_error(tmp_path):
    with pytest.raises(UserError) as info:
        build_dataset("imagenet", str(tmp_path), None, None)
    assert info.value.code == 2 and "imagenet" in info.value.message


def test_labels_txt_follows_the_class_name_file_rules(tmp_path):
    # BOM, CRLF, blank and comment lines: the rules of utils.labels.read_class_names, the project's one reader
    (tmp_path / "labels.txt").write_bytes("\ufeffcat\r\n\r\n# pets only\r\ndog\r\n".encode("utf-8"))
    assert read_labels(str(tmp_path)) == ["cat", "dog"]


def test_labels_txt_missing_says_to_create_it(tmp_path):
    with pytest.raises(UserError) as info:
        read_labels(str(tmp_path))
    assert info.value.message == (f"class list not found: {tmp_path / 'labels.txt'} — create labels.txt in the "
                                  "dataset root with one class name per line")


def test_labels_txt_starting_with_background_warns_and_keeps_the_name(tmp_path):
    (tmp_path / "labels.txt").write_text("background\ncat\n")
    with pytest.warns(UserWarning, match="adds the background class itself"):
        assert read_labels(str(tmp_path)) == ["background", "cat"]
