"""The MultiBox loss as *sums* plus the positive count, so that data-parallel ranks can normalise by the global
number of positives (then 2 processes x batch 2 == 1 process x batch 4)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from data.config import get_config
from layers.matching import match_targets
from layers.multibox_loss import MultiBoxLoss


def build_criterion(num_classes: int, prior_config: str, size: int, device: torch.device) -> MultiBoxLoss:
    """ssd.pytorch's MultiBoxLoss (IoU 0.5, 3:1 hard negatives) with the variances of the prior configuration."""
    return MultiBoxLoss(num_classes, 0.5, True, 0, True, 3, 0.5, False, device.type == "cuda",
                        variance=get_config(prior_config, size)["variance"])


def multibox_loss_sums(criterion: nn.Module, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor,
                       targets: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss_l_sum, loss_c_sum, num_pos)`` of a :class:`layers.MultiBoxLoss` on this batch (float32 scalars).

    ``loc`` is ``[B, P, 4]``, ``conf`` ``[B, P, C]``, ``priors`` ``[P, 4]`` (center-size, relative to the image);
    ``targets`` one ``[n_i, 5]`` tensor per image (``x1, y1, x2, y2`` in [0, 1], label). ``MultiBoxLoss`` returns
    the two terms divided by ``N = max(1, num_pos)``; multiplying back gives sums that can be added across ranks
    and divided by the global ``N``. Matching runs batched on ``loc``'s device.
    """
    priors = priors[: loc.shape[1]].to(device=loc.device, dtype=torch.float32)
    with torch.no_grad():
        loc_t, conf_t = match_targets(list(targets), priors, criterion.variance, criterion.threshold)
    loss_l, loss_c = criterion.loss_from_targets(loc, conf, loc_t, conf_t)
    num_pos = (conf_t > 0).sum().to(torch.float32)
    n = num_pos.clamp(min=1.0)
    return loss_l.float() * n, loss_c.float() * n, num_pos
