"""Image files and folders of them: RGB ``uint8 [H, W, 3]`` in, annotated images out (atomically).

Decoding is the project's one image reader, ``data.common.read_image_rgb``; this module adds the checks and
wording the detection CLI gives for its inputs.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Sequence

import cv2
import numpy as np

from data.common import IMAGE_EXTENSIONS, read_image_rgb
from utils.errors import UserError
from utils.io import atomic_write
from utils.media.ffmpeg import check_readable_file

__all__ = ["IMAGE_EXTENSIONS", "is_image_path", "iter_images", "list_images", "read_image", "write_image"]


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB ``uint8 [H, W, 3]``; UserError naming the file if it can't."""
    check_readable_file(path, "image")
    try:
        return read_image_rgb(path)
    except UserError:  # its wording speaks of datasets and split files; an input image is simply re-exported
        raise UserError(f"cannot read image {path}: not an image or corrupt — re-export it") from None


def write_image(path: str, image: np.ndarray) -> None:
    """Write an RGB image atomically (format from the extension)."""
    ext = os.path.splitext(path)[1].lower()
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"cannot encode an image as {ext}: {path}")
    with atomic_write(path, suffix=ext) as tmp:
        data.tofile(tmp)


def list_images(folder: str) -> List[str]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    if not os.path.isdir(folder):
        raise UserError(f"input folder not found: {folder} — check the path")
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and is_image_path(n)
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise UserError(f"no images in folder {folder} — expected files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    return [os.path.join(folder, n) for n in names]


def iter_images(paths: Sequence[str]) -> Iterator[np.ndarray]:
    for p in paths:
        yield read_image(p)
