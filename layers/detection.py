"""Detect: decode all priors, per-class confidence filter, per-class NMS — batched, no loop over classes."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torchvision.ops import batched_nms

from layers.box_utils import decode


class Detect(nn.Module):
    """Turn network outputs into per-class detections, as ssd.pytorch's Detect did (same results, ties aside).

    For every image and every foreground class: keep scores ``> conf_thresh``, take at most ``nms_top_k`` (200)
    by score, suppress boxes with IoU ``> nms_thresh`` against a higher-scoring kept box, keep at most ``top_k``.

    Inputs: ``loc [B, P, 4]`` offsets, ``conf [B, P, C]`` class probabilities (softmax applied), ``priors [P, 4]``
    center-size. Output: ``[B, C, top_k, 5]`` rows ``(score, xmin, ymin, xmax, ymax)`` relative coordinates, per
    class by descending score, zero rows after the last detection, class 0 (background) all zeros.

    ``keep_top_k`` (off by default, as ssd.pytorch's code effectively was) caps detections per image across classes.
    All work is tensor ops on the input device; the only host syncs are the candidate count and NMS itself, once per
    batch (not per class or image).
    """

    def __init__(self, num_classes: int, bkg_label: int = 0, top_k: int = 200, conf_thresh: float = 0.01,
                 nms_thresh: float = 0.45, variance: Sequence[float] = (0.1, 0.2), nms_top_k: int = 200,
                 keep_top_k: Optional[int] = None) -> None:
        super().__init__()
        if nms_thresh <= 0:
            raise ValueError("nms_threshold must be positive")
        self.num_classes = num_classes
        self.background_label = bkg_label
        self.top_k = top_k
        self.conf_thresh = conf_thresh
        self.nms_thresh = nms_thresh
        self.variance = tuple(variance)
        self.nms_top_k = nms_top_k
        self.keep_top_k = keep_top_k

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        batch, num_priors, num_classes = conf.shape
        loc, conf, priors = loc.float(), conf.float(), priors.float()
        out = torch.zeros(batch, num_classes, self.top_k, 5, device=conf.device)
        boxes = decode(loc, priors, self.variance)                       # [B, P, 4]
        scores = conf[..., 1:].transpose(1, 2)                           # [B, C-1, P]
        k = min(self.nms_top_k, num_priors)
        top_scores, top_idx = scores.topk(k, dim=2)                       # [B, C-1, k], descending
        b_idx, c_idx, r_idx = (top_scores > self.conf_thresh).nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return out
        cand_scores = top_scores[b_idx, c_idx, r_idx]                     # [M]
        cand_boxes = boxes[b_idx, top_idx[b_idx, c_idx, r_idx]]           # [M, 4]
        groups = b_idx * (num_classes - 1) + c_idx                        # one NMS group per (image, class)
        # torchvision's batched_nms offsets each group by (max coordinate + 1): that assumes coordinates >= 0
        # (decoded boxes are unclipped) and, in float32 with hundreds of groups, loses the precision that decides
        # IoU near the threshold. Shifted to >= 0 and in float64 it matches per-class float32 NMS.
        nms_boxes = cand_boxes.double()
        nms_boxes = nms_boxes - nms_boxes.min()
        keep = batched_nms(nms_boxes, cand_scores.double(), groups, self.nms_thresh)  # by descending score
        # regroup kept boxes by (image, class); the stable sort keeps descending score inside each group
        keep = keep[torch.sort(groups[keep], stable=True).indices]
        g = groups[keep]
        counts = torch.bincount(g, minlength=batch * (num_classes - 1))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(g.numel(), device=g.device) - starts[g]
        sel = rank < self.top_k
        keep, rank = keep[sel], rank[sel]
        rows = torch.cat([cand_scores[keep, None], cand_boxes[keep]], dim=1)  # [K, 5]
        out[b_idx[keep], c_idx[keep] + 1, rank] = rows
        if self.keep_top_k is not None:
            out = self._cap_per_image(out, self.keep_top_k)
        return out

    @staticmethod
    def _cap_per_image(out: torch.Tensor, keep_top_k: int) -> torch.Tensor:
        """Zero all but the ``keep_top_k`` highest-scoring rows of each image (what ssd.pytorch meant to do)."""
        batch = out.shape[0]
        flat = out.view(batch, -1, 5)
        n = flat.shape[1]
        if keep_top_k >= n:
            return out
        kth = flat[..., 0].topk(keep_top_k, dim=1).values[:, -1:]         # [B, 1] score of the k-th best
        # rows below the k-th score are dropped; exact ties at the boundary may keep a few extra rows
        drop = flat[..., 0] < kth
        flat = flat.masked_fill(drop.unsqueeze(-1), 0.0)
        # re-compact each class's rows so zeros stay after the last detection
        out = flat.view_as(out)
        order = out[..., 0].argsort(dim=2, descending=True, stable=True)
        return torch.gather(out, 2, order.unsqueeze(-1).expand_as(out))
