"""SSD: Single Shot MultiBox Detector with a VGG-16 base (Liu et al., 2016), checkpoint-compatible with
ssd.pytorch (``ssd300_mAP_77.43_v2.pth``, ``vgg16_reducedfc.pth``).

``build_ssd(phase, size, num_classes)`` is the entry point. With the defaults (``width=1.0``,
``batch_norm=False``, ``stem="vgg"``) the module and its ``state_dict`` keys are exactly ssd.pytorch's. ``width``,
``batch_norm`` and ``stem="s2"`` give the reduced-compute variant used for CPU demos (different keys, same structure).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from data.config import SUPPORTED_SIZES, get_config
from layers.detection import Detect
from layers.l2norm import L2Norm
from layers.prior_box import PriorBox, num_priors_per_location

# VGG-16 base: numbers are 3x3 conv channels, M = 2x2 max-pool, C = the same with ceil_mode (75 -> 38 at 300)
BASE_CFG: Dict[int, List[Union[int, str]]] = {
    200: [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "C", 512, 512, 512],  # 25 -> 13
    300: [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512],
    512: [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512],
}
# Extra feature layers: kernels alternate 1x1 / 3x3; "S" = the next 3x3 has stride 2, padding 1.
EXTRAS_CFG: Dict[int, List[Union[int, str]]] = {
    200: [256, "S", 512, 128, "S", 256, 128, 256],  # 13 -> 7 -> 4 -> 2
    300: [256, "S", 512, 128, "S", 256, 128, 256, 128, 256],
    512: [256, "S", 512, 128, "S", 256, 128, "S", 256, 128, "S", 256, 128],
}
# Index (in the plain VGG list) of conv4_3's ReLU: the first source is taken after it.
CONV4_3_RELU = 22


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


STEMS = ("vgg", "s2")


def vgg(cfg: Sequence[Union[int, str]], in_channels: int = 3, batch_norm: bool = False,
        width: float = 1.0, stem: str = "vgg") -> Tuple[List[nn.Module], int]:
    """VGG-16 layers up to conv7 (fc7 as a conv). Returns ``(layers, index after conv4_3's ReLU)``.

    Without batch norm the list has 35 modules with convs at 0, 2, 5, ..., 31 (conv6, 3x3 dilation 6) and 33
    (conv7, 1x1), matching ssd.pytorch's ``vgg.N`` keys.

    ``stem="s2"`` (CPU demos): conv1_1 is a 7x7 stride-2 conv and pool1 an ``nn.Identity`` — the same layers,
    keys and output sizes from conv1_2 on, but conv1_2 runs at half resolution (150x150 at 300). At a quarter
    width the full-resolution block (conv1_2 + BatchNorm + ReLU + pool1 on 16-channel maps that do not fit the
    cache) is ~30 % of a CPU training step for ~12 % of the FLOPs.
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    layers: List[nn.Module] = []
    c_in = in_channels
    convs = 0
    split = -1
    for v in cfg:
        if v == "M":
            if stem == "s2" and convs == 2:  # pool1: the stride-2 stem already halved the maps
                layers.append(nn.Identity())
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            c_out = _ch(int(v), width)
            if stem == "s2" and convs == 0:
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=7, stride=2, padding=3))
            else:
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
            convs += 1
            if convs == 10:  # conv4_3
                split = len(layers)
    c6 = _ch(1024, width)
    layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))          # pool5
    layers.append(nn.Conv2d(c_in, c6, kernel_size=3, padding=6, dilation=6))  # conv6 (atrous fc6)
    if batch_norm:
        layers.append(nn.BatchNorm2d(c6))
    layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Conv2d(c6, c6, kernel_size=1))                           # conv7 (fc7)
    if batch_norm:
        layers.append(nn.BatchNorm2d(c6))
    layers.append(nn.ReLU(inplace=True))
    return layers, split


def add_extras(cfg: Sequence[Union[int, str]], in_channels: int, size: int = 300,
               width: float = 1.0) -> List[nn.Conv2d]:
    """Extra feature layers after conv7 (each applied with a ReLU in forward; every second one is a source)."""
    layers: List[nn.Conv2d] = []
    c_in = in_channels
    kernel_3x3 = False
    for k, v in enumerate(cfg):
        if c_in != "S":
            if v == "S":
                layers.append(nn.Conv2d(c_in, _ch(int(cfg[k + 1]), width), kernel_size=3, stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(c_in, _ch(int(v), width), kernel_size=3 if kernel_3x3 else 1))
            kernel_3x3 = not kernel_3x3
        c_in = v if v == "S" else _ch(int(v), width)
    if size == 512:  # SSD512's last extra (conv12_2): 4x4 conv, 2x2 -> 1x1
        layers.append(nn.Conv2d(c_in, _ch(256, width), kernel_size=4, padding=1))
    return layers


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    Args:
        phase: ``"train"`` → forward returns ``(loc [B, P, 4], conf [B, P, C] logits, priors [P, 4] center-size)``;
            ``"test"`` → forward returns detections ``[B, C, top_k, 5]`` (see :class:`layers.detection.Detect`).
        size: input side, 300 or 512 (200: the lighter CPU-demo input, five source maps).
        num_classes: including background (21 for VOC).
        cfg: prior config (``data.config``); default VOC priors, COCO priors when num_classes == 81.
        width: channel multiplier of base and extras (1.0 = the paper).
        batch_norm: BatchNorm after every base/extra conv (for training from scratch).
        stem: ``"vgg"`` (the paper) or ``"s2"``: conv1_1 7x7 stride 2 and no pool1 (CPU demos; see :func:`vgg`).
    """

    def __init__(self, phase: str, size: int = 300, num_classes: int = 21, cfg: Optional[Dict[str, Any]] = None,
                 width: float = 1.0, batch_norm: bool = False, top_k: int = 200, conf_thresh: float = 0.01,
                 nms_thresh: float = 0.45, stem: str = "vgg") -> None:
        super().__init__()
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        if size not in SUPPORTED_SIZES:
            raise ValueError(f"SSD input size must be one of {SUPPORTED_SIZES}, got {size}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.phase = phase
        self.size = size
        self.num_classes = num_classes
        self.width = width
        self.batch_norm = batch_norm
        self.stem = stem
        self.cfg = cfg if cfg is not None else get_config("COCO" if num_classes == 81 else "VOC", size)
        if self.cfg["min_dim"] != size:
            raise ValueError(f"config is for size {self.cfg['min_dim']}, model size is {size}")
        self.register_buffer("priors", PriorBox(self.cfg).forward(), persistent=False)  # [P, 4] cxcywh

        base, split = vgg(BASE_CFG[size], 3, batch_norm, width, stem)
        self._split = split
        self.vgg = nn.ModuleList(base)
        c4 = _ch(512, width)
        c7 = _ch(1024, width)
        # ParseNet's scale 20 is for 512 channels; narrower models start at the same per-channel magnitude
        # (20 / sqrt(512)), else the conv4_3 source of a width-0.25 model starts 2x louder than the others
        self.L2Norm = L2Norm(c4, 20.0 * math.sqrt(c4 / 512))
        extras = add_extras(EXTRAS_CFG[size], c7, size, width)
        self.extras = nn.ModuleList(extras)
        if batch_norm:
            self.extras_bn = nn.ModuleList([nn.BatchNorm2d(e.out_channels) for e in extras])
        source_channels = [c4, c7] + [e.out_channels for e in extras[1::2]]
        anchors = num_priors_per_location(self.cfg)
        if len(anchors) != len(source_channels):
            raise ValueError("config has a different number of feature maps than the network")
        self.loc = nn.ModuleList([nn.Conv2d(c, a * 4, kernel_size=3, padding=1)
                                  for c, a in zip(source_channels, anchors)])
        self.conf = nn.ModuleList([nn.Conv2d(c, a * num_classes, kernel_size=3, padding=1)
                                   for c, a in zip(source_channels, anchors)])
        self.detect = Detect(num_classes, 0, top_k, conf_thresh, nms_thresh, self.cfg["variance"])
        self.reset_head_parameters()

    def reset_head_parameters(self) -> None:
        """ssd.pytorch's init: xavier-uniform weights, zero bias for extras, loc and conf."""
        for module in (self.extras, self.loc, self.conf):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_background_prior(self, p: float = 0.99) -> None:
        """Set the confidence heads' biases so that every prior starts at ``P(background) = p``.

        From scratch, the zero-bias start (ssd.pytorch's) spends its first hundreds of iterations learning that
        almost every prior is background; starting there (a prior-probability init, as RetinaNet does for its
        focal loss) made the cpu-demo recipe reach a clearly higher mAP in the same number of iterations.
        """
        if not 0.0 < p < 1.0:
            raise ValueError(f"background prior must be in (0, 1), got {p}")
        bias = math.log(p * (self.num_classes - 1) / (1.0 - p))  # softmax: e^b / (e^b + C - 1) = p
        for head in self.conf:
            b = head.bias.view(-1, self.num_classes)  # [anchors, C]
            b.zero_()
            b[:, 0] = bias

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The source maps: ``[B, C_k, H_k, W_k]`` for k = conv4_3 (L2-normalised), conv7, extras."""
        sources = []
        for layer in self.vgg[: self._split]:
            x = layer(x)
        sources.append(self.L2Norm(x))
        for layer in self.vgg[self._split:]:
            x = layer(x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = layer(x)
            if self.batch_norm:
                x = self.extras_bn[k](x)
            x = F.relu(x, inplace=True)
            if k % 2 == 1:
                sources.append(x)
        return sources

    def forward_raw(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Network outputs without decoding: ``loc [B, P, 4]``, ``conf [B, P, C]`` logits."""
        batch = x.shape[0]
        locs, confs = [], []
        for src, loc_head, conf_head in zip(self.features(x), self.loc, self.conf):
            # NCHW -> NHWC -> [B, H*W*A, k]: priors ordered (row, col, anchor) like PriorBox
            locs.append(loc_head(src).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            confs.append(conf_head(src).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes))
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)

    def detect_inputs(self, loc: torch.Tensor,
                      conf: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_raw`'s outputs → what :class:`~layers.detection.Detect` takes: ``loc [B, P, 4]`` as is,
        ``scores [B, P, C]`` float32 softmax probabilities (float32 also under autocast, so that thresholds and
        ties do not depend on the precision the network ran in) and ``priors [P, 4]`` center-size relative.

        The one place the class scores are made: :meth:`postprocess`, the exported graphs and the benchmarks use it.
        """
        return loc, F.softmax(conf.float(), dim=-1), self.priors

    def postprocess(self, loc: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_raw`'s outputs → detections ``[B, C, top_k, 5]`` (softmax + Detect; see
        :class:`layers.detection.Detect` for the layout). The test-phase forward is ``postprocess(*forward_raw(x))``;
        the compiled predictor runs it after its compiled network."""
        return self.detect(*self.detect_inputs(loc, conf))

    def forward(self, x: torch.Tensor):
        loc, conf = self.forward_raw(x)
        if self.phase == "test":
            return self.postprocess(loc, conf)
        return loc, conf, self.priors

    def load_weights(self, path: str) -> None:
        """ssd.pytorch's method: load a state_dict file into this model (strict; ``weights_only=True``, so a file
        that would run code is refused). The CLIs open files through ``utils.loading``, which words errors."""
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
        if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
            state = {k[len("module."):]: v for k, v in state.items()}
        self.load_state_dict(state, strict=True)


def build_ssd(phase: str, size: int = 300, num_classes: int = 21, cfg: Optional[Dict[str, Any]] = None,
              width: float = 1.0, batch_norm: bool = False, stem: str = "vgg", **kwargs: Any) -> SSD:
    """Build an SSD. Same call as ssd.pytorch; raises ``ValueError`` on an unsupported phase, size or stem."""
    return SSD(phase, size, num_classes, cfg=cfg, width=width, batch_norm=batch_norm, stem=stem, **kwargs)
