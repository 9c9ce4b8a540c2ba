"""User-facing errors and the CLI wrapper that turns them into one clear line on stderr."""
from __future__ import annotations

import errno
import sys
import warnings
from typing import Any, Callable, NoReturn, Optional, Sequence

# errno values that mean "the disk (or the user's quota on it) is full"
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserError(Exception):
    """An error caused by the user's input: printed as one line, no traceback.

    ``code`` is the process exit status (2 for usage errors, 1 otherwise).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise UserError(message, code)


def no_space_error(path: Optional[str], cause: Optional[BaseException] = None) -> UserError:
    """The one-line error for a full disk (or an exceeded quota) while writing ``path`` (exit status 1)."""
    quota = isinstance(cause, OSError) and cause.errno == errno.EDQUOT
    target = path if path else "an output file"
    return UserError(f"no space left on device while writing {target}{' (disk quota exceeded)' if quota else ''}"
                     " — free some space or choose another folder")


def find_no_space(exc: BaseException) -> Optional[OSError]:
    """The OSError(ENOSPC/EDQUOT) in ``exc`` or its cause/context chain, or None.

    The chain matters: torch.save into a Python file object raises a RuntimeError whose ``__context__`` is the
    OSError that the file's ``write`` raised.
    """
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


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


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Run a CLI ``main(argv)``; map UserError / KeyboardInterrupt / a full disk to an exit status without traceback."""
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
    except Exception as exc:  # a full disk hit by a write that no atomic_write wrapped: still one line
        oserror = find_no_space(exc)
        if oserror is None:
            raise
        filename = oserror.filename if isinstance(oserror.filename, str) else None
        print(f"error: {no_space_error(filename, oserror).message}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
