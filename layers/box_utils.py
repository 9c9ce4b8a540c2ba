"""Box conversions and the SSD box coding.

Conventions: "point form" is corner ``(xmin, ymin, xmax, ymax)``; "center-size" is ``(cx, cy, w, h)``; all
relative to the image ([0, 1]) unless stated. ``variances = (0.1, 0.2)`` scale centre and size offsets.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_convert, box_iou

__all__ = ["point_form", "center_size", "encode", "decode", "jaccard"]


def point_form(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` center-size → corner form."""
    return box_convert(boxes, "cxcywh", "xyxy")


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` corner form → center-size (ssd.pytorch's version had a misplaced parenthesis)."""
    return box_convert(boxes, "xyxy", "cxcywh")


def jaccard(box_a: torch.Tensor, box_b: torch.Tensor) -> torch.Tensor:
    """IoU of corner-form boxes ``[A, 4]`` x ``[B, 4]`` → ``[A, B]``."""
    return box_iou(box_a, box_b)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances: Sequence[float],
           eps: float = 1e-6) -> torch.Tensor:
    """Encode corner-form ground truth against center-size priors.

    ``matched [..., P, 4]`` (xyxy), ``priors [P, 4]`` (cxcywh) → offsets ``[..., P, 4]``:
    ``((c_gt - c_p) / (v0 * wh_p), log(wh_gt / wh_p) / v1)``. Widths are clamped to ``eps`` so a degenerate
    (zero-width or zero-height) ground-truth box gives a large but finite target instead of ssd.pytorch's -inf.
    """
    g_c = (matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]
    g_c = g_c / (variances[0] * priors[..., 2:])
    g_wh = (matched[..., 2:] - matched[..., :2]).clamp(min=eps) / priors[..., 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_c, g_wh], dim=-1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`encode`: offsets ``[..., P, 4]`` + priors ``[P, 4]`` (cxcywh) → corner boxes ``[..., P, 4]``."""
    centers = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)
