"""The synthetic dataset and video generator: output validates, is deterministic and varied."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from data.synthetic import (DIFFICULT_MIN_SIDE, SHAPE_CLASSES, Shape, generate_dataset, generate_video,
                            render_shapes, split_ids)
from data.synthetic.cli import main
from utils.errors import UserError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "shapes")
    summary = generate_dataset(root, 20, seed=1)
    return root, summary


def _tree_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _objects(xml_path):
    root = ET.parse(xml_path).getroot()
    size = (int(root.find("size/width").text), int(root.find("size/height").text))
    objs = [(o.find("name").text, int(o.find("difficult").text),
             [int(o.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]) for o in root.iter("object")]
    return size, objs


def test_generator_output_validates(dataset):
    root, summary = dataset
    main_dir = os.path.join(root, "ImageSets", "Main")
    splits = {s: open(os.path.join(main_dir, f"{s}.txt")).read().split() for s in ("train", "val", "test", "trainval")}
    all_ids = sorted(f[:-4] for f in os.listdir(os.path.join(root, "Annotations")))
    assert len(all_ids) == 20 == summary["num_images"]
    # splits are disjoint, cover everything, default ratios 80/5/15, trainval = train + val
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == all_ids
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (16, 1, 3)
    assert sorted(splits["trainval"]) == sorted(splits["train"] + splits["val"])
    assert open(os.path.join(root, "labels.txt")).read().split() == list(SHAPE_CLASSES)
    n_objects = 0
    for image_id in all_ids:
        (w, h), objs = _objects(os.path.join(root, "Annotations", image_id + ".xml"))
        img = cv2.imread(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        assert img is not None and img.shape == (h, w, 3)
        assert 300 <= w <= 480 and 240 <= h <= 400
        for name, difficult, (x0, y0, x1, y1) in objs:
            assert name in SHAPE_CLASSES and difficult in (0, 1)
            assert 1 <= x0 < x1 <= w and 1 <= y0 < y1 <= h  # 1-based inclusive, inside the image
            if min(x1 - x0 + 1, y1 - y0 + 1) < DIFFICULT_MIN_SIDE:
                assert difficult == 1
        n_objects += len(objs)
    assert n_objects == summary["num_objects"]
    # the COCO JSON holds the same boxes (crowd = difficult)
    coco = json.load(open(os.path.join(root, "annotations", "instances_train.json")))
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert sorted(im["file_name"][:-4] for im in coco["images"]) == sorted(splits["train"])
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id in splits["train"]:
        _, objs = _objects(os.path.join(root, "Annotations", image_id + ".xml"))
        anns = by_image.get(int(image_id), [])
        got = sorted((SHAPE_CLASSES[a["category_id"] - 1], a["iscrowd"], a["bbox"]) for a in anns)
        want = sorted((n, d, [x0 - 1, y0 - 1, x1 - x0, y1 - y0]) for n, d, (x0, y0, x1, y1) in objs)
        assert got == want


def test_content_is_varied(tmp_path):
    summary = generate_dataset(str(tmp_path / "s"), 60, seed=2)
    assert all(n > 0 for n in summary["objects_per_class"].values())
    assert 0 < summary["num_difficult"] < summary["num_objects"]
    sides, sizes = [], set()
    for f in os.listdir(tmp_path / "s" / "Annotations"):
        (w, h), objs = _objects(str(tmp_path / "s" / "Annotations" / f))
        sizes.add((w, h))
        sides += [max(b[2] - b[0], b[3] - b[1]) + 1 for _, _, b in objs]
    assert min(sides) < 24 and max(sides) > 150 and len(sizes) > 30
    assert summary["num_objects"] / 60 > 1.5


def test_same_seed_same_bytes_and_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    generate_dataset(str(tmp_path / "again"), 20, seed=1)
    generate_dataset(str(tmp_path / "other"), 20, seed=2)
    assert _tree_digest(root) == _tree_digest(str(tmp_path / "again"))
    assert _tree_digest(root) != _tree_digest(str(tmp_path / "other"))


def test_shapes_differ_in_form():
    # fill ratio of the bounding box, unrotated and square: square 1, circle pi/4, ring and triangle ~0.5, star less
    ratios = {}
    for label, name in enumerate(SHAPE_CLASSES):
        img = np.zeros((120, 120, 3), np.uint8)
        param = 0.4 if name == "star" else 0.6  # star inner radius / ring hole, as drawn by the generator
        (ann,) = render_shapes(img, [Shape(label, 60, 60, 80, 80, 0.0, (255, 255, 255), param)],
                               np.random.default_rng(0))
        x0, y0, x1, y1 = ann.box
        ratios[name] = (img[..., 0] > 127).sum() / ((x1 - x0 + 1) * (y1 - y0 + 1))
    assert ratios["square"] > 0.95 and abs(ratios["circle"] - np.pi / 4) < 0.03
    assert ratios["star"] < ratios["triangle"] < ratios["circle"] and ratios["ring"] < ratios["circle"] - 0.2


def test_occluded_objects_are_difficult_and_hidden_ones_are_dropped():
    img = np.zeros((100, 100, 3), np.uint8)
    anns = render_shapes(img, [Shape(1, 50, 50, 40, 40, 0.0, (255, 0, 0)),    # 85 % covered by the next one
                               Shape(1, 56, 50, 40, 40, 0.0, (0, 255, 0)),
                               Shape(0, 20, 20, 10, 10, 0.0, (0, 0, 255)),   # 10 px: small -> difficult
                               Shape(1, 20, 20, 4, 4, 0.0, (0, 0, 255)),     # inside the previous one...
                               Shape(1, 20, 20, 12, 12, 0.0, (9, 9, 9))],    # ...which this hides completely
                         np.random.default_rng(0))
    assert anns[0].difficult and anns[0].occlusion > 0.6
    assert not anns[1].difficult and anns[1].occlusion == 0
    assert anns[2] is None and anns[3] is None and anns[4].difficult


def test_split_fractions_are_configurable_and_every_split_gets_an_image():
    s = split_ids(10, 0, 0.2, 0.3)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (5, 2, 3)
    s = split_ids(3, 0, 0.05, 0.15)
    assert all(len(v) == 1 for v in s.values())
    with pytest.raises(UserError):
        split_ids(10, 0, 0.6, 0.5)


def test_cli_writes_the_dataset_and_refuses_foreign_folders(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--num", "5", "--seed", "4", "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert len(open(out / "ImageSets" / "Main" / "val.txt").read().split()) == 1
    assert main(["--out", str(out), "--num", "6", "--seed", "4"]) == 0  # replaces an earlier synthetic dataset
    assert len(os.listdir(out / "JPEGImages")) == 6
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(UserError) as info:
        main(["--out", str(foreign), "--num", "2"])
    assert info.value.code == 2 and str(foreign) in info.value.message
    assert os.listdir(foreign) == ["thesis.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no partial output left behind
    with pytest.raises(UserError) as info:
        main(["--out", str(tmp_path / "x"), "--num", "0"])
    assert info.value.code == 2
    with pytest.raises(UserError):
        main([])


def test_video_has_frames_ground_truth_and_audio(tmp_path):
    import imageio_ffmpeg

    path = str(tmp_path / "clip.mp4")
    info = generate_video(path, num_frames=12, fps=12.0, width=96, height=64, seed=3, audio=True)
    gt = json.load(open(path + ".json"))
    assert info["num_frames"] == gt["num_frames"] == len(gt["frames"]) == 12
    assert gt["class_names"] == list(SHAPE_CLASSES) and info["num_objects"] > 0
    for objs in gt["frames"]:
        for o in objs:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 < 96 and 0 <= y0 < y1 < 64 and SHAPE_CLASSES[o["label"]] == o["name"]
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (96, 64) and len(frames) == 12
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path],
                           capture_output=True, text=True).stderr
    assert "Video: h264" in probe and "yuv420p" in probe and "Audio: aac" in probe
    assert not [p for p in os.listdir(tmp_path) if p not in ("clip.mp4", "clip.mp4.json")]


def test_video_rejects_unsupported_extension_without_leaving_files(tmp_path):
    with pytest.raises(UserError) as info:
        generate_video(str(tmp_path / "clip.gif"), num_frames=2)
    assert info.value.code == 2 and "clip.gif" in info.value.message
    assert os.listdir(tmp_path) == []


def test_classes_draws_only_the_chosen_shapes_and_lists_them_in_order(tmp_path):
    root = tmp_path / "three"
    summary = generate_dataset(str(root), 40, seed=1, classes=["Star", "circle", "ring"])
    assert open(root / "labels.txt").read().split() == ["star", "circle", "ring"] == summary["class_names"]
    names = {name for f in os.listdir(root / "Annotations")
             for name, _, _ in _objects(str(root / "Annotations" / f))[1]}
    assert names == {"star", "circle", "ring"}
    assert set(summary["objects_per_class"]) == names and all(v > 0 for v in summary["objects_per_class"].values())
    coco = json.load(open(root / "annotations" / "instances_trainval.json"))
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "star"), (2, "circle"), (3, "ring")]
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}
    # all five in their order draw what the default draws, byte for byte
    generate_dataset(str(tmp_path / "default"), 6, seed=4)
    generate_dataset(str(tmp_path / "all"), 6, seed=4, classes=list(SHAPE_CLASSES))
    assert _tree_digest(str(tmp_path / "default")) == _tree_digest(str(tmp_path / "all"))


def test_classes_cli_refuses_an_unknown_shape_listing_the_available_ones(tmp_path):
    assert main(["--out", str(tmp_path / "two"), "--num", "4", "--classes", "square,triangle"]) == 0
    assert open(tmp_path / "two" / "labels.txt").read().split() == ["square", "triangle"]
    for bad, why in (("circle,hexagon", "unknown shape 'hexagon'"), ("ring,ring", "ring is given twice"),
                     (",", "no shape given")):
        with pytest.raises(UserError) as info:
            main(["--out", str(tmp_path / "bad"), "--num", "2", "--classes", bad])
        assert info.value.code == 2 and "\n" not in info.value.message
        assert info.value.message.startswith(f"argument --classes: {why}")
        if "unknown" in why:
            assert "the shapes are circle, square, triangle, star, ring" in info.value.message
    assert not (tmp_path / "bad").exists()


def test_video_draws_only_the_chosen_shapes(tmp_path):
    path = str(tmp_path / "rings.mp4")
    generate_video(path, num_frames=6, fps=6.0, width=96, height=64, seed=3, classes=["ring"])
    gt = json.load(open(path + ".json"))
    objects = [o for frame in gt["frames"] for o in frame]
    assert gt["class_names"] == ["ring"] and objects
    assert {(o["label"], o["name"]) for o in objects} == {(0, "ring")}
