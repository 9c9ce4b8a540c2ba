"""Run exported models (``python -m utils.export``: ONNX Runtime or TorchScript) behind the shared inference path.

A runner is a callable ``x [B, 3, S, S] float32 (preprocessed) → detections [B, C, top_k, 5]`` (relative
coordinates, :class:`layers.detection.Detect`'s layout), i.e. what :class:`utils.inference.predictor.Predictor`
expects of a model. Files exported with ``--with-nms`` already produce that tensor; for raw exports (``loc``,
``scores``, ``priors``) the runner applies the PyTorch :class:`~layers.detection.Detect` with the thresholds stored
in the file. The file format (metadata, input/output names) is :mod:`utils.loading.exported`.

Precision is a property of the file: an int8 (QDQ) file from ``python -m utils.export MODEL --int8 --calib DIR``
carries ``precision = int8`` in its metadata (:func:`file_precision`) and runs only as int8; the precision checks
shared with :mod:`utils.inference.openvino_runner` live here (:func:`check_file_precision`). The OpenVINO runner is
:class:`utils.inference.openvino_runner.OpenVinoRunner`; :func:`utils.inference.open_predictor` picks the runner.

``onnxruntime`` is an optional dependency: it is imported only when an ONNX runner is built, and its absence is a
:class:`~utils.errors.UserError` with the install command.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from layers.detection import Detect
from utils.cpu import precision_problem
from utils.errors import UserError
from utils.loading.exported import INPUT_NAME, load_torchscript, parse_metadata

ORT_MISSING = "onnxruntime is not installed: pip install onnxruntime"
PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_KEY = "precision"  # metadata key written by utils.deploy.quantize ("int8"); absent in fp32 exports
INT8_EXPORT_HINT = "python -m utils.export MODEL --int8 --calib DATASET_DIR -o m_int8.onnx"


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(ORT_MISSING) from None
    return onnxruntime


def file_precision(props: Dict[str, str]) -> str:
    """``'int8'`` for files written by :mod:`utils.deploy.quantize` (metadata ``precision = int8``), else
    ``'fp32'``. ``props``: the file's raw string metadata."""
    return "int8" if props.get(PRECISION_KEY) == "int8" else "fp32"


def check_precision_name(precision: str) -> None:
    """UserError (usage, code 2) unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not known; use one of {', '.join(PRECISIONS)}", code=2)


def check_file_precision(precision: str, file_kind: str, path: str) -> None:
    """UserError (code 2) when the precision asked for and the file's disagree: int8 needs a quantized file, and a
    quantized file runs only as int8 (its weights are int8 already; fp32/bf16 need the fp32 export)."""
    check_precision_name(precision)
    if precision == "int8" and file_kind != "int8":
        raise UserError(f"{path} is not quantized: --precision int8 needs an int8 file — write one with "
                        f"{INT8_EXPORT_HINT}", code=2)
    if precision != "int8" and file_kind == "int8":
        asked = "--precision bf16 (or --amp)" if precision == "bf16" else f"--precision {precision}"
        raise UserError(f"{path} is an int8 (quantized) file: use --precision int8 with it, or the fp32 export "
                        f"for {asked}", code=2)


def warn_slow_int8() -> None:
    """int8 runs on any x86 CPU, but without VNNI/AMX it is usually no faster than fp32: say so once."""
    why = precision_problem("int8")
    if why:
        warnings.warn(f"--precision int8: {why}", stacklevel=3)


def check_threads(threads: Optional[int]) -> None:
    """UserError (usage, code 2) unless ``threads`` is None (the runtime's default) or at least 1."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}", code=2)


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x [n, ...]`` with zero images appended up to ``size`` (a graph compiled for ``size`` images runs a smaller,
    last batch this way; :func:`join_batches` trims the extra outputs)."""
    pad = size - x.shape[0]
    return torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad > 0 else x


def join_batches(parts: Sequence[Tuple[torch.Tensor, ...]], n: int) -> Tuple[torch.Tensor, ...]:
    """The graph's outputs for consecutive chunks of one batch → the outputs for the first ``n`` images.

    Batch-dependent outputs (``loc``, ``scores`` or ``detections``) are concatenated and trimmed of padding;
    ``priors`` (the third output of a raw export: no batch axis) is taken once."""
    if len(parts) == 1 and parts[0][0].shape[0] == n:
        return parts[0]
    return tuple(torch.cat([p[i] for p in parts])[:n] if i != 2 else parts[0][i] for i in range(len(parts[0])))


class ExportedRunner:
    """Common part of the runners: metadata, batching for fixed-batch files, raw outputs → detections.

    Subclasses implement :meth:`_run` (one batch of the graph's own batch size → its outputs as CPU tensors).

    Args:
        meta: parsed export metadata (:func:`utils.loading.exported.parse_metadata`).
        top_k, conf_thresh, nms_thresh: Detect settings (default: those stored in the file). Files with NMS in
            the graph accept a smaller ``top_k`` and a higher ``conf_thresh`` (applied after the graph, same result
            as Detect with those values); anything else is a UserError asking to re-export.
    """

    def __init__(self, meta: Dict[str, Any], path: str, top_k: Optional[int] = None,
                 conf_thresh: Optional[float] = None, nms_thresh: Optional[float] = None) -> None:
        self.path = path
        self.meta = meta
        self.size: int = meta["size"]
        self.num_classes: int = meta["num_classes"]
        self.class_names: List[str] = meta["class_names"]
        self.with_nms: bool = meta["with_nms"]
        self.batch: Optional[int] = meta["batch"]
        asked = {"top_k": top_k, "conf_thresh": conf_thresh, "nms_thresh": nms_thresh}
        settings = {k: meta[k] if v is None else v for k, v in asked.items()}
        self.top_k: int = int(settings["top_k"])
        self.conf_thresh: float = float(settings["conf_thresh"])
        self.nms_thresh: float = float(settings["nms_thresh"])
        if self.with_nms:
            # A stricter score threshold or a smaller top_k give exactly Detect's result when applied after the
            # graph's NMS (boxes below the threshold come last in their class and so never suppress a kept box);
            # a looser one or another IoU threshold would need the graph re-exported.
            wrong = []
            if self.conf_thresh < meta["conf_thresh"]:
                wrong.append(f"conf_thresh {self.conf_thresh:g} < the file's {meta['conf_thresh']:g}")
            if self.top_k > meta["top_k"]:
                wrong.append(f"top_k {self.top_k} > the file's {meta['top_k']}")
            if self.nms_thresh != meta["nms_thresh"]:
                wrong.append(f"nms_thresh {self.nms_thresh:g} != the file's {meta['nms_thresh']:g}")
            if wrong:
                raise UserError(f"{path} has NMS built in with other settings: {'; '.join(wrong)} — re-export with "
                                "python -m utils.export ... --with-nms --top-k/--conf-thresh/--nms-thresh, or export "
                                "without --with-nms")
            self.detect = None
        else:
            self.detect = Detect(self.num_classes, 0, self.top_k, self.conf_thresh, self.nms_thresh,
                                 meta["variance"], meta["nms_top_k"])

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def outputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The graph's own outputs (``(loc, scores, priors)`` or ``(detections,)``) as CPU float tensors.

        Files exported with a fixed batch ``N`` are run in chunks of ``N`` (the last one zero-padded).
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.size, self.size):
            raise UserError(f"{self.path} expects input [B, 3, {self.size}, {self.size}], got {tuple(x.shape)} — "
                            f"preprocess at size {self.size}")
        x = x.detach().to("cpu", torch.float32).contiguous()
        if self.batch is None or x.shape[0] == self.batch:
            return self._run(x)
        n, parts = x.shape[0], []
        for start in range(0, n, self.batch):
            parts.append(self._run(pad_batch(x[start:start + self.batch], self.batch)))
        return join_batches(parts, n)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.outputs(x)
        if self.detect is None:
            detections = out[0][:, :, :self.top_k]
            if self.conf_thresh > self.meta["conf_thresh"]:
                detections = detections * (detections[..., :1] > self.conf_thresh)
            return detections
        loc, scores, priors = out
        return self.detect(loc, scores, priors)


class OnnxRunner(ExportedRunner):
    """An exported ``.onnx`` SSD on ONNX Runtime: callable ``x [B, 3, S, S] → [B, C, top_k, 5]`` (CPU tensor).

    Args:
        path: file written by ``python -m utils.export ... --format onnx``.
        providers: ONNX Runtime execution providers, in order of preference.
        sess_options: an ``onnxruntime.SessionOptions`` (threads, optimisation level), or None for defaults.
        top_k, conf_thresh, nms_thresh: see :class:`ExportedRunner`.
    """

    def __init__(self, path: str, providers: Sequence[str] = ("CPUExecutionProvider",), sess_options: Any = None,
                 top_k: Optional[int] = None, conf_thresh: Optional[float] = None,
                 nms_thresh: Optional[float] = None) -> None:
        ort = _import_onnxruntime()
        if not os.path.isfile(path):
            raise UserError(f"ONNX model not found: {path} — check the path or export one with "
                            "`python -m utils.export MODEL --format onnx -o FILE`")
        try:
            self.session = ort.InferenceSession(path, sess_options=sess_options, providers=list(providers))
        except Exception as exc:  # ORT raises its own exception types for bad files (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load ONNX model {path}: {first} — export it again") from None
        self.props: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        meta = parse_metadata(self.props, path)
        super().__init__(meta, path, top_k, conf_thresh, nms_thresh)
        self.precision = file_precision(self.props)  # what the file is: fp32 or int8 (QDQ)
        self.input_name = INPUT_NAME
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        results = self.session.run(self.output_names, {self.input_name: x.numpy()})
        return tuple(torch.from_numpy(r) for r in results)


class TorchScriptRunner(ExportedRunner):
    """An exported TorchScript SSD (``--format torchscript``): same contract as :class:`OnnxRunner`, run on the CPU.

    Files with NMS call ``torchvision::nms``: registered here by :mod:`layers.box_utils`' torchvision import."""

    def __init__(self, path: str, top_k: Optional[int] = None, conf_thresh: Optional[float] = None,
                 nms_thresh: Optional[float] = None) -> None:
        self.module, meta = load_torchscript(path)
        super().__init__(meta, path, top_k, conf_thresh, nms_thresh)

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def load_exported(path: str, fmt: Optional[str] = None, **kwargs: Any) -> ExportedRunner:
    """A runner for an exported file; ``fmt`` is ``'onnx'`` or ``'torchscript'`` (default: by extension)."""
    fmt = fmt or ("onnx" if path.lower().endswith(".onnx") else "torchscript")
    if fmt == "onnx":
        return OnnxRunner(path, **kwargs)
    if fmt == "torchscript":
        return TorchScriptRunner(path, **kwargs)
    raise ValueError(f"unknown export format {fmt!r}")


def session_options(threads: Optional[int] = None) -> Any:
    """``onnxruntime.SessionOptions`` running on ``threads`` intra-op threads (None: ONNX Runtime's defaults,
    returned as None)."""
    check_threads(threads)
    if threads is None:
        return None
    options = _import_onnxruntime().SessionOptions()
    options.intra_op_num_threads = int(threads)
    return options


def default_providers(device: Optional[torch.device] = None) -> List[str]:
    """CPU, or CUDA first when ``device`` is CUDA and this onnxruntime build has the CUDA provider."""
    if device is not None and torch.device(device).type == "cuda":
        ort = _import_onnxruntime()
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]

