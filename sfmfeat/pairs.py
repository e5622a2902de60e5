"""Image pairs to match: exhaustive, sequential, or read from a file.

Pair files hold one pair per line, ``name0 name1``; a name containing spaces is written in
double quotes (shell-style), which this reader also accepts. Pairs are de-duplicated
regardless of order and self-pairs dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import InputError

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def unique_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """Order-invariant de-duplication (first occurrence kept) without self-pairs."""
    seen: set[frozenset[str]] = set()
    result = []
    for name0, name1 in pairs:
        key = frozenset((name0, name1))
        if name0 != name1 and key not in seen:
            seen.add(key)
            result.append((name0, name1))
    return result


def exhaustive(names: Sequence[str], reference_names: Sequence[str] | None = None) -> list[Pair]:
    """All pairs among ``names``, or every ``names`` × ``reference_names`` pair."""
    if reference_names is None:
        return list(itertools.combinations(names, 2))
    return unique_pairs((q, r) for q in names for r in reference_names)


def sequential(names: Sequence[str], window: int = 10, quadratic_overlap: bool = True,
               loop_closure_every: int = 0) -> list[Pair]:
    """Pairs for ordered frames (video): each frame with the next ``window`` frames.

    quadratic_overlap: also pair frame i with i + 2^k for 2^k beyond the window (as COLMAP's
        sequential matcher), which links distant parts of a slow sequence.
    loop_closure_every: every n-th frame is also paired with every n-th frame (exhaustive
        among these key frames), so a sequence that revisits a place is closed; 0 = off.
    """
    if window < 1:
        raise InputError(f"sequential pairs need window >= 1, got {window}")
    pairs: list[Pair] = []
    count = len(names)
    for i in range(count):
        for j in range(i + 1, min(i + 1 + window, count)):
            pairs.append((names[i], names[j]))
        if quadratic_overlap:
            step = 1
            while step <= window:
                step *= 2
            while i + step < count:
                pairs.append((names[i], names[i + step]))
                step *= 2
    if loop_closure_every > 0:
        keyframes = names[::loop_closure_every]
        pairs.extend(itertools.combinations(keyframes, 2))
    return unique_pairs(pairs)


def read_pairs(path: str | Path) -> list[Pair]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist")
    pairs = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            fields = shlex.split(line)
        except ValueError as err:
            raise InputError(f"{path}:{line_number}: cannot parse {line!r} ({err})") from None
        if len(fields) < 2:
            raise InputError(f"{path}:{line_number}: expected 'name0 name1', got {line!r}")
        pairs.append((fields[0], fields[1]))
    return unique_pairs(pairs)


def _quote(name: str) -> str:
    return shlex.quote(name) if any(c.isspace() or c in "'\"" for c in name) else name


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    """Write pairs atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{_quote(a)} {_quote(b)}\n" for a, b in pairs), encoding="utf-8")
    os.replace(tmp, path)
