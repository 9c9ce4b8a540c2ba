"""The paper's constants in one place: prior-box and schedule configs for SSD300/SSD512 on VOC and COCO.

Pure data; nothing here reads files or the environment.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

# Mean pixel in RGB order. ssd.pytorch subtracted (104, 117, 123) from BGR images and then flipped to RGB,
# so the network (and the released ssd300_mAP_77.43_v2.pth) sees R-123, G-117, B-104.
MEANS = (123, 117, 104)

# SSD300, VOC (ssd.pytorch's `voc`)
voc: Dict[str, Any] = {
    "num_classes": 21,
    "lr_steps": (80000, 100000, 120000),
    "max_iter": 120000,
    "feature_maps": [38, 19, 10, 5, 3, 1],
    "min_dim": 300,
    "steps": [8, 16, 32, 64, 100, 300],
    "min_sizes": [30, 60, 111, 162, 213, 264],
    "max_sizes": [60, 111, 162, 213, 264, 315],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    "variance": [0.1, 0.2],
    "clip": True,
    "name": "VOC",
}

# SSD300, COCO. ssd.pytorch had num_classes 201 here; COCO has 80 classes + background.
coco: Dict[str, Any] = {
    "num_classes": 81,
    "lr_steps": (280000, 360000, 400000),
    "max_iter": 400000,
    "feature_maps": [38, 19, 10, 5, 3, 1],
    "min_dim": 300,
    "steps": [8, 16, 32, 64, 100, 300],
    "min_sizes": [21, 45, 99, 153, 207, 261],
    "max_sizes": [45, 99, 153, 207, 261, 315],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    "variance": [0.1, 0.2],
    "clip": True,
    "name": "COCO",
}

# SSD512 (the paper's / weiliu89 Caffe recipe): scales 0.07 (VOC) / 0.04 (COCO) for conv4_3,
# then 0.15..0.90 (VOC) / 0.10..0.90 (COCO) over the remaining six maps.
voc512: Dict[str, Any] = {
    "num_classes": 21,
    "lr_steps": (80000, 100000, 120000),
    "max_iter": 120000,
    "feature_maps": [64, 32, 16, 8, 4, 2, 1],
    "min_dim": 512,
    "steps": [8, 16, 32, 64, 128, 256, 512],
    "min_sizes": [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
    "max_sizes": [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
    "variance": [0.1, 0.2],
    "clip": True,
    "name": "VOC",
}

coco512: Dict[str, Any] = {
    "num_classes": 81,
    "lr_steps": (280000, 360000, 400000),
    "max_iter": 400000,
    "feature_maps": [64, 32, 16, 8, 4, 2, 1],
    "min_dim": 512,
    "steps": [8, 16, 32, 64, 128, 256, 512],
    "min_sizes": [20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8],
    "max_sizes": [51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
    "variance": [0.1, 0.2],
    "clip": True,
    "name": "COCO",
}

# SSD200: a lighter input for CPU demos (not in the paper). VGG-16 with ceil-mode pooling gives source maps
# 25, 13 (conv7), 7, 4, 2 — five sources, 3920 priors — at (200/300)^2 = 0.44 of SSD300's FLOPs. The
# smallest prior is 0.07 of the image (SSD512's conv4_3 scale), since objects shrink with the input.
voc200: Dict[str, Any] = {
    "num_classes": 21,
    "lr_steps": (80000, 100000, 120000),
    "max_iter": 120000,
    "feature_maps": [25, 13, 7, 4, 2],
    "min_dim": 200,
    "steps": [8, 16, 32, 64, 100],
    "min_sizes": [14, 30, 60, 100, 150],
    "max_sizes": [30, 60, 100, 150, 200],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2]],
    "variance": [0.1, 0.2],
    "clip": True,
    "name": "VOC",
}

SUPPORTED_SIZES = (200, 300, 512)


def get_config(dataset: str = "VOC", size: int = 300) -> Dict[str, Any]:
    """Return a copy of the prior/schedule config for ``dataset`` (VOC, COCO or custom) at ``size``.

    Custom datasets use the VOC priors and schedule (VOC-like object scales).
    """
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"SSD input size must be one of {SUPPORTED_SIZES}, got {size}")
    is_coco = str(dataset).upper() == "COCO"
    if size == 200:  # one set of scales (the CPU-demo size); the name follows the dataset
        cfg = dict(voc200, num_classes=81, name="COCO") if is_coco else voc200
    elif size == 300:
        cfg = coco if is_coco else voc
    else:
        cfg = coco512 if is_coco else voc512
    return copy.deepcopy(cfg)
