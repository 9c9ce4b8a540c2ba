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

A batch of ``B`` images runs as ``S = min(B, threads)`` parallel streams of ``ceil(B / S)`` images each
(OpenVINO's throughput mode: each stream has its own cores and infer request), one stream (latency mode) at batch 1.
Streams need no synchronisation between cores, so a core taken away for a moment — by the video decoder and H.264
encoder of ``object_detection.py`` sharing a 2-core machine — delays one stream's images instead of stalling every
layer of the whole batch (measured on 2 cores, int8, batch 8: the same speed as one 2-thread stream on an idle
machine, 12–17 % faster beside a running encoder). The graph is reshaped to a static batch of ``ceil(B / S)`` and
compiled once per shape (the CPU plugin runs static shapes faster than dynamic ones; a last, smaller batch is
zero-padded to the shape compiled for the full one); files with a fixed batch are run in chunks of it by
:class:`ExportedRunner`, one stream each (their reshapes may hold that batch).
``openvino`` is optional: imported only here, its absence is a :class:`~utils.errors.UserError`.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from utils.cpu import precision_problem
from utils.errors import UserError
from utils.inference.runners import (ExportedRunner, check_file_precision, check_threads, file_precision,
                                     join_batches, pad_batch, warn_slow_int8)
from utils.loading.exported import parse_metadata

OPENVINO_MISSING = "openvino is not installed: pip install openvino (needed for --backend openvino)"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
MAX_COMPILED = 4  # graph shapes kept compiled at once


def plan_streams(batch: int, threads: int, streams: Optional[int] = None) -> Tuple[int, int]:
    """``(streams, images per stream)`` for a batch of ``batch`` images on ``threads`` threads: as many streams as
    threads, at most one per image (``streams`` caps it; 1 = latency mode, the whole batch in one request)."""
    limit = threads if streams is None else min(streams, threads)
    n = max(1, min(batch, limit))
    return n, math.ceil(batch / n)


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
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all physical cores), shared by the streams.
        streams: at most this many parallel streams per batch (None: one per thread; 1: latency mode).
        device: OpenVINO device name (``'CPU'``; others untested).
        top_k, conf_thresh, nms_thresh: see :class:`ExportedRunner`.
    """

    def __init__(self, path: str, precision: Optional[str] = None, threads: Optional[int] = None,
                 device: str = "CPU", top_k: Optional[int] = None, conf_thresh: Optional[float] = None,
                 nms_thresh: Optional[float] = None, streams: Optional[int] = None) -> None:
        ov = import_openvino()
        if not os.path.isfile(path):
            raise UserError(f"model not found: {path} — check the path or export one with "
                            "`python -m utils.export MODEL --format onnx -o FILE`")
        check_threads(threads)
        if streams is not None and streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        # OpenVINO's default thread count is the physical cores, as is PyTorch's: count streams against it
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
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
        # a graph exported with a fixed batch may hold that batch in its reshapes: run it only at its own batch
        self.max_streams = 1 if self.batch is not None else streams
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
        self._compiled: Dict[Tuple[int, int], List[Any]] = {}

    def _requests(self, batch: int) -> Tuple[int, List[Any]]:
        """``(images per request, one infer request per stream)`` for a batch of ``batch`` images."""
        streams, per_stream = plan_streams(batch, self.threads, self.max_streams)
        with keep_signal_stack():
            return per_stream, self._compiled_requests(streams, per_stream)

    def _compiled_requests(self, streams: int, per_stream: int) -> List[Any]:
        key = (streams, per_stream)
        if key not in self._compiled:
            if len(self._compiled) >= MAX_COMPILED:
                self._compiled.pop(next(iter(self._compiled)))
            model = self.model.clone()
            shape = list(model.inputs[0].get_partial_shape())
            shape[0] = per_stream
            model.reshape({model.inputs[0].get_any_name(): shape})
            config = dict(self.config)
            if streams > 1:
                config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
            compiled = self.core.compile_model(model, self.device, config)
            self._compiled[key] = [compiled.create_infer_request() for _ in range(streams)]
        return self._compiled[key]

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        n = int(x.shape[0])
        per_stream, requests = self._requests(n)
        # a last, smaller batch: zero images fill the shape compiled for the full one
        inputs = pad_batch(x, per_stream * len(requests)).numpy()
        with keep_signal_stack():
            for i, request in enumerate(requests):  # x outlives the requests: shared, not copied
                request.start_async({0: inputs[i * per_stream:(i + 1) * per_stream]}, share_inputs=True)
            for request in requests:
                request.wait()
        # copies: the requests' output buffers are reused by the next call
        parts = [tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True))
                       for i in self.output_index) for request in requests]
        return join_batches(parts, n)

    def describe(self) -> Dict[str, Any]:
        """What actually runs: precision asked, OpenVINO's execution precision and threads (for logs/benchmarks)."""
        info: Dict[str, Any] = {"backend": "openvino", "precision": self.precision, "device": self.device}
        if self._compiled:
            compiled = next(iter(self._compiled.values()))[0].get_compiled_model()
            info["streams"] = int(compiled.get_property("NUM_STREAMS"))
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
