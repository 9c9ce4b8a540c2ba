"""COCO-style AP through pycocotools' COCOeval — never a hand-written COCO AP.

Boxes here are what :class:`utils.inference.predictor.Predictor` returns: 0-based continuous pixel ``(x1, y1, x2, y2)``
in the original image; COCO results use ``[x, y, width, height]`` in the same pixel frame (no +1).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

__all__ = ["STAT_NAMES", "load_coco_gt", "category_ids", "image_id_map", "detections_to_coco",
           "write_coco_results", "coco_evaluate"]


def load_coco_gt(path: str):
    """Load a COCO annotation JSON into a ``pycocotools.coco.COCO`` (its prints silenced)."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise UserError("COCO evaluation needs pycocotools — pip install pycocotools") from None
    if not os.path.isfile(path):
        raise UserError(f"COCO annotation file not found: {path} — check --dataset_root and --set")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed COCO JSON: {path} ({exc}) — fix or regenerate the file") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise UserError(f"malformed COCO JSON: {path} lacks 'images', 'annotations' or 'categories' — "
                        "regenerate it")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise UserError(f"malformed COCO JSON: {path} (bad entry: {exc}) — regenerate it") from None
    return coco


def _key(name: str) -> str:
    return str(name).strip().lower()


def category_ids(coco, class_names: Sequence[str]) -> List[int]:
    """COCO category id of each class name (matched by name, case-insensitively)."""
    by_name = {_key(c["name"]): int(c["id"]) for c in coco.dataset["categories"]}
    missing = [n for n in class_names if _key(n) not in by_name]
    if missing:
        raise UserError(f"class '{missing[0]}' has no category in the COCO annotations — the model's class "
                        "names must match the JSON's category names")
    return [by_name[_key(n)] for n in class_names]


def image_id_map(coco, image_ids: Sequence[Union[str, int]]) -> Dict[str, int]:
    """Map dataset image ids to COCO image ids: same integer id, else file name (with or without extension)."""
    by_file: Dict[str, int] = {}
    for img in coco.dataset["images"]:
        fname = os.path.basename(str(img.get("file_name", "")))
        by_file.setdefault(fname, int(img["id"]))
        by_file.setdefault(os.path.splitext(fname)[0], int(img["id"]))
    out: Dict[str, int] = {}
    for iid in set(str(i) for i in image_ids):
        if iid in by_file:
            out[iid] = by_file[iid]
        elif iid.lstrip("-").isdigit() and int(iid) in coco.imgs:
            out[iid] = int(iid)
        else:
            raise UserError(f"image '{iid}' is not in the COCO annotations — evaluate against the JSON of the "
                            "same image set")
    return out


def detections_to_coco(coco, class_names: Sequence[str], image_ids: Sequence[Union[str, int]],
                       boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> List[Dict[str, object]]:
    """Flat detections → COCO results list.

    Args:
        image_ids: [n] dataset image id of each detection.
        boxes: [n, 4] 0-based pixel xyxy. scores: [n]. labels: [n] model labels 1..C-1
            (class name = ``class_names[label - 1]``).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(boxes) == 0:
        return []
    cats = np.asarray(category_ids(coco, class_names), dtype=np.int64)
    if labels.min() < 1 or labels.max() > len(cats):
        raise ValueError(f"labels must lie in 1..{len(cats)}, got {labels.min()}..{labels.max()}")
    imap = image_id_map(coco, image_ids)
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    return [{"image_id": imap[str(i)], "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
            for i, c, b, s in zip(image_ids, cats[labels - 1], xywh, scores)]


def write_coco_results(path: str, results: Sequence[Mapping[str, object]]) -> None:
    """Write the COCO results JSON (the evaluation server's format) atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(list(results), fh)


def coco_evaluate(coco, results: Sequence[Mapping[str, object]], quiet: bool = True,
                  per_class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Run COCOeval (bbox) and return its 12 summary numbers by name (AP = AP@[.5:.95]).

    No detections at all gives zeros (COCOeval cannot load an empty result list). COCOeval reports -1 where
    there is no ground truth in an area range; those values are passed through.
    With ``per_class_names``, also ``"per_class": {name: AP@[.5:.95]}`` read from COCOeval's accumulated
    precision (all areas, 100 detections — what its summary averages over classes; NaN without ground truth).
    """
    from pycocotools.cocoeval import COCOeval

    if len(results) == 0:
        out: Dict[str, object] = {k: 0.0 for k in STAT_NAMES}
        if per_class_names is not None:
            out["per_class"] = {n: 0.0 for n in per_class_names}
        return out
    sink = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        try:
            dt = coco.loadRes(list(results))
        except AssertionError:
            raise UserError("the COCO results name images that are not in the annotation JSON — score them "
                            "against the JSON of the image set they were made for") from None
        ev = COCOeval(coco, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    if per_class_names is not None:
        precision = ev.eval["precision"]  # [T iou, R recall, K category, A area, M maxDets]
        cat_pos = {c: i for i, c in enumerate(ev.params.catIds)}
        per: Dict[str, float] = {}
        for name, cid in zip(per_class_names, category_ids(coco, per_class_names)):
            p = precision[:, :, cat_pos[cid], 0, -1] if cid in cat_pos else np.zeros(0)
            p = p[p > -1]
            per[name] = float(p.mean()) if p.size else float("nan")
        out["per_class"] = per
    return out
