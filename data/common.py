"""What every detection dataset here shares: image loading, target assembly and the ssd.pytorch item API.

Coordinates: a dataset keeps, per image, boxes in **pixels** ``[n, 4]`` ``(xmin, ymin, xmax, ymax)``
(VOC: the 1-based XML values minus 1, ssd.pytorch's convention; COCO: ``x, y, x + w, y + h``), integer
labels ``[n]`` (0-based over ``class_names``, no background) and difficult flags ``[n]``.
``pull_item`` turns them into the relative target ``float32 [n, 5]`` = ``(xmin, ymin, xmax, ymax, label)``
by dividing by the decoded image's width / height.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.utils.data as tud

from utils.errors import UserError

# image file extensions accepted in JPEGImages/ (custom datasets); VOC itself uses .jpg
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class ImageRecord:
    """One image's parsed annotation (pixel boxes, see module docstring)."""

    image_id: str
    image_path: str
    annotation_file: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def select(self, keep_difficult: bool) -> Tuple[np.ndarray, np.ndarray]:
        """``(boxes [m, 4], labels [m])`` without the difficult objects unless ``keep_difficult``."""
        if keep_difficult or not self.difficult.any():
            return self.boxes, self.labels
        keep = ~self.difficult
        return self.boxes[keep], self.labels[keep]


def read_image_rgb(path: str) -> np.ndarray:
    """Decode ``path`` with OpenCV and return it as **RGB** uint8 ``H x W x 3``.

    Grey and alpha images are converted to 3 channels. Raises UserError naming the file when it is missing
    or cannot be decoded (never a bare traceback inside a DataLoader worker).
    """
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path} — restore the file or remove its id from the split file")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise UserError(f"image cannot be decoded (corrupt or not an image): {path} — "
                        "replace the file or remove its id from the split file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str) -> Tuple[int, int]:
    """``(width, height)`` of an image file (decodes it; used only when an annotation lacks its size)."""
    img = read_image_rgb(path)
    return int(img.shape[1]), int(img.shape[0])


def empty_target() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


class DetectionDataset(tud.Dataset):
    """Base class: subclasses fill ``self.records`` (one ``ImageRecord`` per item) and ``class_names``.

    Item API (ssd.pytorch's, plus explicit accessors):

    * ``__getitem__(i) -> (image float32 tensor [3, S, S], target float32 ndarray [n, 5])``
    * ``pull_item(i) -> (image, target, height, width)`` (height/width of the decoded image)
    * ``pull_image(i) -> RGB uint8 H x W x 3`` — note: **RGB**, where ssd.pytorch returned BGR
    * ``pull_anno(i) -> (image_id, [[xmin, ymin, xmax, ymax, label], ...])`` in pixels
    * ``image_id(i)``, ``annotation_file(i)``, ``image_path(i)``, ``record(i)`` (all objects incl. difficult)

    ``transform(image_rgb, boxes_rel [n, 4], labels [n]) -> (image HxWx3, boxes, labels)``.
    With ``transform=None`` the decoded image is returned as a float32 CHW tensor at its own size.
    """

    name: str = "detection"

    def __init__(self, transform: Optional[Callable] = None, keep_difficult: bool = False) -> None:
        self.transform = transform
        self.keep_difficult = keep_difficult
        self.records: List[ImageRecord] = []
        self.class_names: List[str] = []

    # -- accessors ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> ImageRecord:
        return self.records[index]

    def image_id(self, index: int) -> str:
        return self.records[index].image_id

    def image_path(self, index: int) -> str:
        return self.records[index].image_path

    def annotation_file(self, index: int) -> str:
        return self.records[index].annotation_file

    @property
    def num_classes(self) -> int:
        """Number of model classes including background."""
        return len(self.class_names) + 1

    # -- items ----------------------------------------------------------------------------------------
    def pull_image(self, index: int) -> np.ndarray:
        """The image as RGB uint8 ``H x W x 3`` (ssd.pytorch returned BGR here)."""
        return read_image_rgb(self.records[index].image_path)

    def pull_anno(self, index: int) -> Tuple[str, List[List[float]]]:
        """``(image_id, [[xmin, ymin, xmax, ymax, label], ...])`` in pixels (difficult per keep_difficult)."""
        rec = self.records[index]
        boxes, labels = rec.select(self.keep_difficult)
        return rec.image_id, [[*map(float, b), int(l)] for b, l in zip(boxes, labels)]

    def pull_tensor(self, index: int) -> torch.Tensor:
        """The raw RGB image as a float tensor ``[1, H, W, 3]`` (ssd.pytorch API)."""
        return torch.from_numpy(self.pull_image(index).astype(np.float32)).unsqueeze_(0)

    def target(self, index: int, width: int, height: int) -> np.ndarray:
        """Relative target ``float32 [n, 5]`` for an image decoded at ``width x height``.

        Boxes are clipped to the image; boxes that end up with zero area (e.g. when the annotation's size
        disagrees with the file) are dropped with a warning naming the annotation file.
        """
        rec = self.records[index]
        boxes, labels = rec.select(self.keep_difficult)
        if len(boxes) == 0:
            return empty_target()
        rel = boxes / np.array([width, height, width, height], np.float32)
        np.clip(rel, 0.0, 1.0, out=rel)
        ok = (rel[:, 2] > rel[:, 0]) & (rel[:, 3] > rel[:, 1])
        if not ok.all():
            warnings.warn(f"dropping {int((~ok).sum())} zero-area box(es) of {rec.annotation_file} "
                          f"(image is {width}x{height}) — fix the annotation", stacklevel=2)
            rel, labels = rel[ok], labels[ok]
        return np.concatenate([rel, labels[:, None].astype(np.float32)], axis=1).astype(np.float32)

    def pull_item(self, index: int) -> Tuple[torch.Tensor, np.ndarray, int, int]:
        img = self.pull_image(index)
        height, width = img.shape[:2]
        target = self.target(index, width, height)
        if self.transform is not None:
            img, boxes, labels = self.transform(img, target[:, :4], target[:, 4])
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            labels = np.asarray(labels, np.float32).reshape(-1, 1)
            target = np.concatenate([boxes, labels], axis=1) if len(boxes) else empty_target()
        tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1).contiguous()
        return tensor, target, height, width

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, np.ndarray]:
        img, target, _, _ = self.pull_item(index)
        return img, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
                f"classes={len(self.class_names)}, keep_difficult={self.keep_difficult})")


def list_image_files(folder: str) -> dict:
    """Map file stem -> file name for the images in ``folder`` (one listing instead of a stat per image).

    When several files share a stem, ``.jpg`` wins, then the order of IMAGE_EXTENSIONS.
    """
    found: dict = {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            r = rank.get(ext.lower())
            if r is None:
                continue
            prev = found.get(stem)
            if prev is None or r < rank[os.path.splitext(prev)[1].lower()]:
                found[stem] = entry.name
    return found


def unwrap_worker_error(exc: BaseException) -> Optional[UserError]:
    """Recover the one-line UserError from an exception re-raised by a DataLoader worker.

    PyTorch re-raises worker exceptions with the worker's traceback text as the message; this returns a
    UserError carrying only the original message (or None when ``exc`` is not one).
    """
    if not isinstance(exc, UserError):
        return None
    text = str(exc.message if hasattr(exc, "message") else exc)
    marker = "UserError: "
    pos = text.rfind(marker)
    if pos < 0:
        return exc
    return UserError(text[pos + len(marker):].strip().splitlines()[0], getattr(exc, "code", 1))


def check_dir(path: str, what: str, hint: str) -> None:
    if not os.path.isdir(path):
        raise UserError(f"{what} not found: {path} — {hint}")


def check_file(path: str, what: str, hint: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path} — {hint}")


def read_split(path: str) -> List[str]:
    """Image ids of an ``ImageSets/Main/<split>.txt`` file (first token per line; blank lines skipped)."""
    check_file(path, "split file", "create it with one image id per line (file name without extension)")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            ids = [line.split()[0] for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"split file cannot be read: {path} ({exc}) — it must be a UTF-8 text file "
                        "with one image id per line") from None
    if not ids:
        raise UserError(f"split is empty: {path} — list at least one image id (one per line)")
    return ids


def dedupe(ids: Sequence[str]) -> List[str]:
    seen = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
