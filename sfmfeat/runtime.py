"""Seeds and CPU thread counts of a run: what makes a run replayable.

A run is replayed by its seed: every stochastic stage (COLMAP's RANSAC in verification and
pose estimation, incremental/global mapping) takes it explicitly. The CPU thread count
matters too: torch's and OpenCV's reductions are blocked by thread, so features computed
with 1 and 2 threads may differ in the last bits, and COLMAP's multi-threaded bundle
adjustment sums in an order that depends on thread timing.
"""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigError

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself when it is >= 0, else a fresh random seed (logged, so it can be replayed)."""
    if seed is not None and seed >= 0:
        if seed > MAX_SEED:
            raise ConfigError(f"seed {seed} is out of range: use 0..{MAX_SEED}")
        return int(seed)
    drawn = secrets.randbelow(MAX_SEED)
    logger.info("random seed %d (pass --seed %d to replay this run)", drawn, drawn)
    return drawn


def validate_num_threads(num_threads: int) -> int:
    """-1 (every core) or a positive count; anything else is a ConfigError."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or (
            num_threads < 1 and num_threads != -1):
        raise ConfigError(f"num_threads={num_threads!r}: use -1 (all cores) or a count >= 1")
    return num_threads


@contextmanager
def cpu_threads(num_threads: int, loaded_only: bool = False) -> Iterator[None]:
    """Cap torch's and OpenCV's CPU threads inside the block (-1 leaves them as they are);
    ``loaded_only``: only those of the two already imported (a process that runs no torch
    model need not pay for importing torch).

    The previous counts are restored on exit, so a library caller's settings survive.
    """
    validate_num_threads(num_threads)
    if num_threads == -1:
        yield
        return
    if loaded_only:
        torch, cv2 = sys.modules.get("torch"), sys.modules.get("cv2")
    else:
        import cv2
        import torch
    previous_torch = torch.get_num_threads() if torch is not None else None
    previous_cv2 = cv2.getNumThreads() if cv2 is not None else None
    if torch is not None:
        torch.set_num_threads(num_threads)
    if cv2 is not None:
        cv2.setNumThreads(num_threads)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(previous_torch)
        if cv2 is not None:
            cv2.setNumThreads(previous_cv2)
