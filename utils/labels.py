"""Class-name files: the one reader for ``labels.txt``, ``--classes`` and ``--class-names`` files.

One name per line, background not listed. UTF-8 with or without a BOM, LF or CRLF line ends; blank lines and lines
starting with ``#`` are skipped; a name listed twice (case-insensitively, as VOC XML names are matched) is refused.
"""
from __future__ import annotations

import os
from typing import List

from utils.errors import UserError


def read_class_names(path: str, what: str = "class list", code: int = 1,
                     missing_hint: str = "give a text file with one class name per line") -> List[str]:
    """The class names in ``path``; ``what`` names the file in error messages (``"class list"``,
    ``"--classes file"``), ``code`` is the exit status of those errors, ``missing_hint`` what to do when the file
    does not exist."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path} — {missing_hint}", code=code)
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            names = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} cannot be read: {path} ({exc}) — it must be UTF-8 text, one name per line",
                        code=code) from None
    if not names:
        raise UserError(f"{what} is empty: {path} — write one class name per line", code=code)
    seen, dups = set(), []
    for name in names:
        if name.lower() in seen and name not in dups:
            dups.append(name)
        seen.add(name.lower())
    if dups:
        raise UserError(f"duplicate class name(s) {', '.join(repr(d) for d in dups)} in {path} — list every class "
                        "once", code=code)
    return names


def placeholder_class_names(count: int) -> List[str]:
    """Names for a model file that carries none and is neither VOC- nor COCO-sized: ``class_1 .. class_<count>``
    (``count`` classes without background). The one place this naming is chosen."""
    return [f"class_{i}" for i in range(1, int(count) + 1)]


def are_placeholders(names: List[str]) -> bool:
    """True when ``names`` are :func:`placeholder_class_names` (the file carried no real names)."""
    return list(names) == placeholder_class_names(len(names))
