"""Atomic file replacement: the one way sfmfeat writes a result file.

A result is written to a temporary name beside its final path, flushed to disk (fsync),
renamed over the final path and the folder entry made durable, so a reader (or a rerun
after a crash or a full disk) sees either the previous file or the whole new one, never
a partial one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, parents: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; on a normal exit it replaces
    ``path`` durably, on an exception it is removed and ``path`` is left as it was (as
    it is when the body writes nothing at that path). ``parents``: create the missing
    folders above ``path`` (otherwise a missing folder is an OSError).

    The temporary name ends with ``path``'s own suffix (tools that pick the format from
    it, such as PLY writers or ``np.save``, write the same format)."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            return
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, parents: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path, parents) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
