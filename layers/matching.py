"""Matching ground truth to priors, batched over the whole batch (no Python loop over images)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torchvision.ops import box_iou

from layers.box_utils import encode, point_form


def pad_targets(targets: Sequence[torch.Tensor], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length targets ``[n_i, 5]`` (relative xyxy + 0-based label) into ``[B, N, 5]`` + mask ``[B, N]``.

    ``N = max(1, max n_i)``; padding rows are zero and False in the mask. The result is on ``device`` in the
    default float dtype. Targets usually come from the DataLoader on the CPU: the batch is assembled where the
    targets live and sent to ``device`` in ONE copy (pinned + non-blocking for CUDA), with the mask packed in
    as a sixth column. Copying image by image would synchronise with the host once per image on CUDA.
    """
    device = torch.device(device)
    batch = len(targets)
    n_max = max((int(t.shape[0]) for t in targets), default=0)
    devices = {t.device for t in targets}
    # build where the targets are (no per-image transfers); mixed devices are gathered on the CPU
    src = devices.pop() if len(devices) == 1 else torch.device("cpu")
    pin = src.type == "cpu" and device.type == "cuda"
    packed = torch.zeros(batch, max(n_max, 1), 6, device=src, pin_memory=pin)  # (x1, y1, x2, y2, label, valid)
    for b, t in enumerate(targets):  # copies within ``src`` memory; all arithmetic downstream is batched
        n = int(t.shape[0])
        if n:
            packed[b, :n, :5] = t.to(src)
            packed[b, :n, 5] = 1.0
    packed = packed.to(device, non_blocking=True)
    return packed[..., :5].contiguous(), packed[..., 5] != 0


def match(truths: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, priors: torch.Tensor,
          variances: Sequence[float], threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assign each prior a ground truth (or background) and encode its regression target.

    Args:
        truths: ``[B, N, 4]`` ground-truth boxes, relative xyxy (padded).
        labels: ``[B, N]`` 0-based class labels (padded).
        valid: ``[B, N]`` bool, False on padding rows.
        priors: ``[P, 4]`` center-size priors.
    Returns:
        ``loc_t [B, P, 4]`` encoded offsets and ``conf_t [B, P]`` long labels with 0 = background, k+1 = class k.

    Rules (the paper's, as ssd.pytorch): a prior takes the ground truth it overlaps most if that IoU >= threshold;
    each ground truth's best prior is forced to it (when two ground truths share a best prior the later one wins).
    Images without ground truth get all-background targets.
    """
    batch, n_max = valid.shape
    num_priors = priors.shape[0]
    prior_corners = point_form(priors)
    # one IoU call for the whole batch, then scattered back per image: [B*N, P] -> [B, N, P]
    overlaps = box_iou(truths.reshape(-1, 4), prior_corners).view(batch, n_max, num_priors)
    overlaps = overlaps.masked_fill(~valid.unsqueeze(-1), -1.0)

    best_prior_idx = overlaps.argmax(dim=2)                      # [B, N]
    best_truth_overlap, best_truth_idx = overlaps.max(dim=1)     # [B, P]

    # force each valid GT onto its best prior; 'amax' over GT index reproduces "later GT wins" deterministically
    gt_index = torch.arange(n_max, device=truths.device).expand(batch, n_max)
    src = torch.where(valid, gt_index, torch.full_like(gt_index, -1))
    forced = torch.full((batch, num_priors), -1, dtype=torch.long, device=truths.device)
    forced.scatter_reduce_(1, best_prior_idx, src, reduce="amax", include_self=True)
    is_forced = forced >= 0
    best_truth_idx = torch.where(is_forced, forced, best_truth_idx)
    best_truth_overlap = best_truth_overlap.masked_fill(is_forced, 2.0)

    matched = torch.gather(truths, 1, best_truth_idx.unsqueeze(-1).expand(batch, num_priors, 4))  # [B, P, 4]
    conf_t = torch.gather(labels.long(), 1, best_truth_idx) + 1                                   # [B, P]
    conf_t = conf_t.masked_fill(best_truth_overlap < threshold, 0)
    loc_t = encode(matched, priors, variances)
    return loc_t, conf_t


def match_targets(targets: List[torch.Tensor], priors: torch.Tensor, variances: Sequence[float],
                  threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Convenience wrapper: list of ``[n_i, 5]`` targets → ``(loc_t [B, P, 4], conf_t [B, P])`` on ``priors.device``."""
    padded, valid = pad_targets(targets, priors.device)
    return match(padded[..., :4], padded[..., 4], valid, priors, variances, threshold)
