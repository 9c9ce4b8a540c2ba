"""Calibrated (static) int8 quantization of an exported SSD ``.onnx`` — ONNX Runtime's ``quantize_static``.

``python -m utils.export MODEL --int8 --calib DATASET_DIR [--calib_images N]`` calls :func:`quantize_onnx` on the
fp32 export. The result is a QDQ ONNX file (``QuantizeLinear``/``DequantizeLinear`` pairs around each quantized
convolution) that ONNX Runtime runs with int8 kernels and OpenVINO turns into int8 convolutions; any runtime
that ignores the pairs still gets the right numbers, so it is one file for every backend.

Choices, and why:

* Only ``Conv`` is quantized: the convolutions are >99 % of SSD's FLOPs; L2Norm, softmax, box decoding and the
  in-graph NMS of ``--with-nms`` exports stay fp32 (quantizing scores and box coordinates would move detections
  for no speed-up).
* Weights int8 symmetric, **per output channel** (VGG's channels differ in range by orders of magnitude, a
  per-tensor scale would crush the small ones); activations uint8 asymmetric (ReLU outputs are non-negative, so
  uint8 keeps the full 8 bits; u8 x s8 is the form VNNI and AMX multiply natively).
* Calibration: ``MinMax`` ranges over ``num_images`` real images of the dataset, preprocessed by the shared
  :func:`data.transforms.preprocess_batch` (the same pixels the model sees at inference).
* ``keep_fp32``: layer groups left in fp32 — ``'first'`` (the first conv: its input is raw mean-subtracted pixels,
  not a ReLU output, and it costs < 1 % of the FLOPs), ``'loc'`` / ``'conf'`` (the prediction heads, whose outputs
  are the boxes and scores themselves). Default ``('first',)``; :func:`int8_error` measures what a choice costs.
* ``reduce_range``: 7-bit weights, for CPUs without VNNI (plain AVX2's 16-bit intermediate sums can saturate).

The file keeps the export's metadata (class names, size, thresholds — :func:`utils.deploy.export.export_metadata`)
plus ``precision = int8`` and ``quantization`` (the settings, as JSON), so every runner opens it like the fp32 one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data import build_dataset
from data.transforms import preprocess_batch
from utils.deploy.export import DEFAULT_OPSET, export_onnx
from utils.loading.exported import INPUT_NAME, parse_metadata
from utils.inference.runners import OnnxRunner
from utils.errors import UserError
from utils.io import atomic_write

KEEP_GROUPS = ("first", "loc", "conf")
DEFAULT_KEEP_FP32: Tuple[str, ...] = ("first",)
DEFAULT_CALIB_IMAGES = 64
CALIB_SPLITS = ("trainval", "train", "val", "test")
ORT_MISSING = "onnxruntime is not installed: pip install onnxruntime onnx (needed for --int8 quantization)"


def _import_quantization() -> Tuple[Any, Any]:
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError:
        raise UserError(ORT_MISSING) from None
    return onnx, quantization


# ---------------------------------------------------------------------------------------------------------------
# calibration images
# ---------------------------------------------------------------------------------------------------------------

def open_calibration_dataset(root: str) -> Any:
    """The dataset under ``root``: a custom VOC-layout folder with ``labels.txt`` (first split found of
    ``trainval``, ``train``, ``val``, ``test``), or a VOCdevkit folder (VOC2007/VOC2012 trainval)."""
    if not os.path.isdir(root):
        raise UserError(f"--calib folder not found: {root} — give a dataset folder (labels.txt, JPEGImages/, "
                        "ImageSets/Main/) or a VOCdevkit", code=2)
    if not os.path.isfile(os.path.join(root, "labels.txt")):
        if any(os.path.isdir(os.path.join(root, y)) for y in ("VOC2007", "VOC2012")):
            return build_dataset("VOC", root)
        raise UserError(f"--calib {root} has no labels.txt (nor VOC2007/VOC2012): give a custom dataset folder "
                        "or a VOCdevkit", code=2)
    sets = os.path.join(root, "ImageSets", "Main")
    for split in CALIB_SPLITS:
        if os.path.isfile(os.path.join(sets, f"{split}.txt")):
            return build_dataset("custom", root, split)
    raise UserError(f"--calib {root}: no split file ({', '.join(s + '.txt' for s in CALIB_SPLITS)}) in {sets}",
                    code=2)


def calibration_batches(dataset: Any, num_images: int, size: int, batch: int = 1) -> Iterator[np.ndarray]:
    """``num_images`` images spread evenly over ``dataset`` → float32 ``[batch, 3, size, size]`` arrays,
    preprocessed exactly as at inference (:func:`data.transforms.preprocess_batch`). The last batch is filled
    up by repeating its last image when ``batch`` does not divide ``num_images`` (fixed-batch files)."""
    n = min(num_images, len(dataset))
    if n < 1:
        raise UserError(f"calibration dataset {getattr(dataset, 'root', '')} has no images", code=2)
    picks = np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()
    for start in range(0, n, batch):
        images = [dataset.pull_image(i) for i in picks[start:start + batch]]
        images += [images[-1]] * (batch - len(images))
        yield preprocess_batch(images, size).numpy()


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over :func:`calibration_batches`."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        x = next(self.batches, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:  # the calibrator reads once; nothing to rewind
        pass


# ---------------------------------------------------------------------------------------------------------------
# which convolutions stay fp32
# ---------------------------------------------------------------------------------------------------------------

def conv_groups(proto: Any, input_name: str = "images") -> Dict[str, List[str]]:
    """Conv node names of an exported SSD by role: ``first`` (reads the image), ``loc`` / ``conf`` (the heads,
    recognised by what follows them: heads are permuted to NHWC, backbone convs feed a ReLU) and ``body``.

    ``loc`` and ``conf`` heads are told apart by their output channels: ``4 * anchors`` vs ``classes * anchors``
    (ONNX exports name them ``/loc.N/Conv`` and ``/conf.N/Conv``; the name decides when shapes are equal).
    """
    consumers: Dict[str, List[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    groups: Dict[str, List[str]] = {"first": [], "loc": [], "conf": [], "body": []}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[0] == input_name:
            groups["first"].append(node.name)
        elif "Transpose" in consumers.get(node.output[0], []):
            groups["conf" if "conf" in node.name.lower() else "loc"].append(node.name)
        else:
            groups["body"].append(node.name)
    return groups


def _excluded_nodes(proto: Any, keep_fp32: Sequence[str], input_name: str) -> List[str]:
    bad = [g for g in keep_fp32 if g not in KEEP_GROUPS]
    if bad:
        raise UserError(f"unknown layer group(s) {', '.join(bad)} to keep in fp32; use {', '.join(KEEP_GROUPS)}",
                        code=2)
    groups = conv_groups(proto, input_name)
    return [name for g in keep_fp32 for name in groups[g]]


# ---------------------------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------------------------

def quantize_onnx(fp32_path: str, out_path: str, calib_dir: str, num_images: int = DEFAULT_CALIB_IMAGES,
                  keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32, per_channel: bool = True,
                  reduce_range: bool = False, method: str = "minmax") -> Dict[str, str]:
    """Write a statically quantized (QDQ int8) copy of the fp32 export ``fp32_path`` to ``out_path`` (atomically).

    Args:
        calib_dir: dataset folder for calibration (see :func:`open_calibration_dataset`).
        num_images: calibration images (spread evenly over the split; fewer if the split is smaller).
        keep_fp32, per_channel, reduce_range: see the module docs.
        method: ``'minmax'`` (default), ``'percentile'`` (99.999th) or ``'entropy'``; the histogram methods keep
            every calibration activation in memory (~150 MB per SSD300 image), use them with few images.
    Returns the metadata written into the file.
    """
    onnx, q = _import_quantization()
    methods = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
               "entropy": q.CalibrationMethod.Entropy}
    if method not in methods:
        raise UserError(f"unknown calibration method {method!r}; use {', '.join(methods)}", code=2)
    if num_images < 1:
        raise UserError(f"--calib_images must be positive, got {num_images}", code=2)
    if not os.path.isfile(fp32_path):
        raise UserError(f"ONNX model not found: {fp32_path}")
    proto = onnx.load(fp32_path)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = parse_metadata(props, fp32_path)
    if props.get("precision") == "int8":
        raise UserError(f"{fp32_path} is already quantized: quantize the fp32 export", code=2)
    dataset = open_calibration_dataset(calib_dir)
    used = min(num_images, len(dataset))
    reader = _Reader(INPUT_NAME, calibration_batches(dataset, num_images, meta["size"], meta["batch"] or 1))
    settings = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "ops": ["Conv"],
                "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
                "activations": "uint8 asymmetric", "reduce_range": reduce_range, "method": method,
                "calib_dir": os.path.abspath(calib_dir), "calib_images": used, "keep_fp32": list(keep_fp32)}
    # (no CalibMaxIntermediateOutputs: in ORT 1.32 it discards the collected ranges instead of merging them;
    # MinMax keeps only per-tensor min/max scalars per batch anyway)
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    out_meta = dict(props, precision="int8", quantization=json.dumps(settings))
    with atomic_write(out_path, suffix=".onnx") as tmp:
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")  # "please run pre-processing first": shapes are static already
            q.quantize_static(proto, tmp, reader, quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                              per_channel=per_channel, reduce_range=reduce_range,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              nodes_to_exclude=_excluded_nodes(proto, keep_fp32, INPUT_NAME),
                              calibrate_method=methods[method], extra_options=extra)
        _write_metadata(onnx, tmp, out_meta)
    return out_meta


def export_int8(model: Any, out_path: str, class_names: Sequence[str], calib_dir: str,
                num_images: int = DEFAULT_CALIB_IMAGES, with_nms: bool = False, batch: Optional[int] = None,
                opset: Optional[int] = None, keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32,
                reduce_range: bool = False) -> Dict[str, str]:
    """``python -m utils.export MODEL --int8 --calib DIR``: export ``model`` (an :class:`ssd.SSD`) to fp32 ONNX in a
    temporary file beside ``out_path``, then write its calibrated int8 version to ``out_path``. Returns the
    metadata of the int8 file. The fp32 file is removed whatever happens."""
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    fd, fp32_path = tempfile.mkstemp(prefix=".fp32.", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        export_onnx(model, fp32_path, class_names, with_nms, batch, opset or DEFAULT_OPSET)
        return quantize_onnx(fp32_path, out_path, calib_dir, num_images, keep_fp32, reduce_range=reduce_range)
    finally:
        os.remove(fp32_path)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger; keep it off the CLI's output."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _write_metadata(onnx: Any, path: str, meta: Dict[str, str]) -> None:
    """Replace ``path``'s metadata_props with ``meta`` (the quantizer keeps only some of the source's)."""
    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "SSD exported by utils.export, int8 QDQ (utils.deploy.quantize); see metadata_props"
    onnx.save(proto, path)


def int8_error(fp32_path: str, int8_path: str, images: np.ndarray) -> Dict[str, float]:
    """How far the int8 file's raw outputs are from the fp32 file's on ``images [B, 3, S, S]`` (ONNX Runtime,
    raw exports): ``{'loc_max', 'loc_mean', 'scores_max', 'scores_mean'}`` absolute differences — to compare
    ``keep_fp32`` choices when mAP is too slow to measure."""
    ref = OnnxRunner(fp32_path).outputs(torch.from_numpy(images))
    got = OnnxRunner(int8_path).outputs(torch.from_numpy(images))
    if len(ref) != 3:
        raise UserError("int8_error compares raw exports (without --with-nms)", code=2)
    out = {}
    for name, r, g in (("loc", ref[0], got[0]), ("scores", ref[1], got[1])):
        diff = (r - g).abs()
        out[f"{name}_max"], out[f"{name}_mean"] = float(diff.max()), float(diff.mean())
    return out


def keep_fp32_sensitivity(fp32_path: str, calib_dir: str, images: np.ndarray, workdir: str,
                          num_images: int = DEFAULT_CALIB_IMAGES,
                          choices: Sequence[Sequence[str]] = ((), ("first",), ("first", "conf"),
                                                              ("first", "loc", "conf"))) -> Dict[str, Dict[str, float]]:
    """Quantize the raw fp32 export once per ``keep_fp32`` choice and measure :func:`int8_error` on ``images``.

    Which layer groups cost accuracy when quantized: the choice whose error drops most when a group is added is
    the group to keep in fp32. Returns ``{'first+conf': {'loc_max': ..., 'scores_mean': ...}, ...}`` (``'none'``
    for the empty choice). Files are written to ``workdir``.
    """
    results = {}
    for keep in choices:
        label = "+".join(keep) or "none"
        out = os.path.join(workdir, f"int8_keep_{label}.onnx")
        quantize_onnx(fp32_path, out, calib_dir, num_images, keep_fp32=keep)
        results[label] = int8_error(fp32_path, out, images)
    return results
