"""Frames from a camera through OpenCV, as RGB ``uint8 [H, W, 3]`` arrays."""
from __future__ import annotations

import threading
from fractions import Fraction
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from utils.errors import UserError
from utils.media.ffmpeg import exact_fps

class WebcamReader:
    """Frames from a camera (``cv2.VideoCapture(index)``) as RGB arrays until ``stop()`` or
    ``max_frames``. ``fps`` is the driver's figure (30 when it reports none)."""

    def __init__(self, index: int, max_frames: Optional[int] = None) -> None:
        self._cap = cv2.VideoCapture(int(index))
        if not self._cap.isOpened():
            raise UserError(f"cannot open webcam {index} — check that the camera is connected and free")
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise UserError(f"webcam {index} delivered no frame — check the camera")
        self._first: Optional[np.ndarray] = cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
        fps = self._cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = exact_fps(fps) if 1 <= fps <= 240 else Fraction(30)
        self.height, self.width = self._first.shape[:2]
        self.max_frames = max_frames
        self._stopped = threading.Event()

    @property
    def size(self) -> Tuple[int, int]:
        return self.width, self.height

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        n = 0
        try:
            while not self._stopped.is_set() and (self.max_frames is None or n < self.max_frames):
                if self._first is not None:
                    frame, self._first = self._first, None
                else:
                    ok, bgr = self._cap.read()
                    if not ok or bgr is None:
                        break
                    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                n += 1
                yield frame
        finally:
            self._cap.release()
