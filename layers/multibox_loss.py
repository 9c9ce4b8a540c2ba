"""SSD's MultiBox loss: Smooth-L1 localisation + softmax confidence with 3:1 hard negative mining."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from layers.matching import match_targets


class MultiBoxLoss(nn.Module):
    """``L = (L_loc + L_conf) / N`` with N the number of positive priors in the batch.

    The constructor keeps ssd.pytorch's positional signature (``num_classes, overlap_thresh, prior_for_matching,
    bkg_label, neg_mining, neg_pos, neg_overlap, encode_target, use_gpu``); only ``num_classes``,
    ``overlap_thresh`` and ``neg_pos`` change behaviour. Targets are matched on the device of the predictions.

    Differences from ssd.pytorch (bugs there): the mask is applied after the reshape; an image or a whole batch
    without ground truth gives a finite loss (N is clamped to 1); degenerate boxes do not produce inf.
    """

    def __init__(self, num_classes: int, overlap_thresh: float = 0.5, prior_for_matching: bool = True,
                 bkg_label: int = 0, neg_mining: bool = True, neg_pos: int = 3, neg_overlap: float = 0.5,
                 encode_target: bool = False, use_gpu: bool = False,
                 variance: Sequence[float] = (0.1, 0.2)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.threshold = overlap_thresh
        self.negpos_ratio = neg_pos
        self.variance = tuple(variance)

    def forward(self, predictions: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                targets: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """predictions: ``(loc [B, P, 4], conf [B, P, C] logits, priors [P, 4])``; targets: list of ``[n_i, 5]``.

        Returns ``(loss_l, loss_c)``, each a scalar already divided by N.
        """
        loc_p, conf_p, priors = predictions
        priors = priors[: loc_p.shape[1]].to(device=loc_p.device, dtype=torch.float32)
        with torch.no_grad():
            loc_t, conf_t = match_targets(targets, priors, self.variance, self.threshold)
        return self.loss_from_targets(loc_p, conf_p, loc_t, conf_t)

    def loss_from_targets(self, loc_p: torch.Tensor, conf_p: torch.Tensor, loc_t: torch.Tensor,
                          conf_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Loss given matched targets ``loc_t [B, P, 4]`` and ``conf_t [B, P]``.

        Positives and mined negatives are selected with masks (``torch.where``), not boolean indexing: indexing
        needs the number of selected priors on the host (a ``nonzero``, i.e. a device sync every step), masks
        keep every shape static. ``where`` rather than multiplication, so that values at unselected priors
        (never used) cannot leak inf/NaN into the sums or the gradients.
        """
        batch, num_priors, num_classes = conf_p.shape
        pos = conf_t > 0                                   # [B, P]
        num_pos = pos.sum(dim=1, keepdim=True)             # [B, 1]

        # unselected priors get prediction = target = 0: their loss and gradient are exactly 0
        pos4 = pos.unsqueeze(-1)
        loc_p = torch.where(pos4, loc_p.float(), 0.0)
        loc_t = torch.where(pos4, loc_t.float(), 0.0)
        loss_l = F.smooth_l1_loss(loc_p, loc_t, reduction="sum")

        # per-prior softmax loss (equal to ssd.pytorch's log_sum_exp(conf) - conf[target]), fp32 for stability
        ce = F.cross_entropy(conf_p.reshape(-1, num_classes).float(), conf_t.reshape(-1),
                             reduction="none").view(batch, num_priors)
        with torch.no_grad():
            mining = ce.masked_fill(pos, 0.0)
            _, order = mining.sort(dim=1, descending=True)
            _, rank = order.sort(dim=1)                    # rank of each prior by mining loss
            num_neg = torch.clamp(self.negpos_ratio * num_pos, max=num_priors - 1)
            neg = rank < num_neg                           # [B, P]
        loss_c = torch.where(pos | neg, ce, 0.0).sum()

        n = num_pos.sum().clamp(min=1).to(loss_l.dtype)
        return loss_l / n, loss_c / n
