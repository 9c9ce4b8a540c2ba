"""Time VOC scoring of results files at VOC2007-test size (4952 images x 20 classes).

Generates, in a temporary folder, one VOC XML per image (~3 objects, some difficult) and
``comp4_det_test_<class>.txt`` files with ``--dets_per_image`` detections per image (jittered hits plus
low-score clutter, like an SSD run at confidence 0.01), then times:

* ``parse``: reading all XML annotations (cold cache),
* ``score``: reading the 20 results files and computing every class's AP (what eval.py --results_dir does
  once annotations are parsed),
* ``total``: both.

    python benchmarks/bench_voc_eval.py [--images 4952] [--dets_per_image 200] [--metric voc07]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.metrics.voc import (AnnotationCache, ClassDetections, evaluate, load_annotations,  # noqa: E402
                            read_voc_results, write_voc_results)

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"]


def make_case(root: str, n_images: int, dets_per_image: int, seed: int):
    rng = np.random.default_rng(seed)
    ann_dir = os.path.join(root, "Annotations")
    os.makedirs(ann_dir)
    xml_paths = {}
    rows = {c: ([], [], []) for c in CLASSES}
    for i in range(n_images):
        image_id = f"{i:06d}"
        w, h = 500, 375
        objs = []
        for _ in range(int(rng.integers(1, 6))):
            cls = CLASSES[int(rng.integers(len(CLASSES)))]
            x1, y1 = int(rng.integers(1, w - 60)), int(rng.integers(1, h - 60))
            x2, y2 = int(min(w, x1 + rng.integers(20, 300))), int(min(h, y1 + rng.integers(20, 300)))
            objs.append((cls, x1, y1, x2, y2, int(rng.random() < 0.1)))
        body = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{e}</xmax><ymax>{f}</ymax></bndbox></object>" for c, a, b, e, f, d in objs)
        path = os.path.join(ann_dir, image_id + ".xml")
        with open(path, "w") as fh:
            fh.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
                     f"<height>{h}</height><depth>3</depth></size>{body}</annotation>")
        xml_paths[image_id] = path
        n_hits = 0
        for c, a, b, e, f, _ in objs:  # a few jittered detections per object
            k = int(rng.integers(1, 4))
            n_hits += k
            box = np.array([a, b, e, f], float) + rng.normal(0, 8, size=(k, 4))
            rows[c][0].extend([image_id] * k)
            rows[c][1].extend(rng.uniform(0.3, 1.0, size=k))
            rows[c][2].extend(box)
        n_clutter = max(0, dets_per_image - n_hits)
        cls_idx = rng.integers(len(CLASSES), size=n_clutter)
        xy = rng.uniform(1, [w - 40, h - 40], size=(n_clutter, 2))
        wh = rng.uniform(10, 200, size=(n_clutter, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = rng.uniform(0.01, 0.5, size=n_clutter)
        for j in range(len(CLASSES)):
            sel = cls_idx == j
            rows[CLASSES[j]][0].extend([image_id] * int(sel.sum()))
            rows[CLASSES[j]][1].extend(scores[sel])
            rows[CLASSES[j]][2].extend(boxes[sel])
    dets = {c: ClassDetections(ids, np.asarray(s, float), np.asarray(b, float).reshape(-1, 4))
            for c, (ids, s, b) in rows.items()}
    results_dir = os.path.join(root, "results")
    write_voc_results(results_dir, "test", CLASSES, dets)
    return xml_paths, results_dir, sum(len(d.scores) for d in dets.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4952)
    ap.add_argument("--dets_per_image", type=int, default=200)
    ap.add_argument("--metric", default="voc07", choices=["voc07", "area"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        xml_paths, results_dir, n_dets = make_case(root, args.images, args.dets_per_image, args.seed)
        print(f"generated {args.images} images, {n_dets} detections in {time.perf_counter() - t:.1f} s")
        t0 = time.perf_counter()
        annotations = load_annotations(xml_paths, AnnotationCache())
        t1 = time.perf_counter()
        res = evaluate(read_voc_results(results_dir, "test", CLASSES), annotations, CLASSES, metric=args.metric)
        t2 = time.perf_counter()
    print(f"parse annotations: {t1 - t0:.2f} s")
    print(f"read results + score {len(CLASSES)} classes: {t2 - t1:.2f} s")
    print(f"total: {t2 - t0:.2f} s   (mAP {res['mAP']:.4f}, {args.metric})")


if __name__ == "__main__":
    main()
