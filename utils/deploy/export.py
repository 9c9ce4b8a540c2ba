"""Export an SSD to ONNX or TorchScript, optionally with decoding and NMS inside the exported graph (library of
``python -m utils.export MODEL --format onnx|torchscript -o FILE [--size 300|512] [--batch dynamic|N]
[--with-nms] [--opset N]``, whose command line is :mod:`utils.export`).

Exported graphs take ``images [B, 3, S, S]`` float32, preprocessed as everywhere in this project (RGB, resized to
S x S, minus ``data.config.MEANS`` = (123, 117, 104), CHW, no /255). The batch axis is dynamic unless ``--batch N``.

Outputs:
    raw (default): ``loc [B, P, 4]`` encoded offsets, ``scores [B, P, C]`` softmax probabilities, and
        ``priors [P, 4]`` center-size relative (a constant of the graph, returned as a third output so the file
        alone is enough to decode; it does not depend on the input).
    ``--with-nms``: ``detections [B, C, top_k, 5]``, exactly the layout of :class:`layers.detection.Detect`:
        rows ``(score, xmin, ymin, xmax, ymax)`` relative, per class by descending score, zero rows after the last
        detection, class 0 all zeros. Decode, the per-class top-200, the score threshold and per-class NMS run in
        the graph; NMS is the standard ONNX ``NonMaxSuppression`` (one NMS "batch" per image and class), and
        ``torchvision::nms`` in TorchScript (so ``import torchvision`` before ``torch.jit.load``; in C++ link
        torchvision's ops library).

Which to use: the raw export is the most portable (any runtime; decode + NMS done by the caller, e.g.
:class:`utils.inference.runners.OnnxRunner` runs the PyTorch Detect); ``--with-nms`` makes the file self-contained
(image in, boxes out) for runtimes without PyTorch. Both give Detect's detections (ties aside).

Metadata travels with the file: ONNX ``metadata_props`` / TorchScript extra file ``ssd_meta.json`` hold the class
names, size, thresholds, variances, means and output layout (see :mod:`utils.loading.exported`).
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from layers.box_utils import decode
from ssd import SSD
from utils.errors import UserError
from utils.inference.runners import load_exported
from utils.io import atomic_write
from utils.loading.exported import (INPUT_NAME, NMS_OUTPUTS, RAW_OUTPUTS, TORCHSCRIPT_META_FILE,
                                    export_metadata)

DEFAULT_OPSET = 17
MIN_OPSET = 11  # NonMaxSuppression with float thresholds as inputs, ScatterElements, TopK with k as input


# ---------------------------------------------------------------------------------------------------------------
# NMS: one implementation for PyTorch/TorchScript, and the ONNX NonMaxSuppression node for ONNX export
# ---------------------------------------------------------------------------------------------------------------

def select_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
               score_threshold: float) -> torch.Tensor:
    """ONNX ``NonMaxSuppression`` semantics in PyTorch, for one class per NMS batch.

    ``boxes [G, K, 4]`` corner form, ``scores [G, 1, K]``. Keeps boxes with score ``> score_threshold``, suppresses
    IoU ``> iou_threshold`` within each group ``g``. Returns ``selected [N, 3]`` int64 rows ``(g, 0, k)``.

    Groups are separated by shifting each one's boxes by ``g * span`` (torchvision's batched-NMS trick), in float64
    so that the shift costs no IoU precision (as in Detect). The span comes from all ``G*K`` boxes, never empty, so
    a trace of this function has no data-dependent branch and still works when no box passes the threshold.
    """
    s = scores[:, 0, :]
    g, k = (s > score_threshold).nonzero(as_tuple=True)
    all_boxes = boxes.double()
    low = all_boxes.min()
    span = all_boxes.max() - low + 1.0
    cand = all_boxes[g, k] - low + (g.double() * span).unsqueeze(1)
    keep = nms(cand, s[g, k].double(), iou_threshold)
    return torch.stack([g[keep], torch.zeros_like(keep), k[keep]], dim=1)


class _OnnxNonMaxSuppression(torch.autograd.Function):
    """:func:`select_nms` in PyTorch; exported as one ONNX ``NonMaxSuppression`` node (legacy exporter)."""

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_output: int, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        return select_nms(boxes, scores, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_output: int, iou_threshold: float,
                 score_threshold: float) -> Any:
        max_t = g.op("Constant", value_t=torch.tensor([max_output], dtype=torch.int64))
        iou_t = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        thr_t = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        # center_point_box=0: "any diagonal pair of corners", so (xmin, ymin, xmax, ymax) is accepted as is
        return g.op("NonMaxSuppression", boxes, scores, max_t, iou_t, thr_t, center_point_box_i=0)


# ---------------------------------------------------------------------------------------------------------------
# exportable modules
# ---------------------------------------------------------------------------------------------------------------

class DetectionGraph(nn.Module):
    """Detect as static-shape tensor ops around one NMS call, so it can live inside an exported graph.

    Same result as :class:`layers.detection.Detect` (ties aside): decode, per class the ``nms_top_k`` best priors,
    scores ``> conf_thresh``, NMS at ``nms_thresh``, at most ``top_k`` per class.

    Inputs ``loc [B, P, 4]``, ``scores [B, P, C]`` (softmax), ``priors [P, 4]`` center-size.
    Output ``[B, C, top_k, 5]`` rows ``(score, xmin, ymin, xmax, ymax)`` relative.

    ``onnx_nms=True`` routes NMS through the ONNX ``NonMaxSuppression`` symbolic (for torch.onnx.export);
    otherwise :func:`select_nms` (torchvision) is called directly (eager, torch.jit.trace).
    """

    def __init__(self, num_classes: int, top_k: int = 200, conf_thresh: float = 0.01, nms_thresh: float = 0.45,
                 variance: Sequence[float] = (0.1, 0.2), nms_top_k: int = 200, onnx_nms: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.conf_thresh = float(conf_thresh)
        self.nms_thresh = float(nms_thresh)
        self.variance = tuple(float(v) for v in variance)
        self.nms_top_k = nms_top_k
        self.onnx_nms = onnx_nms

    @classmethod
    def from_detect(cls, detect: nn.Module, onnx_nms: bool = False) -> "DetectionGraph":
        if getattr(detect, "keep_top_k", None) is not None:
            raise ValueError("Detect.keep_top_k is not supported in an exported NMS graph; export without NMS")
        return cls(detect.num_classes, detect.top_k, detect.conf_thresh, detect.nms_thresh, detect.variance,
                   detect.nms_top_k, onnx_nms)

    def forward(self, loc: torch.Tensor, scores: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        fg = self.num_classes - 1
        k = min(self.nms_top_k, priors.shape[0])       # static: priors are fixed by the model
        keep_n = min(self.top_k, k)
        boxes = decode(loc, priors, self.variance)                            # [B, P, 4] xyxy
        top_scores, top_idx = scores[:, :, 1:].transpose(1, 2).topk(k, dim=2)  # [B, fg, k] descending
        # every (image, class) becomes its own NMS batch with its own k candidate boxes
        idx = top_idx.reshape(top_idx.shape[0], -1, 1).expand(-1, -1, 4)       # [B, fg*k, 4]
        cand = torch.gather(boxes, 1, idx).reshape(-1, k, 4)                   # [G, k, 4], G = B*fg
        cand_scores = top_scores.reshape(-1, 1, k)                             # [G, 1, k]
        if self.onnx_nms and torch.onnx.is_in_onnx_export():
            sel = _OnnxNonMaxSuppression.apply(cand, cand_scores, k, self.nms_thresh, self.conf_thresh)
        else:
            sel = select_nms(cand, cand_scores, self.nms_thresh, self.conf_thresh)
        # kept mask [G, k]; candidates are already by descending score, so compacting the kept ones in candidate
        # order gives each class's detections by descending score, independent of the order NMS returns them in
        flat = sel[:, 0] * k + sel[:, 2]
        keep = torch.zeros_like(cand_scores).reshape(-1).scatter(0, flat, torch.ones_like(flat, dtype=cand.dtype))
        keep = keep.reshape(-1, k)                                             # [G, k] 0/1
        # 0..k-1 built from a tensor (not arange(device=...)) so a traced graph follows its input's device
        position = torch.ones_like(keep[0]).cumsum(0) - 1.0
        order = (position + (1.0 - keep) * k).topk(keep_n, dim=1, largest=False).indices  # kept first, in order
        rows = torch.cat([cand_scores.reshape(-1, k, 1), cand], dim=2)         # [G, k, 5]
        rows = torch.gather(rows, 1, order.unsqueeze(2).expand(-1, -1, 5))
        rows = rows * torch.gather(keep, 1, order).unsqueeze(2)                # zero rows after the last kept one
        if self.top_k > keep_n:
            rows = F.pad(rows, (0, 0, 0, self.top_k - keep_n))
        out = rows.reshape(-1, fg, self.top_k, 5)
        return torch.cat([torch.zeros_like(out[:, :1]), out], dim=1)           # class 0 (background) all zeros


class ExportableSSD(nn.Module):
    """The module that gets exported: ``images [B, 3, S, S]`` → raw outputs or detections (see module docs)."""

    def __init__(self, model: SSD, with_nms: bool = False, onnx_nms: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_nms = with_nms
        self.post = DetectionGraph.from_detect(model.detect, onnx_nms) if with_nms else None

    def forward(self, images: torch.Tensor):
        loc, scores, priors = self.model.detect_inputs(*self.model.forward_raw(images))
        if self.post is not None:
            return self.post(loc.float(), scores, priors)
        # "* 1" makes priors a node output rather than a bare initializer, which some runtimes refuse as an output
        return loc, scores, priors * 1.0


# ---------------------------------------------------------------------------------------------------------------
# exporters
# ---------------------------------------------------------------------------------------------------------------

def _example_input(model: nn.Module, batch: Optional[int]) -> torch.Tensor:
    # deterministic, image-like (mean-subtracted pixels) so that the NMS path sees candidates while tracing
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch or 1, 3, model.size, model.size, generator=gen) * 255 - 120


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError("onnx is not installed: pip install onnx (needed to write ONNX files)") from None
    return onnx


def _set_static_dims(proto: Any, model: nn.Module, with_nms: bool) -> None:
    """Name the prior and class axes' sizes on the graph outputs (the tracer leaves them symbolic)."""
    num_priors, num_classes = int(model.priors.shape[0]), int(model.num_classes)
    static = {"detections": {1: num_classes}} if with_nms else {
        "loc": {1: num_priors}, "scores": {1: num_priors, 2: num_classes}}
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        for axis, value in static.get(output.name, {}).items():
            dims[axis].Clear()
            dims[axis].dim_value = value


def export_onnx(model: nn.Module, path: str, class_names: Sequence[str], with_nms: bool = False,
                batch: Optional[int] = None, opset: int = DEFAULT_OPSET) -> Dict[str, str]:
    """Write ``model`` (an :class:`ssd.SSD`) to ``path`` as ONNX (atomically). ``batch=None``: dynamic batch.

    Returns the metadata written into the file.
    """
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: ONNX export needs opset >= {MIN_OPSET}", code=2)
    onnx = _require_onnx()
    model = model.eval().float().cpu()
    net = ExportableSSD(model, with_nms, onnx_nms=True).eval()
    outputs = list(NMS_OUTPUTS if with_nms else RAW_OUTPUTS)
    dynamic_axes = None
    if batch is None:
        dynamic_axes = {INPUT_NAME: {0: "batch"}}
        dynamic_axes.update({name: {0: "batch"} for name in outputs if name != "priors"})
    meta = export_metadata(model, class_names, with_nms, batch)
    with atomic_write(path, suffix=".onnx") as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # the legacy (TorchScript-based) exporter: it supports the custom NonMaxSuppression symbolic and
            # needs no onnxscript; its deprecation and tracer warnings are expected here
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (_example_input(model, batch),), tmp, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=outputs, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        proto = onnx.load(tmp)
        _set_static_dims(proto, model, with_nms)
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = "SSD exported by utils.export; see metadata_props"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return meta


def export_torchscript(model: nn.Module, path: str, class_names: Sequence[str], with_nms: bool = False,
                       batch: Optional[int] = None) -> Dict[str, str]:
    """Write ``model`` as a traced TorchScript module (``torch.jit.load``-able) with metadata, atomically.

    The trace records tensor ops only (shapes follow the input), so the batch size stays free in both cases.
    """
    model = model.eval().float().cpu()
    net = ExportableSSD(model, with_nms, onnx_nms=False).eval()
    meta = export_metadata(model, class_names, with_nms, batch)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export but still the format C++/mobile users load
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, (_example_input(model, batch),), check_trace=False)
        with atomic_write(path, suffix=".pt") as tmp:
            torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta)})
    return meta


# ---------------------------------------------------------------------------------------------------------------
# checking an exported file against PyTorch
# ---------------------------------------------------------------------------------------------------------------

CHECK_TOLERANCE = 1e-4


def check_export(model: nn.Module, path: str, fmt: str, batch: Optional[int]) -> float:
    """Run the exported file and PyTorch on one random image-like batch; return the max relative difference.

    Raw exports compare ``loc``, ``scores`` and ``priors``. NMS exports compare the score column of the detections
    with :class:`layers.detection.Detect`'s (boxes with exactly equal scores may come in another order, so the
    per-class score sequences are what must agree). A dynamic-batch file is run at batch 2 (it was traced at 1).
    """
    runner = load_exported(path, fmt)
    x = _example_input(model, batch or 2)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if runner.with_nms:
            expected: Tuple[torch.Tensor, ...] = (model.postprocess(*model.forward_raw(x))[..., 0],)
            got: Tuple[torch.Tensor, ...] = (runner.outputs(x)[0][..., 0],)
        else:
            expected, got = ExportableSSD(model).eval()(x), runner.outputs(x)
    worst = 0.0
    for e, g in zip(expected, got):
        worst = max(worst, float((e - g).abs().max() / e.abs().max().clamp(min=1e-6)))
    return worst

