"""A real full disk for tests: a small tmpfs mounted on a fresh folder (root only)."""
import contextlib
import os
import subprocess

import pytest


@contextlib.contextmanager
def small_disk(folder, size, why_skip_is_fine=""):
    """A tmpfs of ``size`` (mount's syntax: ``"1m"``, ``"512k"``) mounted on the new folder ``folder``, writable by
    everyone, unmounted afterwards. Skips the test (with ``why_skip_is_fine`` appended) where mounting is not
    possible: not root, or no mount permission in this container."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"mounting a small tmpfs needs root{why_skip_is_fine}")
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}){why_skip_is_fine}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
