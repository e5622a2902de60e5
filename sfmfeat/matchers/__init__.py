"""Matcher registry: preset names -> configured matchers.

A matcher maps two images' ``Features`` to K×2 int32 index pairs and K float32 scores
(higher is better); see ``base.Matcher``. Every matcher class lists its ``presets``, as the
extractors do. Matchers know nothing of files or COLMAP.
"""

from __future__ import annotations

from typing import Any

from ..config import apply_overrides
from ..errors import ConfigError
from .base import Matcher, MatchResult
from .lightglue import LightGlue, LightGlueConfig
from .nearest_neighbor import NearestNeighborConfig, NearestNeighborMatcher

MATCHER_CLASSES: tuple[type[Matcher], ...] = (NearestNeighborMatcher, LightGlue)
MATCHER_PRESETS: dict[str, tuple[type[Matcher], Any]] = {
    name: (cls, config) for cls in MATCHER_CLASSES for name, config in cls.presets.items()}

__all__ = ["MATCHER_PRESETS", "MATCHER_CLASSES", "create_matcher", "Matcher", "MatchResult",
           "NearestNeighborMatcher", "NearestNeighborConfig", "LightGlue", "LightGlueConfig"]


def create_matcher(name: str, overrides: dict[str, Any] | None = None,
                   device: str | None = None, features_method: str | None = None) -> Matcher:
    """The matcher of preset ``name`` with ``overrides`` applied. ``features_method`` (the
    feature preset the matches are made from) lets learned matchers pick their weights."""
    if name not in MATCHER_PRESETS:
        raise ConfigError(f"unknown matcher {name!r}; choose one of: "
                          + ", ".join(sorted(MATCHER_PRESETS)))
    cls, config = MATCHER_PRESETS[name]
    config = apply_overrides(config, overrides or {})
    if cls is LightGlue:
        return LightGlue(config, device=device, features_method=features_method)
    return cls(config, device=device)
