"""PASCAL VOC detection AP, computed exactly as the official devkit (via py-faster-rcnn's ``voc_eval``) does.

Conventions (the devkit's, not the rest of this repo's):

* Ground truth boxes are the integers written in the XML: **1-based pixel coordinates**, inclusive
  ``(xmin, ymin, xmax, ymax)``. Widths, heights and areas carry a ``+1`` (``x2 - x1 + 1``).
* Detections are in the same 1-based coordinates. A model box in 0-based continuous pixels
  (what :class:`utils.inference.predictor.Predictor` returns) is converted by adding 1 (see :func:`to_voc_boxes`).
* Results files ``comp4_det_<set>_<class>.txt`` hold one detection per line:
  ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` — the files the devkit and the evaluation server take.

Matching rule, per class: detections are visited by descending score (``np.argsort(-score)``, as the
reference); each takes the ground truth of its class in its image with the highest IoU (first one on ties).
If that IoU is > ``iou_thresh`` the detection is a true positive when the ground truth is not difficult and
not taken yet, is ignored when the ground truth is difficult, and is a false positive when it was taken.
Otherwise it is a false positive. Difficult objects do not count as positives.

The only sequential part of that rule is "taken yet", and it depends only on which ground truth each
detection picks, which does not depend on the matching state. So a detection is a true positive exactly when
it is the first (highest-scored) eligible detection to pick its ground truth: everything here is vectorised
per class with NumPy, no Python loop per detection.
"""
from __future__ import annotations

import io
import itertools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write

METRICS = ("voc07", "area")

__all__ = [
    "METRICS", "VOCObject", "ClassDetections", "GroundTruth", "AnnotationCache",
    "parse_voc_xml", "load_annotations", "voc_ap", "eval_class", "evaluate", "to_voc_boxes",
    "results_file_name", "write_voc_results", "read_voc_results", "format_ap_table",
]


# ----------------------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------------------

# One object of an annotation: {"name": str, "bbox": [x1, y1, x2, y2] (1-based, as in the XML), "difficult": bool}
VOCObject = Dict[str, object]


def _coord(text: Optional[str], tag: str, path: str) -> Union[int, float]:
    if text is None:
        raise UserError(f"malformed annotation: {path} has an object without <{tag}> — fix or remove that object")
    text = text.strip()
    try:
        return int(text)  # VOC writes integers; keep them exact like the devkit's int()
    except ValueError:
        pass
    try:
        return float(text)  # some tools write "123.0"; accept it rather than failing
    except ValueError:
        raise UserError(f"malformed annotation: {path} has <{tag}>{text}</{tag}>, not a number — "
                        "fix the XML") from None


def parse_voc_xml(path: str) -> List[VOCObject]:
    """Parse one VOC XML file into its objects, in file order.

    Returns a list of ``{"name": str (stripped), "bbox": [xmin, ymin, xmax, ymax], "difficult": bool}`` with the
    coordinates exactly as written (1-based pixels, ints). A missing ``<difficult>`` means not difficult.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path} — check the dataset root and the image set") from None
    except ET.ParseError as exc:
        raise UserError(f"malformed XML annotation: {path} ({exc}) — fix or regenerate the file") from None
    except OSError as exc:
        raise UserError(f"cannot read annotation {path}: {exc.strerror} — check the file's permissions") from None
    objects: List[VOCObject] = []
    for obj in root.iter("object"):
        name = obj.findtext("name")
        box = obj.find("bndbox")
        if name is None or not name.strip() or box is None:
            raise UserError(f"malformed annotation: {path} has an <object> without <name> or <bndbox> — fix the XML")
        diff_text = obj.findtext("difficult")
        try:
            difficult = bool(int(diff_text.strip())) if diff_text and diff_text.strip() else False
        except ValueError:
            raise UserError(f"malformed annotation: {path} has <difficult>{diff_text}</difficult> — "
                            "use 0 or 1") from None
        bbox = [_coord(box.findtext(t), t, path) for t in ("xmin", "ymin", "xmax", "ymax")]
        objects.append({"name": name.strip(), "bbox": bbox, "difficult": difficult})
    return objects


class AnnotationCache:
    """Parsed annotations keyed by ``(path, mtime_ns, size)``: a changed file is re-read, never served stale.

    ssd.pytorch pickled all annotations once and reused them forever, even for another image set (its #482).
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: Dict[str, Tuple[int, int, List[VOCObject]]] = {}
        self.max_entries = max_entries

    def get(self, path: str) -> List[VOCObject]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"annotation file not found: {path} — check the dataset root and the image set") from None
        key = os.path.abspath(path)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
            return hit[2]
        objects = parse_voc_xml(path)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (st.st_mtime_ns, st.st_size, objects)
        return objects

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_DEFAULT_CACHE = AnnotationCache()


def load_annotations(xml_paths_by_id: Mapping[str, str],
                     cache: Optional[AnnotationCache] = None) -> Dict[str, List[VOCObject]]:
    """Parse the XML of every image: ``{image_id: [objects]}`` in the mapping's order.

    The keys define the evaluated image set. Parsing goes through ``cache`` (a process-wide one by default),
    which re-reads any file whose modification time or size changed.
    """
    cache = _DEFAULT_CACHE if cache is None else cache
    return {str(image_id): cache.get(path) for image_id, path in xml_paths_by_id.items()}


def _norm(name: str) -> str:
    # ssd.pytorch's annotation transform lower-cases and strips names; match classes the same way.
    return name.strip().lower()


@dataclass
class _ClassGT:
    boxes: np.ndarray      # [g, 4] float64, image-major, XML order within an image
    difficult: np.ndarray  # [g] bool
    start: np.ndarray      # [I] int64: first row of each image
    count: np.ndarray      # [I] int64: rows of each image

    @property
    def npos(self) -> int:
        return int((~self.difficult).sum())


@dataclass
class GroundTruth:
    """All objects of an evaluated image set, flattened once for fast per-class selection.

    ``image_ids[i]`` is the i-th image; objects are stored image-major and in XML order within each image
    (the order decides ties in the best-IoU choice, as in the reference).
    """

    image_ids: List[str]
    obj_image: np.ndarray   # [n] int64
    obj_name: np.ndarray    # [n] str (normalised)
    obj_boxes: np.ndarray   # [n, 4] float64, 1-based
    obj_difficult: np.ndarray  # [n] bool
    index: Dict[str, int] = field(default_factory=dict)
    _per_class: Dict[str, _ClassGT] = field(default_factory=dict, repr=False)

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, Sequence[VOCObject]]) -> "GroundTruth":
        image_ids = [str(k) for k in annotations.keys()]
        obj_image: List[int] = []
        names: List[str] = []
        boxes: List[Sequence[float]] = []
        difficult: List[bool] = []
        for i, objects in enumerate(annotations.values()):
            for obj in objects:
                obj_image.append(i)
                names.append(_norm(str(obj["name"])))
                boxes.append(obj["bbox"])  # type: ignore[arg-type]
                difficult.append(bool(obj.get("difficult", False)))
        return cls(
            image_ids=image_ids,
            obj_image=np.asarray(obj_image, dtype=np.int64),
            obj_name=np.asarray(names, dtype=str),
            obj_boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            obj_difficult=np.asarray(difficult, dtype=bool),
            index={k: i for i, k in enumerate(image_ids)},
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def for_class(self, classname: str) -> _ClassGT:
        key = _norm(classname)
        hit = self._per_class.get(key)
        if hit is None:
            sel = np.flatnonzero(self.obj_name == key) if len(self.obj_name) else np.zeros(0, np.int64)
            count = np.bincount(self.obj_image[sel], minlength=len(self.image_ids)).astype(np.int64)
            start = np.cumsum(count) - count
            hit = _ClassGT(self.obj_boxes[sel], self.obj_difficult[sel], start, count)
            self._per_class[key] = hit
        return hit

    def lookup(self, image_ids: Sequence[str], source: str = "detections") -> np.ndarray:
        """Indices of ``image_ids`` in this image set; a UserError names the first unknown id."""
        if isinstance(image_ids, np.ndarray):
            image_ids = image_ids.tolist()
        idx = np.fromiter(map(self.index.get, image_ids, itertools.repeat(-1)), dtype=np.int64,
                          count=len(image_ids))
        bad = np.flatnonzero(idx < 0)
        if bad.size:
            raise UserError(f"{source} name image '{image_ids[bad[0]]}', which is not in the evaluated image set "
                            f"({len(bad)} such lines) — score them against the image set they were made for")
        return idx


# ----------------------------------------------------------------------------------------------------------
# Detections
# ----------------------------------------------------------------------------------------------------------


class ClassDetections(NamedTuple):
    """Detections of one class over an image set, in any order.

    image_ids: [n] image ids (a sequence of str: list or array); scores: [n] float64;
    boxes: [n, 4] float64 ``(xmin, ymin, xmax, ymax)`` in the devkit's 1-based pixel coordinates.
    """

    image_ids: Sequence[str]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> "ClassDetections":
        return cls(np.zeros(0, dtype=str), np.zeros(0, np.float64), np.zeros((0, 4), np.float64))

    @classmethod
    def concat(cls, parts: Sequence["ClassDetections"]) -> "ClassDetections":
        parts = [p for p in parts if len(p.scores)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([np.asarray(p.image_ids, dtype=str) for p in parts]),
                   np.concatenate([np.asarray(p.scores, np.float64) for p in parts]),
                   np.concatenate([np.asarray(p.boxes, np.float64).reshape(-1, 4) for p in parts]))


def to_voc_boxes(boxes_0based: np.ndarray) -> np.ndarray:
    """0-based continuous pixel xyxy (the model's output in original-image pixels) → devkit 1-based, float64."""
    return np.asarray(boxes_0based, dtype=np.float64).reshape(-1, 4) + 1.0


# ----------------------------------------------------------------------------------------------------------
# AP
# ----------------------------------------------------------------------------------------------------------


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a precision/recall curve (arrays in detection order).

    ``use_07_metric``: the VOC2007 11-point metric, mean over t in 0, 0.1 … 1 of the max precision at
    recall >= t (0 when no recall reaches t). Otherwise the area under the precision envelope (precision made
    monotone by a running max from the right), summed where recall changes (VOC2010+).
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        # the same thresholds as the reference (np.arange gives 0.30000000000000004 etc.)
        for t in np.arange(0.0, 1.1, 0.1):
            above = rec >= t
            p = float(np.max(prec[above])) if above.any() else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _as_gt(gts: Union[GroundTruth, Mapping[str, Sequence[VOCObject]]]) -> GroundTruth:
    return gts if isinstance(gts, GroundTruth) else GroundTruth.from_annotations(gts)


_MAX_PAIRS = 1 << 21  # (detection, ground truth) pairs per chunk: bounds memory to ~200 MB in crowded sets


def _best_overlaps(det_boxes: np.ndarray, det_img: np.ndarray, cgt: _ClassGT) -> Tuple[np.ndarray, np.ndarray]:
    """For each detection: max IoU with the class's ground truths of its image (-inf if none) and which one.

    Returns ``(ovmax [nd] float64, gt_row [nd] int64 (-1 where no ground truth))``. IoU uses the devkit's +1
    convention with its exact operation order, so values are bit-identical to the reference.
    """
    nd = det_boxes.shape[0]
    counts = cgt.count[det_img]
    ovmax = np.full(nd, -np.inf)
    gt_row = np.full(nd, -1, dtype=np.int64)
    has = np.flatnonzero(counts > 0)
    if has.size == 0:
        return ovmax, gt_row
    # chunks of detections (with ground truth) holding at most _MAX_PAIRS pairs (a single detection may exceed it)
    ends = np.cumsum(counts[has])
    cut = np.searchsorted(ends, np.arange(_MAX_PAIRS, int(ends[-1]), _MAX_PAIRS), side="right")
    for chunk in np.split(has, np.unique(np.clip(cut, 1, has.size - 1)) if has.size > 1 else []):
        ovmax[chunk], gt_row[chunk] = _best_overlaps_chunk(det_boxes[chunk], cgt.start[det_img[chunk]],
                                                           counts[chunk], cgt)
    return ovmax, gt_row


def _best_overlaps_chunk(bb_det: np.ndarray, gt_start: np.ndarray, counts: np.ndarray,
                         cgt: _ClassGT) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_best_overlaps` for detections that all have >= 1 ground truth (``counts > 0``)."""
    n = counts.shape[0]
    total = int(counts.sum())
    # one (detection, ground truth) pair per ground truth of the detection's image, grouped by detection
    pair_det = np.repeat(np.arange(n), counts)
    first = np.cumsum(counts) - counts
    pair_gt = gt_start[pair_det] + (np.arange(total) - first[pair_det])
    bb = bb_det[pair_det]
    g = cgt.boxes[pair_gt]
    iw = np.maximum(np.minimum(g[:, 2], bb[:, 2]) - np.maximum(g[:, 0], bb[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(g[:, 3], bb[:, 3]) - np.maximum(g[:, 1], bb[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = ((bb[:, 2] - bb[:, 0] + 1.0) * (bb[:, 3] - bb[:, 1] + 1.0)
           + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inters)
    del bb, g, iw, ih
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = inters / uni
    seg_max = np.maximum.reduceat(overlaps, first)  # NaN propagates like np.max in the reference
    # argmax = first pair of each detection reaching the max (np.argmax's tie rule)
    is_max = overlaps == np.repeat(seg_max, counts)
    pos = np.where(is_max, np.arange(total), total)
    first_max = np.minimum.reduceat(pos, first)
    ok = first_max < total  # False only for NaN overlaps, which can never pass the threshold anyway
    rows = np.full(n, -1, dtype=np.int64)
    rows[ok] = pair_gt[first_max[ok]]
    return seg_max, rows


def eval_class(dets: Union[ClassDetections, Tuple[Sequence[str], np.ndarray, np.ndarray]],
               gts: Union[GroundTruth, Mapping[str, Sequence[VOCObject]]],
               classname: str, iou_thresh: float = 0.5,
               use_07_metric: bool = True) -> Tuple[np.ndarray, np.ndarray, float]:
    """VOC AP of one class.

    Args:
        dets: ``(image_ids [n], scores [n], boxes [n, 4])``, boxes 1-based pixel xyxy.
        gts: :class:`GroundTruth` or ``{image_id: [objects]}`` (the evaluated image set).
    Returns:
        ``(rec [n], prec [n], ap)`` with rec/prec in descending-score order. A class with no detections
        gets AP 0; a class without any non-difficult ground truth gets AP NaN (undefined).
    """
    gt = _as_gt(gts)
    cgt = gt.for_class(classname)
    npos = cgt.npos
    image_ids, scores, boxes = dets
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    nd = scores.shape[0]
    if nd == 0:
        empty = np.zeros(0, np.float64)
        return empty, empty, (0.0 if npos > 0 else float("nan"))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(nd, 4)
    det_img = gt.lookup(image_ids, source=f"detections of class '{classname}'")

    order = np.argsort(-scores)  # the reference's sort (same kind), so ties break identically
    det_img = det_img[order]
    ovmax, gt_row = _best_overlaps(boxes[order], det_img, cgt)

    hit = ovmax > iou_thresh
    hit_difficult = np.zeros(nd, dtype=bool)
    hit_difficult[hit] = cgt.difficult[gt_row[hit]]
    eligible = np.flatnonzero(hit & ~hit_difficult)
    tp = np.zeros(nd)
    # first (highest-scored) detection to pick each ground truth takes it; later ones are duplicates
    _, first = np.unique(gt_row[eligible], return_index=True)
    tp[eligible[first]] = 1.0
    fp = np.zeros(nd)
    fp[eligible] = 1.0
    fp[eligible[first]] = 0.0
    fp[~hit] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    if npos == 0:
        return np.full(nd, np.nan), tp / np.maximum(tp + fp, np.finfo(np.float64).eps), float("nan")
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, voc_ap(rec, prec, use_07_metric)


def evaluate(detections_per_class: Mapping[str, Union[ClassDetections, Tuple]],
             annotations: Union[GroundTruth, Mapping[str, Sequence[VOCObject]]],
             class_names: Sequence[str], metric: str = "voc07", iou_thresh: float = 0.5) -> Dict[str, object]:
    """VOC AP of every class and their mean.

    Returns ``{"metric", "mAP", "ap": {class: ap}, "npos": {class: int}, "num_detections": {class: int},
    "pr": {class: (rec, prec)}, "num_images"}``. Classes missing from ``detections_per_class`` have AP 0.
    The mAP averages classes with at least one non-difficult ground truth (others have AP NaN).
    """
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r} is not known; use one of {', '.join(METRICS)}", code=2)
    gt = _as_gt(annotations)
    use07 = metric == "voc07"
    ap: Dict[str, float] = {}
    npos: Dict[str, int] = {}
    ndet: Dict[str, int] = {}
    pr: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for name in class_names:
        dets = detections_per_class.get(name)
        if dets is None:
            dets = ClassDetections.empty()
        rec, prec, ap[name] = eval_class(dets, gt, name, iou_thresh, use07)
        npos[name] = gt.for_class(name).npos
        ndet[name] = int(len(rec))
        pr[name] = (rec, prec)
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {"metric": metric, "mAP": float(np.mean(valid)) if valid else float("nan"), "ap": ap,
            "npos": npos, "num_detections": ndet, "pr": pr, "num_images": len(gt)}


def format_ap_table(result: Mapping[str, object]) -> str:
    """Per-class AP table (with positives per class when known) followed by the mAP, as eval.py prints it."""
    ap: Mapping[str, float] = result["ap"]  # type: ignore[assignment]
    npos: Optional[Mapping[str, int]] = result.get("npos")  # type: ignore[assignment]
    width = max([len("class"), len(f"mAP ({result['metric']})")] + [len(c) for c in ap])
    head = f"{'class':<{width}}  {'AP':>7}" + (f"  {'GT':>6}" if npos is not None else "")
    lines = [head, "-" * len(head)]
    for name, value in ap.items():
        shown = "    n/a" if np.isnan(value) else f"{value:7.4f}"
        lines.append(f"{name:<{width}}  {shown}" + (f"  {npos.get(name, 0):>6}" if npos is not None else ""))
    lines.append("-" * len(head))
    label = f"mAP ({result['metric']})"
    lines.append(f"{label:<{width}}  {float(result['mAP']):7.4f}")  # type: ignore[arg-type]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Results files
# ----------------------------------------------------------------------------------------------------------

_LINE = "%s %.6f %.1f %.1f %.1f %.1f\n"
_CHUNK = 8192


def results_file_name(set_name: str, classname: str) -> str:
    return f"comp4_det_{set_name}_{classname}.txt"


def write_voc_results(folder: str, set_name: str, class_names: Sequence[str],
                      detections: Mapping[str, Union[ClassDetections, Tuple]]) -> List[str]:
    """Write ``comp4_det_<set>_<class>.txt`` for every class (empty file when it has no detections).

    Lines: ``<image_id> <score %.6f> <xmin> <ymin> <xmax> <ymax>`` (1-based pixels, %.1f). Each file is
    written atomically. Returns the paths.
    """
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in class_names:
        dets = detections.get(name)
        path = os.path.join(folder, results_file_name(set_name, name))
        with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            if dets is not None and len(dets[1]):
                ids, scores, boxes = dets
                n = len(scores)
                table = np.empty((n, 6), dtype=object)
                table[:, 0] = np.asarray(ids, dtype=str)
                table[:, 1] = np.asarray(scores, dtype=np.float64)
                table[:, 2:] = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
                for s in range(0, n, _CHUNK):
                    rows = table[s:s + _CHUNK]
                    fh.write((_LINE * len(rows)) % tuple(rows.ravel().tolist()))
        paths.append(path)
    return paths


def _bad_line(path: str, text: str) -> Optional[UserError]:
    """The error for the first line without exactly 6 fields (None if every line has 6)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and len(fields) != 6:
            return UserError(f"malformed results file: {path} line {lineno} has {len(fields)} fields, "
                             "expected '<image_id> <score> <xmin> <ymin> <xmax> <ymax>' — regenerate it")
    return None


def _parse_results_file(path: str) -> ClassDetections:
    """One results file → ClassDetections (file order kept: it decides ties, as in the reference)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"results file is not text: {path} — regenerate it with eval.py") from None
    if not text.strip():
        return ClassDetections.empty()
    # numpy's C text reader is ~3x faster than str.split + float(); it parses floats exactly like float()
    opts = dict(comments=None, encoding="utf-8")
    try:
        numbers = np.loadtxt(io.StringIO(text), usecols=(1, 2, 3, 4, 5), dtype=np.float64, ndmin=2, **opts)
        ids = np.loadtxt(io.StringIO(text), usecols=(0,), dtype=str, ndmin=1, **opts).tolist()
    except ValueError:
        raise (_bad_line(path, text) or UserError(
            f"malformed results file: {path} has a non-numeric score or coordinate — regenerate it")) from None
    n = numbers.shape[0]
    # loadtxt ignores extra columns when usecols is given: make sure every line has exactly 6 fields.
    # Canonical files (single spaces) pass a byte count; anything else gets the exact per-line check.
    if raw.count(b" ") != 5 * n or b"\t" in raw:
        err = _bad_line(path, text)
        if err is not None:
            raise err
    return ClassDetections(ids, numbers[:, 0].copy(), numbers[:, 1:].copy())


def read_voc_results(folder: str, set_name: str, class_names: Sequence[str]) -> Dict[str, ClassDetections]:
    """Read ``comp4_det_<set>_<class>.txt`` for every class (also ssd.pytorch's ``det_<set>_<class>.txt``).

    A missing class file is a UserError naming it: silently scoring it as AP 0 would hide a broken run.
    """
    if not os.path.isdir(folder):
        raise UserError(f"results folder not found: {folder} — pass the folder holding "
                        f"{results_file_name(set_name, '<class>')} files")
    out: Dict[str, ClassDetections] = {}
    missing = []
    for name in class_names:
        candidates = [os.path.join(folder, results_file_name(set_name, name)),
                      os.path.join(folder, f"det_{set_name}_{name}.txt")]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            missing.append(candidates[0])
            continue
        out[name] = _parse_results_file(path)
    if missing:
        more = f" (and {len(missing) - 1} more class files)" if len(missing) > 1 else ""
        raise UserError(f"results file missing: {missing[0]}{more} — write one file per class "
                        "(an empty file for a class without detections) or check --set and the class names")
    return out
