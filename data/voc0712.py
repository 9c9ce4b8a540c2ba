"""PASCAL VOC 2007/2012 (and any VOC-layout folder): XML parsing, validation and ``VOCDetection``.

Layout of one VOC folder (``VOCdevkit/VOC2007`` or a custom dataset root)::

    Annotations/<id>.xml        <size>, <object><name>, <difficult>, <bndbox> (1-based pixel ints)
    JPEGImages/<id>.jpg
    ImageSets/Main/<split>.txt  one id per line

Box convention (ssd.pytorch's): every ``<bndbox>`` value minus 1, i.e. 0-based pixels, later divided by the
image width / height. Boxes reaching outside the image are clipped to ``[0, W-1] x [0, H-1]`` and boxes
left without area are dropped, each with a ``warnings.warn`` naming the XML file. Everything is parsed and
validated when the dataset is built, so bad input fails early with a message naming the file, never in a
DataLoader worker.
"""
from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data.common import (DetectionDataset, ImageRecord, check_dir, dedupe, image_size, list_image_files,
                         read_split)
from utils.errors import UserError

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# ssd.pytorch's default training sets: VOC2007 trainval + VOC2012 trainval
DEFAULT_IMAGE_SETS: Tuple[Tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))

_COORDS = ("xmin", "ymin", "xmax", "ymax")


def class_index(class_names: Sequence[str]) -> Dict[str, int]:
    """``{normalised name: 0-based label}``; names are matched lower-cased and stripped (as ssd.pytorch)."""
    return {str(n).strip().lower(): i for i, n in enumerate(class_names)}


def _text(el: Optional[ET.Element]) -> Optional[str]:
    return None if el is None or el.text is None else el.text.strip()


def parse_objects(root: ET.Element, class_to_ind: Dict[str, int], source: str,
                  known_hint: str = "") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ``<object>`` of a VOC XML tree -> ``(boxes [n, 4] 0-based pixels, labels [n], difficult [n])``.

    Raises UserError naming ``source`` for an object without name/box, a non-numeric coordinate or a
    class name not in ``class_to_ind``. No clipping here.
    """
    boxes: List[List[float]] = []
    labels: List[int] = []
    difficult: List[bool] = []
    for obj in root.iter("object"):
        name = _text(obj.find("name"))
        if not name:
            raise UserError(f"an <object> without <name> in {source} — give every object a class name")
        key = name.lower()
        if key not in class_to_ind:
            raise UserError(f"unknown class {name!r} in {source} — {known_hint or 'fix the class name'}")
        bb = obj.find("bndbox")
        if bb is None:
            raise UserError(f"object {name!r} without <bndbox> in {source} — add xmin/ymin/xmax/ymax")
        coords = []
        for tag in _COORDS:
            txt = _text(bb.find(tag))
            try:
                coords.append(float(txt) - 1.0)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise UserError(f"object {name!r} has a missing or non-numeric <{tag}> ({txt!r}) in {source} — "
                                "use pixel numbers") from None
        diff = _text(obj.find("difficult"))
        try:
            is_difficult = bool(int(float(diff))) if diff else False
        except ValueError:
            raise UserError(f"object {name!r} has a non-numeric <difficult> ({diff!r}) in {source} — "
                            "use 0 or 1") from None
        boxes.append(coords)
        labels.append(class_to_ind[key])
        difficult.append(is_difficult)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(difficult, bool))


def _read_size(root: ET.Element) -> Optional[Tuple[int, int]]:
    size = root.find("size")
    if size is None:
        return None
    try:
        w, h = int(float(_text(size.find("width")) or 0)), int(float(_text(size.find("height")) or 0))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def parse_xml_file(xml_path: str) -> ET.Element:
    """Parse a VOC XML file; malformed files become a UserError naming the file."""
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise UserError(f"malformed XML: {xml_path} ({exc}) — fix or regenerate this annotation file") from None
    except OSError as exc:
        raise UserError(f"annotation cannot be read: {xml_path} ({exc.strerror}) — check the file") from None


def sanitize_boxes(boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, width: int, height: int,
                   source: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip 0-based pixel boxes to ``[0, W-1] x [0, H-1]``; drop the ones without area. Warns naming ``source``."""
    if len(boxes) == 0:
        return boxes, labels, difficult
    clipped = boxes.copy()
    np.clip(clipped[:, 0::2], 0.0, width - 1.0, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0.0, height - 1.0, out=clipped[:, 1::2])
    n_clipped = int(np.any(clipped != boxes, axis=1).sum())
    ok = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if n_clipped:
        warnings.warn(f"{n_clipped} box(es) reach outside the {width}x{height} image in {source}; "
                      "clipped to the image — fix the annotation to silence this", stacklevel=3)
    if not ok.all():
        warnings.warn(f"dropping {int((~ok).sum())} zero-area box(es) in {source} — fix or remove them",
                      stacklevel=3)
    return clipped[ok], labels[ok], difficult[ok]


def index_voc_folder(folder: str, split: str, class_to_ind: Dict[str, int], *, folder_hint: str,
                     known_hint: str) -> List[ImageRecord]:
    """Validate one VOC-layout folder and parse the annotations of ``ImageSets/Main/<split>.txt``.

    Checks (each a UserError naming the path and what to do): the folder, ``Annotations/``,
    ``JPEGImages/`` and the split file exist; the split lists at least one id; every listed id has an XML
    that parses, names known classes and has numeric boxes, and an image file in ``JPEGImages/``.
    """
    check_dir(folder, "dataset folder", folder_hint)
    ann_dir = os.path.join(folder, "Annotations")
    img_dir = os.path.join(folder, "JPEGImages")
    check_dir(ann_dir, "Annotations folder", "a VOC-layout dataset needs Annotations/<id>.xml files")
    check_dir(img_dir, "JPEGImages folder", "a VOC-layout dataset needs JPEGImages/<id>.jpg files")
    split_file = os.path.join(folder, "ImageSets", "Main", f"{split}.txt")
    ids = read_split(split_file)
    unique = dedupe(ids)
    if len(unique) != len(ids):
        warnings.warn(f"{len(ids) - len(unique)} duplicate id(s) in {split_file} ignored", stacklevel=3)
    images = list_image_files(img_dir)
    records: List[ImageRecord] = []
    for image_id in unique:
        xml_path = os.path.join(ann_dir, f"{image_id}.xml")
        if not os.path.isfile(xml_path):
            raise UserError(f"annotation missing for id {image_id!r} listed in {split_file}: {xml_path} — "
                            "add the XML or remove the id from the split file")
        root = parse_xml_file(xml_path)
        fname = images.get(image_id)
        if fname is None:  # fall back to the XML's <filename> (custom sets with other naming)
            xml_name = _text(root.find("filename"))
            if xml_name and os.path.isfile(os.path.join(img_dir, xml_name)):
                fname = xml_name
        if fname is None:
            raise UserError(f"image listed in {split_file} but missing: {os.path.join(img_dir, image_id + '.jpg')} "
                            "— add the image or remove its id from the split file")
        image_path = os.path.join(img_dir, fname)
        boxes, labels, difficult = parse_objects(root, class_to_ind, xml_path, known_hint)
        size = _read_size(root)
        width, height = size if size is not None else image_size(image_path)
        boxes, labels, difficult = sanitize_boxes(boxes, labels, difficult, width, height, xml_path)
        records.append(ImageRecord(image_id, image_path, xml_path, width, height, boxes, labels, difficult))
    return records


class VOCAnnotationTransform:
    """ssd.pytorch's target transform: VOC XML element -> ``[[xmin, ymin, xmax, ymax, label], ...]``.

    Coordinates are ``(value - 1) / width`` (x) or ``/ height`` (y); with ``width = height = 1`` they are
    0-based pixels. Difficult objects are skipped unless ``keep_difficult``. Boxes are clipped to the image
    and zero-area boxes dropped when ``width``/``height`` are the pixel size (> 1).
    """

    def __init__(self, class_to_ind: Optional[Dict[str, int]] = None, keep_difficult: bool = False) -> None:
        self.class_to_ind = class_to_ind or class_index(VOC_CLASSES)
        self.keep_difficult = keep_difficult

    def __call__(self, target: ET.Element, width: float, height: float) -> List[List[float]]:
        boxes, labels, difficult = parse_objects(target, self.class_to_ind, "annotation")
        if not self.keep_difficult:
            boxes, labels, difficult = boxes[~difficult], labels[~difficult], difficult[~difficult]
        size = _read_size(target)
        if width > 1 or height > 1:
            boxes, labels, _ = sanitize_boxes(boxes, labels, difficult, int(width), int(height), "annotation")
        elif size is not None:
            boxes, labels, _ = sanitize_boxes(boxes, labels, difficult, size[0], size[1], "annotation")
        scale = np.array([width, height, width, height], np.float32)
        return [[*(b / scale).tolist(), int(l)] for b, l in zip(boxes, labels)]


def _voc_target_from_transform(record: ImageRecord, target_transform: Callable, width: int,
                               height: int) -> np.ndarray:
    res = target_transform(parse_xml_file(record.annotation_file), width, height)
    arr = np.asarray(res, np.float32).reshape(-1, 5)
    return arr


class VOCDetection(DetectionDataset):
    """VOC detection dataset over a VOCdevkit root (ssd.pytorch API; see ``data.common.DetectionDataset``).

    ``image_sets``: list of ``(year, split)``; None means ssd.pytorch's default 07+12 trainval, where a year
    whose folder is absent is skipped with a warning (at least one must exist). ``ids`` are
    ``(VOC<year> folder, image id)`` pairs as in ssd.pytorch. ``target_transform`` (optional) replaces the
    cached annotation with ssd.pytorch's per-load XML parsing, e.g. ``VOCAnnotationTransform(...)``.
    Images are returned RGB; targets are ``float32 [n, 5]`` relative ``(xmin, ymin, xmax, ymax, label)``.
    """

    def __init__(self, root: str, image_sets: Optional[Sequence[Tuple[str, str]]] = None,
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None,
                 keep_difficult: bool = False, dataset_name: str = "VOC0712",
                 class_names: Sequence[str] = VOC_CLASSES) -> None:
        super().__init__(transform, keep_difficult)
        self.root = os.fspath(root)
        self.name = dataset_name
        self.class_names = list(class_names)
        self.target_transform = target_transform
        check_dir(self.root, "dataset root",
                  "pass --dataset_root pointing at the VOCdevkit folder (the one holding VOC2007/, VOC2012/)")
        sets = list(image_sets) if image_sets is not None else list(DEFAULT_IMAGE_SETS)
        if image_sets is None:
            present = [(y, s) for y, s in sets if os.path.isdir(os.path.join(self.root, f"VOC{y}"))]
            for y, s in sets:
                if (y, s) not in present:
                    warnings.warn(f"VOC{y} not found in {self.root}; training on the other year(s) only",
                                  stacklevel=2)
            if not present:
                raise UserError(f"neither VOC2007/ nor VOC2012/ found in {self.root} — pass --dataset_root "
                                "pointing at the VOCdevkit folder")
            sets = present
        self.image_set = sets
        c2i = class_index(self.class_names)
        hint = "use one of the 20 VOC class names (aeroplane ... tvmonitor)" \
            if tuple(self.class_names) == VOC_CLASSES else "use a name listed in the class list"
        self.ids: List[Tuple[str, str]] = []
        for year, split in sets:
            folder = os.path.join(self.root, f"VOC{year}")
            recs = index_voc_folder(folder, split, c2i, known_hint=hint,
                                    folder_hint=f"the VOCdevkit root {self.root} needs a VOC{year}/ folder "
                                                "(or choose another year / split)")
            self.records.extend(recs)
            self.ids.extend((folder, r.image_id) for r in recs)

    def target(self, index: int, width: int, height: int) -> np.ndarray:
        if self.target_transform is None:
            return super().target(index, width, height)
        return _voc_target_from_transform(self.records[index], self.target_transform, width, height)
