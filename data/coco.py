"""MS COCO (and any COCO-JSON detection set) on pycocotools: ``COCODetection``, the 80 classes, the id maps.

Layout: ``<root>/annotations/instances_<image_set>.json`` and ``<root>/images/<image_set>/`` (override with
``annotation_file=`` / ``image_dir=``; when ``images/<image_set>`` is absent but ``<root>/JPEGImages`` exists,
as in the synthetic dataset, that folder is used).

The 80 class names and the COCO category id <-> contiguous label map are defined here, in code (ssd.pytorch
read ``coco_labels.txt`` from the user's home at import time). A JSON whose categories are not the COCO ones
(e.g. the synthetic set) gets its classes from its own ``categories`` sorted by id.

Targets: crowd annotations (``iscrowd=1``) are ignored; ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``
pixels on a copy (pycocotools' cached dicts are never mutated), clipped to the image; boxes without area
are dropped (one summary warning naming the JSON file). All images of the JSON are items, including those
without (non-crowd) objects (their target is empty; ``skip_empty=True`` restores ssd.pytorch's choice).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from data.common import DetectionDataset, ImageRecord, check_dir, check_file

from utils.errors import UserError

COCO_CLASSES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# COCO category ids 1..90 with 10 unused (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS: Tuple[int, ...] = tuple(i for i in range(1, 91)
                                           if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
# category id -> contiguous 0-based label (the model's class is label + 1), and back
COCO_LABEL_MAP: Dict[int, int] = {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS)}
COCO_LABEL_MAP_INV: Dict[int, int] = {i: cid for cid, i in COCO_LABEL_MAP.items()}

DEFAULT_IMAGE_SET = "trainval35k"


def _malformed(path: str, what: str) -> UserError:
    return UserError(f"malformed COCO JSON: {path} ({what}) — fix or regenerate the annotation file")


def load_coco_json(path: str) -> Dict[str, Any]:
    """Read and structurally check a COCO detection JSON (UserError naming the file on any problem)."""
    check_file(path, "COCO annotation file",
               "expected <root>/annotations/instances_<set>.json (or pass the JSON path explicitly)")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise _malformed(path, f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise _malformed(path, "not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"COCO annotation file cannot be read: {path} ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise _malformed(path, "the top level must be an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _malformed(path, f"missing list {key!r}")
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= img.keys():
            raise _malformed(path, "every image needs id, file_name, width and height")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise _malformed(path, "every category needs id and name")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise _malformed(path, "every annotation needs image_id, category_id and bbox")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise _malformed(path, f"annotation {ann.get('id')!r} needs a numeric bbox [x, y, w, h]")
    return data


def category_maps(categories: List[Dict[str, Any]]) -> Tuple[List[str], Dict[int, int]]:
    """``(class_names, {category id: label})``: the fixed COCO maps when the JSON has COCO's categories,
    otherwise the JSON's categories in id order."""
    by_id = {int(c["id"]): str(c["name"]) for c in categories}
    coco_names = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES))
    if by_id and all(coco_names.get(cid) == name for cid, name in by_id.items()):
        return list(COCO_CLASSES), dict(COCO_LABEL_MAP)
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {cid: i for i, cid in enumerate(ids)}


class COCOAnnotationTransform:
    """ssd.pytorch-style target transform: list of COCO annotation dicts -> ``[[x0, y0, x1, y1, label], ...]``
    relative to ``width``/``height``; crowd and zero-area boxes skipped; the dicts are not modified."""

    def __init__(self, label_map: Optional[Dict[int, int]] = None) -> None:
        self.label_map = label_map if label_map is not None else COCO_LABEL_MAP

    def __call__(self, target: List[Dict[str, Any]], width: float, height: float) -> List[List[float]]:
        out = []
        for obj in target:
            if obj.get("iscrowd", 0) or "bbox" not in obj:
                continue
            x, y, w, h = (float(v) for v in obj["bbox"])
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                continue
            out.append([x0 / width, y0 / height, x1 / width, y1 / height, self.label_map[int(obj["category_id"])]])
        return out


class COCODetection(DetectionDataset):
    """COCO detection dataset (see the module docstring and ``data.common.DetectionDataset``).

    ``ids`` are the COCO image ids (ints), ``coco`` the pycocotools ``COCO`` object (for evaluation),
    ``label_map`` / ``inverse_label_map`` map category id <-> 0-based label. ``image_id(i)`` is ``str(id)``;
    ``annotation_file(i)`` the JSON path.
    """

    def __init__(self, root: str, image_set: str = DEFAULT_IMAGE_SET, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, dataset_name: str = "MS COCO",
                 image_dir: Optional[str] = None, annotation_file: Optional[str] = None,
                 skip_empty: bool = False, keep_difficult: bool = False) -> None:
        # keep_difficult is accepted for a uniform signature; COCO has no difficult flag (crowd is ignored)
        super().__init__(transform, keep_difficult)
        from pycocotools.coco import COCO  # imported lazily: only COCO users need it

        self.root = os.fspath(root)
        self.name = dataset_name
        self.image_set = image_set
        self.target_transform = target_transform
        check_dir(self.root, "dataset root", "pass --dataset_root pointing at the COCO folder "
                                             "(holding annotations/ and images/)")
        self.json_path = annotation_file or os.path.join(self.root, "annotations", f"instances_{image_set}.json")
        if image_dir is None:
            image_dir = os.path.join(self.root, "images", image_set)
            alt = os.path.join(self.root, "JPEGImages")
            if not os.path.isdir(image_dir) and os.path.isdir(alt):
                image_dir = alt
        self.image_dir = image_dir
        data = load_coco_json(self.json_path)
        check_dir(self.image_dir, "COCO image folder", f"put the images of {image_set} there or pass image_dir")
        self.coco = COCO()
        self.coco.dataset = data
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco.createIndex()
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(self.json_path, f"pycocotools could not index it: {exc!r}") from None
        self.class_names, self.label_map = category_maps(data["categories"])
        self.inverse_label_map = {v: k for k, v in self.label_map.items()}
        self._build_records(data, skip_empty)
        self.ids: List[int] = [int(r.image_id) for r in self.records]

    def _build_records(self, data: Dict[str, Any], skip_empty: bool) -> None:
        path = self.json_path
        listing = set(os.listdir(self.image_dir))
        dropped = 0
        for img in sorted(data["images"], key=lambda im: im["id"]):
            img_id = img["id"]
            width, height = int(img["width"]), int(img["height"])
            anns = self.coco.imgToAnns.get(img_id, [])
            boxes, labels = [], []
            for ann in anns:
                if ann.get("iscrowd", 0):
                    continue
                cid = int(ann["category_id"])
                if cid not in self.label_map:
                    raise _malformed(path, f"annotation {ann.get('id')!r} uses category_id {cid} "
                                           "that is not in 'categories'")
                x, y, w, h = (float(v) for v in ann["bbox"])  # read, never modify the cached dict
                box = [min(max(x, 0.0), width), min(max(y, 0.0), height),
                       min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]
                if box[2] <= box[0] or box[3] <= box[1]:
                    dropped += 1
                    continue
                boxes.append(box)
                labels.append(self.label_map[cid])
            if skip_empty and not boxes:
                continue
            fname = str(img["file_name"])
            image_path = os.path.join(self.image_dir, fname)
            if fname not in listing and not os.path.isfile(image_path):
                raise UserError(f"image listed in {path} but missing: {image_path} — add the image, fix "
                                "image_dir, or remove it from the JSON")
            self.records.append(ImageRecord(
                str(img_id), image_path, path, width, height,
                np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                np.zeros(len(labels), bool)))
        if dropped:
            warnings.warn(f"dropping {dropped} zero-area box(es) in {path}", stacklevel=3)

    def coco_id(self, index: int) -> int:
        """The COCO image id (int) of item ``index``."""
        return self.ids[index]

    def target(self, index: int, width: int, height: int) -> np.ndarray:
        if self.target_transform is None:
            return super().target(index, width, height)
        anns = copy.deepcopy(self.coco.imgToAnns.get(self.ids[index], []))
        return np.asarray(self.target_transform(anns, width, height), np.float32).reshape(-1, 5)
