"""The model configuration: the one description from which every path (training, resume, ``--eval_every``,
eval.py, object_detection.py, export, benchmarks) builds an SSD.

Checkpoints written by this project carry it as ``config`` (:meth:`ModelConfig.to_dict`); files without it
(ssd.pytorch's ``ssd300_mAP_77.43_v2.pth``, bare state_dicts) get it read off their weights' shapes
(:meth:`ModelConfig.from_state`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Mapping, Optional

import torch

from data.config import get_config
from ssd import SSD, STEMS, build_ssd
from utils.errors import UserError

PRIOR_CONFIGS = ("VOC", "COCO")

# output channels of the 15 VGG convs at width 1.0 (conv1_1 ... conv5_3, conv6, conv7)
_VGG_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
_SIZE_BY_HEADS = {5: 200, 6: 300, 7: 512}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an SSD: enough to rebuild the network a checkpoint's weights belong to.

    Attributes:
        size: input side (300, 512; 200 for the light CPU-demo input).
        num_classes: including background (21 for VOC).
        width: channel multiplier of the VGG base and the extras (1.0 = the paper).
        batch_norm: BatchNorm after every base / extra conv.
        stem: ``"vgg"`` (the paper) or ``"s2"`` (7x7 stride-2 conv1_1, no pool1).
        prior_config: which default boxes (``data.config``): ``"VOC"`` or ``"COCO"`` scales.
    """
    size: int = 300
    num_classes: int = 21
    width: float = 1.0
    batch_norm: bool = False
    stem: str = "vgg"
    prior_config: str = "VOC"
    # post-processing conventions (issue 17, weights/behaviour.py): ssd.pytorch's by default; torchvision's
    # converted SSD300 records its own ("wh", True, 400, 200) so it runs as it was trained
    prior_clip: str = "all"
    clip_before_nms: bool = False
    nms_candidates: int = 200
    max_per_image: Optional[int] = None

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.prior_config not in PRIOR_CONFIGS:
            raise ValueError(f"prior_config must be one of {PRIOR_CONFIGS}, got {self.prior_config!r}")
        if self.prior_clip not in ("all", "wh", "none"):
            raise ValueError(f"prior_clip must be 'all', 'wh' or 'none', got {self.prior_clip!r}")

    def prior_cfg(self) -> Dict[str, Any]:
        """The ``data.config`` dict (feature maps, prior sizes, variances) of this size and prior set."""
        cfg = get_config(self.prior_config, self.size)
        cfg["clip"] = self.prior_clip
        return cfg

    def build(self, phase: str = "test", **detect_kwargs: Any) -> SSD:
        """A freshly initialised SSD of this architecture (``detect_kwargs``: ``top_k``, ``conf_thresh``, ...)."""
        model = build_ssd(phase, self.size, self.num_classes, cfg=self.prior_cfg(), width=self.width,
                          batch_norm=self.batch_norm, stem=self.stem, **detect_kwargs)
        model.detect.nms_top_k = self.nms_candidates
        model.detect.keep_top_k = self.max_per_image
        model.detect.clip = self.clip_before_nms
        return model

    def with_classes(self, num_classes: int) -> "ModelConfig":
        return replace(self, num_classes=num_classes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields stored in a checkpoint's ``config``."""
        return asdict(self)

    @classmethod
    def from_model(cls, model: SSD) -> "ModelConfig":
        clip = model.cfg["clip"]
        return cls(model.size, model.num_classes, float(model.width), bool(model.batch_norm), model.stem,
                   str(model.cfg["name"]), "all" if clip is True else ("none" if clip is False else str(clip)),
                   bool(model.detect.clip), int(model.detect.nms_top_k), model.detect.keep_top_k)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], stored: Optional[Mapping[str, Any]] = None,
                   path: str = "<checkpoint>") -> "ModelConfig":
        """The configuration of a state_dict: read off its shapes; ``stored`` (a checkpoint's ``config``)
        supplies what shapes cannot say (the prior set, an exact width)."""
        stored = stored or {}
        arch = infer_architecture(state, path)
        num_classes = arch["num_classes"]
        prior = stored.get("prior_config") or ("COCO" if num_classes == 81 else "VOC")
        return cls(size=arch["size"], num_classes=num_classes, width=float(stored.get("width") or arch["width"]),
                   batch_norm=arch["batch_norm"], stem=arch["stem"], prior_config=str(prior),
                   prior_clip=str(stored.get("prior_clip", "all")),
                   clip_before_nms=bool(stored.get("clip_before_nms", False)),
                   nms_candidates=int(stored.get("nms_candidates", 200)),
                   max_per_image=stored.get("max_per_image"))


def infer_architecture(state: Mapping[str, torch.Tensor], path: str = "<checkpoint>") -> Dict[str, Any]:
    """Read ``size``, ``num_classes``, ``width``, ``batch_norm`` and ``stem`` off the weights' shapes."""
    if "conf.0.weight" not in state or "loc.0.weight" not in state or "vgg.0.weight" not in state:
        raise UserError(f"{path} is not an SSD checkpoint (no vgg.0 / loc.0 / conf.0 weights)")
    heads = len({k.split(".")[1] for k in state if k.startswith("loc.")})
    size = _SIZE_BY_HEADS.get(heads)
    if size is None:
        raise UserError(f"{path} has {heads} detection heads; SSD300 has 6, SSD512 7 and SSD200 5")
    anchors0 = state["loc.0.weight"].shape[0] // 4
    num_classes = state["conf.0.weight"].shape[0] // anchors0
    batch_norm = any(k.startswith("vgg.") and k.endswith("running_mean") for k in state)
    stem = "s2" if state["vgg.0.weight"].shape[-1] == 7 else "vgg"
    return {"size": size, "num_classes": num_classes, "width": _infer_width(state), "batch_norm": batch_norm,
            "stem": stem, "conf0_channels": int(state["conf.0.weight"].shape[0])}


def _infer_width(state: Mapping[str, torch.Tensor]) -> float:
    """The width multiplier that reproduces every VGG conv's channel count (``round(c * width)``).

    ``vgg.0`` alone is ambiguous when ``64 * width`` is not an integer (e.g. 0.3): intersect the interval each
    conv allows and take its middle.
    """
    convs = sorted((int(k.split(".")[1]), v.shape[0]) for k, v in state.items()
                   if k.startswith("vgg.") and k.endswith(".weight") and k.split(".")[1].isdigit() and v.dim() == 4)
    if len(convs) != len(_VGG_CHANNELS):
        return state["vgg.0.weight"].shape[0] / 64.0
    lo, hi = 0.0, float("inf")
    for (_, n), c in zip(convs, _VGG_CHANNELS):
        if n > 8:  # the 8-channel floor of ssd._ch says nothing about the width
            lo, hi = max(lo, (n - 0.5) / c), min(hi, (n + 0.5) / c)
    if not lo < hi or hi == float("inf"):
        return state["vgg.0.weight"].shape[0] / 64.0
    return (lo + hi) / 2  # exact (e.g. 0.25) when the counts are exact multiples
