"""Convert torchvision's SSD300-VGG16 (``ssd300_vgg16_coco-b556d3b4.pth``) into this project's checkpoint format.

Usage::

    python -m weights.convert_torchvision ssd300_vgg16_coco-b556d3b4.pth -o weights/ssd300_coco.pth

torchvision's network is ssd.pytorch's SSD300 with other key names:

==========================================  ===============================
torchvision                                 here (ssd.pytorch's keys)
==========================================  ===============================
``backbone.features.{0..21}``               ``vgg.{0..21}`` (conv1_1 ... conv4_3)
``backbone.scale_weight``                   ``L2Norm.weight``
``backbone.extra.0.{1,3,5}``                ``vgg.{24,26,28}`` (conv5_1 ... conv5_3)
``backbone.extra.0.7.{1,3}``                ``vgg.{31,33}`` (conv6 dilated, conv7)
``backbone.extra.{1..4}.{0,2}``             ``extras.{0..7}``
``head.regression_head.module_list.k``      ``loc.k``
``head.classification_head.module_list.k``  ``conf.k`` (rows of the kept classes)
==========================================  ===============================

Both heads lay out their channels anchor-major (row ``a * K + k``), and both flatten priors as (row, col, anchor),
so only the class rows change: torchvision's 91 outputs are background + COCO category ids 1..90, ten of which
COCO never uses (12, 26, 29, 30, 45, 66, 68, 69, 71, 83); the converted model keeps background + the 80 used ids in
id order, i.e. ``data.coco.COCO_CLASSES``. The output records torchvision's post-processing and prior clipping
(:data:`weights.behaviour.TORCHVISION`) and the COCO prior set, whose sizes (21, 45, 99, ... of 300) are
torchvision's scales 0.07, 0.15, 0.33, ...

Input scale: torchvision normalises ``x / 255`` with mean (0.48235, 0.45882, 0.40784) and std 1/255, i.e. the
network sees ``x·255 − (122.9993, 116.9991, 103.9992)`` on RGB — this project's ``x − (123, 117, 104)`` to within
0.001 of a grey level, so the converted weights need no input folding.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence

import torch

from data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from utils.errors import UserError
from utils.loading.checkpoint import read_checkpoint, save_checkpoint, split_checkpoint
from utils.loading.config import ModelConfig
from weights.behaviour import TORCHVISION

ANCHORS = (4, 6, 6, 6, 4, 4)  # SSD300 boxes per location
SCALE_KEY = "backbone.scale_weight"  # a bare Parameter (ParseNet's L2 scale), not a module's weight
_FIXED = {f"backbone.features.{i}": f"vgg.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)}
_FIXED.update({"backbone.extra.0.1": "vgg.24", "backbone.extra.0.3": "vgg.26", "backbone.extra.0.5": "vgg.28",
               "backbone.extra.0.7.1": "vgg.31", "backbone.extra.0.7.3": "vgg.33"})
_FIXED.update({f"backbone.extra.{b}.{j}": f"extras.{2 * (b - 1) + j // 2}" for b in (1, 2, 3, 4) for j in (0, 2)})
_FIXED.update({f"head.regression_head.module_list.{k}": f"loc.{k}" for k in range(6)})
CONF_PREFIX = "head.classification_head.module_list."
SOURCE = "torchvision ssd300_vgg16 (SSD300_VGG16_Weights.COCO_V1 layout)"


def _rename(key: str) -> Optional[str]:
    """Our key for a torchvision key (weights and biases), or None for a class-head key."""
    if key == SCALE_KEY:
        return "L2Norm.weight"
    module, _, param = key.rpartition(".")
    if module.startswith(CONF_PREFIX):
        return None
    if module not in _FIXED:
        raise KeyError(key)
    return f"{_FIXED[module]}.{param}"


def check_torchvision_ssd(state: Mapping[str, torch.Tensor], path: str = "<state_dict>") -> int:
    """Raise UserError unless ``state`` is a torchvision SSD300-VGG16 state_dict; return its class count."""
    hint = "pass torchvision's ssd300_vgg16 state_dict (ssd300_vgg16_coco-b556d3b4.pth, keys backbone.* / head.*)"
    if "vgg.0.weight" in state and "conf.0.weight" in state:
        raise UserError(f"{path} already has this project's keys (vgg.N, conf.N): no conversion needed")
    unknown = [k for k in state if not k.startswith(CONF_PREFIX) and k != SCALE_KEY
               and k.rpartition(".")[0] not in _FIXED]
    missing = [f"{m}.weight" for m in _FIXED if f"{m}.weight" not in state] + [SCALE_KEY] * (SCALE_KEY not in state)
    conf = [f"{CONF_PREFIX}{k}.weight" for k in range(6)]
    if unknown or missing or any(c not in state for c in conf):
        what = f"unexpected keys {unknown[:3]}" if unknown else f"missing {(missing or conf)[:3]}"
        raise UserError(f"{path} is not a torchvision SSD300-VGG16 state_dict ({what}) — {hint}")
    counts = {state[c].shape[0] / a for c, a in zip(conf, ANCHORS)}
    if len(counts) != 1 or not float(next(iter(counts))).is_integer():
        raise UserError(f"{path}: class-head widths do not fit SSD300's anchors {ANCHORS} — {hint}")
    return int(next(iter(counts)))


def select_class_rows(weight: torch.Tensor, num_classes: int, keep: Sequence[int]) -> torch.Tensor:
    """Rows of a class head ``[A * num_classes, ...]`` (anchor-major) for the classes ``keep``, per anchor, in order.

    Returns ``[A * len(keep), ...]``, row ``a * len(keep) + j`` = input row ``a * num_classes + keep[j]``.
    """
    anchors = weight.shape[0] // num_classes
    idx = torch.as_tensor(list(keep), dtype=torch.long)
    return weight.reshape(anchors, num_classes, *weight.shape[1:])[:, idx].reshape(
        anchors * len(idx), *weight.shape[1:]).contiguous().clone()


def convert_torchvision_ssd(state: Mapping[str, torch.Tensor], keep: Optional[Sequence[int]] = None,
                            class_names: Optional[Sequence[str]] = None,
                            path: str = "<state_dict>") -> Dict[str, object]:
    """torchvision SSD300-VGG16 state_dict → this project's checkpoint dict (``model``, ``class_names``, ``config``).

    ``keep``: torchvision class indices to keep after background (default: for 91 classes the 80 COCO category
    ids, otherwise all). ``class_names``: their names (default: COCO's for the 91-class model, else class_N).
    """
    num = check_torchvision_ssd(state, path)
    if keep is None:
        keep = COCO_CATEGORY_IDS if num == 91 else range(1, num)
    keep = list(keep)
    if class_names is None:
        class_names = list(COCO_CLASSES) if num == 91 and keep == list(COCO_CATEGORY_IDS) else \
            [f"class_{i}" for i in keep]
    if len(class_names) != len(keep) or not all(0 < k < num for k in keep):
        raise UserError(f"{len(class_names)} class names for {len(keep)} kept classes (of {num})", code=2)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = _rename(key)
        if ours is not None:
            out[ours] = value.detach().clone().float()
    for k in range(6):
        for param in ("weight", "bias"):
            out[f"conf.{k}.{param}"] = select_class_rows(state[f"{CONF_PREFIX}{k}.{param}"].float(), num, [0] + keep)
    config = ModelConfig(size=300, num_classes=len(keep) + 1, prior_config="COCO", **TORCHVISION).to_dict()
    config["source"] = SOURCE
    return {"model": out, "class_names": list(class_names), "config": config}


def convert_file(src: str, dst: str) -> Dict[str, object]:
    """Read ``src`` (weights-only), convert, write ``dst`` atomically. Returns the checkpoint dict."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UserError(f"output would overwrite the input: {dst} — choose another -o path", code=2)
    state, _ = split_checkpoint(read_checkpoint(src), src)
    ckpt = convert_torchvision_ssd(state, path=src)
    save_checkpoint(ckpt, dst)  # atomic; a full disk is one line naming dst
    return ckpt
