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


def read_lines(path: str | Path, what: str) -> Iterator[tuple[str, str]]:
    """(``file:line``, stripped text) for every non-blank, non-comment line; ``what``
    names the file in the error when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield f"{path}:{number}", text


def split_fields(text: str) -> list[str]:
    """The whitespace-separated (shell-quoted where needed) fields of one line."""
    try:
        return shlex.split(text)
    except ValueError as err:
        raise InputError(f"cannot parse {text!r} ({err})") from None


def read_records(path: str | Path, what: str) -> Iterator[tuple[str, str, list[str]]]:
    """(``file:line``, line text, fields) for every non-blank, non-comment line."""
    for where, text in read_lines(path, what):
        try:
            fields = split_fields(text)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        yield where, text, fields
