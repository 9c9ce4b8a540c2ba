"""Opening a model file for inference: :func:`open_predictor`, the one entry point every CLI and benchmark uses.

Accepted files: checkpoints (this project's training checkpoints, ssd.pytorch's ``ssd300_mAP_77.43_v2.pth``, bare
state_dicts; see :mod:`utils.loading.checkpoint`), ``.onnx`` exports (fp32, or int8 from ``--int8``; run on ONNX
Runtime or OpenVINO), OpenVINO IR ``.xml`` files saved from them, and TorchScript exports (run on PyTorch); the
exports are written by ``python -m utils.export``.

Backend × precision (``--backend``, ``--precision``; ``--amp`` is bf16 autocast on PyTorch):

* torch (checkpoints): fp32 eager; bf16 = autocast (= ``--amp``; a warning where the CPU has no bf16
  instructions); int8 refused (it needs the calibrated ONNX export).
* onnxruntime (``.onnx``): fp32 and int8 files as they are; bf16 refused (no bf16 CPU kernels: use openvino).
* openvino (``.onnx`` / ``.xml``): fp32 (``f32`` hint: not OpenVINO's silent bf16 default), bf16 (refused on CPUs
  without native bf16), int8 files (see :mod:`utils.inference.openvino_runner`).
* torchscript (``.pt`` exports): fp32 only.

``precision=None`` means what the file is (int8 for a quantized file, else fp32; bf16 with ``amp`` on torch and
openvino). A file's precision must match the one asked for (an int8 file runs only as int8).
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch

from utils.cpu import precision_problem
from utils.errors import UserError
from utils.inference.openvino_runner import OpenVinoRunner
from utils.inference.predictor import Predictor
from utils.inference.runners import (INT8_EXPORT_HINT, ExportedRunner, OnnxRunner, TorchScriptRunner,
                                     check_file_precision, check_precision_name, check_threads, default_providers,
                                     session_options, warn_slow_int8)
from utils.loading.checkpoint import load_model
from utils.loading.exported import is_torchscript
from utils.loading.names import resolve_class_names

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "torchscript")
EXPORT_HINT = "python -m utils.export MODEL -o m.onnx"


def model_kind(path: str, backend: str = "auto") -> str:
    """Which reader opens ``path``: ``"checkpoint"``, ``"onnx"`` (ONNX Runtime), ``"openvino"`` or ``"torchscript"``.

    ``backend``: ``auto`` (``.onnx`` → ONNX Runtime, ``.xml`` → OpenVINO, else PyTorch), ``torch`` (a checkpoint or
    a TorchScript export, told apart by content), ``onnxruntime`` (``.onnx`` only), ``openvino`` (``.onnx`` or an
    IR ``.xml``) or ``torchscript``.
    """
    lower = path.lower()
    is_onnx, is_xml = lower.endswith(".onnx"), lower.endswith(".xml")
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not known; use {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}",
                        code=2)
    if backend == "onnxruntime":
        if not is_onnx:
            raise UserError(f"--backend onnxruntime needs an .onnx model, got {path} — export one with "
                            f"{EXPORT_HINT} or use --backend torch", code=2)
        return "onnx"
    if backend == "openvino":
        if not (is_onnx or is_xml):
            raise UserError(f"--backend openvino needs an exported .onnx (or OpenVINO .xml) model, got {path} — "
                            f"export one with {EXPORT_HINT}", code=2)
        return "openvino"
    if backend == "torchscript":
        return "torchscript"
    if is_onnx or is_xml:
        if backend == "torch":
            runtime = "onnxruntime or openvino" if is_onnx else "openvino"
            raise UserError(f"{path} is an {'ONNX' if is_onnx else 'OpenVINO'} model; use --backend {runtime} "
                            "(or auto)", code=2)
        return "onnx" if is_onnx else "openvino"
    return "torchscript" if is_torchscript(path) else "checkpoint"


def check_precision_flags(precision: Optional[str], amp: bool) -> None:
    """Usage errors of the flags alone: an unknown precision, or ``--amp`` (= bf16) with another precision."""
    if precision is None:
        return
    check_precision_name(precision)
    if amp and precision != "bf16":
        raise UserError(f"--amp means bf16 autocast and contradicts --precision {precision}; drop --amp or use "
                        "--precision bf16", code=2)


def open_predictor(path: str, backend: str = "auto", *, device: torch.device = torch.device("cpu"),
                   amp: bool = False, compile: bool = False, class_names: Optional[Sequence[str]] = None,
                   num_classes: Optional[int] = None, size: Optional[int] = None, top_k: int = 200,
                   conf_thresh: float = 0.01, nms_thresh: float = 0.45, score_threshold: float = 0.0,
                   precision: Optional[str] = None, threads: Optional[int] = None) -> Predictor:
    """The one way to open a model for inference: a checkpoint (this project's or ssd.pytorch's), an exported
    ``.onnx`` / OpenVINO ``.xml`` or TorchScript file → :class:`Predictor`. Raises ``UserError`` with a one-line
    reason (code 2 for contradicting or unavailable settings).

    Args:
        backend: see :func:`model_kind`.
        device, amp, compile: where and how a checkpoint's network runs (``amp``: bf16 autocast on CPUs, fp16/bf16
            on GPUs). Exported files run on the CPU (ONNX Runtime takes its CUDA provider when ``device`` is CUDA
            and it has one); ``compile`` does not apply to them, ``amp`` means bf16 on OpenVINO and is ignored by
            ONNX Runtime and TorchScript (fp32 only, as before).
        precision: ``'fp32'``, ``'bf16'``, ``'int8'`` or None; see the module docs for what each backend does.
        threads: CPU threads: ONNX Runtime's intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``, and for
            PyTorch ``torch.set_num_threads`` (process-wide). None: each runtime's default.
        class_names: names without background; override the file's (default: the file's, else VOC / COCO /
            class_N by the class count). Their count must fit the model (``UserError``, code 2).
        num_classes, size: when given, must agree with the file.
        top_k, conf_thresh, nms_thresh: Detect's settings (files with NMS built in accept only a smaller ``top_k``
            and a higher ``conf_thresh``; see :class:`utils.inference.runners.ExportedRunner`).
        score_threshold: detections at or below it are dropped when converted to pixels.
    """
    check_precision_flags(precision, amp)
    check_threads(threads)
    kind = model_kind(path, backend)
    if kind == "checkpoint":
        return _checkpoint_predictor(path, device, _torch_amp(precision, amp, device), compile, class_names,
                                     num_classes, size, top_k, conf_thresh, nms_thresh, score_threshold, threads)
    settings = (top_k, conf_thresh, nms_thresh)
    if kind == "onnx":
        runner: ExportedRunner = _onnx_runner(path, precision, threads, device, *settings)
    elif kind == "openvino":
        runner = OpenVinoRunner(path, precision or ("bf16" if amp else None), threads, "CPU", *settings)
    else:
        if precision not in (None, "fp32"):
            raise UserError(f"TorchScript exports run in fp32 only; for --precision {precision} export to ONNX "
                            f"({INT8_EXPORT_HINT if precision == 'int8' else EXPORT_HINT}) and use --backend "
                            f"{'onnxruntime or openvino' if precision == 'int8' else 'openvino'}", code=2)
        _set_torch_threads(threads)
        runner = TorchScriptRunner(path, *settings)
    if size is not None and size != runner.size:
        raise UserError(f"{path} is an SSD{runner.size} export, but --size {size} was asked for — use "
                        f"--size {runner.size} (or export again at {size})", code=2)
    if num_classes is not None and num_classes != runner.num_classes:
        raise UserError(f"{path} has {runner.num_classes} classes, but {num_classes} were asked for", code=2)
    return exported_predictor(runner, class_names, score_threshold)


def _torch_amp(precision: Optional[str], amp: bool, device: torch.device) -> bool:
    """Whether a checkpoint runs under autocast: ``--amp`` or ``--precision bf16``. int8 is refused (PyTorch
    would need its own quantized model; the calibrated int8 file is an ONNX export)."""
    if precision == "int8":
        raise UserError(f"--precision int8 runs a calibrated int8 export, not a checkpoint: write one with "
                        f"{INT8_EXPORT_HINT}, then use it with --backend onnxruntime or openvino", code=2)
    if precision != "bf16":
        return amp
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bf16; use --amp (fp16 autocast) instead", code=2)
    if dev.type == "cpu":
        why = precision_problem("bf16")
        if why:
            warnings.warn(f"--precision bf16: {why}", stacklevel=3)
    return True


def _set_torch_threads(threads: Optional[int]) -> None:
    if threads is not None:
        torch.set_num_threads(int(threads))


def _checkpoint_predictor(path: str, device: torch.device, amp: bool, compile: bool,
                          class_names: Optional[Sequence[str]], num_classes: Optional[int], size: Optional[int],
                          top_k: int, conf_thresh: float, nms_thresh: float, score_threshold: float,
                          threads: Optional[int]) -> Predictor:
    model, meta = load_model(path, "test", num_classes=num_classes, size=size, top_k=top_k,
                             conf_thresh=conf_thresh, nms_thresh=nms_thresh)
    names = resolve_class_names(class_names, meta["class_names"], model.num_classes, path)
    _set_torch_threads(threads)
    return Predictor(model, names, model.size, device, amp, score_threshold, compile=compile)


def _onnx_runner(path: str, precision: Optional[str], threads: Optional[int], device: torch.device, top_k: int,
                 conf_thresh: float, nms_thresh: float) -> OnnxRunner:
    """ONNX Runtime runs fp32 and int8 (QDQ) files as they are; bf16 it has no CPU kernels for."""
    if precision == "bf16":
        raise UserError("ONNX Runtime has no bf16 path on CPUs: use --backend openvino --precision bf16 (same "
                        f"{path}), or --backend torch --precision bf16 with the checkpoint", code=2)
    runner = OnnxRunner(path, default_providers(device), session_options(threads), top_k, conf_thresh, nms_thresh)
    check_file_precision(precision or runner.precision, runner.precision, path)
    if runner.precision == "int8":
        warn_slow_int8()
    return runner


def exported_predictor(runner: ExportedRunner, class_names: Optional[Sequence[str]] = None,
                       score_threshold: float = 0.0) -> Predictor:
    """A :class:`Predictor` around an exported-file runner (e.g. an :class:`OnnxRunner` with its own session
    options); ``class_names`` override the file's. The runner takes and returns CPU tensors, so the Predictor
    stays on the CPU, in float32 and without channels_last."""
    names = resolve_class_names(class_names, runner.class_names, runner.num_classes, runner.path)
    return Predictor(runner, names, runner.size, torch.device("cpu"), False, score_threshold, False)
