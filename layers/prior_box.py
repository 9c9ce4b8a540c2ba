"""Default boxes (priors) of SSD."""
from __future__ import annotations

from itertools import product
from math import sqrt
from typing import Any, Dict, Optional, Union

import torch


class PriorBox:
    """Generate the priors of a config, identical in value and order to ssd.pytorch.

    For source map k the grid is ``f_k = min_dim / steps[k]`` cells wide (the step, not the map size, sets it);
    cell (i=row, j=col) has centre ``((j + 0.5) / f_k, (i + 0.5) / f_k)``. Per cell, in order: the square of side
    ``s_k = min_size/min_dim``, the square of side ``sqrt(s_k * max_size/min_dim)``, then for each aspect ratio
    ``ar`` the boxes ``(s_k*sqrt(ar), s_k/sqrt(ar))`` and ``(s_k/sqrt(ar), s_k*sqrt(ar))``.

    Output of :meth:`forward`: ``[P, 4]`` center-size ``(cx, cy, w, h)`` relative to the image. P = 8732 for SSD300,
    24564 for SSD512. Clipping to [0, 1] (``clip`` argument, else ``cfg["clip"]``): ``True`` / ``"all"`` clamps all
    four values (ssd.pytorch); ``"wh"`` clamps only the widths and heights (torchvision's DefaultBoxGenerator, which
    leaves centres alone); ``False`` / ``"none"`` clamps nothing.
    """

    def __init__(self, cfg: Dict[str, Any], clip: Optional[Union[bool, str]] = None) -> None:
        self.image_size = cfg["min_dim"]
        self.feature_maps = cfg["feature_maps"]
        self.min_sizes = cfg["min_sizes"]
        self.max_sizes = cfg["max_sizes"]
        self.steps = cfg["steps"]
        self.aspect_ratios = cfg["aspect_ratios"]
        self.clip = _clip_mode(cfg["clip"] if clip is None else clip)
        self.variance = cfg.get("variance", [0.1, 0.2])
        for v in self.variance:
            if v <= 0:
                raise ValueError("variances must be greater than 0")

    def forward(self) -> torch.Tensor:
        mean = []
        for k, f in enumerate(self.feature_maps):
            f_k = self.image_size / self.steps[k]
            s_k = self.min_sizes[k] / self.image_size
            s_k_prime = sqrt(s_k * (self.max_sizes[k] / self.image_size))
            for i, j in product(range(f), repeat=2):
                cx = (j + 0.5) / f_k
                cy = (i + 0.5) / f_k
                mean += [cx, cy, s_k, s_k]
                mean += [cx, cy, s_k_prime, s_k_prime]
                for ar in self.aspect_ratios[k]:
                    r = sqrt(ar)
                    mean += [cx, cy, s_k * r, s_k / r]
                    mean += [cx, cy, s_k / r, s_k * r]
        # computed in float64 like the Python floats above, stored as float32
        out = torch.tensor(mean, dtype=torch.float64).view(-1, 4)
        if self.clip == "all":
            out.clamp_(min=0, max=1)
        elif self.clip == "wh":
            out[:, 2:].clamp_(min=0, max=1)
        return out.float()

    __call__ = forward


CLIP_MODES = ("all", "wh", "none")


def _clip_mode(clip: Union[bool, str]) -> str:
    """``True`` -> ``"all"``, ``False`` -> ``"none"``; a mode name passes through (ValueError otherwise)."""
    if clip is True or clip is False:
        return "all" if clip else "none"
    if clip not in CLIP_MODES:
        raise ValueError(f"prior clip must be True, False or one of {CLIP_MODES}, got {clip!r}")
    return str(clip)


def num_priors_per_location(cfg: Dict[str, Any]) -> list:
    """Boxes per location for each source: 2 squares + 2 per aspect ratio ([4, 6, 6, 6, 4, 4] for SSD300)."""
    return [2 + 2 * len(ars) for ars in cfg["aspect_ratios"]]
