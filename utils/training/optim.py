"""Optimisers: SGD as the paper, or AdamW without weight decay on BatchNorm / bias / L2Norm parameters; freezing
the first VGG blocks (``--freeze``)."""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> List[Dict[str, Any]]:
    """Parameter groups in a fixed order (module registration order).

    With ``decay_norm_and_bias=False`` one-dimensional parameters — biases, BatchNorm weights and L2Norm's
    scale — go to a second group with ``weight_decay=0`` (they set scales, not features; decaying them only
    fights BatchNorm). ssd.pytorch's SGD decays every parameter (``True``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """``'sgd'``: SGD(momentum, weight decay on everything) as the paper; ``'adamw'``: AdamW, no decay on 1-D params."""
    if name == "sgd":
        return torch.optim.SGD(param_groups(model, weight_decay, True), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, weight_decay, False), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


# VGG-16 convolutions per block name: conv1 = conv1_1..conv1_2, conv2 = up to conv2_2, conv3 = up to conv3_3
FREEZE_CONVS = {"none": 0, "conv1": 2, "conv2": 4, "conv3": 7}


def freeze_vgg(model: nn.Module, upto: str) -> int:
    """Fix the first VGG blocks (``requires_grad=False``: no weight update, and no backward pass below them).

    The original Caffe SSD froze ``conv1_1 .. conv2_2`` when fine-tuning from ImageNet VGG-16 (``upto='conv2'``):
    those layers learn generic edges, and they are the most expensive ones (full and half resolution), so
    skipping their backward makes a step ~1.5x cheaper. Returns the number of frozen parameters.
    """
    if upto not in FREEZE_CONVS:
        raise ValueError(f"freeze must be one of {sorted(FREEZE_CONVS)}, got {upto!r}")
    limit = FREEZE_CONVS[upto]
    frozen = 0
    convs = 0
    for layer in model.vgg:
        if isinstance(layer, nn.Conv2d):
            convs += 1
        if convs > limit:
            break
        for p in layer.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
