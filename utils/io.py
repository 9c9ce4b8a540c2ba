"""Atomic file writing: outputs appear under their final name complete, or not at all.

Also ``pickle_globals``: what a pickle file would import, read without running any of it.

A full disk (or an exceeded quota) while writing becomes one line for the user, ``utils.errors.no_space_error``:
``atomic_write`` converts it for everything written inside its block (including ``torch.save``, whose C++ writer
reports a full disk as a RuntimeError), ``reporting_no_space`` does the same for files written in place (an
append-only log).
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import os
import pickletools
import tempfile
import zipfile
from typing import IO, Any, Dict, Iterator, List, Optional

from utils.errors import UserError, find_no_space, no_space_error

# torch's zip writer (caffe2 inline_container.cc) turns a failed write into a RuntimeError that names no errno:
# "[enforce fail at inline_container.cc:NNN] . unexpected pos 576 vs 534", "PytorchStreamWriter failed writing file
# data/0: file write failed", or "basic_ios::clear: iostream error" as its context
_TORCH_WRITE_FAILURES = ("inline_container", "pytorchstreamwriter", "file write failed", "iostream error")
# after a write failed for lack of space the filesystem has less than one write's worth left
_NEARLY_FULL_BYTES = 1 << 20


def nearest_existing_folder(folder: str) -> str:
    """``folder`` itself, or its closest ancestor that exists (absolute path)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def free_bytes(folder: str) -> Optional[int]:
    """Bytes an unprivileged user can still write in ``folder``'s filesystem (None where statvfs is unavailable)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def is_no_space(exc: BaseException, folder: Optional[str] = None) -> bool:
    """Whether ``exc`` means the disk is full: a full-disk error in its chain (``find_no_space``), or, given the
    ``folder`` that was being written, a write failure that names no errno while that filesystem is (nearly) full:
    torch.save's C++ writer (RuntimeError) or numpy's ``tofile`` ("OSError: 26399 requested and 0 written")."""
    if find_no_space(exc) is not None:
        return True
    if folder is None:
        return False
    chain: List[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    write_failed = any((isinstance(e, OSError) and e.errno is None)
                       or any(marker in str(e).lower() for marker in _TORCH_WRITE_FAILURES) for e in chain)
    free = free_bytes(folder) if write_failed else None
    return free is not None and free < _NEARLY_FULL_BYTES


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` is not thread-safe to query:
    another thread creating a file in between would get umask 0)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def reporting_no_space(path: str) -> Iterator[None]:
    """Turn a full disk inside the block into the one-line ``no space left on device while writing <path>`` error.

    For files written in place (e.g. appending rows to a log); files written whole should use ``atomic_write``.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if is_no_space(exc, os.path.dirname(os.path.abspath(path))):
            raise no_space_error(path, find_no_space(exc)) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    The temporary name keeps ``suffix`` (e.g. ``.mp4``) so that tools choosing a format by extension still work.
    On any exception the temporary file is removed and ``path`` is untouched; a full disk (OSError ENOSPC/EDQUOT,
    or torch.save failing on a full filesystem) is re-raised as the one-line ``no_space_error(path)``. The file
    gets the permissions a plain ``open()`` would give it (0666 minus the umask), not mkstemp's 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=(suffix or ".tmp"), dir=folder)
        os.close(fd)
        yield tmp
        # after the block: a tool may have replaced the temporary file with one of its own mode
        os.chmod(tmp, 0o666 & ~current_umask())
        # flush file contents to disk before the rename so a crash can't leave an empty file in place
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # classify before removing the temporary file: its bytes are what filled the disk
        no_space = isinstance(exc, Exception) and not isinstance(exc, UserError) and is_no_space(exc, folder)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if no_space:
            raise no_space_error(path, find_no_space(exc)) from None
        raise


_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})


def pickle_globals(path: str) -> List[str]:
    """``module.name`` of every callable or class that unpickling ``path`` would import ("posix.system",
    "torch._utils._rebuild_tensor_v2", ...), read with ``pickletools.genops``, which never imports or calls anything.

    Reads the first ``*.pkl`` member of a zip archive (torch.save's format: ``<name>/data.pkl``), else the leading
    pickles of the file (torch's legacy format: magic number, protocol, sys info, object, storage keys, then raw
    bytes). [] for anything that is not a pickle starting with a protocol opcode (text, an .npy, ...); a truncated
    pickle gives what was read before the cut.
    """
    found: List[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for name in [n for n in zf.namelist() if n.endswith(".pkl")][:1]:
                    with zf.open(name) as fh:
                        _scan_pickle(fh, found)
        else:
            with open(path, "rb") as fh:
                for _ in range(5):
                    _scan_pickle(fh, found)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        pass  # not (or no longer) a pickle
    return list(dict.fromkeys(found))


def _scan_pickle(fh: IO[bytes], found: List[str]) -> None:
    """Append to ``found`` the globals (GLOBAL / STACK_GLOBAL / INST) of the pickle at ``fh``'s position, with
    Python 2 names mapped as unpickling maps them ("__builtin__ eval" is builtins.eval); ValueError if no pickle."""
    pushed: List[Optional[str]] = []  # the last two values pushed (strings, else None): STACK_GLOBAL's operands
    memo: Dict[Any, Optional[str]] = {}
    for i, (op, arg, _) in enumerate(pickletools.genops(fh)):
        if i == 0 and op.name != "PROTO":
            raise ValueError("not a pickle with a protocol header")
        if op.name in ("GLOBAL", "INST"):
            found.append(_py3_name(*str(arg).split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            known = len(pushed) == 2 and None not in pushed
            found.append(_py3_name(str(pushed[0]), str(pushed[1])) if known else "<unknown global>")
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
            continue
        pushed = (pushed + [memo.get(arg) if op.name in ("GET", "BINGET", "LONG_BINGET")
                            else arg if op.name in _STRING_OPS and isinstance(arg, str) else None])[-2:]


def _py3_name(module: str, name: str) -> str:
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
