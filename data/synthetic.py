"""A synthetic detection dataset and video of shapes: the project's offline default data.

``python -m data.synthetic --out DIR --num N --seed S`` writes the custom VOC layout (see ``data.custom``)::

    DIR/JPEGImages/<id>.jpg                     ids 000001, 000002, ...
    DIR/Annotations/<id>.xml                    VOC XML: <size>, <object><name>/<truncated>/<difficult>/<bndbox>
    DIR/ImageSets/Main/{train,val,test,trainval}.txt
    DIR/labels.txt                              circle, square, triangle, star, ring
    DIR/annotations/instances_{train,val,test,trainval}.json   the same boxes as COCO JSON
    DIR/synthetic.json                          the arguments and counts

Content: five classes that differ in form (circle/ellipse, square/rectangle, triangle, five-pointed star,
ring = annulus showing the background through its hole) with random colours, outlines, sizes from 12 px to
~90 % of the frame (mostly 24-200 px), aspect 0.6-1.6, any rotation, overlap, occlusion and truncation at
the border, on varied backgrounds (gradients, smooth colour fields, stripes, checkers, blocks, sensor noise,
clutter: lines, arcs, crosses, L-shapes, bean-shaped blobs and text, none of them one of the classes; photos
from ``--backgrounds DIR`` when given — no package installed here ships photographs offline). Image sizes
are drawn in 300-480 x 240-400.

Boxes are the *visible* extent of each object (VOC convention). An object whose visible box has a side
under 16 px or that is more than 60 % occluded by later objects is ``difficult=1``; in the COCO JSON
difficult objects are ``iscrowd=1`` so that both VOC and COCO evaluation ignore them. Objects with almost
nothing visible are not annotated. VOC ``<bndbox>`` values are 1-based pixel indices (inclusive); the COCO
``bbox`` is ``[xmin-1, ymin-1, xmax-xmin, ymax-ymin]`` so both loaders give identical targets.

Splits: train 80 %, val 5 %, test 15 % by default (``--val-frac`` / ``--test-frac``); every split gets at least
one image when ``N >= 3``. ``trainval`` = train + val.

Determinism: each image uses its own generator seeded with ``(seed, index)``, so the same arguments give the
same bytes (for the same OpenCV build), and any image can be regenerated alone.

``--video PATH`` writes a video (H.264 / yuv420p through imageio-ffmpeg, optional AAC sine-tone audio) of the
same shapes moving, scaling, rotating and entering / leaving over a slowly panning background, plus its
per-frame ground truth as ``PATH.json``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from utils.errors import UserError, run_cli
from utils.io import atomic_write

SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
DIFFICULT_MIN_SIDE = 16      # px: a visible box side below this is difficult
DIFFICULT_OCCLUSION = 0.6    # fraction of the object hidden by later objects above which it is difficult
MIN_VISIBLE_PIXELS = 12      # below this an object is not annotated at all
DEFAULT_VAL_FRAC = 0.05
DEFAULT_TEST_FRAC = 0.15
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi")

_SHIFT = 3                   # sub-pixel bits for cv2.fillPoly
_ONE = float(1 << _SHIFT)
_NOISE_BANK_SHAPE = (560, 720, 3)


# ----------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------
def _normalise(pts: np.ndarray) -> np.ndarray:
    """Scale/shift points so their bounding box is ``[-0.5, 0.5]^2``."""
    lo, hi = pts.min(0), pts.max(0)
    return (pts - (lo + hi) / 2) / (hi - lo)


def _ellipse(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return 0.5 * np.stack([np.cos(t), np.sin(t)], 1)


_SQUARE = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
_TRIANGLE = _normalise(np.array([[np.cos(a), np.sin(a)] for a in np.radians([-90.0, 30.0, 150.0])]))


def _star(inner: float) -> np.ndarray:
    a = np.radians(-90.0 + 36.0 * np.arange(10))
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return _normalise(np.stack([r * np.cos(a), r * np.sin(a)], 1))


@dataclass
class Shape:
    """One object: class ``label``, centre, unrotated size ``(sx, sy)`` px, rotation (deg), colour (RGB).

    ``param`` is the star's inner radius ratio or the ring's hole ratio.
    """

    label: int
    cx: float
    cy: float
    sx: float
    sy: float
    angle: float
    color: Tuple[int, int, int]
    param: float = 0.5
    outline: Optional[Tuple[Tuple[int, int, int], int]] = None

    def contours(self) -> List[np.ndarray]:
        """Outline polygon(s) in float pixels; a ring returns ``[outer, hole]``."""
        name = SHAPE_CLASSES[self.label]
        n = int(np.clip(max(self.sx, self.sy) / 3.0, 16, 72))
        if name == "circle":
            unit = [_ellipse(n)]
        elif name == "square":
            unit = [_SQUARE]
        elif name == "triangle":
            unit = [_TRIANGLE]
        elif name == "star":
            unit = [_star(self.param)]
        else:  # ring
            e = _ellipse(n)
            unit = [e, e * self.param]
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        m = np.array([[self.sx * c, self.sx * s], [-self.sy * s, self.sy * c]])
        return [u @ m + (self.cx, self.cy) for u in unit]


@dataclass
class ObjectAnnotation:
    """A drawn object: visible box ``(x0, y0, x1, y1)`` 0-based inclusive pixels, flags, occlusion fraction."""

    label: int
    box: Tuple[int, int, int, int]
    difficult: bool
    truncated: bool
    occlusion: float
    track: int = -1

    @property
    def name(self) -> str:
        return SHAPE_CLASSES[self.label]


def _to_fixed(polys: Sequence[np.ndarray]) -> List[np.ndarray]:
    return [np.round(p * _ONE).astype(np.int32) for p in polys]


def render_shapes(img: np.ndarray, shapes: Sequence[Shape], rng: np.random.Generator,
                  foreground_clutter: int = 0) -> List[Optional[ObjectAnnotation]]:
    """Draw ``shapes`` (in order, later ones occlude earlier ones) on the RGB uint8 ``img`` in place.

    Returns one annotation per shape (None when nearly nothing of it is visible). ``foreground_clutter``
    thin lines are drawn over everything and count as occluders.
    """
    h, w = img.shape[:2]
    lab = np.zeros((h, w), np.uint8)
    geo = []
    for k, sh in enumerate(shapes):
        polys = sh.contours()
        fixed = _to_fixed(polys)
        cv2.fillPoly(img, fixed, sh.color, lineType=cv2.LINE_AA, shift=_SHIFT)
        if sh.outline is not None:
            cv2.polylines(img, fixed, True, sh.outline[0], sh.outline[1], cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(lab, fixed, k + 1, lineType=cv2.LINE_8, shift=_SHIFT)
        geo.append((polys, fixed))
    for _ in range(foreground_clutter):
        p0 = rng.uniform((0, 0), (w, h))
        p1 = p0 + rng.uniform(-0.5, 0.5, 2) * (w, h)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        th = int(rng.integers(1, 4))
        a, b = tuple(int(v) for v in p0), tuple(int(v) for v in p1)
        cv2.line(img, a, b, col, th, cv2.LINE_AA)
        cv2.line(lab, a, b, 0, th)
    counts = np.bincount(lab.ravel(), minlength=len(shapes) + 1)
    out: List[Optional[ObjectAnnotation]] = []
    for k, (polys, fixed) in enumerate(geo):
        outer = polys[0]
        ax0, ay0 = (int(v) for v in np.floor(outer.min(0)))
        ax1, ay1 = (int(v) for v in np.ceil(outer.max(0)))
        x0, y0, x1, y1 = max(ax0, 0), max(ay0, 0), min(ax1, w - 1), min(ay1, h - 1)
        visible = int(counts[k + 1])
        if x1 < x0 or y1 < y0 or visible < MIN_VISIBLE_PIXELS:
            out.append(None)
            continue
        # own in-image area: rasterise the shape alone in its window
        own = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        off = (-int(x0 * _ONE), -int(y0 * _ONE))
        cv2.fillPoly(own, fixed, 1, lineType=cv2.LINE_8, shift=_SHIFT, offset=off)
        own_area = max(int(np.count_nonzero(own)), visible)
        win = lab[y0:y1 + 1, x0:x1 + 1] == (k + 1)
        rows = np.flatnonzero(win.any(1))
        cols = np.flatnonzero(win.any(0))
        box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1]))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            out.append(None)
            continue
        occlusion = 1.0 - visible / own_area
        truncated = bool(ax0 < 0 or ay0 < 0 or ax1 > w - 1 or ay1 > h - 1)
        small = min(box[2] - box[0] + 1, box[3] - box[1] + 1) < DIFFICULT_MIN_SIDE
        out.append(ObjectAnnotation(shapes[k].label, box, bool(small or occlusion > DIFFICULT_OCCLUSION),
                                    truncated, round(float(occlusion), 4)))
    return out


# ----------------------------------------------------------------------------------------------------
# Backgrounds and clutter
# ----------------------------------------------------------------------------------------------------
def make_noise_bank(seed: int) -> np.ndarray:
    """A uint8 tile of Gaussian noise centred on 128; images take random windows of it (fast, seeded)."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    return np.clip(rng.normal(128.0, 24.0, _NOISE_BANK_SHAPE), 0, 255).astype(np.uint8)


def _color(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def make_background(rng: np.random.Generator, width: int, height: int, noise_bank: Optional[np.ndarray] = None,
                    photos: Sequence[np.ndarray] = ()) -> np.ndarray:
    """An RGB uint8 ``height x width x 3`` background (no objects), see the module docstring."""
    kinds = 6 if photos else 5
    kind = int(rng.integers(kinds))
    if kind == 0:    # bilinear gradient between four corner colours
        bg = cv2.resize(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8), (width, height),
                        interpolation=cv2.INTER_LINEAR)
    elif kind == 1:  # smooth colour field
        gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 9))
        bg = cv2.resize(rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    elif kind in (2, 3):  # stripes / checker of two colours
        c0 = rng.integers(0, 256, 3)
        c1 = np.clip(c0 + rng.integers(-90, 91, 3), 0, 255)
        period = float(rng.uniform(6, 48))
        if kind == 2:  # stripe index = floor(2 * (x cos a + y sin a) / period), kept positive
            a = rng.uniform(0, np.pi)
            xs = np.arange(width, dtype=np.float32) * np.float32(2 * math.cos(a) / period)
            ys = (np.arange(height, dtype=np.float32) * np.float32(2 * math.sin(a) / period)
                  + np.float32(2 * (width + height) / period))
            idx = (ys[:, None] + xs[None, :]).astype(np.int32)
        else:
            idx = (np.arange(height) // period).astype(np.int32)[:, None] + \
                (np.arange(width) // period).astype(np.int32)[None, :]
        bg = _two_tone((idx & 1).astype(np.uint8), c0, c1)
    elif kind == 4:  # blocky texture
        gh, gw = int(rng.integers(6, 30)), int(rng.integers(6, 40))
        base = rng.integers(0, 256, 3)
        grid = np.clip(base + rng.integers(-50, 51, (gh, gw, 3)), 0, 255).astype(np.uint8)
        bg = cv2.resize(grid, (width, height), interpolation=cv2.INTER_NEAREST)
    else:            # a random window of a user photo
        photo = photos[int(rng.integers(len(photos)))]
        ph, pw = photo.shape[:2]
        s = rng.uniform(0.4, 1.0)
        cw = max(8, min(pw, int(round(min(pw, ph * width / height) * s))))
        ch = max(8, min(ph, int(round(cw * height / width))))
        x = int(rng.integers(0, pw - cw + 1))
        y = int(rng.integers(0, ph - ch + 1))
        bg = cv2.resize(photo[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_AREA)
    if noise_bank is not None and rng.random() < 0.6:
        add_noise(bg, rng, noise_bank, float(rng.uniform(0.15, 0.9)))
    return np.ascontiguousarray(bg)


def _two_tone(index: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """``index`` (uint8 0/1, H x W) -> RGB image of colour ``c0`` / ``c1`` (a LUT: much faster than masking)."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[0, 0], lut[1, 0] = c0, c1
    return cv2.LUT(cv2.merge([index, index, index]), lut)


def add_noise(img: np.ndarray, rng: np.random.Generator, noise_bank: np.ndarray, strength: float) -> None:
    """Add a random window of the noise bank, scaled by ``strength``, to ``img`` in place (saturating)."""
    h, w = img.shape[:2]
    bh, bw = noise_bank.shape[:2]
    if h > bh or w > bw:
        noise = cv2.resize(noise_bank, (max(w, bw), max(h, bh)), interpolation=cv2.INTER_NEAREST)
    else:
        noise = noise_bank
    y = int(rng.integers(0, noise.shape[0] - h + 1))
    x = int(rng.integers(0, noise.shape[1] - w + 1))
    cv2.addWeighted(img, 1.0, noise[y:y + h, x:x + w], strength, -128.0 * strength, dst=img)


_TEXT = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def draw_clutter(img: np.ndarray, rng: np.random.Generator, count: int, max_size: float) -> None:
    """Distractors that are not one of the classes: lines, polylines, arcs, crosses, L-shapes, beans, text."""
    h, w = img.shape[:2]
    for _ in range(count):
        kind = int(rng.integers(7))
        col = _color(rng)
        cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        size = float(rng.uniform(8, max_size))
        th = int(rng.integers(1, 5))
        if kind == 0:
            a = rng.uniform(0, 2 * np.pi)
            p1 = (int(cx + size * math.cos(a)), int(cy + size * math.sin(a)))
            cv2.line(img, (int(cx), int(cy)), p1, col, th, cv2.LINE_AA)
        elif kind == 1:
            steps = rng.normal(0, size / 3, (int(rng.integers(3, 8)), 2)).cumsum(0) + (cx, cy)
            cv2.polylines(img, [steps.astype(np.int32)], False, col, th, cv2.LINE_AA)
        elif kind == 2:
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, (int(cx), int(cy)), (int(size / 2) + 1, int(size * rng.uniform(0.2, 0.6)) + 1),
                        float(rng.uniform(0, 180)), start, start + float(rng.uniform(60, 250)), col, th + 1,
                        cv2.LINE_AA)
        elif kind in (3, 4):
            a = rng.uniform(0, np.pi)
            d = np.array([math.cos(a), math.sin(a)]) * size / 2
            e = np.array([-d[1], d[0]])
            c = np.array([cx, cy])
            if kind == 3:   # cross
                segs = [(c - d, c + d), (c - e, c + e)]
            else:           # L-shape
                segs = [(c, c + d), (c, c + e)]
            for p, q in segs:
                cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), col, th + 2, cv2.LINE_AA)
        elif kind == 5:     # bean: radius modulated by the 2nd and 3rd harmonics (never star- or disc-like)
            t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
            r = size / 2 * (1 + rng.uniform(0.3, 0.45) * np.cos(2 * t + rng.uniform(0, 6.3))
                            + rng.uniform(0.15, 0.3) * np.cos(3 * t + rng.uniform(0, 6.3)))
            pts = np.stack([cx + r * np.cos(t) * rng.uniform(0.5, 1.0), cy + r * np.sin(t)], 1)
            cv2.fillPoly(img, [np.round(pts * _ONE).astype(np.int32)], col, cv2.LINE_AA, _SHIFT)
        else:
            txt = "".join(_TEXT[int(i)] for i in rng.integers(0, len(_TEXT), int(rng.integers(1, 5))))
            cv2.putText(img, txt, (int(cx), int(cy)), cv2.FONT_HERSHEY_SIMPLEX, size / 40.0, col,
                        max(1, th - 1), cv2.LINE_AA)


# ----------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------
def _contrasting_color(rng: np.random.Generator, bg: np.ndarray, x: float, y: float) -> Tuple[int, int, int]:
    h, w = bg.shape[:2]
    ref = bg[int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))].astype(int)
    col = _color(rng)
    for _ in range(4):
        if np.abs(np.asarray(col) - ref).sum() >= 100:
            break
        col = _color(rng)
    return col


def random_shape(rng: np.random.Generator, bg: np.ndarray, size: float, label: Optional[int] = None,
                 anywhere: bool = False, near: Optional[Shape] = None) -> Shape:
    """A random object of longest side ``size`` px placed in ``bg`` (fully inside unless ``anywhere``)."""
    h, w = bg.shape[:2]
    label = int(rng.integers(len(SHAPE_CLASSES))) if label is None else label
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    sx, sy = (size, size * aspect) if aspect < 1 else (size / aspect, size)
    angle = float(rng.uniform(0, 360))
    param = float(rng.uniform(0.38, 0.5)) if SHAPE_CLASSES[label] == "star" else float(rng.uniform(0.45, 0.7))
    sh = Shape(label, 0.0, 0.0, sx, sy, angle, (0, 0, 0), param)
    ext = sh.contours()[0]
    half = (ext.max(0) - ext.min(0)) / 2
    if near is not None:
        cx = near.cx + rng.uniform(-0.5, 0.5) * max(near.sx, near.sy)
        cy = near.cy + rng.uniform(-0.5, 0.5) * max(near.sx, near.sy)
    elif anywhere:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    else:
        cx = rng.uniform(half[0], max(half[0], w - half[0]))
        cy = rng.uniform(half[1], max(half[1], h - half[1]))
    sh.cx, sh.cy = float(cx), float(cy)
    sh.color = _contrasting_color(rng, bg, sh.cx, sh.cy)
    if rng.random() < 0.4:
        sh.outline = (tuple(int(c * 0.5) for c in sh.color), int(rng.integers(1, 4)))  # type: ignore[assignment]
    return sh


def _object_size(rng: np.random.Generator, max_size: float, allow_large: bool) -> float:
    u = rng.random()
    mid_hi = min(200.0, max_size)
    if u < 0.1:
        return float(rng.uniform(12, 24))
    if u < 0.88 or not allow_large or max_size <= 200:
        return float(math.exp(rng.uniform(math.log(24), math.log(mid_hi))))
    return float(math.exp(rng.uniform(math.log(200), math.log(max_size))))


def render_image(rng: np.random.Generator, width: int, height: int, noise_bank: Optional[np.ndarray] = None,
                 photos: Sequence[np.ndarray] = ()) -> Tuple[np.ndarray, List[ObjectAnnotation]]:
    """One synthetic RGB uint8 image and its annotations."""
    img = make_background(rng, width, height, noise_bank, photos)
    if rng.random() < 0.75:
        draw_clutter(img, rng, int(rng.integers(1, 13)), min(100.0, 0.3 * min(width, height)))
    n = 0 if rng.random() < 0.03 else min(8, 1 + int(rng.exponential(2.2)))
    max_size = 0.9 * min(width, height)
    shapes: List[Shape] = []
    large = False
    for _ in range(n):
        size = _object_size(rng, max_size, allow_large=not large)
        large = large or size > 200
        near = shapes[int(rng.integers(len(shapes)))] if shapes and rng.random() < 0.15 else None
        shapes.append(random_shape(rng, img, size, anywhere=rng.random() < 0.1, near=near))
    fg = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
    anns = [a for a in render_shapes(img, shapes, rng, fg) if a is not None]
    if rng.random() < 0.25:
        cv2.GaussianBlur(img, (3, 3), 0, dst=img)
    return img, anns


# ----------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------
def voc_xml(image_id: str, filename: str, width: int, height: int, anns: Sequence[ObjectAnnotation]) -> str:
    """VOC annotation XML text (1-based inclusive pixel boxes)."""
    objs = "".join(
        "\t<object>\n"
        f"\t\t<name>{a.name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>{int(a.truncated)}</truncated>\n\t\t<difficult>{int(a.difficult)}</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{a.box[0] + 1}</xmin>\n\t\t\t<ymin>{a.box[1] + 1}</ymin>\n"
        f"\t\t\t<xmax>{a.box[2] + 1}</xmax>\n\t\t\t<ymax>{a.box[3] + 1}</ymax>\n\t\t</bndbox>\n"
        "\t</object>\n" for a in anns)
    return ("<annotation>\n\t<folder>JPEGImages</folder>\n"
            f"\t<filename>{filename}</filename>\n"
            "\t<source>\n\t\t<database>synthetic shapes</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            "\t<segmented>0</segmented>\n"
            f"{objs}</annotation>\n")


def coco_dataset(entries: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """COCO detection JSON for ``entries`` = ``{'id', 'file_name', 'width', 'height', 'anns'}``."""
    images, annotations = [], []
    for e in entries:
        images.append({"id": e["id"], "file_name": e["file_name"], "width": e["width"], "height": e["height"]})
        for a in e["anns"]:
            x0, y0, x1, y1 = a.box
            bw, bh = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": e["id"], "category_id": a.label + 1,
                                "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": int(a.difficult),
                                "segmentation": []})
    return {"info": {"description": "synthetic shapes"}, "licenses": [], "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]}


def split_ids(num: int, seed: int, val_frac: float, test_frac: float) -> Dict[str, List[int]]:
    """Indices per split (train / val / test), shuffled with ``seed`` and sorted within each split."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"split fractions val={val_frac}, test={test_frac} must be in [0, 1) and sum below 1",
                        code=2)
    perm = np.random.default_rng([int(seed), 0x5B11]).permutation(num)
    n_val, n_test = int(round(num * val_frac)), int(round(num * test_frac))
    if num >= 3:
        n_val = max(n_val, 1 if val_frac > 0 else 0)
        n_test = max(n_test, 1 if test_frac > 0 else 0)
    n_val = min(n_val, max(0, num - 1))
    n_test = min(n_test, max(0, num - 1 - n_val))
    val = sorted(perm[:n_val].tolist())
    test = sorted(perm[n_val:n_val + n_test].tolist())
    train = sorted(perm[n_val + n_test:].tolist())
    return {"train": train, "val": val, "test": test}


def load_photos(folder: Optional[str]) -> List[np.ndarray]:
    """RGB photos of ``folder`` (sorted by name, each downscaled to <= 800 px) for backgrounds."""
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise UserError(f"backgrounds folder not found: {folder} — pass a folder of photos", code=2)
    photos = []
    for name in sorted(os.listdir(folder)):
        img = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
        if img is None:
            continue
        s = 800.0 / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        photos.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if not photos:
        raise UserError(f"no readable images in backgrounds folder {folder} — add .jpg/.png photos", code=2)
    return photos


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _prepare_out(out: str) -> str:
    """Check ``out`` may be (re)written; return the temp folder to build into (renamed into place at the end)."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out exists and is not a folder: {out} — choose another path", code=2)
        if os.listdir(out) and not os.path.isfile(os.path.join(out, "synthetic.json")):
            raise UserError(f"--out folder is not empty and is not a synthetic dataset: {out} — "
                            "choose a new or empty folder", code=2)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary folder
        return tmp
    except OSError as exc:
        raise UserError(f"cannot write to {parent}: {exc.strerror} — choose a writable --out") from None


def _swap_into_place(tmp: str, out: str) -> None:
    out = os.path.abspath(out)
    old = None
    if os.path.exists(out):
        old = tmp + ".old"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_dataset(out: str, num: int, seed: int = 0, val_frac: float = DEFAULT_VAL_FRAC,
                     test_frac: float = DEFAULT_TEST_FRAC, backgrounds: Optional[str] = None,
                     size_range: Tuple[Tuple[int, int], Tuple[int, int]] = ((300, 480), (240, 400)),
                     progress: bool = False) -> Dict[str, Any]:
    """Write ``num`` images to ``out`` (see the module docstring); return a summary dict.

    ``size_range = ((min_w, max_w), (min_h, max_h))``. The folder is built beside ``out`` and renamed into
    place when complete; an existing ``out`` is replaced only if empty or an earlier synthetic dataset.
    """
    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}", code=2)
    (wmin, wmax), (hmin, hmax) = size_range
    if not (32 <= wmin <= wmax and 32 <= hmin <= hmax):
        raise UserError(f"image size range {size_range} is invalid (sides >= 32, min <= max)", code=2)
    splits = split_ids(num, seed, val_frac, test_frac)
    photos = load_photos(backgrounds)
    t0 = time.perf_counter()
    tmp = _prepare_out(out)
    pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
    try:
        for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main"), "annotations"):
            os.makedirs(os.path.join(tmp, sub))
        bank = make_noise_bank(seed)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
        pending: List[concurrent.futures.Future] = []
        entries: List[Dict[str, Any]] = []
        n_obj = n_diff = 0
        per_class = [0] * len(SHAPE_CLASSES)
        for i in range(num):
            rng = np.random.default_rng([int(seed), i])
            width = int(rng.integers(wmin, wmax + 1))
            height = int(rng.integers(hmin, hmax + 1))
            img, anns = render_image(rng, width, height, bank, photos)
            image_id = f"{i + 1:06d}"
            fname = image_id + ".jpg"
            quality = int(rng.integers(75, 96))
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
                raise RuntimeError("JPEG encoding failed")
            # file creation can be slow on a busy disk: write in background threads (content is fixed)
            pending.append(pool.submit(_write_bytes, os.path.join(tmp, "JPEGImages", fname), buf.tobytes()))
            pending.append(pool.submit(_write_bytes, os.path.join(tmp, "Annotations", image_id + ".xml"),
                                       voc_xml(image_id, fname, width, height, anns).encode("utf-8")))
            if len(pending) > 256:
                for fut in pending[:128]:
                    fut.result()
                del pending[:128]
            entries.append({"id": i + 1, "file_name": fname, "width": width, "height": height, "anns": anns})
            n_obj += len(anns)
            n_diff += sum(a.difficult for a in anns)
            for a in anns:
                per_class[a.label] += 1
            if progress and (i + 1) % 500 == 0:
                print(f"{i + 1}/{num} images", file=sys.stderr)
        for fut in pending:
            fut.result()
        pool.shutdown()
        splits = dict(splits, trainval=sorted(splits["train"] + splits["val"]))
        for name, idx in splits.items():
            with open(os.path.join(tmp, "ImageSets", "Main", f"{name}.txt"), "w") as fh:
                fh.write("".join(f"{i + 1:06d}\n" for i in idx))
            with open(os.path.join(tmp, "annotations", f"instances_{name}.json"), "w") as fh:
                json.dump(coco_dataset([entries[i] for i in idx]), fh, separators=(",", ":"))
        with open(os.path.join(tmp, "labels.txt"), "w") as fh:
            fh.write("".join(n + "\n" for n in SHAPE_CLASSES))
        summary: Dict[str, Any] = {
            "generator": "data.synthetic", "num_images": num, "seed": int(seed), "val_frac": val_frac,
            "test_frac": test_frac, "size_range": [list(size_range[0]), list(size_range[1])],
            "backgrounds": len(photos), "class_names": list(SHAPE_CLASSES), "num_objects": n_obj,
            "num_difficult": n_diff, "objects_per_class": dict(zip(SHAPE_CLASSES, per_class)),
            "splits": {k: len(v) for k, v in splits.items()},
        }
        with open(os.path.join(tmp, "synthetic.json"), "w") as fh:
            json.dump(summary, fh, indent=1, sort_keys=True)
        _swap_into_place(tmp, out)
    except BaseException as exc:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the dataset to {os.path.abspath(out)}: {exc.strerror or exc} — "
                            "check free space and permissions") from None
        raise
    seconds = time.perf_counter() - t0
    return dict(summary, out=os.path.abspath(out), seconds=seconds, images_per_s=num / max(seconds, 1e-9))


# ----------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Track:
    shape: Shape
    vx: float
    vy: float
    growth: float
    spin: float
    ident: int
    base: Tuple[float, float] = field(default=(0.0, 0.0))


def _spawn(rng: np.random.Generator, bg: np.ndarray, width: int, height: int, ident: int,
           entering: bool) -> _Track:
    size = float(math.exp(rng.uniform(math.log(24), math.log(max(25.0, 0.5 * min(width, height))))))
    sh = random_shape(rng, bg, size)
    speed = float(rng.uniform(0.5, 4.0))
    if entering:  # start just outside one edge, heading inwards
        edge = int(rng.integers(4))
        r = max(sh.sx, sh.sy) / 2
        if edge == 0:
            sh.cx, sh.cy, a = -r, float(rng.uniform(0, height)), rng.uniform(-0.6, 0.6)
        elif edge == 1:
            sh.cx, sh.cy, a = width + r, float(rng.uniform(0, height)), np.pi + rng.uniform(-0.6, 0.6)
        elif edge == 2:
            sh.cx, sh.cy, a = float(rng.uniform(0, width)), -r, np.pi / 2 + rng.uniform(-0.6, 0.6)
        else:
            sh.cx, sh.cy, a = float(rng.uniform(0, width)), height + r, -np.pi / 2 + rng.uniform(-0.6, 0.6)
    else:
        a = rng.uniform(0, 2 * np.pi)
    return _Track(sh, speed * math.cos(a), speed * math.sin(a), float(rng.uniform(-0.006, 0.006)),
                  float(rng.uniform(-2.0, 2.0)), ident, (sh.sx, sh.sy))


def _tone_wav(path: str, seconds: float, rate: int = 44100) -> None:
    """A 16-bit mono sine tone whose pitch steps every second (440, 554, 659 Hz, ...)."""
    n = max(1, int(round(seconds * rate)))
    t = np.arange(n) / rate
    freq = np.array([440.0, 554.37, 659.25])[(t.astype(int)) % 3]
    phase = 2 * np.pi * np.cumsum(freq) / rate
    samples = (0.25 * 32767 * np.sin(phase)).astype("<i2")
    with wave.open(path, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(samples.tobytes())


def generate_video(path: str, num_frames: int = 150, fps: float = 30.0, width: int = 640, height: int = 360,
                   seed: int = 0, audio: bool = False, max_objects: int = 6) -> Dict[str, Any]:
    """Write a synthetic video to ``path`` (atomically) and its ground truth to ``path + '.json'``.

    Frames are RGB ``height x width``; H.264 in yuv420p for even sizes, yuv444p when a side is odd (4:2:0
    needs even sides). With ``audio`` an AAC sine tone of the video's length is muxed in. The JSON holds
    ``frames[t] = [{"box": [x0, y0, x1, y1], "label", "name", "difficult", "track"}, ...]`` with 0-based
    inclusive pixel boxes (the datasets' ``pull_anno`` convention). Returns a summary dict.
    """
    import imageio_ffmpeg  # lazy: only the video path needs it

    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise UserError(f"unsupported video extension {ext or '(none)'!r} for {path} — use one of "
                        f"{', '.join(VIDEO_EXTENSIONS)}", code=2)
    if num_frames < 1:
        raise UserError(f"--frames must be at least 1, got {num_frames}", code=2)
    if width < 32 or height < 32:
        raise UserError(f"video size {width}x{height} is too small (sides >= 32)", code=2)
    if not fps > 0:
        raise UserError(f"--fps must be positive, got {fps}", code=2)
    rng = np.random.default_rng([int(seed), 0x7E0])
    bank = make_noise_bank(seed)
    pad = 64
    bg = make_background(rng, width + pad, height + pad, bank)
    draw_clutter(bg, rng, int(rng.integers(3, 12)), min(100.0, 0.3 * min(width, height)))
    pan = rng.uniform(-0.3, 0.3, 2)
    origin = np.array([pad / 2, pad / 2])
    tracks: List[_Track] = []
    next_id = 0
    for _ in range(int(rng.integers(2, min(4, max_objects) + 1))):
        tracks.append(_spawn(rng, bg[:height, :width], width, height, next_id, entering=False))
        next_id += 1
    frames_gt: List[List[Dict[str, Any]]] = []
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    gt_path = path + ".json"
    with atomic_write(path, suffix=ext) as tmp_video:
        wav = None
        if audio:
            fd, wav = tempfile.mkstemp(suffix=".wav", dir=os.path.dirname(os.path.abspath(path)))
            os.close(fd)
            _tone_wav(wav, num_frames / fps)
        try:
            writer = imageio_ffmpeg.write_frames(
                tmp_video, (width, height), fps=float(fps), codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out=pix_fmt, quality=None, macro_block_size=1, ffmpeg_log_level="error",
                output_params=["-crf", "20", "-preset", "veryfast", "-map_metadata", "-1", "-fflags", "+bitexact",
                               "-f", {".mkv": "matroska", ".mov": "mov", ".avi": "avi"}.get(ext, "mp4")],
                audio_path=wav, audio_codec="aac" if audio else None)
            writer.send(None)
            try:
                for t in range(num_frames):
                    o = np.clip(origin + pan * t, 0, pad).astype(int)
                    frame = bg[o[1]:o[1] + height, o[0]:o[0] + width].copy()
                    add_noise(frame, rng, bank, 0.15)
                    anns = render_shapes(frame, [tr.shape for tr in tracks], rng)
                    gt = []
                    for tr, a in zip(tracks, anns):
                        if a is not None:
                            gt.append({"box": list(a.box), "label": a.label, "name": a.name,
                                       "difficult": a.difficult, "track": tr.ident})
                    frames_gt.append(gt)
                    writer.send(np.ascontiguousarray(frame))
                    # motion: move, scale, spin; drop tracks that left; maybe spawn new ones
                    alive = []
                    for tr in tracks:
                        sh = tr.shape
                        sh.cx += tr.vx
                        sh.cy += tr.vy
                        sh.angle += tr.spin
                        f = 1.0 + tr.growth
                        if 16 < sh.sx * f < 0.7 * min(width, height) and 16 < sh.sy * f < 0.7 * min(width, height):
                            sh.sx, sh.sy = sh.sx * f, sh.sy * f
                        else:
                            tr.growth = -tr.growth
                        r = max(sh.sx, sh.sy)
                        if -2 * r < sh.cx < width + 2 * r and -2 * r < sh.cy < height + 2 * r:
                            alive.append(tr)
                    tracks = alive
                    if len(tracks) < max_objects and rng.random() < 1.5 / fps:
                        tracks.append(_spawn(rng, bg[:height, :width], width, height, next_id, entering=True))
                        next_id += 1
            finally:
                writer.close()
        except (OSError, RuntimeError) as exc:
            raise UserError(f"could not write the video {path}: {exc} — check the folder is writable") from None
        finally:
            if wav is not None and os.path.exists(wav):
                os.remove(wav)
    summary = {"video": os.path.basename(path), "width": width, "height": height, "fps": float(fps),
               "num_frames": num_frames, "seed": int(seed), "audio": bool(audio), "pix_fmt": pix_fmt,
               "class_names": list(SHAPE_CLASSES),
               "box_format": "x0, y0, x1, y1 in 0-based inclusive pixels", "frames": frames_gt}
    with atomic_write(gt_path) as tmp_json:
        with open(tmp_json, "w") as fh:
            json.dump(summary, fh, separators=(",", ":"))
    return {k: v for k, v in summary.items() if k != "frames"} | {
        "path": os.path.abspath(path), "ground_truth": os.path.abspath(gt_path),
        "num_objects": sum(len(f) for f in frames_gt)}


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.synthetic",
                                description="Write the synthetic shapes dataset (custom VOC layout + COCO JSON) "
                                            "and/or a synthetic video with per-frame ground truth.")
    p.add_argument("--out", help="dataset folder to write (replaced if it is an earlier synthetic dataset)")
    p.add_argument("--num", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--val-frac", type=float, default=DEFAULT_VAL_FRAC, help="fraction for val (default 0.05)")
    p.add_argument("--test-frac", type=float, default=DEFAULT_TEST_FRAC, help="fraction for test (default 0.15); "
                   "train gets the rest")
    p.add_argument("--backgrounds", help="optional folder of photos used as some of the backgrounds")
    p.add_argument("--video", help="also write a synthetic video here (.mp4/.mkv/.mov/.avi) + PATH.json")
    p.add_argument("--frames", type=int, default=150, help="video frames (default 150)")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    p.add_argument("--width", type=int, default=640, help="video width (default 640)")
    p.add_argument("--height", type=int, default=360, help="video height (default 360)")
    p.add_argument("--audio", action="store_true", help="add an AAC sine-tone audio track to the video")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out and not args.video:
        raise UserError("nothing to do: pass --out DIR (dataset) and/or --video PATH", code=2)
    if args.out:
        s = generate_dataset(args.out, args.num, args.seed, args.val_frac, args.test_frac, args.backgrounds,
                             progress=True)
        print(f"wrote {s['num_images']} images ({s['num_objects']} objects, {s['num_difficult']} difficult; "
              f"splits {s['splits']}) to {s['out']} in {s['seconds']:.1f} s ({s['images_per_s']:.0f} images/s)")
    if args.video:
        v = generate_video(args.video, args.frames, args.fps, args.width, args.height, args.seed, args.audio)
        print(f"wrote {v['num_frames']} frames {v['width']}x{v['height']} @ {v['fps']:g} fps"
              f"{' with audio' if v['audio'] else ''} to {v['path']} (ground truth {v['ground_truth']})")
    return 0


if __name__ == "__main__":
    run_cli(main)
