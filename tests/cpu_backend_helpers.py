"""Shared setup of the CPU-backend tests (test_openvino.py, test_int8.py): a tiny SSD300 exported raw and with NMS,
fp32 and int8, plus the fp32 PyTorch reference outputs on real (synthetic-dataset) images.

Tolerances, as a fraction of the largest |value| of the fp32 PyTorch output they are compared with:

* ``fp32``: 1e-4 — same arithmetic up to summation order.
* ``bf16``: 0.03 — bf16 keeps 8 significant bits (relative rounding 2^-9 per value) and the error compounds over
  the ~20 convolutions; measured ~0.011 on this model.
* ``int8``: 0.10 max, 0.01 mean — each conv's weights are rounded to 255 levels per channel and its input to 256
  levels per tensor (calibrated range), compounding layer by layer; measured ~0.04 max. On a random tiny model this
  only checks the quantized graph computes the same function approximately; accuracy (mAP) is measured on a
  trained model (issue 19).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

TOLERANCE = {"fp32": 1e-4, "bf16": 0.03, "int8": 0.10}
INT8_MEAN_TOLERANCE = 0.01


def rel_max(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).abs().max() / ref.abs().max().clamp(min=1e-6))


def rel_mean(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).abs().mean() / ref.abs().max().clamp(min=1e-6))


def top1_scores(detections: torch.Tensor) -> torch.Tensor:
    """``[B, C, K, 5]`` → ``[B, C]`` best score per image and class.

    Robust to reduced precision: the first detection of a class after NMS is its best-scoring candidate (never
    suppressed), a maximum, so it moves by at most the scores' own error, whatever near-ties do to the order.
    """
    return detections[:, :, 0, 0]


def build_files(folder, checkpoint: str, calib_dir: str) -> Dict[str, str]:
    """Export ``checkpoint`` to ``raw.onnx`` / ``nms.onnx`` and their int8 versions (4 calibration images)."""
    from utils.deploy.export import export_onnx
    from utils.deploy.quantize import quantize_onnx
    from utils.loading.checkpoint import load_model

    model, meta = load_model(checkpoint, "test")
    files = {}
    for kind, with_nms in (("raw", False), ("nms", True)):
        files[kind] = str(folder / f"{kind}.onnx")
        export_onnx(model, files[kind], meta["class_names"], with_nms)
        files[f"{kind}_int8"] = str(folder / f"{kind}_int8.onnx")
        quantize_onnx(files[kind], files[f"{kind}_int8"], calib_dir, num_images=4)
    return files


def reference(checkpoint: str, images: torch.Tensor) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
    """fp32 PyTorch: raw outputs ``(loc, scores, priors)`` and Detect's detections for ``images``."""
    from utils.deploy.export import ExportableSSD
    from utils.loading.checkpoint import load_model

    model, _ = load_model(checkpoint, "test")
    with torch.no_grad():
        return ExportableSSD(model.eval())(images), model(images)


def dataset_images(calib_dir: str, n: int = 2) -> torch.Tensor:
    """``n`` preprocessed test images ``[n, 3, 300, 300]`` of the synthetic dataset."""
    from data import build_dataset
    from data.transforms import preprocess_batch

    dataset = build_dataset("custom", calib_dir, "test")
    return preprocess_batch([dataset.pull_image(i % len(dataset)) for i in range(n)], 300)


def num_convs(onnx_path: str) -> int:
    import onnx

    return sum(n.op_type == "Conv" for n in onnx.load(onnx_path).graph.node)
