"""Matcher registry: preset names -> configured descriptor matchers.

A matcher maps two descriptor arrays (N0×D, N1×D) to K×2 int32 index pairs and K float32
scores (higher is better). Matchers know nothing of files or COLMAP.
"""

from __future__ import annotations

from typing import Any

from ..config import apply_overrides
from ..errors import ConfigError
from .nearest_neighbor import NearestNeighborConfig, NearestNeighborMatcher

MATCHER_PRESETS: dict[str, tuple[type, Any]] = {
    "mnn": (NearestNeighborMatcher, NearestNeighborConfig(mutual=True)),
    "mnn-ratio": (NearestNeighborMatcher, NearestNeighborConfig(mutual=True, ratio=0.8)),
    "ratio": (NearestNeighborMatcher, NearestNeighborConfig(mutual=False, ratio=0.8)),
    "nn": (NearestNeighborMatcher, NearestNeighborConfig(mutual=False)),
}

__all__ = ["MATCHER_PRESETS", "create_matcher", "NearestNeighborMatcher",
           "NearestNeighborConfig"]


def create_matcher(name: str, overrides: dict[str, Any] | None = None,
                   device: str | None = None) -> NearestNeighborMatcher:
    if name not in MATCHER_PRESETS:
        raise ConfigError(f"unknown matcher {name!r}; choose one of: "
                          + ", ".join(sorted(MATCHER_PRESETS)))
    cls, config = MATCHER_PRESETS[name]
    return cls(apply_overrides(config, overrides or {}), device=device)
