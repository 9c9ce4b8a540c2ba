"""Opening a model file for inference: :func:`open_predictor`, the one entry point every CLI and benchmark uses.

Accepted files: checkpoints (this project's training checkpoints, ssd.pytorch's ``ssd300_mAP_77.43_v2.pth``, bare
state_dicts; see :mod:`utils.loading.checkpoint`), ``.onnx`` exports (run on ONNX Runtime) and TorchScript exports
(run on PyTorch); both exports are written by ``python -m utils.export``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from utils.errors import UserError
from utils.inference.predictor import Predictor
from utils.inference.runners import ExportedRunner, OnnxRunner, TorchScriptRunner, default_providers
from utils.loading.checkpoint import load_model
from utils.loading.exported import is_torchscript
from utils.loading.names import resolve_class_names

BACKENDS = ("auto", "torch", "onnxruntime", "torchscript")


def model_kind(path: str, backend: str = "auto") -> str:
    """Which reader opens ``path``: ``"checkpoint"``, ``"onnx"`` or ``"torchscript"``.

    ``backend``: ``auto`` (``.onnx`` → ONNX Runtime, else PyTorch), ``torch`` (a checkpoint or a TorchScript export,
    told apart by content), ``onnxruntime`` (``.onnx`` only) or ``torchscript``.
    """
    is_onnx = path.lower().endswith(".onnx")
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not known; use {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}",
                        code=2)
    if backend == "onnxruntime":
        if not is_onnx:
            raise UserError(f"--backend onnxruntime needs an .onnx model, got {path} — export one with "
                            "python -m utils.export or use --backend torch", code=2)
        return "onnx"
    if backend == "torchscript":
        return "torchscript"
    if is_onnx:
        if backend == "torch":
            raise UserError(f"{path} is an ONNX model; use --backend onnxruntime (or auto)", code=2)
        return "onnx"
    return "torchscript" if is_torchscript(path) else "checkpoint"


def open_predictor(path: str, backend: str = "auto", *, device: torch.device = torch.device("cpu"),
                   amp: bool = False, compile: bool = False, class_names: Optional[Sequence[str]] = None,
                   num_classes: Optional[int] = None, size: Optional[int] = None, top_k: int = 200,
                   conf_thresh: float = 0.01, nms_thresh: float = 0.45, score_threshold: float = 0.0) -> Predictor:
    """The one way to open a model for inference: a checkpoint (this project's or ssd.pytorch's), an exported
    ``.onnx`` or TorchScript file → :class:`Predictor`. Raises ``UserError`` with a one-line reason.

    Args:
        backend: see :func:`model_kind`.
        device, amp, compile: where and how a checkpoint's network runs. Exported files run in float32 on the CPU
            (ONNX Runtime takes its CUDA provider when ``device`` is CUDA and it has one); ``amp`` and ``compile``
            do not apply to them.
        class_names: names without background; override the file's (default: the file's, else VOC / COCO /
            class_N by the class count). Their count must fit the model (``UserError``, code 2).
        num_classes, size: when given, must agree with the file.
        top_k, conf_thresh, nms_thresh: Detect's settings (files with NMS built in accept only a smaller ``top_k``
            and a higher ``conf_thresh``; see :class:`utils.inference.runners.ExportedRunner`).
        score_threshold: detections at or below it are dropped when converted to pixels.
    """
    kind = model_kind(path, backend)
    if kind == "checkpoint":
        model, meta = load_model(path, "test", num_classes=num_classes, size=size, top_k=top_k,
                                 conf_thresh=conf_thresh, nms_thresh=nms_thresh)
        names = resolve_class_names(class_names, meta["class_names"], model.num_classes, path)
        return Predictor(model, names, model.size, device, amp, score_threshold, compile=compile)
    if kind == "onnx":
        runner: ExportedRunner = OnnxRunner(path, default_providers(device), None, top_k, conf_thresh, nms_thresh)
    else:
        runner = TorchScriptRunner(path, top_k, conf_thresh, nms_thresh)
    if size is not None and size != runner.size:
        raise UserError(f"{path} is an SSD{runner.size} export, but --size {size} was asked for — use "
                        f"--size {runner.size} (or export again at {size})", code=2)
    if num_classes is not None and num_classes != runner.num_classes:
        raise UserError(f"{path} has {runner.num_classes} classes, but {num_classes} were asked for", code=2)
    return exported_predictor(runner, class_names, score_threshold)


def exported_predictor(runner: ExportedRunner, class_names: Optional[Sequence[str]] = None,
                       score_threshold: float = 0.0) -> Predictor:
    """A :class:`Predictor` around an exported-file runner (e.g. an :class:`OnnxRunner` with its own session
    options); ``class_names`` override the file's. The runner takes and returns CPU tensors, so the Predictor
    stays on the CPU, in float32 and without channels_last."""
    names = resolve_class_names(class_names, runner.class_names, runner.num_classes, runner.path)
    return Predictor(runner, names, runner.size, torch.device("cpu"), False, score_threshold, False)
