"""User-facing errors and the CLI wrapper that turns them into one clear line on stderr."""
from __future__ import annotations

import errno
import os
import sys
import threading
import warnings
from typing import Any, Callable, List, NoReturn, Optional, Sequence

# errno values that mean "the disk (or the user's quota on it) is full"
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXTS = tuple(os.strerror(e).lower() for e in sorted(NO_SPACE_ERRNOS)) + ("no space left on device",)


class UserError(Exception):
    """An error caused by the user's input: printed as one line, no traceback.

    ``code`` is the process exit status (2 for usage errors, 1 otherwise).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NoSpaceError(UserError):
    """A full disk (or quota) while writing ``path``: a UserError that callers writing through a staging file can
    catch to name the user's output instead (``raise no_space_error(final_path) from None``)."""

    def __init__(self, message: str, path: Optional[str]) -> None:
        super().__init__(message, code=1)
        self.path = path


def fail(message: str, code: int = 1) -> NoReturn:
    raise UserError(message, code)


def no_space_error(path: Optional[str], cause: Optional[BaseException] = None,
                   kept: Optional[str] = None) -> NoSpaceError:
    """The one-line error for a full disk (or an exceeded quota) while writing ``path`` (exit status 1).

    ``kept``: what was saved anyway, e.g. "the video was kept without sound" (said before what to do).
    """
    quota = (isinstance(cause, OSError) and cause.errno == errno.EDQUOT) or (
        cause is not None and "quota" in str(cause).lower())
    target = path if path else "an output file"
    return NoSpaceError(f"no space left on device while writing {target}{' (disk quota exceeded)' if quota else ''}"
                        f" — {kept + '; ' if kept else ''}free some space or choose another folder", path)


def says_no_space(text: str) -> bool:
    """Whether a message (a tool's stderr such as ffmpeg's, or an exception's text) reports a full disk: it
    contains strerror(ENOSPC) or strerror(EDQUOT)."""
    text = text.lower()
    return any(marker in text for marker in _NO_SPACE_TEXTS)


def find_no_space(exc: BaseException) -> Optional[BaseException]:
    """The exception in ``exc``'s cause/context chain that reports a full disk, or None: an OSError with errno
    ENOSPC/EDQUOT (preferred: it may name the file), else one whose text says so (a library that re-raised it
    under its own type, a tool's stderr in a message).

    The chain matters: torch.save into a Python file object raises a RuntimeError whose ``__context__`` is the
    OSError that the file's ``write`` raised.
    """
    chain: List[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and len(chain) < 16 and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return e
    return next((e for e in chain if not isinstance(e, UserError) and says_no_space(str(e))), None)


def _one_line(message: str) -> str:
    """A UserError re-raised by a DataLoader worker carries the worker's traceback in its message: keep the
    original message (the text after the last 'UserError: ')."""
    if "Traceback" in message and "UserError: " in message:
        message = message.rsplit("UserError: ", 1)[1]
    return " ".join(message.strip().splitlines())


def _show_warning_one_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                           line: Any = None) -> None:
    """CLI warnings (e.g. a box clipped to its image) as one ``warning: ...`` line, without the source line."""
    print(f"warning: {_one_line(str(message))}", file=file or sys.stderr)


def _no_space_line(exc: BaseException) -> Optional[str]:
    """The ``error: no space left ...`` line for an exception caused by a full disk, else None."""
    cause = find_no_space(exc)
    if cause is None:
        return None
    filename = getattr(cause, "filename", None)
    return f"error: {no_space_error(filename if isinstance(filename, str) else None, cause).message}"


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Run a CLI ``main(argv)``; map UserError / KeyboardInterrupt / a full disk to an exit status without traceback.

    A full disk hit by a write that no ``atomic_write`` wrapped (an append-only log, a library's writer thread such
    as TensorBoard's) is one line too, exit status 1.
    """
    thread_no_space: List[BaseException] = []
    previous_hook = threading.excepthook

    def thread_hook(args: Any) -> None:  # a writer thread's full disk: reported once, below, not as a traceback
        if args.exc_value is not None and find_no_space(args.exc_value) is not None:
            thread_no_space.append(args.exc_value)
        else:
            previous_hook(args)

    threading.excepthook = thread_hook
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning_one_line
            code = main(argv)
    except UserError as exc:
        print(f"error: {_one_line(exc.message)}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        line = _no_space_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(1)
    finally:
        threading.excepthook = previous_hook
    if thread_no_space:
        print(_no_space_line(thread_no_space[0]), file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
