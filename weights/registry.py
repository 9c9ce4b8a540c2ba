"""The registry of pretrained models: one table, name → where the file comes from and what it is.

Pure data plus lookups (no downloads, no torch work). ``python -m weights list`` prints it; :mod:`weights.hub`
downloads, verifies and converts.

Checksums: torchvision and torch.hub put the first 8 hex digits of a file's SHA-256 in its name
(``ssd300_vgg16_coco-b556d3b4.pth``), and ``torch.hub.download_url_to_file(hash_prefix=...)`` checks that prefix.
ssd.pytorch's S3 files publish no checksum at all: for them ``sha256`` and ``hash_prefix`` are None, and
:mod:`weights.hub` refuses to download them unless the user supplies the expected SHA-256 (or puts the file in the
cache folder by hand) — an unverified download is never used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from utils.errors import UserError

TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
SSD_PYTORCH_BASE_URL = "https://s3.amazonaws.com/amdegroot-models/"

# converter names (weights.hub maps them to functions); None = the file is used as downloaded
CONVERT_TORCHVISION_SSD = "torchvision-ssd"   # weights.convert_torchvision: keys + 91 → 81 classes + behaviour
CONVERT_VGG_FOLD = "vgg-fold-input-norm"      # weights.convert_vgg --fold-input-norm
CONVERT_BGR_TO_RGB = "bgr-to-rgb"             # ssd.pytorch's Caffe (BGR) file: conv1_1 input channels reversed


@dataclass(frozen=True)
class Entry:
    """One pretrained model.

    Attributes:
        name: what users type (``ssd300-coco``).
        kind: ``"detector"`` (a whole SSD) or ``"basenet"`` (VGG-16 up to conv7, for ``train.py --basenet``).
        filename: the published file name (also its name in the cache folder).
        base_url: where the publisher serves it (``base_url + filename``).
        sha256: full SHA-256 hex digest where the publisher gives one, else None.
        hash_prefix: leading hex digits of the SHA-256 as published in the file name (torchvision), else None.
        classes: the class set (``"COCO (80)"``, ``"VOC (20)"``, ``"-"`` for base networks).
        input_order: channel order the weights were trained on (``"RGB"`` or ``"BGR"``). For a base network it is
            information only: train.py feeds RGB, as ssd.pytorch did when it trained on the Caffe (BGR) VGG.
        trained_on: the training data.
        accuracy: the accuracy its publisher reports, and where it was measured.
        converter: None, or one of the ``CONVERT_*`` names.
        size: the file size as text: torchvision's published ``_file_size`` (MiB), or for ssd.pytorch's files
            the float32 size of their parameter count (``≈``, the S3 listing is not in the references).
        source: who publishes it (for the table).
    """
    name: str
    kind: str
    filename: str
    base_url: str
    sha256: Optional[str]
    hash_prefix: Optional[str]
    classes: str
    input_order: str
    trained_on: str
    accuracy: str
    converter: Optional[str]
    size: str
    source: str

    @property
    def url(self) -> str:
        return self.base_url + self.filename

    @property
    def checksum(self) -> Optional[str]:
        """What a download is checked against: the full SHA-256 if published, else the name's prefix, else None."""
        return self.sha256 or self.hash_prefix

    def checksum_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.hash_prefix:
            return f"sha256 {self.hash_prefix}… (file name)"
        return "none published"


REGISTRY: Tuple[Entry, ...] = (
    Entry("ssd300-coco", "detector", "ssd300_vgg16_coco-b556d3b4.pth", TORCHVISION_BASE_URL, None, "b556d3b4",
          "COCO (80)", "RGB", "COCO train2017", "25.1 box AP, COCO val2017 (torchvision)",
          CONVERT_TORCHVISION_SSD, "136.0 MiB", "torchvision SSD300_VGG16_Weights.COCO_V1"),
    Entry("ssd300-voc", "detector", "ssd300_mAP_77.43_v2.pth", SSD_PYTORCH_BASE_URL, None, None,
          "VOC (20)", "RGB", "VOC2007+2012 trainval", "77.43 % mAP, VOC2007 test (ssd.pytorch README)",
          None, "≈105 MB", "ssd.pytorch (amdegroot)"),
    Entry("ssd300-voc-caffe", "detector", "ssd_300_VOC0712.pth", SSD_PYTORCH_BASE_URL, None, None,
          "VOC (20)", "BGR", "VOC2007+2012 trainval (original Caffe SSD)",
          "77.2 % mAP, VOC2007 test (SSD paper); 77.26 % converted (ssd.pytorch README)",
          CONVERT_BGR_TO_RGB, "≈105 MB", "weiliu89 Caffe SSD, converted by ssd.pytorch"),
    Entry("vgg16-reducedfc", "basenet", "vgg16_reducedfc.pth", SSD_PYTORCH_BASE_URL, None, None,
          "-", "BGR", "ImageNet (Caffe VGG-16, fc6/fc7 reduced)", "-",
          None, "≈82 MB", "ssd.pytorch (amdegroot)"),
    Entry("vgg16-imagenet", "basenet", "vgg16-397923af.pth", TORCHVISION_BASE_URL, None, "397923af",
          "-", "RGB", "ImageNet-1k", "71.592 % top-1, ImageNet val (torchvision VGG16_Weights.IMAGENET1K_V1)",
          CONVERT_VGG_FOLD, "527.8 MiB", "torchvision VGG16_Weights.IMAGENET1K_V1, via weights.convert_vgg"),
)

_BY_NAME: Dict[str, Entry] = {e.name: e for e in REGISTRY}


def names(kind: Optional[str] = None) -> List[str]:
    return [e.name for e in REGISTRY if kind is None or e.kind == kind]


def is_name(name: str) -> bool:
    return name in _BY_NAME


def get(name: str) -> Entry:
    """The entry called ``name``; UserError (exit 2) listing the known names otherwise."""
    entry = _BY_NAME.get(name)
    if entry is None:
        raise UserError(f"unknown pretrained model {name!r} — known: {', '.join(names())} "
                        "(python -m weights list)", code=2)
    return entry


def table() -> str:
    """The registry as a plain-text table (``python -m weights list``)."""
    header = ("name", "kind", "classes", "input", "trained on", "published accuracy", "size", "checksum", "url")
    rows = [header] + [(e.name, e.kind, e.classes, e.input_order, e.trained_on, e.accuracy, e.size,
                        e.checksum_text(), e.url) for e in REGISTRY]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
