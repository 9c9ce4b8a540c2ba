"""Custom datasets: one VOC-layout folder plus ``labels.txt`` (``--dataset custom --dataset_root DIR``).

::

    DIR/labels.txt                 one class name per line (no background; blank and # lines ignored)
    DIR/Annotations/<id>.xml       VOC XML (<size>, <object><name>, <difficult>, <bndbox>)
    DIR/JPEGImages/<id>.jpg        (.jpeg/.png/.bmp/... also accepted, or the XML's <filename>)
    DIR/ImageSets/Main/<split>.txt one id per line (train / val / test / trainval ...)

Label ``k`` of the dataset is ``labels.txt`` line ``k`` (0-based); the model's class ``k + 1``. Class names in
the XML are matched case-insensitively. ``python -m data.synthetic`` writes this layout.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, List, Optional

from data.common import DetectionDataset, check_dir
from data.voc0712 import _voc_target_from_transform, class_index, index_voc_folder
from utils.labels import read_class_names

LABELS_FILE = "labels.txt"


def read_labels(root: str) -> List[str]:
    """Class names of a custom dataset (``<root>/labels.txt``, one per line, background not included).

    Read by the project's one class-name reader (:func:`utils.labels.read_class_names`: UTF-8 with or without
    BOM, CRLF, blank and ``#`` lines skipped); UserError naming the file when it is missing, unreadable, empty or
    lists a name twice (case-insensitively, as XML names are matched). Warns when the first name is background.
    """
    path = os.path.join(os.fspath(root), LABELS_FILE)
    names = read_class_names(path, "class list",
                             missing_hint="create labels.txt in the dataset root with one class name per line")
    if names[0].lower() in ("background", "__background__"):
        warnings.warn(f"{path} starts with {names[0]!r}: the model adds the background class itself, so this "
                      "becomes an ordinary class — remove the line unless that is intended", stacklevel=2)
    return names


class CustomDetection(DetectionDataset):
    """A custom VOC-layout dataset (see the module docstring and ``data.common.DetectionDataset``).

    ``ids`` are the image ids of the split; ``class_names`` come from ``labels.txt``. Every annotation is
    parsed and validated here, so bad input fails at construction with a message naming the file.
    """

    def __init__(self, root: str, split: str = "train", transform: Optional[Callable] = None,
                 keep_difficult: bool = False, target_transform: Optional[Callable] = None,
                 dataset_name: str = "custom") -> None:
        super().__init__(transform, keep_difficult)
        self.root = os.fspath(root)
        self.split = split
        self.name = dataset_name
        self.target_transform = target_transform
        check_dir(self.root, "dataset root", "pass --dataset_root pointing at the folder holding labels.txt, "
                                             "Annotations/, JPEGImages/ and ImageSets/Main/")
        self.class_names = read_labels(self.root)
        labels_path = os.path.join(self.root, LABELS_FILE)
        self.records = index_voc_folder(
            self.root, split, class_index(self.class_names),
            folder_hint="pass --dataset_root pointing at the dataset folder",
            known_hint=f"add it to {labels_path} or fix the name")
        self.ids: List[str] = [r.image_id for r in self.records]

    def target(self, index: int, width: int, height: int):
        if self.target_transform is None:
            return super().target(index, width, height)
        return _voc_target_from_transform(self.records[index], self.target_transform, width, height)
