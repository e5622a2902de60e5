"""Image pairs to match: exhaustive, sequential, or read from a file.

Pair files hold one pair per line, ``name0 name1``; a name containing spaces is written in
double quotes (shell-style), which this reader also accepts. Pairs are de-duplicated
regardless of order and self-pairs dropped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from .atomic import write_text_atomic
from .errors import InputError
from .textfiles import quote_name, read_records

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
    pairs = []
    for where, text, fields in read_records(path, "pairs file"):
        if len(fields) < 2:
            raise InputError(f"{where}: expected 'name0 name1', got {text!r}")
        pairs.append((fields[0], fields[1]))
    return unique_pairs(pairs)


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    """Write pairs atomically (temporary file, then rename)."""
    write_text_atomic(path, "".join(f"{quote_name(a)} {quote_name(b)}\n" for a, b in pairs),
                      parents=True)
