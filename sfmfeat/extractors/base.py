"""The extractor interface every method implements.

An extractor turns one image (H×W×3 uint8 RGB, as ``sfmfeat.images.read_image`` returns)
into ``Features``. It knows nothing of HDF5, COLMAP or the CLI.

Coordinates: keypoints are in pixels of the *original* image, with the centre of the
top-left pixel at (0, 0). COLMAP's +0.5 is added only when writing to COLMAP.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import config_hash, config_to_dict
from ..errors import ConfigError
from ..features import Features, resolve_device
from ..weights import WeightFile, resolve_weights


class Extractor(abc.ABC):
    """A local-feature method. Subclasses set the class attributes and implement ``extract``.

    name:          method name, also the weights sub-folder (e.g. "d2net").
    config_class:  a frozen dataclass; its defaults are the method's ``default_conf``.
    presets:       preset name -> config instance, e.g. {"d2net-ss": D2NetConfig()}.
    weight_files:  official weight files this method can load (see sfmfeat.weights).
    default_matcher: matcher preset used when the user names none.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    presets: ClassVar[dict[str, Any]] = {}
    weight_files: ClassVar[tuple[WeightFile, ...]] = ()
    # the matcher preset the method's authors use; pipelines take it when none is given
    default_matcher: ClassVar[str] = "mnn-ratio"

    #: identity of the loaded weight file (registered relative path or sha256 of a user's
    #: file), part of the config hash; None for methods without weights
    weights_id: str | None = None
    #: {"preset": name, "overrides": {...}} when built from a preset: what the store records
    #: so that ``extract.extractor_from_store`` can rebuild this extractor
    spec: dict[str, Any] | None = None

    def __init__(self, config: Any = None, device: str | None = None) -> None:
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.device = resolve_device(device)

    def _weights(self, value: str | None, entries: dict[str, WeightFile],
                 default: str) -> Path:
        """The file of the config's ``weights`` option (see ``weights.resolve_weights``);
        records its identity for the config hash."""
        path, self.weights_id = resolve_weights(value, entries, default, self.name)
        return path

    @abc.abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """Features of one H×W×3 uint8 RGB image."""

    @property
    def config_hash(self) -> str:
        """Hash of the method's stable ``name``, its resolved config and the identity of its
        weights: moving or renaming a class keeps it, custom weights change it."""
        return config_hash(self.name, self.config, weights=self.weights_id)

    def describe_config(self) -> dict[str, Any]:
        return {"method": self.name, "config": config_to_dict(self.config),
                "weights": self.weights_id}


class Describer(Extractor):
    """A descriptor-only method: it describes keypoints that a detector found.

    ``default_detector`` is the preset used when the name has no ``+detector`` part.
    """

    default_detector: ClassVar[str] = "sift"

    @abc.abstractmethod
    def describe(self, image: np.ndarray, keypoints: Features) -> Features:
        """Features at the given keypoints (same order; scales/orientations kept)."""

    def extract(self, image: np.ndarray) -> Features:
        raise ConfigError(
            f"{type(self).__name__} only describes keypoints; create it through "
            "sfmfeat.extractors.create_extractor so that a detector is attached"
        )


class DetectAndDescribe(Extractor):
    """A detector's keypoints described by a Describer, e.g. ``deepdesc+sift``."""

    name = "detect+describe"

    @dataclass(frozen=True)
    class _Config:
        detector: str = ""
        describer: str = ""

    config_class = _Config

    def __init__(self, detector: Extractor, describer: Describer,
                 detector_name: str, describer_name: str) -> None:
        super().__init__(self._Config(detector=detector_name, describer=describer_name),
                         describer.device)
        self.detector = detector
        self.describer = describer

    def extract(self, image: np.ndarray) -> Features:
        return self.describer.describe(image, self.detector.extract(image))

    @property
    def config_hash(self) -> str:
        return config_hash(self.name, _PairConfig(self.detector.describe_config(),
                                                  self.describer.describe_config()))

    def describe_config(self) -> dict[str, Any]:
        return {"method": self.name, "detector": self.detector.describe_config(),
                "describer": self.describer.describe_config()}


@dataclass(frozen=True)
class _PairConfig:
    detector: dict
    describer: dict


def replace_config(config: Any, **changes: Any) -> Any:
    return dataclasses.replace(config, **changes)
