"""Drawing detections on RGB frames: a box per detection in a colour per class, and a filled tag
with the class name and score, sized to the frame and kept inside it.

Coordinates are pixels of the frame, 0-based, ``xyxy`` (``x2``/``y2`` may be fractional; they are
rounded). Images are RGB ``uint8 [H, W, 3]`` and are drawn on in place.
"""
from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

Color = Tuple[int, int, int]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@functools.lru_cache(maxsize=8)
def palette(num_colors: int) -> np.ndarray:
    """Deterministic, well-separated RGB colours, ``uint8 [num_colors, 3]``.

    Hues advance by the golden ratio so neighbouring class indices get distant hues for any
    number of classes; brightness alternates a little to separate classes with close hues.
    """
    colors = np.empty((max(num_colors, 1), 3), dtype=np.uint8)
    for i in range(colors.shape[0]):
        hue = (0.13 + i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        colors[i] = (round(r * 255), round(g * 255), round(b * 255))
    colors.setflags(write=False)
    return colors


def class_color(label: int, num_classes: int = 21) -> Color:
    """Colour of model label ``label`` (1..C-1; 0 is background and never drawn)."""
    c = palette(max(num_classes, label + 1))[label]  # colour i doesn't depend on the palette size
    return int(c[0]), int(c[1]), int(c[2])


def text_color(fill: Sequence[int]) -> Color:
    """Black on light fills, white on dark ones (Rec. 601 luma), so the tag text stays legible."""
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luma >= 140 else (255, 255, 255)


@dataclass(frozen=True)
class DrawStyle:
    """Line width and font size derived from the frame size (a 1080p frame gets ~4 px lines and
    ~26 px text; a 240p frame 1 px lines and ~9 px text)."""

    line: int
    font_scale: float
    font_thickness: int
    pad: int

    @staticmethod
    def for_frame(height: int, width: int) -> "DrawStyle":
        short = min(height, width)
        scale = float(np.clip(short / 900.0, 0.3, 3.0))
        return DrawStyle(line=max(1, round(short / 270)), font_scale=scale,
                         font_thickness=max(1, round(scale * 1.6)), pad=max(1, round(short / 240)))


def clamp_boxes(boxes: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Round and clip ``float [n, 4]`` xyxy boxes to the frame; vectorised.

    Returns ``int32 [n, 4]`` boxes inside ``[0, W-1] x [0, H-1]`` and a ``bool [n]`` mask of the
    boxes that overlap the frame at all (boxes entirely outside are not drawn).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    b = np.nan_to_num(boxes, nan=0.0, posinf=0.0, neginf=0.0)
    visible = finite & (b[:, 2] >= 0) & (b[:, 3] >= 0) & (b[:, 0] <= width - 1) & (b[:, 1] <= height - 1) \
        & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
    out = np.rint(b).astype(np.int64)
    np.clip(out[:, 0::2], 0, width - 1, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height - 1, out=out[:, 1::2])
    return out.astype(np.int32), visible


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    class_names: Sequence[str], style: Optional[DrawStyle] = None) -> np.ndarray:
    """Draw detections on an RGB ``uint8 [H, W, 3]`` image in place and return it.

    ``boxes`` float ``[n, 4]`` xyxy pixels; ``labels`` int ``[n]`` model labels 1..C-1 (name
    ``class_names[label - 1]``); ``scores`` float ``[n]``. Higher scores are drawn last (on top).
    Every stroke and tag lies inside the frame: boxes are clipped, tags go above the box when
    there is room, else just inside its top edge, and are shifted left/up to fit.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.shape} {image.dtype}")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    n = labels.shape[0]
    if n == 0:
        return image
    h, w = image.shape[:2]
    style = style or DrawStyle.for_frame(h, w)
    pts, visible = clamp_boxes(boxes, h, w)
    colors = palette(max(len(class_names) + 1, int(labels.max()) + 1))
    half = style.line // 2
    # keep the whole stroke inside the frame (cv2 centres thick lines on the given coordinates)
    lo = np.array([half, half, half, half])
    hi = np.array([w - 1 - half, h - 1 - half, w - 1 - half, h - 1 - half])
    strokes = np.clip(pts, lo, np.maximum(lo, hi))
    order = [i for i in np.argsort(scores, kind="stable") if visible[i]]
    line_type = cv2.LINE_AA if style.line > 1 else cv2.LINE_8
    for i in order:  # all boxes first, so that no box line crosses a tag's text
        x1, y1, x2, y2 = (int(v) for v in strokes[i])
        cv2.rectangle(image, (x1, y1), (x2, y2), tuple(int(c) for c in colors[labels[i]]), style.line, line_type)
    for i in order:
        name = class_names[labels[i] - 1] if 1 <= labels[i] <= len(class_names) else str(int(labels[i]))
        _draw_tag(image, f"{name} {float(scores[i]):.2f}", int(pts[i, 0]), int(pts[i, 1]),
                  tuple(int(c) for c in colors[labels[i]]), style)
    return image


def _draw_tag(image: np.ndarray, text: str, x: int, y: int, fill: Color, style: DrawStyle) -> None:
    """A filled tag whose bottom-left sits at the box's top-left corner, moved to stay in frame."""
    h, w = image.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, style.font_scale, style.font_thickness)
    tag_w, tag_h = tw + 2 * style.pad, th + base + 2 * style.pad
    top = y - tag_h if y - tag_h >= 0 else y  # above the box, or inside it at the frame's top
    top = max(0, min(top, h - tag_h))
    left = max(0, min(x, w - tag_w))
    cv2.rectangle(image, (left, top), (min(w, left + tag_w) - 1, min(h, top + tag_h) - 1), fill, cv2.FILLED)
    # text wider than the frame is cut at the frame's edge by OpenCV's clipping
    cv2.putText(image, text, (left + style.pad, top + style.pad + th), _FONT, style.font_scale,
                text_color(fill), style.font_thickness, cv2.LINE_AA)
