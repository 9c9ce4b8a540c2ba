"""Run a detector over a dataset and score it: the library behind eval.py and train.py's ``--eval_every``.

Flow: dataset images (RGB uint8) → resize to S×S in DataLoader workers (uint8, 4× less to move than float)
→ subtract the means on the predictor's device (``data.transforms.normalize_uint8_batch``: the same numbers
as ``BaseTransform``) → :meth:`Predictor.predict_batch` (network + Detect/NMS) → detections in pixels of the
original image → VOC AP (:mod:`utils.metrics.voc`, devkit-exact) and/or COCO AP (:mod:`utils.metrics.coco`).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as tud
from tqdm import tqdm

from data.common import check_dir, read_split, unwrap_worker_error
from data.custom import read_labels
from data.transforms import normalize_uint8_batch, resize_batch_uint8
from data.voc0712 import VOC_CLASSES
from utils.errors import UserError
from utils.io import atomic_write
from utils.labels import are_placeholders
from utils.metrics.coco import coco_evaluate, detections_to_coco, load_coco_gt, write_coco_results
from utils.metrics.voc import (ClassDetections, evaluate, load_annotations, read_voc_results, to_voc_boxes,
                            write_voc_results)

__all__ = ["DetectionRecords", "class_mapping", "collect_detections", "voc_class_detections",
           "voc_ground_truth", "coco_json_path", "evaluate_model", "json_summary", "plot_pr_curves", "score_results"]


# ----------------------------------------------------------------------------------------------------------
# Running the model
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DetectionRecords:
    """Every detection of a run, flat.

    image_ids: [I] dataset image ids in evaluation order. image_index: [N] int64 into image_ids.
    boxes: [N, 4] float32 ``(xmin, ymin, xmax, ymax)`` 0-based continuous pixels of the original image.
    scores: [N] float32. labels: [N] int64, 1-based over the *dataset's* class names
    (``class_names[label - 1]``). seconds: wall time of the loop (loading, network, NMS, copies).
    """

    image_ids: List[str]
    image_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    seconds: float

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("nan")


class _ResizedImages(tud.Dataset):
    """``(uint8 [S, S, 3] RGB tensor, position, h, w)`` for selected items of a detection dataset."""

    def __init__(self, dataset: Any, size: int, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.size = int(size)
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> Tuple[torch.Tensor, int, int, int]:
        img = self.dataset.pull_image(self.indices[pos])  # RGB uint8 H x W x 3
        h, w = img.shape[:2]
        # the shared uint8 resize (data.transforms); normalisation happens per batch on the predictor's device
        resized = resize_batch_uint8([img], self.size)[0]
        return torch.from_numpy(resized), pos, h, w


def _collate(batch):
    images = torch.stack([b[0] for b in batch], 0)
    return images, [b[1] for b in batch], [(b[2], b[3]) for b in batch]


def class_mapping(model_names: Sequence[str], dataset_names: Sequence[str]) -> np.ndarray:
    """``map[k]`` = dataset label (1-based) of model label ``k`` (``map[0] = 0``, background).

    Names are matched case-insensitively (any order). A model without real names (``class_1`` ...) but with
    the dataset's class count is taken in the dataset's order, with a warning. Anything else is a UserError.
    """
    key = [str(n).strip().lower() for n in dataset_names]
    index = {n: i + 1 for i, n in enumerate(key)}
    mine = [str(n).strip().lower() for n in model_names]
    if all(n in index for n in mine) and len(set(mine)) == len(mine):
        return np.array([0] + [index[n] for n in mine], dtype=np.int64)
    if len(mine) == len(key) and are_placeholders(mine):
        warnings.warn("the checkpoint carries no class names; assuming the dataset's class order", stacklevel=2)
        return np.arange(len(key) + 1, dtype=np.int64)
    missing = [n for n in model_names if str(n).strip().lower() not in index]
    raise UserError(f"the model's {len(model_names)} classes do not match the dataset's {len(dataset_names)} "
                    f"(e.g. {missing[0]!r} is not a dataset class) — evaluate on the dataset the model was "
                    "trained for" if missing else
                    f"the model lists a class twice ({list(model_names)}) — fix the checkpoint's class names")


def collect_detections(predictor: Any, dataset: Any, batch_size: int = 8, num_workers: int = 0,
                       progress: bool = False, max_images: Optional[int] = None) -> DetectionRecords:
    """Run ``predictor`` over ``dataset`` (items in order) and gather all detections.

    ``dataset`` needs ``pull_image(i)``, ``image_id(i)``, ``class_names`` and ``len``. Errors from loader
    workers that are UserErrors come back as one line. ``batch_size`` < 1 or ``num_workers`` < 0 is a
    ValueError (a caller's bug: the CLIs validate their flags); an empty dataset is a UserError.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n == 0:
        raise UserError("the evaluation set has no images — check the image set's split file")
    mapping = class_mapping(predictor.class_names, dataset.class_names)
    device = getattr(predictor, "device", torch.device("cpu"))
    loader = tud.DataLoader(_ResizedImages(dataset, predictor.size, range(n)), batch_size=batch_size,
                            shuffle=False, num_workers=num_workers, collate_fn=_collate,
                            pin_memory=(torch.device(device).type == "cuda") if num_workers > 0 else None)
    image_ids = [str(dataset.image_id(i)) for i in range(n)]
    parts: Dict[str, List[np.ndarray]] = {"index": [], "boxes": [], "scores": [], "labels": []}
    bar = None
    if progress:
        bar = tqdm(total=n, unit="img", desc="detect", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for images, positions, sizes in loader:
            x = normalize_uint8_batch(images.to(device, non_blocking=True))
            for pos, det in zip(positions, predictor.predict_batch(x, sizes)):
                if len(det):
                    parts["index"].append(np.full(len(det), pos, dtype=np.int64))
                    parts["boxes"].append(np.asarray(det.boxes, np.float32).reshape(-1, 4))
                    parts["scores"].append(np.asarray(det.scores, np.float32))
                    parts["labels"].append(mapping[np.asarray(det.labels, np.int64)])
            if bar is not None:
                bar.update(len(positions))
    except UserError as exc:  # from a worker: its traceback text is the message; keep the last line
        raise (unwrap_worker_error(exc) or exc) from None
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    def cat(key: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else empty

    return DetectionRecords(image_ids, cat("index", np.zeros(0, np.int64)), cat("boxes", np.zeros((0, 4), np.float32)),
                            cat("scores", np.zeros(0, np.float32)), cat("labels", np.zeros(0, np.int64)), seconds)


# ----------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------


def voc_class_detections(records: DetectionRecords, class_names: Sequence[str]) -> Dict[str, ClassDetections]:
    """Per-class devkit detections (1-based pixel boxes) in image order, as ssd.pytorch wrote them."""
    ids = np.asarray(records.image_ids, dtype=str)
    out = {}
    for k, name in enumerate(class_names, start=1):
        sel = np.flatnonzero(records.labels == k)
        out[name] = ClassDetections(ids[records.image_index[sel]], records.scores[sel].astype(np.float64),
                                    to_voc_boxes(records.boxes[sel]))
    return out


def voc_ground_truth(dataset_name: str, root: str, set_name: str,
                     year: Optional[str] = "2007") -> Tuple[List[str], Dict[str, str]]:
    """``(class_names, {image_id: xml path})`` of a VOC or custom image set, without touching any image.

    Used to score results files (``--results_dir``). ``root`` is the VOCdevkit folder (or the VOC<year>
    folder itself) for VOC, the dataset folder (with labels.txt) for custom.
    """
    key = dataset_name.strip().lower()
    check_dir(root, "dataset root", "give the folder that holds the dataset")
    if key == "voc":
        folder = root if os.path.isdir(os.path.join(root, "Annotations")) else os.path.join(root, f"VOC{year}")
        check_dir(folder, f"VOC{year} folder", f"the VOCdevkit root {root} needs a VOC{year}/ folder "
                                               "(or choose another year)")
        names = list(VOC_CLASSES)
    elif key == "custom":
        folder = root
        names = read_labels(root)
    else:
        raise ValueError(f"devkit results files exist for VOC or custom datasets, not {dataset_name} "
                         "(COCO results are scored from the results JSON)")
    ann_dir = os.path.join(folder, "Annotations")
    check_dir(ann_dir, "Annotations folder", "a VOC-layout dataset needs Annotations/<id>.xml files")
    ids = read_split(os.path.join(folder, "ImageSets", "Main", f"{set_name}.txt"))
    seen: Dict[str, str] = {}
    for i in ids:
        seen.setdefault(i, os.path.join(ann_dir, f"{i}.xml"))
    return names, seen


def coco_json_path(root: str, set_name: str) -> str:
    return os.path.join(root, "annotations", f"instances_{set_name}.json")


def _coco_scores(coco: Any, records: DetectionRecords, class_names: Sequence[str],
                 results_path: Optional[str]) -> Dict[str, Any]:
    ids = np.asarray(records.image_ids, dtype=object)[records.image_index]
    results = detections_to_coco(coco, class_names, list(ids), records.boxes, records.scores, records.labels)
    if results_path:
        write_coco_results(results_path, results)
    stats = coco_evaluate(coco, results, per_class_names=class_names)
    if results_path:
        stats["results_file"] = results_path
    return stats


def evaluate_model(predictor: Any, dataset: Any, batch_size: int = 8, num_workers: int = 0,
                   metric: str = "voc07", *, set_name: str = "test", save_folder: Optional[str] = None,
                   coco: Optional[bool] = None, coco_gt: Optional[Any] = None, progress: bool = False,
                   max_images: Optional[int] = None) -> Dict[str, Any]:
    """Detect on every image of ``dataset`` and score the detections.

    Args:
        predictor: a :class:`utils.inference.predictor.Predictor` (``class_names``, ``size``, ``device``, ``predict_batch``).
        dataset: a VOC / custom / COCO dataset of :mod:`data` (``image_id(i)``, ``annotation_file(i)``,
            ``pull_image(i)``, ``class_names``; COCO ones also ``coco``).
        metric: ``voc07`` (11-point, the VOC2007-test metric) or ``area``.
        save_folder: when given, write ``comp4_det_<set>_<class>.txt`` there and score *those files* (so the
            numbers equal what the devkit / ``--results_dir`` gives on them); COCO results JSON as well.
        coco: also compute COCO AP for a VOC-layout dataset (needs ``coco_gt``, a pycocotools COCO of the
            same images). COCO datasets always get COCO AP and no VOC AP (they have no XML annotations).
    Returns:
        ``{"metric", "mAP", "ap": {class: AP}, "npos", "num_detections", "pr": {class: (rec, prec)},
        "num_images", "images_per_second", "seconds", "coco": {...} (when computed), "results_files": [...]}``.
        For COCO datasets ``metric`` is ``"coco"``, ``mAP`` is AP@[.5:.95] and ``ap`` holds COCOeval's
        per-class AP.
    """
    records = collect_detections(predictor, dataset, batch_size, num_workers, progress, max_images)
    names = list(dataset.class_names)
    is_coco = getattr(dataset, "coco", None) is not None  # COCODetection: no XML, pycocotools ground truth
    out: Dict[str, Any] = {"num_images": records.num_images, "images_per_second": records.images_per_second,
                           "seconds": records.seconds, "num_detections_total": int(len(records.scores))}
    if is_coco:
        path = os.path.join(save_folder, f"coco_results_{set_name}.json") if save_folder else None
        stats = _coco_scores(dataset.coco, records, names, path)
        out.update({"metric": "coco", "mAP": stats["AP"], "ap": stats.pop("per_class", {}), "coco": stats})
        if path:
            out["results_files"] = [path]
        return out
    annotations = load_annotations({records.image_ids[i]: dataset.annotation_file(i)
                                    for i in range(records.num_images)})
    dets = voc_class_detections(records, names)
    if save_folder:
        out["results_files"] = write_voc_results(save_folder, set_name, names, dets)
        dets = read_voc_results(save_folder, set_name, names)
    out.update(evaluate(dets, annotations, names, metric=metric))
    if coco and coco_gt is not None:
        path = os.path.join(save_folder, f"coco_results_{set_name}.json") if save_folder else None
        out["coco"] = _coco_scores(coco_gt, records, names, path)
        out["coco"].pop("per_class", None)
        if path:
            out["results_files"].append(path)
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None  # JSON has no NaN
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


def json_summary(result: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """The machine-readable summary of eval.py's ``--json`` (NaN → null)."""
    keys = ("metric", "mAP", "ap", "num_images", "images_per_second", "seconds", "npos", "num_detections", "coco",
            "results_files")
    summary = {k: result[k] for k in keys if k in result}
    summary.update(extra)
    return _clean(summary)


def plot_pr_curves(result: Dict[str, Any], folder: str) -> List[str]:
    """One precision-recall PNG per class (``pr_<class>.png``) from an ``evaluate`` result. Needs matplotlib."""
    import matplotlib  # optional, heavy: deferred to the call
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, (rec, prec) in result.get("pr", {}).items():
        ap = result["ap"][name]
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        if len(rec):
            # the envelope the AP is computed on, and the raw curve underneath
            env = np.maximum.accumulate(np.asarray(prec)[::-1])[::-1]
            ax.plot(rec, prec, color="0.7", lw=0.8, label="precision")
            ax.plot(rec, env, color="C0", lw=1.5, label="envelope")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{name}: AP {ap:.4f} ({result['metric']})" if np.isfinite(ap) else f"{name}: no positives")
        ax.grid(alpha=0.3)
        if len(rec):
            ax.legend(loc="lower left")
        path = os.path.join(folder, f"pr_{name}.png")
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _read_coco_results(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        raise UserError(f"COCO results file missing: {path} — evaluate a model to write it, or score the folder "
                        "holding it")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            results = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed COCO results JSON: {path} ({exc}) — regenerate it with eval.py") from None
    if not isinstance(results, list) or not all(isinstance(r, dict) and {"image_id", "category_id", "bbox", "score"}
                                                <= r.keys() for r in results):
        raise UserError(f"malformed COCO results JSON: {path} — expected a list of "
                        "{image_id, category_id, bbox, score} objects")
    return results


def score_results(results_dir: str, dataset_name: str, root: str, set_name: str = "test",
                  year: Optional[str] = "2007", metric: str = "voc07", coco: bool = False) -> Dict[str, Any]:
    """Score saved results files, no model involved (``eval.py --results_dir``).

    VOC / custom: ``comp4_det_<set>_<class>.txt`` against the XML of the image set (plus, with ``coco``, the
    ``coco_results_<set>.json`` against ``<root>/annotations/instances_<set>.json``).
    COCO: ``coco_results_<set>.json`` against ``<root>/annotations/instances_<set>.json``.
    Returns the same dict as :func:`evaluate_model` (``images_per_second`` None).
    """
    if not os.path.isdir(results_dir):
        raise UserError(f"results folder not found: {results_dir} — give the folder the evaluation wrote its "
                        "comp4_det_<set>_<class>.txt files to")
    coco_results = os.path.join(results_dir, f"coco_results_{set_name}.json")
    if dataset_name.strip().lower() == "coco":
        check_dir(root, "dataset root", "give the COCO folder (holding annotations/)")
        gt = load_coco_gt(coco_json_path(root, set_name))
        names = [c["name"] for c in sorted(gt.dataset["categories"], key=lambda c: c["id"])]
        stats = coco_evaluate(gt, _read_coco_results(coco_results), per_class_names=names)
        return {"metric": "coco", "mAP": stats["AP"], "ap": stats.pop("per_class"), "coco": stats,
                "num_images": len(gt.imgs), "images_per_second": None}
    names, xmls = voc_ground_truth(dataset_name, root, set_name, year)
    dets = read_voc_results(results_dir, set_name, names)
    out: Dict[str, Any] = dict(evaluate(dets, load_annotations(xmls), names, metric=metric))
    out["images_per_second"] = None
    if coco:
        gt = load_coco_gt(coco_json_path(root, set_name))
        stats = coco_evaluate(gt, _read_coco_results(coco_results))
        out["coco"] = stats
    return out
