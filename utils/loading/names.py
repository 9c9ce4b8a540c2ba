"""Class names of a model: the defaults for files that carry none, and the one count check.

Names never include the background; a model with ``num_classes`` outputs (background included) has
``num_classes - 1`` names, and label ``k`` (1..C-1) is ``names[k - 1]``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from data.coco import COCO_CLASSES
from data.voc0712 import VOC_CLASSES
from utils.errors import UserError


def default_class_names(num_classes: int) -> List[str]:
    """Names for files that carry none: VOC for 21 classes, COCO for 81, else class_1..class_N."""
    if num_classes == 21:
        return list(VOC_CLASSES)
    if num_classes == 81:
        return list(COCO_CLASSES)
    return [f"class_{i}" for i in range(1, num_classes)]


def resolve_class_names(given: Optional[Sequence[str]], stored: Optional[Sequence[str]], num_classes: int,
                        source: str) -> List[str]:
    """The names a model is used with: ``given`` (the caller's, e.g. a ``--classes`` file) over ``stored`` (the
    file's) over :func:`default_class_names`; checked against ``num_classes`` (background included).

    ``source`` names where the names came from in the error (the names file or the model file).
    """
    names = list(given) if given is not None else list(stored) if stored is not None else \
        default_class_names(num_classes)
    if len(names) != num_classes - 1:
        raise UserError(f"{len(names)} class names given for a model with {num_classes - 1} classes ({source})",
                        code=2)
    return names
