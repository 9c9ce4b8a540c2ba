"""What a detection run reports: the detections kept per frame, the streamed JSON log, the printed summary."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from utils.io import atomic_write


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor from a custom predictor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def select(dets: Any, threshold: float, only: Optional[Sequence[int]] = None
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes float32 [k, 4], scores float32 [k], labels int64 [k])`` with score >= threshold and, when
    ``only`` is given, a label in ``only`` (model labels 1..C-1)."""
    boxes = _numpy(dets.boxes).astype(np.float32).reshape(-1, 4)
    scores = _numpy(dets.scores).astype(np.float32).reshape(-1)
    labels = _numpy(dets.labels).astype(np.int64).reshape(-1)
    keep = scores >= threshold
    if only is not None:
        keep &= np.isin(labels, np.asarray(list(only), dtype=np.int64))
    return boxes[keep], scores[keep], labels[keep]


def class_name(label: int, class_names: Sequence[str]) -> str:
    """Name of model label ``label`` (1..C-1; ``class_names`` has no background)."""
    return class_names[label - 1] if 1 <= label <= len(class_names) else f"class_{label}"


class DetectionLog:
    """Streams ``{"...meta", "frames": [{frame, time, detections: [...]}, ...]}`` to a JSON file.

    Written frame by frame (memory stays flat) into a temporary file that is renamed into place
    only when the run succeeds.
    """

    def __init__(self, path: str, meta: Dict[str, Any], class_names: Sequence[str]) -> None:
        self.path = path
        self.class_names = list(class_names)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_write(path, suffix=".json"))
        self._fh: IO[str] = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        head = json.dumps({**meta, "class_names": self.class_names})
        self._fh.write(head[:-1] + ', "frames": [')
        self._first = True

    def add(self, index: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
            **extra: Any) -> None:
        """One frame: ``boxes [k, 4]`` xyxy pixels, ``scores [k]``, ``labels [k]`` (1..C-1), plus ``extra`` keys."""
        dets = [{"class": class_name(int(l), self.class_names), "label": int(l), "score": round(float(s), 4),
                 "box": [round(float(v), 2) for v in b]} for b, s, l in zip(boxes, scores, labels)]
        entry = {"frame": index, **extra, "detections": dets}
        self._fh.write(("\n" if self._first else ",\n") + json.dumps(entry))
        self._first = False

    def __enter__(self) -> "DetectionLog":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._fh.write("\n]}\n")
        self._stack.__exit__(exc_type, exc, tb)


@dataclass
class Summary:
    """A finished run: frame count, wall time, where the outputs went, detections per class, notes."""

    frames: int = 0
    seconds: float = 0.0
    output: str = ""
    json_path: Optional[str] = None
    per_class: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def lines(self, threshold: float) -> List[str]:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0])))
        out = [f"frames: {self.frames} in {self.seconds:.1f} s ({rate:.1f} frames/s)",
               f"detections (score >= {threshold:g}): {sum(self.per_class.values())}"
               + (f" — {counts}" if counts else ""),
               f"output: {self.output}"]
        if self.json_path:
            out.append(f"detections json: {self.json_path}")
        out += [f"note: {n}" for n in self.notes]
        return out
