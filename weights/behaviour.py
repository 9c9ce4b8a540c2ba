"""The post-processing conventions of the two SSD300 publishers: what a converted checkpoint records in its
``config`` so that it runs as it was trained.

ssd.pytorch and torchvision build the same SSD300 but differ in four details that change detections. They are
fields of :class:`utils.loading.config.ModelConfig`, which applies them whenever it builds a model (default boxes
and Detect), so every loader (eval.py, object_detection.py, export, ``open_predictor``, fine-tuning) honours them;
files that record nothing (ssd.pytorch's, this project's older checkpoints) get ssd.pytorch's. These tables are the
converters' source of truth (:mod:`weights.convert_torchvision` writes :data:`TORCHVISION`):

=================== ========================================  ===============================================
field               ssd.pytorch (:data:`SSD_PYTORCH`)          torchvision ``ssd300_vgg16`` (:data:`TORCHVISION`)
=================== ========================================  ===============================================
``prior_clip``      ``"all"``: clamp cx, cy, w, h to [0, 1]   ``"wh"``: clamp only w, h (114 of the 8732 COCO
                                                              priors differ, by up to 4 px at 300)
``clip_before_nms`` False: boxes are clipped after NMS        True: decoded boxes clipped to the image first
``nms_candidates``  200 per class before NMS                  400 (``topk_candidates``)
``max_per_image``   None (up to ``top_k`` per class)          200 (``detections_per_img``)
=================== ========================================  ===============================================

Input channel order is not a recorded convention: every model here takes RGB. ssd.pytorch's Caffe-trained
``ssd_300_VOC0712.pth`` (BGR) is converted by reversing conv1_1's input channels (:mod:`weights.hub`); the
registry's ``input_order`` column says what each file was trained on, as information.
"""
from __future__ import annotations

from typing import Any, Dict

SSD_PYTORCH: Dict[str, Any] = {"prior_clip": "all", "clip_before_nms": False, "nms_candidates": 200,
                               "max_per_image": None}
TORCHVISION: Dict[str, Any] = {"prior_clip": "wh", "clip_before_nms": True, "nms_candidates": 400,
                               "max_per_image": 200}
