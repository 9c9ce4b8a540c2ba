"""Run exported SSDs (``.onnx``, fp32 or int8 QDQ, with or without NMS; or an OpenVINO IR ``.xml``) on OpenVINO.

:class:`OpenVinoRunner` has the contract of :class:`utils.inference.runners.OnnxRunner`: a callable
``x [B, 3, S, S] float32 (preprocessed) → detections [B, C, top_k, 5]`` (relative coordinates, Detect's layout),
so :class:`utils.inference.predictor.Predictor` serves it with the same pre-processing, Detect and pixels.

Precision (``--precision``) means the same on every backend:

* ``fp32``: ``INFERENCE_PRECISION_HINT f32``. Set explicitly because OpenVINO's CPU plugin otherwise runs *bf16*
  on every CPU with native bf16 (AVX-512 bf16 or AMX), which would change the numbers of an "fp32" run.
* ``bf16``: ``INFERENCE_PRECISION_HINT bf16``; refused (UserError) on a CPU without bf16 instructions, where
  OpenVINO would quietly run fp32 instead.
* ``int8``: a statically quantized QDQ file (``python -m utils.export MODEL --int8 --calib DIR``, see
  :mod:`utils.deploy.quantize`); the layers left unquantized run in fp32. Runs on any x86 CPU, natively with
  VNNI / AMX (a warning says so where neither is present).

``None`` picks what the file is (int8 for a quantized file, else fp32). The file's metadata (class names, size,
thresholds) is read from the model's ``rt_info['framework']``, where OpenVINO keeps ONNX ``metadata_props`` (and
which an IR serialised from it keeps too), so no ``onnx`` package is needed at run time.

The graph is reshaped to a static batch and compiled once per batch size seen (the CPU plugin runs static shapes
faster than dynamic ones); files with a fixed batch are run in chunks of it by :class:`ExportedRunner`.
``openvino`` is optional: imported only here, its absence is a :class:`~utils.errors.UserError`.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from utils.cpu import precision_problem
from utils.errors import UserError
from utils.inference.runners import ExportedRunner, check_file_precision, file_precision, warn_slow_int8
from utils.loading.exported import parse_metadata

OPENVINO_MISSING = "openvino is not installed: pip install openvino (needed for --backend openvino)"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
MAX_COMPILED = 4  # batch sizes kept compiled at once


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # opened once: keep_signal_stack runs around every inference call


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run OpenVINO calls without letting them change this thread's alternate signal stack (Linux).

    OpenVINO's CPU plugin installs an alternate signal stack on the calling thread and can free it while it is still
    installed. Python installs its signal handlers with SA_ONSTACK, so the next handled signal (e.g. the SIGCHLD that
    PyTorch's DataLoader listens for) was delivered onto freed memory and the process died with SIGSEGV
    (si_code SI_KERNEL) — seen in the test suite after the OpenVINO tests, while waiting on a subprocess.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = _libc()
    saved = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


def import_openvino() -> Any:
    """The ``openvino`` module, or a UserError with the install command."""
    try:
        import openvino
    except ImportError:
        raise UserError(OPENVINO_MISSING) from None
    return openvino


def read_metadata(model: Any) -> Dict[str, str]:
    """Our export metadata from an OpenVINO model (ONNX ``metadata_props`` live in ``rt_info['framework']``)."""
    rt = model.get_rt_info()
    keys = list(rt["framework"]) if "framework" in rt else []
    return {str(k): model.get_rt_info(["framework", str(k)]).astype(str) for k in keys}


def check_precision(precision: str, file_kind: str, path: str, capabilities: Sequence[str]) -> None:
    """UserError when ``precision`` cannot run for this file on this CPU; a warning when it runs but slowly."""
    check_file_precision(precision, file_kind, path)
    if precision == "bf16" and "BF16" not in capabilities:
        why = precision_problem("bf16") or "OpenVINO reports no bf16 support on this CPU"
        raise UserError(f"--precision bf16 is not available here: {why}", code=2)
    if precision == "int8":
        warn_slow_int8()


class OpenVinoRunner(ExportedRunner):
    """An exported SSD on OpenVINO's CPU plugin: callable ``x [B, 3, S, S] → [B, C, top_k, 5]`` (CPU tensor).

    Args:
        path: ``.onnx`` written by ``python -m utils.export`` (fp32, or int8 from ``--int8``), or an IR ``.xml``.
        precision: ``'fp32'``, ``'bf16'``, ``'int8'`` or None (what the file is); see the module docs.
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all physical cores).
        device: OpenVINO device name (``'CPU'``; others untested).
        top_k, conf_thresh, nms_thresh: see :class:`ExportedRunner`.
    """

    def __init__(self, path: str, precision: Optional[str] = None, threads: Optional[int] = None,
                 device: str = "CPU", top_k: Optional[int] = None, conf_thresh: Optional[float] = None,
                 nms_thresh: Optional[float] = None) -> None:
        ov = import_openvino()
        if not os.path.isfile(path):
            raise UserError(f"model not found: {path} — check the path or export one with "
                            "`python -m utils.export MODEL --format onnx -o FILE`")
        if threads is not None and threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}", code=2)
        try:
            with keep_signal_stack():
                self.core = ov.Core()
                self.model = self.core.read_model(path)
        except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses for unreadable files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load {path} with OpenVINO: {first} — export it again") from None
        props = read_metadata(self.model)
        meta = parse_metadata(props, path)
        super().__init__(meta, path, top_k, conf_thresh, nms_thresh)
        kind = file_precision(props)
        self.precision = precision or kind
        with keep_signal_stack():
            capabilities = self.core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        check_precision(self.precision, kind, path, capabilities)
        self.device = device
        self.config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision],
                                       "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        names = [o.get_any_name() for o in self.model.outputs]
        wanted = props.get("outputs", "").split(",")  # "loc,scores,priors" or "detections"
        self.output_index = [names.index(n) for n in wanted] if set(wanted) <= set(names) else list(range(len(names)))
        self._compiled: Dict[int, Any] = {}

    def _request(self, batch: int) -> Any:
        """An infer request of the graph compiled for ``batch`` images (compiled on first use, a few kept)."""
        with keep_signal_stack():
            return self._compiled_request(batch)

    def _compiled_request(self, batch: int) -> Any:
        if batch not in self._compiled:
            if len(self._compiled) >= MAX_COMPILED:
                self._compiled.pop(next(iter(self._compiled)))
            model = self.model.clone()
            shape = list(model.inputs[0].get_partial_shape())
            shape[0] = batch
            model.reshape({model.inputs[0].get_any_name(): shape})
            compiled = self.core.compile_model(model, self.device, self.config)
            self._compiled[batch] = compiled.create_infer_request()
        return self._compiled[batch]

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        request = self._request(int(x.shape[0]))
        with keep_signal_stack():
            request.infer({0: x.numpy()}, share_inputs=True)  # synchronous: x outlives the call
        # copies: the request's output buffers are reused by the next call
        return tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True))
                     for i in self.output_index)

    def describe(self) -> Dict[str, Any]:
        """What actually runs: precision asked, OpenVINO's execution precision and threads (for logs/benchmarks)."""
        info: Dict[str, Any] = {"backend": "openvino", "precision": self.precision, "device": self.device}
        if self._compiled:
            compiled = next(iter(self._compiled.values())).get_compiled_model()
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            info["inference_precision"] = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
            info["threads"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))
            info["conv_precisions"] = conv_precisions(compiled)
        return info


def conv_precisions(compiled: Any) -> Dict[str, int]:
    """``{runtime precision: count}`` of the convolutions OpenVINO actually executes (its runtime graph), e.g.
    ``{'u8': 34, 'f32': 1}`` for an int8 file with the first conv kept in fp32 — proof that int8 runs as int8."""
    counts: Dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution" and "runtimePrecision" in info:
            precision = info["runtimePrecision"].astype(str)
            counts[precision] = counts.get(precision, 0) + 1
    return counts
