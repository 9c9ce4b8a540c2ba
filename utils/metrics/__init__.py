"""Metrics: devkit-exact VOC AP, COCO AP through pycocotools, and the evaluation loop behind eval.py."""
