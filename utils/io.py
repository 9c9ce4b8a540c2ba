"""Atomic file writing: outputs appear under their final name complete, or not at all."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    The temporary name keeps ``suffix`` (e.g. ``.mp4``) so that tools choosing a format by
    extension still work. On any exception the temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=(suffix or ".tmp"), dir=folder)
    os.close(fd)
    # mkstemp creates 0600; give the output the permissions a normal open() would (0666 minus umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        # flush file contents to disk before the rename so a crash can't leave an empty file in place
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
