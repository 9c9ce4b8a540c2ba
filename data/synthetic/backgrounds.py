"""Rendering backgrounds: gradients, colour fields, stripes, checkers, blocks, sensor noise, photo windows, and
clutter that is none of the classes (lines, arcs, crosses, L-shapes, bean-shaped blobs, text)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from data.synthetic.shapes import ONE, SHIFT

_NOISE_BANK_SHAPE = (560, 720, 3)


def make_noise_bank(seed: int) -> np.ndarray:
    """A uint8 tile of Gaussian noise centred on 128; images take random windows of it (fast, seeded)."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    return np.clip(rng.normal(128.0, 24.0, _NOISE_BANK_SHAPE), 0, 255).astype(np.uint8)


def random_color(rng: np.random.Generator) -> Tuple[int, int, int]:
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
        col = random_color(rng)
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
            cv2.fillPoly(img, [np.round(pts * ONE).astype(np.int32)], col, cv2.LINE_AA, SHIFT)
        else:
            txt = "".join(_TEXT[int(i)] for i in rng.integers(0, len(_TEXT), int(rng.integers(1, 5))))
            cv2.putText(img, txt, (int(cx), int(cy)), cv2.FONT_HERSHEY_SIMPLEX, size / 40.0, col,
                        max(1, th - 1), cv2.LINE_AA)
