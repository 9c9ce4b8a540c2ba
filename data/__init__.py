"""Datasets, batching and worker seeding (ssd.pytorch's ``data`` package API, nothing run at import).

``build_dataset('VOC' | 'COCO' | 'custom', root, split, transform)`` is what the CLIs call. ``MEANS`` and
``BaseTransform`` are re-exported because ssd.pytorch users import them from ``data``.
"""
from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data.coco import COCO_CLASSES, COCO_LABEL_MAP, COCO_LABEL_MAP_INV, COCODetection
from data.common import DetectionDataset, ImageRecord, read_image_rgb, unwrap_worker_error
from data.config import MEANS
from data.custom import CustomDetection, read_labels
from data.transforms import BaseTransform
from data.voc0712 import VOC_CLASSES, VOCAnnotationTransform, VOCDetection
from utils.errors import UserError

__all__ = [
    "VOC_CLASSES", "VOCDetection", "VOCAnnotationTransform", "COCODetection", "COCO_CLASSES",
    "COCO_LABEL_MAP", "COCO_LABEL_MAP_INV", "CustomDetection", "read_labels", "DetectionDataset",
    "ImageRecord", "read_image_rgb", "detection_collate", "worker_init_fn", "build_dataset", "MEANS",
    "BaseTransform", "unwrap_worker_error", "DATASET_NAMES",
]


DATASET_NAMES: Tuple[str, ...] = ("VOC", "COCO", "custom")


def detection_collate(batch: Sequence[Tuple[torch.Tensor, np.ndarray]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Batch ``(image [3, S, S], target [n_i, 5])`` items -> ``(images [B, 3, S, S], [targets float32 [n_i, 5]])``.

    Targets have different lengths (possibly 0), so they stay a list.
    """
    images = torch.stack([sample[0] for sample in batch], 0)
    targets = [torch.as_tensor(np.asarray(sample[1], np.float32).reshape(-1, 5)) for sample in batch]
    return images, targets


def worker_init_fn(seed: int) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` seeding NumPy's global state, ``random`` and torch in each worker.

    The worker's seed mixes ``seed``, the worker id and ``torch.initial_seed()`` — the latter is drawn from
    the DataLoader's generator each epoch, so seed that generator from ``--seed`` too
    (``DataLoader(..., generator=torch.Generator().manual_seed(seed))``) and augmentation is reproducible yet
    different per worker and per epoch. (OpenCV's thread count is deliberately not touched here: calling
    ``cv2.setNumThreads`` in a forked worker can deadlock when the parent had used OpenCV's thread pool.)
    With ``num_workers=0`` nothing is called: seed the main process (``np.random.seed``) yourself.
    """
    base = int(seed)

    def _init(worker_id: int) -> None:
        ss = np.random.SeedSequence([base & 0xFFFFFFFF, int(worker_id), torch.initial_seed() & 0xFFFFFFFFFFFF])
        state = ss.generate_state(2)
        np.random.seed(int(state[0]))
        random.seed(int(state[1]))
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    return _init


def _voc_image_sets(split: Optional[str], year: Optional[str]) -> Optional[List[Tuple[str, str]]]:
    if split is None or (split == "trainval" and year is None):
        return None  # ssd.pytorch's 07+12 trainval
    years = [y.strip() for y in str(year or "2007").replace("+", ",").split(",") if y.strip()]
    return [(y, split) for y in years]


def build_dataset(name: str, root: str, split: Optional[str] = None, transform: Optional[Callable] = None,
                  keep_difficult: bool = False, year: Optional[str] = None) -> DetectionDataset:
    """The dataset the ``--dataset`` / ``--dataset_root`` flags describe.

    * ``VOC``: ``split=None`` (or ``'trainval'`` without ``year``) -> VOC2007 + VOC2012 trainval (a missing
      year is skipped with a warning); otherwise ``[(year or '2007', split)]``; ``year`` may list several
      years (``'2007+2012'``).
    * ``COCO``: ``split`` defaults to ``'trainval35k'``.
    * ``custom``: a VOC-layout folder with labels.txt; ``split`` defaults to ``'train'``.
    """
    key = str(name).strip().lower()
    if key == "voc":
        return VOCDetection(root, _voc_image_sets(split, year), transform=transform, keep_difficult=keep_difficult)
    if key == "coco":
        return COCODetection(root, split or "trainval35k", transform=transform)
    if key == "custom":
        return CustomDetection(root, split or "train", transform=transform, keep_difficult=keep_difficult)
    raise UserError(f"unknown dataset {name!r} — use one of {', '.join(DATASET_NAMES)}", code=2)
