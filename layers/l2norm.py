"""L2Norm: channel-wise L2 normalisation with a learned per-channel scale (ParseNet), used on conv4_3."""
from __future__ import annotations

import torch
from torch import nn


class L2Norm(nn.Module):
    """``y = weight[c] * x / (||x||_2 over channels + eps)``.

    Input/output ``[B, C, H, W]``. ``weight`` starts at ``scale`` (20 in the paper). eps is added after the sqrt,
    as ssd.pytorch does, so converted weights give identical outputs.
    """

    def __init__(self, n_channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.gamma = scale
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(n_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # norm in fp32 even under autocast: sum of squares over 512 channels overflows fp16
        norm = x.float().pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps  # [B, 1, H, W]
        return (x.float() / norm * self.weight.view(1, -1, 1, 1)).to(x.dtype)
