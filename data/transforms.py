"""SSD training augmentation and THE preprocessing used for training, evaluation and video.

Conventions (see docs/DESIGN.md):

* Images are **RGB**, ``H x W x 3``. The network sees ``resize(size x size) -> float32 -> minus MEANS``
  with ``MEANS = (123, 117, 104)`` in (R, G, B) order and no scaling by 1/255; this is what the released
  ssd.pytorch weights were trained on.
* Boxes handed to a transform are **relative** ``[n, 4]`` ``(xmin, ymin, xmax, ymax)`` in ``[0, 1]`` with
  ``labels [n]``; every transform is called as ``transform(image, boxes, labels) -> (image, boxes, labels)``
  (ssd.pytorch's signature) and returns relative boxes again. ``n`` may be 0.

Preprocessing for inference lives here too, in one implementation: ``preprocess`` (one image),
``BaseTransform`` (ssd.pytorch's class around it) and ``preprocess_batch`` (frames -> ``[B, 3, S, S]``), which
is ``normalize_uint8_batch(resize_batch_uint8(frames))``: frames are resized as uint8 into one NHWC array and
converted / mean-subtracted in one vectorised pass. The video path may instead move the uint8 batch to the
GPU (4x fewer bytes) and call ``normalize_uint8_batch`` there; the numbers are identical.

Randomness: every random op draws from ``rng`` — a ``numpy.random.RandomState`` — or, when ``rng`` is None,
from NumPy's global legacy state (``np.random.*``), which ``data.worker_init_fn`` seeds per DataLoader worker.
(A RandomState stored in the transform would be copied identically into every worker, so the global state
is the default.)

What differs from ssd.pytorch (deliberately):

* Works on RGB float images (photometric HSV conversion uses ``COLOR_RGB2HSV``) and NumPy >= 2 (the crop
  mode is drawn by index, not with ``np.random.choice`` on a ragged tuple).
* ``RandomSampleCrop`` enforces the minimum-IoU constraint (ssd.pytorch's test could never fire), has the
  paper's 0.5 mode, and follows the original Caffe SSD semantics: a patch is accepted when at least one
  ground-truth box whose centre lies inside it overlaps it with IoU >= the drawn minimum. An image without
  boxes accepts any patch.
* ``SSDAugmentation`` runs Expand, RandomSampleCrop and Resize fused: it never builds the up-to-16x larger
  zoom-out canvas; the final ``size x size`` patch is sampled straight from the image (see
  ``SSDAugmentation._resize_patch``). The random draws are those of the op-by-op chain
  (``SSDAugmentation.unfused()``) and so are the results, to interpolation rounding (checked by the tests);
  the mirror is applied after the resize, which is equivalent for cv2.INTER_LINEAR and cheaper.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Callable, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from data.config import MEANS

Boxes = np.ndarray
Labels = np.ndarray
Sample = Tuple[np.ndarray, Boxes, Labels]

# Modes of RandomSampleCrop: None = keep the whole image, a float = minimum IoU, "any" = unconstrained.
CROP_MODES: Tuple[object, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, "any")

__all__ = [
    "CROP_MODES", "Compose", "ConvertFromInts", "ToAbsoluteCoords", "ToPercentCoords", "PhotometricDistort",
    "Expand", "RandomSampleCrop", "RandomMirror", "Resize", "SubtractMeans", "SSDAugmentation",
    "BaseTransform", "preprocess", "resize_batch_uint8", "normalize_uint8_batch", "preprocess_batch",
    "jaccard_numpy",
]


def _rs(rng: Optional[np.random.RandomState]):
    """The random source: ``rng`` or NumPy's global legacy state (same method names)."""
    return np.random if rng is None else rng


def _coin(rs) -> bool:
    return bool(rs.randint(2))


def _as_boxes(boxes: Optional[np.ndarray]) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4), np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _as_labels(labels: Optional[np.ndarray], n: int) -> np.ndarray:
    if labels is None:
        return np.zeros((n,), np.float32)
    return np.asarray(labels).reshape(-1)


def jaccard_numpy(boxes: np.ndarray, rect: Sequence[float]) -> np.ndarray:
    """IoU of each of ``boxes [n, 4]`` (xyxy) with one ``rect`` (xyxy); returns ``[n]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.minimum(boxes[:, 2], rect[2]) - np.maximum(boxes[:, 0], rect[0])
    iy = np.minimum(boxes[:, 3], rect[3]) - np.maximum(boxes[:, 1], rect[1])
    inter = np.maximum(ix, 0.0) * np.maximum(iy, 0.0)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area_b + float((rect[2] - rect[0]) * (rect[3] - rect[1])) - inter
    return inter / np.maximum(union, 1e-12)


# ----------------------------------------------------------------------------------------------------
# Individual ops (ssd.pytorch names). Boxes are absolute pixels between ToAbsoluteCoords/ToPercentCoords.
# ----------------------------------------------------------------------------------------------------
class Compose:
    """Chain transforms ``t(image, boxes, labels)``."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, boxes=None, labels=None) -> Sample:
        for t in self.transforms:
            image, boxes, labels = t(image, boxes, labels)
        return image, boxes, labels


class ConvertFromInts:
    """Any image -> a float32 copy (the ops below modify it in place); boxes -> float32 ``[n, 4]``."""

    def __call__(self, image, boxes=None, labels=None) -> Sample:
        boxes = _as_boxes(boxes)
        return np.array(image, dtype=np.float32, copy=True), boxes.copy(), _as_labels(labels, len(boxes))


class ToAbsoluteCoords:
    def __call__(self, image, boxes, labels) -> Sample:
        h, w = image.shape[:2]
        return image, boxes * np.array([w, h, w, h], np.float32), labels


class ToPercentCoords:
    def __call__(self, image, boxes, labels) -> Sample:
        h, w = image.shape[:2]
        return image, boxes / np.array([w, h, w, h], np.float32), labels


class PhotometricDistort:
    """The paper's photometric distortion on a float32 RGB image (in place, values not clipped).

    Brightness +-32 (p .5); then contrast x[0.5, 1.5] either before or after the HSV steps (order p .5,
    the op itself p .5); saturation x[0.5, 1.5] (p .5) and hue +-18 degrees (p .5, wrapped to [0, 360));
    finally a random channel permutation (p .5). The HSV round trip is skipped when neither HSV op fires.
    """

    PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, brightness: float = 32.0, contrast: Tuple[float, float] = (0.5, 1.5),
                 saturation: Tuple[float, float] = (0.5, 1.5), hue: float = 18.0,
                 rng: Optional[np.random.RandomState] = None) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.rng = rng

    def __call__(self, image, boxes=None, labels=None) -> Sample:
        rs = _rs(self.rng)
        if _coin(rs):
            image += np.float32(rs.uniform(-self.brightness, self.brightness))
        contrast_first = _coin(rs)
        if contrast_first:
            self._contrast(image, rs)
        do_sat = _coin(rs)
        sat = rs.uniform(*self.saturation) if do_sat else 1.0
        do_hue = _coin(rs)
        hue = rs.uniform(-self.hue, self.hue) if do_hue else 0.0
        if do_sat or do_hue:
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # float32: H in [0, 360), S in [0, 1], V = max
            if do_sat:
                hsv[:, :, 1] *= np.float32(sat)
            if do_hue:
                h = hsv[:, :, 0]
                h += np.float32(hue)
                h[h >= 360.0] -= 360.0
                h[h < 0.0] += 360.0
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first:
            self._contrast(image, rs)
        if _coin(rs):
            perm = self.PERMS[rs.randint(len(self.PERMS))]
            if perm != (0, 1, 2):
                image = np.ascontiguousarray(image[:, :, perm])
        return image, boxes, labels

    def _contrast(self, image: np.ndarray, rs) -> None:
        if _coin(rs):
            image *= np.float32(rs.uniform(*self.contrast))


class Expand:
    """Zoom out (p .5): place the image at a random spot of a ``ratio`` x larger canvas filled with ``mean``.

    ``ratio ~ U(1, max_ratio)``; boxes are absolute pixels and are shifted with the image.
    """

    def __init__(self, mean: Sequence[float] = MEANS, max_ratio: float = 4.0,
                 rng: Optional[np.random.RandomState] = None) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.max_ratio = max_ratio
        self.rng = rng

    def sample(self, height: int, width: int) -> Optional[Tuple[int, int, int, int]]:
        """Draw the zoom-out: ``(canvas_h, canvas_w, top, left)`` or None (no expansion)."""
        rs = _rs(self.rng)
        if _coin(rs):
            return None
        ratio = rs.uniform(1.0, self.max_ratio)
        left = rs.uniform(0.0, width * ratio - width)
        top = rs.uniform(0.0, height * ratio - height)
        return int(height * ratio), int(width * ratio), int(top), int(left)

    def __call__(self, image, boxes, labels) -> Sample:
        h, w = image.shape[:2]
        drawn = self.sample(h, w)
        if drawn is None:
            return image, boxes, labels
        ch, cw, top, left = drawn
        canvas = np.empty((ch, cw, image.shape[2]), dtype=image.dtype)
        canvas[:] = np.asarray(self.mean, dtype=image.dtype)
        canvas[top:top + h, left:left + w] = image
        boxes = boxes + np.array([left, top, left, top], np.float32)
        return canvas, boxes, labels


class RandomSampleCrop:
    """The paper's random patch sampling, with the minimum-IoU constraint enforced.

    A mode is drawn uniformly from ``CROP_MODES``: None keeps the whole image; ``"any"`` accepts any patch;
    a float ``m`` needs a kept box with IoU >= m. Up to ``trials`` patches are tried per mode: sides
    ``U(min_scale, 1)`` of the image, aspect ``h / w`` in ``[0.5, 2]``. Boxes whose centres fall strictly
    inside the patch are kept and clipped to it; a patch that keeps no box is rejected (unless there were no
    boxes at all). When every trial fails a new mode is drawn.
    """

    def __init__(self, modes: Sequence[object] = CROP_MODES, trials: int = 50, min_scale: float = 0.3,
                 rng: Optional[np.random.RandomState] = None, max_modes: int = 1000) -> None:
        self.modes = tuple(modes)
        self.trials = trials
        self.min_scale = min_scale
        self.max_modes = max_modes
        self.rng = rng

    def sample(self, height: int, width: int,
               boxes: np.ndarray) -> Optional[Tuple[Tuple[int, int, int, int], np.ndarray]]:
        """Draw a patch for an image of ``height x width`` with absolute ``boxes [n, 4]``.

        Returns ``((left, top, right, bottom), keep_mask [n])`` or None for "keep the whole image".
        """
        rs = _rs(self.rng)
        n = len(boxes)
        if n:
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        for _ in range(self.max_modes):  # bounded; a None mode (p 1/7) ends it long before
            mode = self.modes[rs.randint(len(self.modes))]
            if mode is None:
                return None
            min_iou = None if mode == "any" else float(mode)
            for _ in range(self.trials):
                w = rs.uniform(self.min_scale * width, width)
                h = rs.uniform(self.min_scale * height, height)
                if h / w < 0.5 or h / w > 2.0:
                    continue
                left = rs.uniform(0.0, width - w)
                top = rs.uniform(0.0, height - h)
                rect = (int(left), int(top), int(left + w), int(top + h))
                if rect[2] <= rect[0] or rect[3] <= rect[1]:
                    continue
                if n == 0:
                    return rect, np.zeros((0,), bool)
                keep = ((rect[0] < centres[:, 0]) & (rect[1] < centres[:, 1])
                        & (centres[:, 0] < rect[2]) & (centres[:, 1] < rect[3]))
                if not keep.any():
                    continue
                if min_iou is not None and jaccard_numpy(boxes[keep], rect).max() < min_iou:
                    continue
                return rect, keep
        return None

    @staticmethod
    def crop_boxes(boxes: np.ndarray, labels: np.ndarray, rect: Sequence[int],
                   keep: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Keep ``boxes[keep]``, clip them to ``rect`` and express them in the patch's pixel frame."""
        b = boxes[keep].copy()
        b[:, :2] = np.maximum(b[:, :2], rect[:2]) - np.asarray(rect[:2], np.float32)
        b[:, 2:] = np.minimum(b[:, 2:], rect[2:]) - np.asarray(rect[:2], np.float32)
        return b, labels[keep]

    def __call__(self, image, boxes, labels) -> Sample:
        h, w = image.shape[:2]
        drawn = self.sample(h, w, boxes)
        if drawn is None:
            return image, boxes, labels
        rect, keep = drawn
        image = image[rect[1]:rect[3], rect[0]:rect[2]]
        boxes, labels = self.crop_boxes(boxes, labels, rect, keep)
        return image, boxes, labels


class RandomMirror:
    """Horizontal flip with p .5 (absolute boxes)."""

    def __init__(self, rng: Optional[np.random.RandomState] = None) -> None:
        self.rng = rng

    def __call__(self, image, boxes, labels) -> Sample:
        if _coin(_rs(self.rng)):
            w = image.shape[1]
            image = image[:, ::-1]
            boxes = boxes.copy()
            boxes[:, 0::2] = w - boxes[:, 2::-2]
        return image, boxes, labels


class Resize:
    """Resize to ``size x size`` with cv2.INTER_LINEAR (aspect not kept, as in the paper)."""

    def __init__(self, size: int = 300) -> None:
        self.size = size

    def __call__(self, image, boxes=None, labels=None) -> Sample:
        image = cv2.resize(np.ascontiguousarray(image), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return image, boxes, labels


class SubtractMeans:
    def __init__(self, mean: Sequence[float] = MEANS) -> None:
        self.mean = np.array(mean, dtype=np.float32)

    def __call__(self, image, boxes=None, labels=None) -> Sample:
        image = image.astype(np.float32, copy=False)
        image -= self.mean
        return image, boxes, labels


# ----------------------------------------------------------------------------------------------------
# The training transform
# ----------------------------------------------------------------------------------------------------
class SSDAugmentation:
    """Training transform: ``(RGB image HxWx3, rel boxes [n,4], labels [n]) -> (float32 SxSx3, boxes, labels)``.

    ``mode``:
      * ``'ssd'`` (default) — the paper's chain: photometric distortion, Expand (zoom-out up to 4x, mean fill),
        RandomSampleCrop (min-IoU modes), horizontal mirror, resize to ``size``, subtract ``mean``.
      * ``'flip'`` — mirror + resize + mean only (cheap; the CPU quickstart uses it).
      * ``'none'`` — resize + mean.

    In 'flip' and 'none' a uint8 image is resized as uint8, so the numbers equal ``BaseTransform``'s (up to
    the mirror); the 'ssd' chain resizes the distorted float image.

    Output boxes are relative xyxy clipped to [0, 1]; labels are those of the kept boxes. ``rng`` is a
    ``numpy.random.RandomState`` (None: NumPy's global state, seeded per worker by ``data.worker_init_fn``).
    """

    MODES = ("ssd", "flip", "none")

    def __init__(self, size: int = 300, mean: Sequence[float] = MEANS, mode: str = "ssd",
                 rng: Optional[np.random.RandomState] = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"SSDAugmentation mode must be one of {self.MODES}, got {mode!r}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.mode = mode
        self.rng = rng
        self._mean32 = np.array(self.mean, np.float32)
        self.photometric = PhotometricDistort(rng=rng)
        self.expand = Expand(self.mean, rng=rng)
        self.crop = RandomSampleCrop(rng=rng)

    def unfused(self) -> Compose:
        """The same chain as ssd.pytorch's ``Compose`` of ops (slower; used to check the fused path)."""
        if self.mode == "ssd":
            ops = [ConvertFromInts(), ToAbsoluteCoords(), self.photometric, self.expand, self.crop,
                   RandomMirror(self.rng), ToPercentCoords(), Resize(self.size), SubtractMeans(self.mean)]
        elif self.mode == "flip":
            ops = [ConvertFromInts(), ToAbsoluteCoords(), RandomMirror(self.rng), ToPercentCoords(),
                   Resize(self.size), SubtractMeans(self.mean)]
        else:
            ops = [ConvertFromInts(), Resize(self.size), SubtractMeans(self.mean)]
        return Compose(ops + [_ClipBoxes()])

    def __call__(self, image: np.ndarray, boxes: Optional[np.ndarray] = None,
                 labels: Optional[np.ndarray] = None) -> Sample:
        boxes = _as_boxes(boxes)
        labels = _as_labels(labels, len(boxes))
        h, w = image.shape[:2]
        rs = _rs(self.rng)
        if self.mode == "ssd":
            img = np.array(image, dtype=np.float32, copy=True)
            img, _, _ = self.photometric(img)
            abs_boxes = boxes * np.array([w, h, w, h], np.float32)
            # Expand + crop on a virtual canvas; only the final patch is rendered.
            expand = self.expand.sample(h, w)
            ch, cw, top, left = expand if expand is not None else (h, w, 0, 0)
            abs_boxes = abs_boxes + np.array([left, top, left, top], np.float32)
            drawn = self.crop.sample(ch, cw, abs_boxes)
            if drawn is None:
                rect = (0, 0, cw, ch)
            else:
                rect, keep = drawn
                abs_boxes, labels = RandomSampleCrop.crop_boxes(abs_boxes, labels, rect, keep)
            mirror = _coin(rs)
            out = self._resize_patch(img, top, left, rect)
            pw, ph = rect[2] - rect[0], rect[3] - rect[1]
        else:
            pw, ph = w, h
            abs_boxes = boxes * np.array([w, h, w, h], np.float32)
            mirror = self.mode == "flip" and _coin(rs)
            out = cv2.resize(np.ascontiguousarray(image), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        out = out.astype(np.float32, copy=False)
        if mirror:
            out = cv2.flip(out, 1)
            abs_boxes = abs_boxes.copy()
            abs_boxes[:, 0::2] = pw - abs_boxes[:, 2::-2]
        out -= self._mean32
        rel = abs_boxes / np.array([pw, ph, pw, ph], np.float32)
        np.clip(rel, 0.0, 1.0, out=rel)
        return out, rel.astype(np.float32, copy=False), labels

    def _resize_patch(self, img: np.ndarray, top: int, left: int, rect: Sequence[int]) -> np.ndarray:
        """``resize(canvas[rect])`` where the canvas holds ``img`` at ``(top, left)`` over a mean-filled field.

        * patch inside the image: cv2.resize of a view (no copy);
        * patch at least ``size`` on both sides (a pure downscale): one cv2.warpAffine with the resize's own
          pixel mapping ``src = (dst + 0.5) * scale - 0.5`` and the mean as constant border — every sample
          falls inside the patch, so this equals resizing the canvas crop, without building the canvas;
        * otherwise (an upscale: the patch is small) the patch is built with cv2.copyMakeBorder and resized,
          so that the patch edge is replicated exactly as cv2.resize does.
        """
        h, w = img.shape[:2]
        x0, y0, x1, y1 = rect
        size = self.size
        if x0 >= left and y0 >= top and x1 <= left + w and y1 <= top + h:
            return cv2.resize(img[y0 - top:y1 - top, x0 - left:x1 - left], (size, size),
                              interpolation=cv2.INTER_LINEAR)
        pw, ph = x1 - x0, y1 - y0
        if pw >= size and ph >= size:
            sx, sy = pw / size, ph / size
            m = np.array([[sx, 0.0, 0.5 * sx - 0.5 + x0 - left], [0.0, sy, 0.5 * sy - 0.5 + y0 - top]])
            return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=self.mean)
        ix0, iy0 = max(x0, left), max(y0, top)
        ix1, iy1 = min(x1, left + w), min(y1, top + h)
        if ix1 > ix0 and iy1 > iy0:
            core = img[iy0 - top:iy1 - top, ix0 - left:ix1 - left]
            patch = cv2.copyMakeBorder(core, iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1, cv2.BORDER_CONSTANT,
                                       value=self.mean)
        else:  # the patch lies in the fill only (possible when there are no boxes)
            patch = np.empty((ph, pw, img.shape[2]), np.float32)
            patch[:] = self._mean32
        return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)


class _ClipBoxes:
    def __call__(self, image, boxes, labels) -> Sample:
        return image, np.clip(boxes, 0.0, 1.0).astype(np.float32), labels


# ----------------------------------------------------------------------------------------------------
# Inference preprocessing: the one implementation (train-time 'none' mode gives the same numbers)
# ----------------------------------------------------------------------------------------------------
def _check_rgb_uint8(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image H x W x 3, got {getattr(image, 'shape', type(image))}")


def preprocess(image_rgb: np.ndarray, size: int = 300, mean: Sequence[float] = MEANS) -> np.ndarray:
    """RGB image ``H x W x 3`` (uint8) -> float32 ``size x size x 3`` (HWC), resized then minus ``mean``.

    Resizing happens on the uint8 image with cv2.INTER_LINEAR, exactly like ssd.pytorch's BaseTransform.
    """
    _check_rgb_uint8(image_rgb)
    x = cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x -= np.asarray(mean, dtype=np.float32)
    return x


class BaseTransform:
    """Inference transform (ssd.pytorch API): ``(image, boxes, labels) -> (preprocess(image), boxes, labels)``."""

    def __init__(self, size: int = 300, mean: Sequence[float] = MEANS) -> None:
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)

    def __call__(self, image: np.ndarray, boxes=None, labels=None) -> Sample:
        return preprocess(image, self.size, self.mean), boxes, labels


def resize_batch_uint8(images: Sequence[np.ndarray], size: int,
                       out: Optional[np.ndarray] = None) -> np.ndarray:
    """Resize RGB uint8 frames to ``size x size`` into one ``uint8 [B, size, size, 3]`` array (NHWC).

    Each frame is resized with cv2.INTER_LINEAR straight into its slot of ``out`` (allocated if None), so
    the only float work left is one vectorised pass in ``normalize_uint8_batch``. Keeping the batch in uint8
    also makes the host-to-device copy 4x smaller when normalising on the accelerator.
    """
    b = len(images)
    if out is None or out.shape != (b, size, size, 3) or out.dtype != np.uint8:
        out = np.empty((b, size, size, 3), np.uint8)
    for im in images:
        _check_rgb_uint8(im)
        if im.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {im.dtype}")

    def one(i: int) -> None:
        im = images[i]
        if im.shape[0] == size and im.shape[1] == size:
            out[i] = im
        else:
            cv2.resize(im, (size, size), dst=out[i], interpolation=cv2.INTER_LINEAR)

    # cv2 releases the GIL: large batches are resized by a thread pool (on a GPU the CPU resize of batch 64
    # would otherwise take longer than the network)
    if b >= _PARALLEL_RESIZE_MIN and _resize_pool() is not None:
        list(_resize_pool().map(one, range(b)))
    else:
        for i in range(b):
            one(i)
    return out


_PARALLEL_RESIZE_MIN = 16


@functools.lru_cache(maxsize=1)
def _resize_pool() -> Optional[concurrent.futures.ThreadPoolExecutor]:
    """A process-wide pool for :func:`resize_batch_uint8`, created on first use (None on <= 2 CPUs)."""
    workers = min(8, (os.cpu_count() or 1))
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="resize") if workers > 2 else None


def normalize_uint8_batch(x: torch.Tensor, mean: Sequence[float] = MEANS) -> torch.Tensor:
    """``uint8 [B, S, S, 3]`` RGB (NHWC, any device) -> ``float32 [B, 3, S, S]`` contiguous, minus ``mean``.

    Runs on ``x.device``: move the uint8 batch to the GPU first to normalise there.
    """
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a [B, S, S, 3] batch, got {tuple(x.shape)}")
    y = torch.empty((x.shape[0], 3, x.shape[1], x.shape[2]), dtype=torch.float32, device=x.device)
    y.copy_(x.permute(0, 3, 1, 2))
    for c, m in enumerate(mean):  # Python scalars: no host-to-device copy (that would sync per batch on CUDA)
        y[:, c].sub_(float(m))
    return y


def preprocess_batch(images: Sequence[np.ndarray], size: int = 300,
                     mean: Sequence[float] = MEANS) -> torch.Tensor:
    """RGB uint8 frames (any sizes) -> ``float32 [B, 3, size, size]`` CPU tensor; equals stacking ``preprocess``.

    For device-side normalisation use ``normalize_uint8_batch(torch.from_numpy(resize_batch_uint8(...)).to(dev))``.
    """
    if len(images) == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.float32)
    return normalize_uint8_batch(torch.from_numpy(resize_batch_uint8(images, size)), mean)
