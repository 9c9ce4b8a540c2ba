"""Export an SSD to ONNX or TorchScript, optionally with decoding and NMS inside the exported graph.

``python -m utils.export MODEL --format onnx|torchscript -o FILE [--size 300|512] [--batch dynamic|N]
[--with-nms] [--opset N]``

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
:class:`utils.deploy.runners.OnnxRunner` runs the PyTorch Detect); ``--with-nms`` makes the file self-contained
(image in, boxes out) for runtimes without PyTorch. Both give Detect's detections (ties aside).

Metadata travels with the file: ONNX ``metadata_props`` / TorchScript extra file ``ssd_meta.json`` hold the class
names, size, thresholds, variances, means and output layout (see :func:`export_metadata`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from layers.box_utils import decode
from utils.cli import Parser
from utils.errors import UserError, run_cli
from utils.io import atomic_write

EXPORT_FORMAT = "ssd-export-v1"
TORCHSCRIPT_META_FILE = "ssd_meta.json"
INPUT_NAME = "images"
RAW_OUTPUTS = ("loc", "scores", "priors")
NMS_OUTPUTS = ("detections",)
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

    def __init__(self, model: nn.Module, with_nms: bool = False, onnx_nms: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_nms = with_nms
        self.post = DetectionGraph.from_detect(model.detect, onnx_nms) if with_nms else None

    def forward(self, images: torch.Tensor):
        loc, conf = self.model.forward_raw(images)
        scores = F.softmax(conf.float(), dim=-1)
        priors = self.model.priors
        if self.post is not None:
            return self.post(loc.float(), scores, priors)
        # "* 1" makes priors a node output rather than a bare initializer, which some runtimes refuse as an output
        return loc, scores, priors * 1.0


# ---------------------------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------------------------

def export_metadata(model: nn.Module, class_names: Sequence[str], with_nms: bool,
                    batch: Optional[int]) -> Dict[str, str]:
    """String key/values stored with an exported file (ONNX metadata_props / TorchScript extra file)."""
    from data.config import MEANS

    detect = model.detect
    return {
        "format": EXPORT_FORMAT,
        "class_names": json.dumps(list(class_names)),
        "num_classes": str(model.num_classes),
        "size": str(model.size),
        "with_nms": "1" if with_nms else "0",
        "batch": "dynamic" if batch is None else str(batch),
        "top_k": str(detect.top_k),
        "nms_top_k": str(detect.nms_top_k),
        "conf_thresh": repr(float(detect.conf_thresh)),
        "nms_thresh": repr(float(detect.nms_thresh)),
        "variance": json.dumps([float(v) for v in detect.variance]),
        "means_rgb": json.dumps(list(MEANS)),
        "input": f"{INPUT_NAME} [B,3,{model.size},{model.size}] float32 RGB minus means_rgb, CHW, no /255",
        "outputs": ",".join(NMS_OUTPUTS if with_nms else RAW_OUTPUTS),
    }


def parse_metadata(props: Dict[str, str], path: str) -> Dict[str, Any]:
    """Inverse of :func:`export_metadata` (typed values). UserError when the file was not made by this exporter."""
    if props.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path} was not exported by utils.export (no '{EXPORT_FORMAT}' metadata) — export it with "
                        "`python -m utils.export MODEL --format onnx -o FILE`")
    try:
        return {
            "class_names": list(json.loads(props["class_names"])),
            "num_classes": int(props["num_classes"]),
            "size": int(props["size"]),
            "with_nms": props["with_nms"] == "1",
            "batch": None if props["batch"] == "dynamic" else int(props["batch"]),
            "top_k": int(props["top_k"]),
            "nms_top_k": int(props["nms_top_k"]),
            "conf_thresh": float(props["conf_thresh"]),
            "nms_thresh": float(props["nms_thresh"]),
            "variance": [float(v) for v in json.loads(props["variance"])],
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: damaged export metadata ({type(exc).__name__}: {exc}) — export the model "
                        "again") from None


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


def load_torchscript(path: str, map_location: str = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """``torch.jit.load`` an exported file; returns ``(module, parsed metadata)``."""
    if not os.path.isfile(path):
        raise UserError(f"TorchScript file not found: {path} — check the path")
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(path, map_location=map_location, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(f"cannot load {path} as TorchScript ({lines[0] if lines else type(exc).__name__}) — "
                        "export it again") from None
    props = json.loads(extra[TORCHSCRIPT_META_FILE] or "{}")
    return module.eval(), parse_metadata(props, path)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------

def _parse_batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer, got {value!r}") from None
    if batch < 1:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
    return batch



def build_parser() -> argparse.ArgumentParser:
    p = Parser("-m utils.export",
                                description="Export an SSD checkpoint to ONNX or TorchScript.")
    p.add_argument("model", help="checkpoint (.pth): ssd.pytorch weights or a training checkpoint")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("-o", "--output", required=True, help="file to write (.onnx / .pt)")
    p.add_argument("--size", type=int, choices=(200, 300, 512), default=None,
                   help="input size; must match the checkpoint (default: read from it)")
    p.add_argument("--batch", type=_parse_batch, default=None, metavar="dynamic|N",
                   help="batch size of the exported graph (default: dynamic)")
    p.add_argument("--with-nms", action="store_true",
                   help="put decoding + per-class NMS in the graph: output detections [B, C, top_k, 5]")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--top-k", type=int, default=200, help="detections kept per class (Detect's top_k)")
    p.add_argument("--conf-thresh", type=float, default=0.01, help="per-class score threshold before NMS")
    p.add_argument("--nms-thresh", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--class-names", default=None,
                   help="text file with one class name per line (default: the checkpoint's, else VOC/COCO/class_N)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the exported file against PyTorch on one random batch")
    return p


def _read_names(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise UserError(f"class names file not found: {path} — give a text file with one name per line", code=2)
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


CHECK_TOLERANCE = 1e-4


def check_export(model: nn.Module, path: str, fmt: str, batch: Optional[int]) -> float:
    """Run the exported file and PyTorch on one random image-like batch; return the max relative difference.

    Raw exports compare ``loc``, ``scores`` and ``priors``. NMS exports compare the score column of the detections
    with :class:`layers.detection.Detect`'s (boxes with exactly equal scores may come in another order, so the
    per-class score sequences are what must agree). A dynamic-batch file is run at batch 2 (it was traced at 1).
    """
    from utils.deploy.runners import load_exported

    runner = load_exported(path, fmt)
    x = _example_input(model, batch or 2)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if runner.with_nms:
            expected: Tuple[torch.Tensor, ...] = (model.detect(*_raw_for_detect(model, x))[..., 0],)
            got: Tuple[torch.Tensor, ...] = (runner.outputs(x)[0][..., 0],)
        else:
            expected, got = ExportableSSD(model).eval()(x), runner.outputs(x)
    worst = 0.0
    for e, g in zip(expected, got):
        worst = max(worst, float((e - g).abs().max() / e.abs().max().clamp(min=1e-6)))
    return worst


def _raw_for_detect(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loc, conf = model.forward_raw(x)
    return loc, F.softmax(conf.float(), dim=-1), model.priors


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from utils.loading.checkpoint import default_class_names, load_model

    for flag, value in (("--top-k", args.top_k), ("--opset", args.opset)):
        if value < 1:
            raise UserError(f"{flag} must be positive, got {value}", code=2)
    if not 0 < args.nms_thresh <= 1 or not 0 <= args.conf_thresh < 1:
        raise UserError("--nms-thresh must be in (0, 1] and --conf-thresh in [0, 1)", code=2)
    model, meta = load_model(args.model, "test", size=args.size, top_k=args.top_k, conf_thresh=args.conf_thresh,
                             nms_thresh=args.nms_thresh)
    names = _read_names(args.class_names) if args.class_names else (
        meta["class_names"] or default_class_names(model.num_classes))
    if len(names) != model.num_classes - 1:
        raise UserError(f"{len(names)} class names for a model with {model.num_classes - 1} classes "
                        f"({args.class_names or args.model})", code=2)
    if args.format == "onnx":
        export_onnx(model, args.output, names, args.with_nms, args.batch, args.opset)
    else:
        export_torchscript(model, args.output, names, args.with_nms, args.batch)
    kind = "detections [B, C, top_k, 5]" if args.with_nms else "loc, scores, priors"
    print(f"wrote {args.output} ({args.format}, SSD{model.size}, {model.num_classes} classes, "
          f"batch {args.batch or 'dynamic'}, outputs: {kind})")
    if not args.no_check:
        try:
            diff = check_export(model, args.output, args.format, args.batch)
        except UserError as exc:  # e.g. onnxruntime missing: the file is written, only the check is skipped
            print(f"check skipped: {exc.message}", file=sys.stderr)
        else:
            print(f"check: max relative difference vs PyTorch {diff:.2e} on a random batch")
            if diff > CHECK_TOLERANCE:
                what = ("a detection score/IoU right at a threshold can flip" if args.with_nms
                        else "the runtime computes the network differently")
                print(f"check failed: {args.output} differs from PyTorch by more than {CHECK_TOLERANCE:g} "
                      f"(relative); {what} — compare the detections before deploying it", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
