"""Post-processing and input conventions a checkpoint records in its ``config`` besides the architecture.

ssd.pytorch and torchvision build the same SSD300 but differ in four details that change detections; a converted
model must carry its publisher's choices so that it is used as it was trained, while ssd.pytorch-format files
(which record nothing) keep ssd.pytorch's behaviour:

=================  ========================================  ===============================================
field              ssd.pytorch (default)                     torchvision (``ssd300_vgg16``)
=================  ========================================  ===============================================
``prior_clip``     ``"all"``: clamp cx, cy, w, h to [0, 1]   ``"wh"``: clamp only w, h (114 of the 8732 COCO
                                                             priors differ, by up to 4 px at 300)
``clip_before_nms`` False: boxes are clipped after NMS        True: decoded boxes clipped to the image first
``nms_candidates``  200 per class before NMS                  400 (``topk_candidates``)
``max_per_image``   None (up to 200 per class)                200 (``detections_per_img``)
``input_order``     ``"RGB"``                                  ``"RGB"`` (``"BGR"``: a BGR-trained file as is)
=================  ========================================  ===============================================

:func:`behaviour_of` reads them from a stored config (missing = ssd.pytorch's); :func:`apply_behaviour` sets them on
a built SSD. The loader (``utils.loading``) should do the same when it builds a model — see the report of issue 17
for the change; until then the CLIs run every model with ssd.pytorch's behaviour.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from layers.prior_box import PriorBox

SSD_PYTORCH: Dict[str, Any] = {"prior_clip": "all", "clip_before_nms": False, "nms_candidates": 200,
                               "max_per_image": None, "input_order": "RGB"}
TORCHVISION: Dict[str, Any] = {"prior_clip": "wh", "clip_before_nms": True, "nms_candidates": 400,
                               "max_per_image": 200, "input_order": "RGB"}


def behaviour_of(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The behaviour fields of a stored ``config`` (a checkpoint's), ssd.pytorch's value for each one missing."""
    out = {k: config.get(k, v) for k, v in SSD_PYTORCH.items()}
    if out["input_order"] not in ("RGB", "BGR"):
        raise ValueError(f"input_order must be 'RGB' or 'BGR', got {out['input_order']!r}")
    return out


def apply_behaviour(model: torch.nn.Module, config: Mapping[str, Any]) -> Dict[str, Any]:
    """Set a built SSD's priors and Detect to the behaviour recorded in ``config``; returns the fields applied.

    Priors: rebuilt from ``model.cfg`` with ``prior_clip``. Detect: ``nms_top_k`` = ``nms_candidates``,
    ``keep_top_k`` = ``max_per_image``, ``clip`` = ``clip_before_nms`` (read by a Detect that supports it).
    ``input_order`` is the caller's business (it is about the preprocessing, not the network).
    """
    b = behaviour_of(config)
    model.priors = PriorBox(model.cfg, clip=b["prior_clip"]).forward().to(model.priors.device)
    model.detect.nms_top_k = int(b["nms_candidates"])
    model.detect.keep_top_k = b["max_per_image"]
    model.detect.clip = bool(b["clip_before_nms"])
    return b


def to_input_order(x: torch.Tensor, input_order: str) -> torch.Tensor:
    """A preprocessed RGB batch ``[B, 3, H, W]`` (mean already subtracted per channel) in ``input_order``.

    Flipping after the mean subtraction equals ssd.pytorch's Caffe pipeline (BGR image minus (104, 117, 123)),
    since the shared preprocessing subtracts the same means per colour.
    """
    return x.flip(1) if input_order == "BGR" else x
