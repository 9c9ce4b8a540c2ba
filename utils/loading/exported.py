"""The exported-file format: what ``python -m utils.export`` writes next to the graph, and reading it back.

Written by :mod:`utils.deploy.export`, read by :mod:`utils.inference.runners`; both import it from here, so
neither depends on the other for the format.

Exported graphs take ``images [B, 3, S, S]`` float32 (RGB, resized to S x S, minus ``data.config.MEANS``, CHW,
no /255). Raw exports return ``loc [B, P, 4]``, ``scores [B, P, C]`` (softmax) and ``priors [P, 4]`` center-size;
``--with-nms`` exports return ``detections [B, C, top_k, 5]`` (:class:`layers.detection.Detect`'s layout).
The metadata (string key/values, :func:`export_metadata`) travels as ONNX ``metadata_props`` or as the TorchScript
extra file ``ssd_meta.json``.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from data.config import MEANS
from ssd import SSD
from utils.errors import UserError

EXPORT_FORMAT = "ssd-export-v1"
TORCHSCRIPT_META_FILE = "ssd_meta.json"
INPUT_NAME = "images"
RAW_OUTPUTS = ("loc", "scores", "priors")
NMS_OUTPUTS = ("detections",)


def export_metadata(model: SSD, class_names: Sequence[str], with_nms: bool,
                    batch: Optional[int]) -> Dict[str, str]:
    """String key/values stored with an exported file (ONNX metadata_props / TorchScript extra file)."""
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


def is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``) rather than a ``torch.save`` checkpoint.

    Both are zip files; only TorchScript archives hold the module's code (``<name>/code/...``) and
    ``constants.pkl``. A missing or non-zip file is not TorchScript (the checkpoint reader words that error).
    """
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


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
    try:
        props = json.loads(extra[TORCHSCRIPT_META_FILE] or "{}")
    except ValueError:  # not JSON: parse_metadata words it as "not exported by utils.export"
        props = {}
    return module.eval(), parse_metadata(props if isinstance(props, dict) else {}, path)
