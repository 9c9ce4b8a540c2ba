"""VOC AP as the devkit computes it: hand-made cases with known APs, agreement with a plain reference,
results-file round trip, annotation parsing/caching, and the COCO path through pycocotools."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from utils.errors import UserError
from utils.metrics.voc import (AnnotationCache, ClassDetections, GroundTruth, eval_class, evaluate,
                            load_annotations, parse_voc_xml, read_voc_results, voc_ap, write_voc_results)


# --------------------------------------------------------------------------------------------------------
# A deliberately plain reference: py-faster-rcnn's voc_eval transcribed with Python loops.
# --------------------------------------------------------------------------------------------------------

def reference_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ps = [p for r, p in zip(rec, prec) if r >= t]
            ap = ap + (max(ps) if ps else 0.0) / 11.0
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = 0.0
    for i in range(len(mrec) - 1):
        if mrec[i + 1] != mrec[i]:
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1]
    return ap


def reference_eval(image_ids, scores, boxes, annotations, classname, use_07_metric, ovthresh=0.5):
    recs = {}
    npos = 0
    for img, objs in annotations.items():
        mine = [o for o in objs if o["name"] == classname]
        recs[img] = {"bbox": [list(map(float, o["bbox"])) for o in mine],
                     "difficult": [bool(o["difficult"]) for o in mine],
                     "det": [False] * len(mine)}
        npos += sum(1 for o in mine if not o["difficult"])
    order = np.argsort(-np.asarray(scores, dtype=np.float64))  # the reference's own sort call
    tp, fp = [], []
    for d in order:
        r = recs[image_ids[d]]
        bb = [float(v) for v in boxes[d]]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(r["bbox"]):
            iw = max(min(g[2], bb[2]) - max(g[0], bb[0]) + 1.0, 0.0)
            ih = max(min(g[3], bb[3]) - max(g[1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0) - inters)
            ov = inters / uni
            if ov > ovmax:
                ovmax, jmax = ov, j
        t = f = 0.0
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    t = 1.0
                    r["det"][jmax] = True
                else:
                    f = 1.0
        else:
            f = 1.0
        tp.append(t)
        fp.append(f)
    ctp, cfp, rec, prec = 0.0, 0.0, [], []
    for t, f in zip(tp, fp):
        ctp += t
        cfp += f
        rec.append(ctp / float(npos))
        prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
    ap = reference_voc_ap(rec, prec, use_07_metric) if order.size else 0.0
    return np.array(rec), np.array(prec), ap


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------

def obj(name, bbox, difficult=False):
    return {"name": name, "bbox": list(bbox), "difficult": difficult}


def dets(rows):
    """rows: (image_id, score, x1, y1, x2, y2)."""
    if not rows:
        return ClassDetections.empty()
    return ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows], float),
                           np.array([r[2:] for r in rows], float))


def ap_of(rows, annotations, cls="a", metric="voc07"):
    return eval_class(dets(rows), annotations, cls, use_07_metric=(metric == "voc07"))[2]


A = (10, 10, 50, 50)
B = (100, 100, 160, 140)
FAR = (200, 200, 240, 240)


# --------------------------------------------------------------------------------------------------------
# hand-made cases with known APs
# --------------------------------------------------------------------------------------------------------

def test_perfect_detections_give_ap_one_with_both_metrics():
    ann = {"1": [obj("a", A), obj("a", B)], "2": [obj("a", B)]}
    rows = [("1", 0.9, *A), ("1", 0.8, *B), ("2", 0.7, *B)]
    assert ap_of(rows, ann, metric="voc07") == pytest.approx(1.0, abs=1e-12)
    assert ap_of(rows, ann, metric="area") == pytest.approx(1.0, abs=1e-12)


def test_false_positive_ranked_above_true_positive_halves_precision():
    ann = {"1": [obj("a", A)]}
    rows = [("1", 0.9, *FAR), ("1", 0.8, *A)]
    rec, prec, ap = eval_class(dets(rows), ann, "a", use_07_metric=True)
    np.testing.assert_allclose(rec, [0.0, 1.0])
    np.testing.assert_allclose(prec, [0.0, 0.5])
    assert ap == pytest.approx(0.5, abs=1e-12)
    assert ap_of(rows, ann, metric="area") == pytest.approx(0.5, abs=1e-12)


def test_duplicate_detection_is_a_false_positive_and_voc07_differs_from_area():
    ann = {"1": [obj("a", A), obj("a", B)]}
    rows = [("1", 0.9, *A), ("1", 0.8, *A), ("1", 0.7, *B)]
    rec, prec, _ = eval_class(dets(rows), ann, "a")
    np.testing.assert_allclose(rec, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2.0 / 3.0])
    # voc07: t = 0..0.5 -> max precision 1, t = 0.6..1.0 -> 2/3
    assert ap_of(rows, ann, metric="voc07") == pytest.approx((6 * 1.0 + 5 * 2.0 / 3.0) / 11.0, abs=1e-12)
    # area: 0.5 * 1 + 0.5 * 2/3
    assert ap_of(rows, ann, metric="area") == pytest.approx(0.5 + 1.0 / 3.0, abs=1e-12)


def test_detection_on_difficult_ground_truth_is_ignored():
    ann = {"1": [obj("a", A), obj("a", B, difficult=True)]}
    rows = [("1", 0.9, *B), ("1", 0.8, *A)]
    rec, prec, ap = eval_class(dets(rows), ann, "a")
    np.testing.assert_allclose(rec, [0.0, 1.0])  # the difficult match is neither TP nor FP
    assert ap == pytest.approx(1.0, abs=1e-12)   # as a FP it would be 0.5


def test_unmatched_difficult_ground_truth_is_not_a_positive():
    ann = {"1": [obj("a", A), obj("a", B, difficult=True)]}
    rows = [("1", 0.8, *A)]
    rec, _, ap = eval_class(dets(rows), ann, "a")
    np.testing.assert_allclose(rec, [1.0])  # npos = 1, not 2
    assert ap == pytest.approx(1.0, abs=1e-12)


def test_class_without_detections_has_ap_zero_and_counts_in_map():
    ann = {"1": [obj("a", A), obj("b", B)]}
    res = evaluate({"a": dets([("1", 0.9, *A)])}, ann, ["a", "b"])
    assert res["ap"] == {"a": pytest.approx(1.0), "b": 0.0}
    assert res["mAP"] == pytest.approx(0.5)
    empty = evaluate({"a": dets([("1", 0.9, *A)]), "b": ClassDetections.empty()}, ann, ["a", "b"])
    assert empty["ap"]["b"] == 0.0


def test_class_without_ground_truth_is_undefined_and_left_out_of_map():
    ann = {"1": [obj("a", A)]}
    res = evaluate({"a": dets([("1", 0.9, *A)]), "b": dets([("1", 0.5, *B)])}, ann, ["a", "b"])
    assert np.isnan(res["ap"]["b"])
    assert res["mAP"] == pytest.approx(1.0)


def test_plus_one_pixel_convention_decides_the_match():
    # with +1: IoU = 100 / 190 > 0.5 (TP); without it, 81 / 162 = 0.5 exactly (a FP)
    ann = {"1": [obj("a", (1, 1, 10, 10))]}
    assert ap_of([("1", 0.9, 1, 1, 10, 19)], ann) == pytest.approx(1.0)
    # IoU exactly 0.5 is not a match (strict >)
    assert ap_of([("1", 0.9, 1, 1, 10, 20)], ann) == 0.0


def test_taken_best_ground_truth_makes_a_false_positive_even_if_another_overlaps():
    # devkit rule: only the best-IoU ground truth is considered
    g1, g2 = (10, 10, 50, 50), (12, 10, 52, 50)
    ann = {"1": [obj("a", g1), obj("a", g2)]}
    rows = [("1", 0.9, *g1), ("1", 0.8, 11, 10, 51, 50)]  # second is closer to g1 (tie -> first GT)
    rec, prec, _ = eval_class(dets(rows), ann, "a")
    np.testing.assert_allclose(prec, [1.0, 0.5])


def test_detection_in_image_outside_the_set_is_a_user_error():
    ann = {"1": [obj("a", A)]}
    with pytest.raises(UserError, match="'9'.*not in the evaluated image set"):
        eval_class(dets([("9", 0.9, *A)]), ann, "a")


def test_unknown_metric_is_a_usage_error():
    with pytest.raises(UserError) as err:
        evaluate({}, {"1": []}, ["a"], metric="coco")
    assert err.value.code == 2


# --------------------------------------------------------------------------------------------------------
# agreement with the plain reference
# --------------------------------------------------------------------------------------------------------

def random_case(rng, n_images=25, classes=("a", "b", "c")):
    ann = {}
    for i in range(n_images):
        objs = []
        for _ in range(rng.integers(0, 5)):
            x1, y1 = rng.integers(1, 300, size=2)
            w, h = rng.integers(5, 120, size=2)
            objs.append(obj(str(rng.choice(classes)), (int(x1), int(y1), int(x1 + w), int(y1 + h)),
                            bool(rng.random() < 0.2)))
        ann[f"{i:06d}"] = objs
    per_class = {}
    ids = list(ann)
    for c in classes:
        rows = []
        for img, objs in ann.items():
            for o in objs:
                if o["name"] != c:
                    continue
                for _ in range(rng.integers(0, 3)):  # jittered hits, duplicates included
                    jit = rng.normal(0, 6, size=4)
                    rows.append((img, *(np.asarray(o["bbox"], float) + jit)))
        for _ in range(rng.integers(0, 40)):  # background clutter
            x1, y1 = rng.uniform(1, 300, size=2)
            w, h = rng.uniform(3, 120, size=2)
            rows.append((str(rng.choice(ids)), x1, y1, x1 + w, y1 + h))
        scores = np.round(rng.random(len(rows)), 2)  # coarse scores -> ties on purpose
        per_class[c] = ClassDetections([r[0] for r in rows], scores,
                                       np.round(np.array([r[1:] for r in rows], float).reshape(-1, 4), 1))
    return ann, per_class


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_matches_plain_reference_on_random_cases(seed, metric):
    rng = np.random.default_rng(seed)
    ann, per_class = random_case(rng)
    res = evaluate(per_class, ann, ["a", "b", "c"], metric=metric)
    for c, d in per_class.items():
        rrec, rprec, rap = reference_eval(d.image_ids, d.scores, d.boxes, ann, c, metric == "voc07")
        rec, prec = res["pr"][c]
        if np.isnan(res["ap"][c]):  # no positives: the reference divides by zero
            assert sum(not o["difficult"] for objs in ann.values() for o in objs if o["name"] == c) == 0
            continue
        np.testing.assert_allclose(rec, rrec, rtol=0, atol=1e-12)
        np.testing.assert_allclose(prec, rprec, rtol=0, atol=1e-12)
        assert abs(res["ap"][c] - rap) < 1e-6


@pytest.mark.parametrize("max_pairs", [1, 2, 7])
def test_chunked_overlap_computation_gives_the_same_result(monkeypatch, max_pairs):
    import utils.metrics.voc as ve

    rng = np.random.default_rng(5)
    ann, per_class = random_case(rng)
    whole = evaluate(per_class, ann, ["a", "b", "c"])
    monkeypatch.setattr(ve, "_MAX_PAIRS", max_pairs)
    chunked = evaluate(per_class, ann, ["a", "b", "c"])
    np.testing.assert_equal(chunked["ap"], whole["ap"])
    for c in "abc":
        np.testing.assert_array_equal(chunked["pr"][c][1], whole["pr"][c][1])


def test_prebuilt_ground_truth_index_gives_the_same_result():
    rng = np.random.default_rng(99)
    ann, per_class = random_case(rng)
    a = evaluate(per_class, ann, ["a", "b", "c"])
    b = evaluate(per_class, GroundTruth.from_annotations(ann), ["a", "b", "c"])
    np.testing.assert_equal(a["ap"], b["ap"])  # NaN == NaN here


def test_voc_ap_matches_reference_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        rec = np.sort(rng.random(n))
        prec = rng.random(n)
        for use07 in (True, False):
            assert abs(voc_ap(rec, prec, use07) - reference_voc_ap(rec, prec, use07)) < 1e-12


# --------------------------------------------------------------------------------------------------------
# results files, annotations
# --------------------------------------------------------------------------------------------------------

def test_results_files_round_trip_gives_the_same_numbers(tmp_path):
    rng = np.random.default_rng(3)
    ann, per_class = random_case(rng)
    # values on the file's grid (%.6f scores, %.1f boxes) so that memory and file agree exactly
    per_class = {c: ClassDetections(d.image_ids, np.round(d.scores + rng.random(len(d.scores)) * 1e-3, 6), d.boxes)
                 for c, d in per_class.items()}
    in_memory = evaluate(per_class, ann, ["a", "b", "c"])
    paths = write_voc_results(str(tmp_path), "test", ["a", "b", "c"], per_class)
    assert [os.path.basename(p) for p in paths] == [f"comp4_det_test_{c}.txt" for c in "abc"]
    first = open(paths[0]).readline().split()
    assert len(first) == 6 and len(first[1].split(".")[1]) == 6 and len(first[2].split(".")[1]) == 1
    from_files = evaluate(read_voc_results(str(tmp_path), "test", ["a", "b", "c"]), ann, ["a", "b", "c"])
    assert from_files["ap"] == in_memory["ap"]
    assert from_files["mAP"] == in_memory["mAP"]


def test_missing_results_class_file_names_the_file(tmp_path):
    write_voc_results(str(tmp_path), "test", ["a"], {"a": dets([("1", 0.5, *A)])})
    with pytest.raises(UserError, match="comp4_det_test_b.txt"):
        read_voc_results(str(tmp_path), "test", ["a", "b"])


def test_malformed_results_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("1 0.5 1 1 5 5\n1 0.4 1 1 5\n")
    with pytest.raises(UserError, match="line 2"):
        read_voc_results(str(tmp_path), "test", ["a"])


def test_empty_results_file_scores_zero(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("")
    res = evaluate(read_voc_results(str(tmp_path), "test", ["a"]), {"1": [obj("a", A)]}, ["a"])
    assert res["ap"]["a"] == 0.0


XML = """<annotation><size><width>300</width><height>200</height><depth>3</depth></size>
<object><name> dog </name><difficult>0</difficult>
  <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult>
  <bndbox><xmin>5</xmin><ymin>6</ymin><xmax>70</xmax><ymax>80</ymax></bndbox></object>
<object><name>cat</name><bndbox><xmin>7.0</xmin><ymin>8</ymin><xmax>9</xmax><ymax>10</ymax></bndbox></object>
</annotation>"""


def test_parse_voc_xml_keeps_one_based_coordinates_and_difficult(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(XML)
    objs = parse_voc_xml(str(p))
    assert objs[0] == {"name": "dog", "bbox": [1, 2, 30, 40], "difficult": False}
    assert objs[1]["difficult"] is True
    assert objs[2] == {"name": "cat", "bbox": [7.0, 8, 9, 10], "difficult": False}


def test_malformed_xml_is_a_user_error_naming_the_file(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_text("<annotation><object>")
    with pytest.raises(UserError, match="bad.xml"):
        parse_voc_xml(str(p))


def test_annotation_cache_rereads_changed_files(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(XML)
    cache = AnnotationCache()
    first = load_annotations({"a": str(p)}, cache)
    assert first["a"][0]["name"] == "dog"
    assert load_annotations({"a": str(p)}, cache)["a"] is first["a"]  # unchanged -> served from cache
    p.write_text(XML.replace(" dog ", "horse"))
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same-second edits still count
    assert load_annotations({"a": str(p)}, cache)["a"][0]["name"] == "horse"


# --------------------------------------------------------------------------------------------------------
# COCO path
# --------------------------------------------------------------------------------------------------------

def test_coco_path_gives_pycocotools_stats(tmp_path):
    from utils.metrics.coco import coco_evaluate, detections_to_coco, load_coco_gt

    gt = {
        "images": [{"id": 1, "file_name": "000001.jpg", "width": 200, "height": 200},
                   {"id": 2, "file_name": "000002.jpg", "width": 200, "height": 200}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 100, 80], "area": 8000, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [20, 30, 60, 60], "area": 3600, "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(gt))
    coco = load_coco_gt(str(path))
    # perfect boxes (0-based xyxy pixels) for both objects, plus one false positive of low score
    results = detections_to_coco(
        coco, class_names=["cat", "dog"],
        image_ids=["000001", "000002", "000002"],
        boxes=np.array([[10, 10, 110, 90], [20, 30, 80, 90], [150, 150, 190, 190]], float),
        scores=np.array([0.9, 0.8, 0.1]), labels=np.array([1, 2, 1]))
    assert results[0] == {"image_id": 1, "category_id": 5, "bbox": [10.0, 10.0, 100.0, 80.0], "score": 0.9}
    stats = coco_evaluate(coco, results, per_class_names=["cat", "dog"])
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert stats["AP50"] == pytest.approx(1.0)
    # a shifted box lowers AP@[.5:.95] but not AP50
    shifted = detections_to_coco(coco, ["cat", "dog"], ["000001", "000002"],
                                 np.array([[18, 10, 118, 90], [20, 30, 80, 90]], float),
                                 np.array([0.9, 0.8]), np.array([1, 2]))
    s2 = coco_evaluate(coco, shifted)
    assert s2["AP50"] == pytest.approx(1.0) and s2["AP"] < 1.0


def test_coco_with_no_detections_scores_zero(tmp_path):
    from utils.metrics.coco import coco_evaluate, load_coco_gt

    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 50}],
          "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert coco_evaluate(load_coco_gt(str(path)), [])["AP"] == 0.0


def test_malformed_coco_json_is_a_user_error(tmp_path):
    from utils.metrics.coco import load_coco_gt

    path = tmp_path / "gt.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="gt.json"):
        load_coco_gt(str(path))
