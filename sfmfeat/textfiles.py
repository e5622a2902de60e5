"""Line-based text files of image names (pairs, poses, query lists).

Names containing spaces or quotes are written shell-quoted and read back with ``shlex``;
blank lines and ``#`` comments are skipped; errors name ``file:line``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def quote_name(name: str) -> str:
    """``name`` as one whitespace-separated token (quoted only when it has to be)."""
    return shlex.quote(name) if any(c.isspace() or c in "'\"" for c in name) else name


def read_records(path: str | Path, what: str) -> Iterator[tuple[str, str, list[str]]]:
    """(``file:line``, line text, fields) for every non-blank, non-comment line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            fields = shlex.split(text)
        except ValueError as err:
            raise InputError(f"{where}: cannot parse {text!r} ({err})") from None
        yield where, text, fields
