"""The matcher interface: two images' whole ``Features`` in, K×2 int32 matches and K scores out.

A matcher sees keypoints, scores, descriptors and the image size of both images (the
nearest-neighbour matchers read only the descriptors; LightGlue reads all of them). It knows
nothing of files or COLMAP. Each matcher class lists its named ``presets`` (frozen dataclass
configs) the way extractors do; ``sfmfeat.matchers.create_matcher`` builds them by name.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

import numpy as np

from ..config import config_hash
from ..errors import ConfigError
from ..features import Features, resolve_device

MatchResult = tuple[np.ndarray, np.ndarray]   # K×2 int32 (index in image 0, in image 1), K float32


class Matcher(abc.ABC):
    """name:         method name, also the weights sub-folder of learned matchers.
    config_class: a frozen dataclass; its defaults are the method's defaults.
    presets:      preset name -> config instance.
    weight_files: official weight files this method can load (see sfmfeat.weights).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    presets: ClassVar[dict[str, Any]] = {}
    weight_files: ClassVar[tuple] = ()

    def __init__(self, config: Any = None, device: str | None = None) -> None:
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} expects a {self.config_class.__name__}, "
                              f"got {type(config).__name__}")
        self.config = config
        self.device = resolve_device(device)

    @property
    def config_hash(self) -> str:
        return config_hash(f"{type(self).__module__}.{type(self).__qualname__}", self.config)

    @property
    def pairs_per_batch(self) -> int:
        """How many pairs ``match_batch`` should be given at once."""
        return 1

    def check(self, features: Features) -> None:
        """Raise an SfmfeatError when ``features`` cannot be matched (e.g. a descriptor size
        the weights do not take); called once per features file before any pair."""

    @abc.abstractmethod
    def match(self, features0: Features, features1: Features) -> MatchResult:
        """K×2 int32 matches (index into image 0, index into image 1) and K float32 scores
        (higher is better)."""

    def match_batch(self, pairs: Sequence[tuple[Features, Features]]) -> list[MatchResult]:
        """``match`` for several pairs; matchers that batch on an accelerator override it."""
        return [self.match(f0, f1) for f0, f1 in pairs]
