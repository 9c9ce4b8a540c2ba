"""Convert torchvision's ImageNet VGG-16 into SSD's base network ``vgg16_reducedfc.pth``.

Usage::

    python -m weights.convert_vgg vgg16-397923af.pth -o weights/vgg16_reducedfc.pth

The recipe is the paper's (SSD §3, "reduced fc" VGG as in DeepLab): the 13 conv layers are copied; fc6
(4096 x 25088, i.e. 4096 x 512 x 7 x 7) becomes conv6, a 3x3 kernel with dilation 6, by keeping every 4th output
filter and every 3rd spatial tap (rows/cols 0, 3, 6 of the 7x7 grid) -> 1024 x 512 x 3 x 3; fc7 (4096 x 4096)
becomes conv7, 1024 x 1024 x 1 x 1, by keeping every 4th output and every 4th input. Biases keep every 4th entry.
The output has ssd.pytorch's keys ``0.weight`` ... ``33.bias`` (30 tensors) and loads into ``SSD.vgg``.

Input scale: torchvision's VGG was trained on ``(x / 255 - mean) / std`` while SSD feeds ``x - MEANS`` (0-255,
like the Caffe VGG that ssd.pytorch's file came from). ``--fold-input-norm`` divides conv1_1 by ``255 * std``
(and moves the small mean difference into its bias) so the converted network sees what it was trained on.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping

import torch

from utils.errors import UserError
from utils.loading.checkpoint import read_checkpoint, save_checkpoint, split_checkpoint

# torchvision's vgg16 ``features`` indices of the 13 convolutions, with (out, in) channels. SSD's ``vgg`` list
# has its convolutions at the same indices (its pools differ only in ceil_mode), then conv6 at 31, conv7 at 33.
VGG16_CONVS = ((0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
               (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512))
FC6_KEY, FC7_KEY = "classifier.0", "classifier.3"
CONV6_INDEX, CONV7_INDEX = 31, 33
# torchvision's ImageNet normalisation (RGB, 0-1 scale) and SSD's mean (RGB, 0-255); see data/config.py
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
SSD_MEANS = (123.0, 117.0, 104.0)


def _expected_shapes() -> Dict[str, tuple]:
    shapes: Dict[str, tuple] = {}
    for idx, out_c, in_c in VGG16_CONVS:
        shapes[f"features.{idx}.weight"] = (out_c, in_c, 3, 3)
        shapes[f"features.{idx}.bias"] = (out_c,)
    shapes[f"{FC6_KEY}.weight"] = (4096, 512 * 7 * 7)
    shapes[f"{FC6_KEY}.bias"] = (4096,)
    shapes[f"{FC7_KEY}.weight"] = (4096, 4096)
    shapes[f"{FC7_KEY}.bias"] = (4096,)
    return shapes


def check_vgg16_state_dict(state: Mapping[str, torch.Tensor], path: str = "<state_dict>") -> None:
    """Raise :class:`UserError` unless ``state`` holds torchvision VGG-16 (no batch norm) weights."""
    hint = "pass torchvision's ImageNet VGG-16 state_dict (vgg16-397923af.pth, keys features.N / classifier.N)"
    if any(k.split(".")[0].isdigit() for k in state) and "0.weight" in state and "33.weight" in state:
        raise UserError(f"{path} is already an SSD base network (keys 0.weight ... 33.bias): put it in weights/ "
                        "as vgg16_reducedfc.pth, no conversion needed")
    if any(k.startswith("features.") and k.endswith("running_mean") for k in state):
        raise UserError(f"{path} is a batch-norm VGG (vgg16_bn), which this recipe does not cover — {hint}")
    missing, wrong = [], []
    for key, shape in _expected_shapes().items():
        if key not in state:
            missing.append(key)
        elif tuple(state[key].shape) != shape:
            wrong.append(f"{key} {tuple(state[key].shape)} (expected {shape})")
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"wrong shapes {wrong[:2]}"
        raise UserError(f"{path} is not a torchvision VGG-16 state_dict ({what}) — {hint}")


def _fold_input_normalisation(weight: torch.Tensor, bias: torch.Tensor):
    """conv1_1 for SSD's input ``x - SSD_MEANS`` equal to the original on ``(x / 255 - mean) / std``.

    Exact away from the image border (zero padding means a different pixel value in the two input scales).
    """
    scale = 255.0 * torch.tensor(TORCHVISION_STD, dtype=torch.float64)
    shift = torch.tensor(SSD_MEANS, dtype=torch.float64) - 255.0 * torch.tensor(TORCHVISION_MEAN, dtype=torch.float64)
    w = weight.double() / scale.view(1, 3, 1, 1)
    b = bias.double() + (w * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return w.to(weight.dtype), b.to(bias.dtype)


def convert_vgg16(state: Mapping[str, torch.Tensor], fold_input_norm: bool = False) -> Dict[str, torch.Tensor]:
    """torchvision VGG-16 state_dict → SSD base-network state_dict (``0.weight`` ... ``33.bias``, 30 tensors).

    Every output tensor is a fresh contiguous copy (a saved view would drag the whole 4096 x 25088 fc6 along).
    """
    check_vgg16_state_dict(state)
    out: Dict[str, torch.Tensor] = {}
    for idx, _, _ in VGG16_CONVS:
        out[f"{idx}.weight"] = state[f"features.{idx}.weight"].clone()
        out[f"{idx}.bias"] = state[f"features.{idx}.bias"].clone()
    if fold_input_norm:
        out["0.weight"], out["0.bias"] = _fold_input_normalisation(out["0.weight"], out["0.bias"])
    # fc6: a 7x7 "conv" over pool5's 512 maps -> 3x3 taps 3 apart (dilation 6 once pool5 keeps stride 1)
    fc6_w = state[f"{FC6_KEY}.weight"].reshape(4096, 512, 7, 7)
    out[f"{CONV6_INDEX}.weight"] = fc6_w[::4, :, ::3, ::3].contiguous().clone()
    out[f"{CONV6_INDEX}.bias"] = state[f"{FC6_KEY}.bias"][::4].contiguous().clone()
    # fc7: 1x1 conv, every 4th output and every 4th input (the inputs are conv6's kept filters)
    fc7_w = state[f"{FC7_KEY}.weight"]
    out[f"{CONV7_INDEX}.weight"] = fc7_w[::4, ::4].reshape(1024, 1024, 1, 1).contiguous().clone()
    out[f"{CONV7_INDEX}.bias"] = state[f"{FC7_KEY}.bias"][::4].contiguous().clone()
    return out


def convert_file(src: str, dst: str, fold_input_norm: bool = False) -> Dict[str, torch.Tensor]:
    """Read ``src`` (weights-only), convert, write ``dst`` atomically. Returns the converted state_dict."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UserError(f"output would overwrite the input: {dst} — choose another -o path", code=2)
    state, _ = split_checkpoint(read_checkpoint(src), src)
    check_vgg16_state_dict(state, src)
    out = convert_vgg16(state, fold_input_norm)
    save_checkpoint(out, dst)  # atomic; a full disk is one line naming dst
    return out
