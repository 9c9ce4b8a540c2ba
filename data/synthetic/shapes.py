"""Rendering objects: the five shape classes as polygons, drawn with occlusion-aware visible boxes.

Coordinates: float pixels of the image; boxes ``(x0, y0, x1, y1)`` are 0-based inclusive pixel indices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from utils.errors import UserError

SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
ALL_SHAPES: Tuple[int, ...] = tuple(range(len(SHAPE_CLASSES)))
DIFFICULT_MIN_SIDE = 16      # px: a visible box side below this is difficult
DIFFICULT_OCCLUSION = 0.6    # fraction of the object hidden by later objects above which it is difficult
MIN_VISIBLE_PIXELS = 12      # below this an object is not annotated at all

SHIFT = 3                    # sub-pixel bits for cv2.fillPoly
ONE = float(1 << SHIFT)


def shape_indices(names: Optional[Sequence[str]]) -> Tuple[int, ...]:
    """Indices into :data:`SHAPE_CLASSES` of the chosen shapes, in the order given (``--classes``; names are
    case-insensitive); None = all five. UserError (exit 2) for an unknown name, a repeated one or none."""
    if names is None:
        return ALL_SHAPES
    wanted = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in SHAPE_CLASSES]
    if unknown or not wanted:
        what = f"unknown shape {unknown[0]!r}" if unknown else "no shape given"
        raise UserError(f"--classes: {what} — the shapes are {', '.join(SHAPE_CLASSES)}", code=2)
    repeated = sorted({n for n in wanted if wanted.count(n) > 1})
    if repeated:
        raise UserError(f"--classes: {repeated[0]} is given twice — list each shape once", code=2)
    return tuple(SHAPE_CLASSES.index(n) for n in wanted)


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
    return [np.round(p * ONE).astype(np.int32) for p in polys]


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
        cv2.fillPoly(img, fixed, sh.color, lineType=cv2.LINE_AA, shift=SHIFT)
        if sh.outline is not None:
            cv2.polylines(img, fixed, True, sh.outline[0], sh.outline[1], cv2.LINE_AA, SHIFT)
        cv2.fillPoly(lab, fixed, k + 1, lineType=cv2.LINE_8, shift=SHIFT)
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
        off = (-int(x0 * ONE), -int(y0 * ONE))
        cv2.fillPoly(own, fixed, 1, lineType=cv2.LINE_8, shift=SHIFT, offset=off)
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
