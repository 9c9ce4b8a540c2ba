"""Rendering a scene: a background, clutter and a random set of objects placed, sized and coloured to be seen."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from data.synthetic.backgrounds import draw_clutter, make_background, random_color
from data.synthetic.shapes import ALL_SHAPES, SHAPE_CLASSES, ObjectAnnotation, Shape, render_shapes


def _contrasting_color(rng: np.random.Generator, bg: np.ndarray, x: float, y: float) -> Tuple[int, int, int]:
    h, w = bg.shape[:2]
    ref = bg[int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))].astype(int)
    col = random_color(rng)
    for _ in range(4):
        if np.abs(np.asarray(col) - ref).sum() >= 100:
            break
        col = random_color(rng)
    return col


def random_shape(rng: np.random.Generator, bg: np.ndarray, size: float, label: Optional[int] = None,
                 anywhere: bool = False, near: Optional[Shape] = None,
                 classes: Sequence[int] = ALL_SHAPES) -> Shape:
    """A random object of longest side ``size`` px placed in ``bg`` (fully inside unless ``anywhere``); its class
    (an index into ``SHAPE_CLASSES``) is ``label``, else drawn uniformly from ``classes``."""
    h, w = bg.shape[:2]
    label = int(classes[int(rng.integers(len(classes)))]) if label is None else label
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
                 photos: Sequence[np.ndarray] = (),
                 classes: Sequence[int] = ALL_SHAPES) -> Tuple[np.ndarray, List[ObjectAnnotation]]:
    """One synthetic RGB uint8 image and its annotations; objects are of the shapes ``classes`` (indices into
    ``SHAPE_CLASSES``; all five give the same images as before the option existed)."""
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
        shapes.append(random_shape(rng, img, size, anywhere=rng.random() < 0.1, near=near, classes=classes))
    fg = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
    anns = [a for a in render_shapes(img, shapes, rng, fg) if a is not None]
    if rng.random() < 0.25:
        cv2.GaussianBlur(img, (3, 3), 0, dst=img)
    return img, anns
