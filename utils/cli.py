"""Small helpers the command-line scripts share: ssd.pytorch's boolean flags and output-folder checks."""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from utils.errors import UserError


def str2bool(v: Any) -> bool:
    """ssd.pytorch's boolean flag values (``--cuda``, ``--cleanup``): yes/no, true/false, t/f, y/n, 1/0."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def nearest_existing_folder(folder: str) -> str:
    """``folder`` itself, or its closest ancestor that exists (absolute path)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_writable_folder(folder: str, what: str, remedy: str = "choose another folder") -> None:
    """UserError unless ``folder`` is (or can be created as) a writable folder; leaves nothing behind.

    Probed by creating a real file: permission bits say nothing for root or on read-only mounts.
    """
    base = nearest_existing_folder(folder)
    if not os.path.isdir(base):
        raise UserError(f"cannot create {what} {folder}: {base} is a file, not a folder — {remedy}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=base)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"{what} is not writable: {folder} ({exc.strerror or exc}) — {remedy} or fix its "
                        "permissions") from None
