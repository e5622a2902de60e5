"""Per-stage wall-clock timings, logged and collected for summary files."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """``with timer.stage("match"): ...`` logs the stage and records its seconds."""

    def __init__(self, logger: logging.Logger, prefix: str = "") -> None:
        self.logger = logger
        self.prefix = prefix
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self.logger.info("== %s%s", self.prefix, name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            self.logger.info("%s%s took %.2f s", self.prefix, name, self.seconds[name])
