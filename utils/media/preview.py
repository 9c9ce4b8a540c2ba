"""``--show``: a live window of the annotated frames, where OpenCV was built with a GUI.

The default ``opencv-python-headless`` has no GUI; ``opencv-python`` (same version, installed in its place) has.
The window is driven from the pipeline's writer thread (window creation, drawing and event handling all on that one
thread), which GTK, Qt and Win32 accept; macOS only draws windows from the main thread.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional

import cv2
import numpy as np

from utils.errors import UserError

INSTALL_GUI = ("pip uninstall -y opencv-python-headless && pip install opencv-python "
               "(the same version, with a GUI)")


def gui_backend() -> Optional[str]:
    """The GUI OpenCV was built with (``GTK3``, ``QT5``, ``WIN32UI``, ``COCOA`` ...), None for a headless build."""
    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    value = m.group(1) if m else "NONE"
    return None if value.upper() == "NONE" else value


def check_can_show() -> None:
    """UserError (usage, one line) when no window can be shown here: headless OpenCV, or no display."""
    if gui_backend() is None:
        raise UserError(f"--show needs OpenCV with a GUI, and the installed one is headless — {INSTALL_GUI}",
                        code=2)
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--show needs a display, and none is set (DISPLAY / WAYLAND_DISPLAY) — run it in a desktop "
                        "session or drop --show", code=2)


class Preview:
    """One window showing RGB ``uint8 [H, W, 3]`` frames as they are written; closed by ``close()``."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._open = False

    def show(self, frame: np.ndarray) -> None:
        if not self._open:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            self._open = True
        cv2.imshow(self.title, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)  # lets the window draw and handle events

    def close(self) -> None:
        if self._open:
            cv2.destroyWindow(self.title)
            self._open = False
