"""Writing the synthetic dataset: the custom VOC layout, COCO JSON, labels.txt, splits and a summary, built
beside ``--out`` and renamed into place when complete."""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from data.common import read_image_rgb
from data.synthetic.backgrounds import make_noise_bank
from data.synthetic.scene import render_image
from data.synthetic.shapes import ALL_SHAPES, SHAPE_CLASSES, ObjectAnnotation, shape_indices
from utils.errors import UserError

DEFAULT_VAL_FRAC = 0.05
DEFAULT_TEST_FRAC = 0.15


def voc_xml(image_id: str, filename: str, width: int, height: int, anns: Sequence[ObjectAnnotation]) -> str:
    """VOC annotation XML text (1-based inclusive pixel boxes)."""
    objs = "".join(
        "\t<object>\n"
        f"\t\t<name>{a.name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>{int(a.truncated)}</truncated>\n\t\t<difficult>{int(a.difficult)}</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{a.box[0] + 1}</xmin>\n\t\t\t<ymin>{a.box[1] + 1}</ymin>\n"
        f"\t\t\t<xmax>{a.box[2] + 1}</xmax>\n\t\t\t<ymax>{a.box[3] + 1}</ymax>\n\t\t</bndbox>\n"
        "\t</object>\n" for a in anns)
    return ("<annotation>\n\t<folder>JPEGImages</folder>\n"
            f"\t<filename>{filename}</filename>\n"
            "\t<source>\n\t\t<database>synthetic shapes</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            "\t<segmented>0</segmented>\n"
            f"{objs}</annotation>\n")


def coco_dataset(entries: Sequence[Dict[str, Any]], classes: Sequence[int] = ALL_SHAPES) -> Dict[str, Any]:
    """COCO detection JSON for ``entries`` = ``{'id', 'file_name', 'width', 'height', 'anns'}``; the categories
    are the dataset's shapes ``classes`` (indices into ``SHAPE_CLASSES``), ids 1.. in that order."""
    category = {label: i + 1 for i, label in enumerate(classes)}
    images, annotations = [], []
    for e in entries:
        images.append({"id": e["id"], "file_name": e["file_name"], "width": e["width"], "height": e["height"]})
        for a in e["anns"]:
            x0, y0, x1, y1 = a.box
            bw, bh = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": e["id"], "category_id": category[a.label],
                                "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": int(a.difficult),
                                "segmentation": []})
    return {"info": {"description": "synthetic shapes"}, "licenses": [], "images": images,
            "annotations": annotations,
            "categories": [{"id": category[k], "name": SHAPE_CLASSES[k], "supercategory": "shape"} for k in classes]}


def split_ids(num: int, seed: int, val_frac: float, test_frac: float) -> Dict[str, List[int]]:
    """Indices per split (train / val / test), shuffled with ``seed`` and sorted within each split."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"split fractions val={val_frac}, test={test_frac} must be in [0, 1) and sum below 1",
                        code=2)
    perm = np.random.default_rng([int(seed), 0x5B11]).permutation(num)
    n_val, n_test = int(round(num * val_frac)), int(round(num * test_frac))
    if num >= 3:
        n_val = max(n_val, 1 if val_frac > 0 else 0)
        n_test = max(n_test, 1 if test_frac > 0 else 0)
    n_val = min(n_val, max(0, num - 1))
    n_test = min(n_test, max(0, num - 1 - n_val))
    val = sorted(perm[:n_val].tolist())
    test = sorted(perm[n_val:n_val + n_test].tolist())
    train = sorted(perm[n_val + n_test:].tolist())
    return {"train": train, "val": val, "test": test}


def load_photos(folder: Optional[str]) -> List[np.ndarray]:
    """RGB photos of ``folder`` (sorted by name, each downscaled to <= 800 px) for backgrounds."""
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise UserError(f"backgrounds folder not found: {folder} — pass a folder of photos", code=2)
    photos = []
    for name in sorted(os.listdir(folder)):
        try:
            img = read_image_rgb(os.path.join(folder, name))
        except UserError:  # not an image (or a sub-folder): skipped, the folder may hold notes
            continue
        s = 800.0 / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        photos.append(img)
    if not photos:
        raise UserError(f"no readable images in backgrounds folder {folder} — add .jpg/.png photos", code=2)
    return photos


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _prepare_out(out: str) -> str:
    """Check ``out`` may be (re)written; return the temp folder to build into (renamed into place at the end)."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out exists and is not a folder: {out} — choose another path", code=2)
        if os.listdir(out) and not os.path.isfile(os.path.join(out, "synthetic.json")):
            raise UserError(f"--out folder is not empty and is not a synthetic dataset: {out} — "
                            "choose a new or empty folder", code=2)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary folder
        return tmp
    except OSError as exc:
        raise UserError(f"cannot write to {parent}: {exc.strerror} — choose a writable --out") from None


def _swap_into_place(tmp: str, out: str) -> None:
    out = os.path.abspath(out)
    old = None
    if os.path.exists(out):
        old = tmp + ".old"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_images(tmp: str, num: int, seed: int, size_range: Tuple[Tuple[int, int], Tuple[int, int]],
                  photos: Sequence[np.ndarray], progress: bool,
                  classes: Sequence[int] = ALL_SHAPES) -> List[Dict[str, Any]]:
    """Render and write image ``i`` (its own generator seeded with ``(seed, i)``) and its XML; return the COCO
    entries ``{'id', 'file_name', 'width', 'height', 'anns'}``. Objects are of the shapes ``classes``."""
    (wmin, wmax), (hmin, hmax) = size_range
    bank = make_noise_bank(seed)
    entries: List[Dict[str, Any]] = []
    # file creation can be slow on a busy disk: written by background threads (the content is fixed)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        pending: List[concurrent.futures.Future] = []
        try:
            for i in range(num):
                rng = np.random.default_rng([int(seed), i])
                width = int(rng.integers(wmin, wmax + 1))
                height = int(rng.integers(hmin, hmax + 1))
                img, anns = render_image(rng, width, height, bank, photos, classes)
                image_id = f"{i + 1:06d}"
                fname = image_id + ".jpg"
                quality = int(rng.integers(75, 96))
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
                    raise RuntimeError("JPEG encoding failed")
                pending.append(pool.submit(_write_bytes, os.path.join(tmp, "JPEGImages", fname), buf.tobytes()))
                pending.append(pool.submit(_write_bytes, os.path.join(tmp, "Annotations", image_id + ".xml"),
                                           voc_xml(image_id, fname, width, height, anns).encode("utf-8")))
                if len(pending) > 256:
                    for fut in pending[:128]:
                        fut.result()
                    del pending[:128]
                entries.append({"id": i + 1, "file_name": fname, "width": width, "height": height, "anns": anns})
                if progress and (i + 1) % 500 == 0:
                    print(f"{i + 1}/{num} images", file=sys.stderr)
            for fut in pending:
                fut.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return entries


def _write_dataset(tmp: str, num: int, seed: int, size_range: Tuple[Tuple[int, int], Tuple[int, int]],
                   fracs: Tuple[float, float], splits: Dict[str, List[int]], photos: Sequence[np.ndarray],
                   progress: bool, classes: Sequence[int] = ALL_SHAPES) -> Dict[str, Any]:
    """Fill the folder ``tmp``: images, XML, split files, COCO JSON, labels.txt and synthetic.json (the summary,
    returned); ``fracs = (val_frac, test_frac)``; ``classes``: the shapes drawn (indices into SHAPE_CLASSES)."""
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main"), "annotations"):
        os.makedirs(os.path.join(tmp, sub))
    entries = _write_images(tmp, num, seed, size_range, photos, progress, classes)
    anns = [a for e in entries for a in e["anns"]]
    names = [SHAPE_CLASSES[k] for k in classes]
    per_class = [sum(a.label == k for a in anns) for k in classes]
    splits = dict(splits, trainval=sorted(splits["train"] + splits["val"]))
    for name, idx in splits.items():
        with open(os.path.join(tmp, "ImageSets", "Main", f"{name}.txt"), "w") as fh:
            fh.write("".join(f"{i + 1:06d}\n" for i in idx))
        with open(os.path.join(tmp, "annotations", f"instances_{name}.json"), "w") as fh:
            json.dump(coco_dataset([entries[i] for i in idx], classes), fh, separators=(",", ":"))
    with open(os.path.join(tmp, "labels.txt"), "w") as fh:
        fh.write("".join(n + "\n" for n in names))
    summary = {"generator": "data.synthetic", "num_images": num, "seed": int(seed), "val_frac": fracs[0],
               "test_frac": fracs[1], "size_range": [list(size_range[0]), list(size_range[1])],
               "backgrounds": len(photos),
               "class_names": names, "num_objects": len(anns),
               "num_difficult": sum(a.difficult for a in anns),
               "objects_per_class": dict(zip(names, per_class)),
               "splits": {k: len(v) for k, v in splits.items()}}
    with open(os.path.join(tmp, "synthetic.json"), "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    return summary


def generate_dataset(out: str, num: int, seed: int = 0, val_frac: float = DEFAULT_VAL_FRAC,
                     test_frac: float = DEFAULT_TEST_FRAC, backgrounds: Optional[str] = None,
                     size_range: Tuple[Tuple[int, int], Tuple[int, int]] = ((300, 480), (240, 400)),
                     progress: bool = False, classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write ``num`` images to ``out`` (see the module docstring); return a summary dict.

    ``size_range = ((min_w, max_w), (min_h, max_h))``. ``classes``: the shapes to draw, by name (labels.txt lists
    them in this order; default all five — the same bytes as before the option). The folder is built beside
    ``out`` and renamed into place when complete; an existing ``out`` is replaced only if empty or an earlier
    synthetic dataset.
    """
    indices = shape_indices(classes)
    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}", code=2)
    (wmin, wmax), (hmin, hmax) = size_range
    if not (32 <= wmin <= wmax and 32 <= hmin <= hmax):
        raise UserError(f"image size range {size_range} is invalid (sides >= 32, min <= max)", code=2)
    splits = split_ids(num, seed, val_frac, test_frac)
    photos = load_photos(backgrounds)
    t0 = time.perf_counter()
    tmp = _prepare_out(out)
    try:
        summary = _write_dataset(tmp, num, seed, size_range, (val_frac, test_frac), splits, photos, progress,
                                 indices)
        _swap_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the dataset to {os.path.abspath(out)}: {exc.strerror or exc} — "
                            "check free space and permissions") from None
        raise
    seconds = time.perf_counter() - t0
    return dict(summary, out=os.path.abspath(out), seconds=seconds, images_per_s=num / max(seconds, 1e-9))
