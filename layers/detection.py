"""Detect: decode all priors, per-class confidence filter, greedy NMS of every (image, class) group at once."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from layers.box_utils import decode

# IoU entries (group x candidate x candidate) per greedy_nms chunk; measured on a 2-core CPU, 2**20 (4 MB per
# buffer) was fastest for SSD300 at batch 1 and 8. Elsewhere one chunk covers SSD300 at batch 64 (51M entries).
_CPU_PAIRS_PER_CHUNK = 1 << 20
_PAIRS_PER_CHUNK = 1 << 26


class Detect(nn.Module):
    """Turn network outputs into per-class detections, as ssd.pytorch's Detect did (same results, ties aside).

    For every image and every foreground class: keep scores ``> conf_thresh``, take at most ``nms_top_k`` (200)
    by score, suppress boxes with IoU ``> nms_thresh`` against a higher-scoring kept box, keep at most ``top_k``.

    Inputs: ``loc [B, P, 4]`` offsets, ``conf [B, P, C]`` class probabilities (softmax applied), ``priors [P, 4]``
    center-size. Output: ``[B, C, top_k, 5]`` rows ``(score, xmin, ymin, xmax, ymax)`` relative coordinates
    (unclipped), per class by descending score, zero rows after the last detection, class 0 (background) all zeros.

    ``keep_top_k`` (off by default, as ssd.pytorch's code effectively was) caps detections per image across classes.

    NMS runs on all ``G = B * (C - 1)`` groups together (see :func:`greedy_nms`): float32 IoU of every candidate
    pair of a group, then greedy suppression solved as a fixed point. Host syncs, per batch (never per class or
    image): one for the candidate counts (groups without a candidate are skipped, and the pair matrices are only as
    wide as the longest candidate list) and one per fixed-point iteration. Exactly equal scores may be ordered, and
    so suppress each other, differently from ssd.pytorch or torchvision.
    """

    def __init__(self, num_classes: int, bkg_label: int = 0, top_k: int = 200, conf_thresh: float = 0.01,
                 nms_thresh: float = 0.45, variance: Sequence[float] = (0.1, 0.2), nms_top_k: int = 200,
                 keep_top_k: Optional[int] = None, clip: bool = False) -> None:
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
        self.clip = clip  # clamp decoded boxes to the image before NMS (torchvision); ssd.pytorch clips after

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        batch, num_priors, num_classes = conf.shape
        loc, conf, priors = loc.float(), conf.float(), priors.float()
        device, fg, top_k = conf.device, num_classes - 1, self.top_k
        groups = batch * fg                                               # one NMS group per (image, class)
        k = min(self.nms_top_k, num_priors)
        boxes = decode(loc, priors, self.variance)                        # [B, P, 4]
        if self.clip:
            boxes = boxes.clamp(min=0.0, max=1.0)
        scores = conf[..., 1:].transpose(1, 2)                            # [B, C-1, P]
        top_scores, top_idx = scores.topk(k, dim=2)                       # [B, C-1, k], descending
        top_scores = top_scores.reshape(groups, k)
        top_boxes = boxes.gather(1, top_idx.reshape(batch, fg * k, 1).expand(-1, -1, 4)).view(groups, k, 4)
        # scores are descending, so each group's candidates (score > conf_thresh) are a prefix of its row
        counts = (top_scores > self.conf_thresh).sum(dim=1).cpu()         # the per-batch sync
        width = int(counts.max()) if groups else 0
        fg_out = torch.zeros(groups, top_k + 1, 5, device=device)        # last row: a sink for dropped rows
        if width > 0 and top_k > 0:
            active = counts.nonzero().squeeze(1)
            if active.numel() < groups:                                   # skip groups without a candidate
                active = active.to(device)
                top_scores, top_boxes = top_scores[active, :width], top_boxes[active, :width]
            else:
                active = None
                top_scores, top_boxes = top_scores[:, :width], top_boxes[:, :width]
            keep = greedy_nms(top_boxes, top_scores > self.conf_thresh, self.nms_thresh)  # [G', width]
            rank = keep.cumsum(dim=1) - 1                                 # rank of a kept box in its class list
            # suppressed boxes and those ranked >= top_k all land in the sink row, which is cut off below
            slot = torch.where(keep & (rank < top_k), rank, top_k)
            rows = torch.cat([top_scores.unsqueeze(-1), top_boxes], dim=-1)  # [G', width, 5]
            dest = fg_out if active is None else torch.zeros(active.numel(), top_k + 1, 5, device=device)
            dest.scatter_(1, slot.unsqueeze(-1).expand(-1, -1, 5), rows)
            if active is not None:
                fg_out.index_copy_(0, active, dest)
        out = torch.cat([torch.zeros(batch, 1, top_k, 5, device=device),
                         fg_out[:, :top_k].reshape(batch, fg, top_k, 5)], dim=1)
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


def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_thresh: float,
               max_pairs: Optional[int] = None) -> torch.Tensor:
    """Greedy NMS of ``G`` independent groups at once: which boxes survive.

    ``boxes [G, n, 4]`` corner form, each group sorted by descending score; ``valid [G, n]`` bool, the candidates
    (an invalid box is never kept and suppresses nothing). Returns ``keep [G, n]`` bool: box ``i`` is kept iff it is
    valid and no kept box ``j < i`` of its group has IoU ``> iou_thresh`` with it (float32 IoU, areas
    ``(x2 - x1)(y2 - y1)``, union summed in torchvision's order).

    That rule, ``keep_i = valid_i and not any_{j<i}(keep_j and S_ji)``, is triangular, so it has exactly one
    solution: the sequential greedy result. It is found by iterating ``keep <- valid & ~(keep @ S > 0)`` from
    ``keep = valid`` until nothing changes; after ``t`` steps the first ``t`` boxes are final, so at most ``n``
    steps are needed (a handful in practice; a chain of boxes each suppressing the next is the worst case). Each
    step costs one host sync for the convergence test.

    Groups are processed in chunks of at most ``max_pairs`` IoU entries (default: 2**20 on CPU, where a chunk
    that stays in cache is fastest; 2**26 elsewhere, so SSD300 at batch 64, 51M pairs, is one chunk and the syncs
    stay per batch). Memory: three float32 buffers of one chunk's ``[g, n, n]``.
    """
    g, n, _ = boxes.shape
    keep = torch.zeros_like(valid)
    if g == 0 or n == 0:
        return keep
    if max_pairs is None:
        max_pairs = _CPU_PAIRS_PER_CHUNK if boxes.device.type == "cpu" else _PAIRS_PER_CHUNK
    chunk = min(g, max(1, max_pairs // (n * n)))
    x1, y1, x2, y2 = boxes.float().permute(2, 0, 1).contiguous()        # [G, n] each, contiguous for speed
    area = (x2 - x1) * (y2 - y1)
    upper = torch.ones(n, n, device=boxes.device).triu_(1)               # j < i
    # reused across chunks: fresh multi-MB tensors per chunk cost page faults on CPU
    work = torch.empty(3, chunk, n, n, device=boxes.device)
    for start in range(0, g, chunk):
        sl = slice(start, min(g, start + chunk))
        m = sl.stop - start
        iw, tmp, ih = work[0, :m], work[1, :m], work[2, :m]
        # pairwise [m, n, n]: row j is the (higher-scoring) suppressor, column i the suppressed box
        torch.minimum(x2[sl].unsqueeze(2), x2[sl].unsqueeze(1), out=iw)
        iw.sub_(torch.maximum(x1[sl].unsqueeze(2), x1[sl].unsqueeze(1), out=tmp)).clamp_(min=0)
        torch.minimum(y2[sl].unsqueeze(2), y2[sl].unsqueeze(1), out=ih)
        ih.sub_(torch.maximum(y1[sl].unsqueeze(2), y1[sl].unsqueeze(1), out=tmp)).clamp_(min=0)
        inter = iw.mul_(ih)
        union = torch.add(area[sl].unsqueeze(2), area[sl].unsqueeze(1), out=tmp).sub_(inter)
        # suppress[g, j, i] = 1.0 where IoU > iou_thresh and j < i (a NaN IoU of two empty boxes suppresses nothing)
        suppress = inter.div_(union).gt_(iou_thresh).mul_(upper)
        keep[sl] = _fixed_point(suppress, valid[sl])
    return keep


def _fixed_point(suppress: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Solve ``keep = valid & ~any_j(keep_j & suppress_ji)``; ``suppress [g, n, n]`` 0/1, strictly upper-triangular."""
    keep = valid
    for _ in range(valid.shape[1]):
        # keep @ suppress counts the kept suppressors of each box; with 0/1 operands "> 0" is exact in any float
        # type, so autocast (bf16/fp16 bmm) cannot change the result
        hit = torch.bmm(keep.to(suppress.dtype).unsqueeze(1), suppress).squeeze(1) > 0
        new = valid & ~hit
        if torch.equal(new, keep):
            break
        keep = new
    return keep
