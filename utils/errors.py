"""User-facing errors and the CLI wrapper that turns them into one clear line on stderr."""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, NoReturn, Optional, Sequence


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
    """Run a CLI ``main(argv)``; map UserError / KeyboardInterrupt to an exit status without traceback."""
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
    sys.exit(code or 0)
