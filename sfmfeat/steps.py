"""Resumable steps: a step whose recorded inputs are unchanged and whose outputs exist is
not run again, and says so ("already done").

A step's key digests what it reads: configs, names, and the identity (path, size, mtime)
of its input files. The keys of a run's steps live in one JSON file of its output folder,
written atomically after each step, so a run killed mid-way redoes only the steps after
the last recorded one (and those resume from their own partial outputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .atomic import write_text_atomic

logger = logging.getLogger(__name__)

T = TypeVar("T")


def file_identity(path: str | Path | None) -> list[Any] | None:
    """(resolved path, size, mtime_ns) of a file, or of every file of a folder; None when
    absent."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return [file_identity(p) for p in sorted(path.iterdir()) if p.is_file()]
    if not path.is_file():
        return None
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def step_key(**inputs: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(inputs), sort_keys=True).encode()).hexdigest()[:16]


class StepRecord:
    """The keys of the finished steps of one run (``steps.json`` in its output folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.keys: dict[str, str] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            self.keys = {}

    def done(self, step: str, key: str, *outputs: Path) -> bool:
        return self.keys.get(step) == key and all(Path(p).exists() for p in outputs)

    def mark(self, step: str, key: str) -> None:
        self.keys[step] = key
        write_text_atomic(self.path, json.dumps(self.keys, indent=1, sort_keys=True),
                          parents=True)

    def run(self, step: str, key: str, outputs: list[Path], compute: Callable[[], T],
            load: Callable[[], T]) -> T:
        """``load()`` when the step is done with this key, else ``compute()`` and record."""
        if self.done(step, key, *outputs):
            logger.info("%s: already done", step)
            return load()
        result = compute()
        self.mark(step, key)
        return result
