"""The extractor interface every method implements.

An extractor turns one image (H×W×3 uint8 RGB, as ``sfmfeat.images.read_image`` returns)
into ``Features``. It knows nothing of HDF5, COLMAP or the CLI.

Coordinates: keypoints are in pixels of the *original* image, with the centre of the
top-left pixel at (0, 0). COLMAP's +0.5 is added only when writing to COLMAP.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import config_hash, config_to_dict
from ..errors import ConfigError, InputError
from ..features import Features, resolve_device
from ..images import max_edge_size, rescale_pixels, resize_image, to_grayscale
from ..weights import WeightFile, resolve_weights, weights_identity


class Extractor(abc.ABC):
    """A local-feature method. Subclasses set the class attributes and write ``_forward``.

    name:          method name, also the weights sub-folder (e.g. "d2net").
    config_class:  a frozen dataclass; its defaults are the method's ``default_conf``.
    presets:       preset name -> config instance, e.g. {"d2net-ss": D2NetConfig()}.
    weight_files:  official weight files this method can load (see sfmfeat.weights); the
                   config's ``weights`` field names one of them (or a path), nothing else
                   selects a release.
    default_matcher: matcher preset used when the user names none.

    The template ``extract`` owns what every method shares: it checks the image (H×W×3
    uint8; H×W is replicated to RGB), resizes it to ``network_size`` (the config's
    ``max_edge``) with the declared ``resize_backend``, converts it to grayscale when
    ``grayscale``, calls ``_forward`` on that network input, maps the keypoints back to
    original pixels ((x + 0.5) * W / w - 0.5 per axis, pixel centres at integers; scales by
    the mean factor) and returns ``Features.empty`` when ``_forward`` finds nothing.
    Pyramid methods (D2-Net, R2D2) keep their level-to-input mapping inside ``_forward``;
    R2D2's pyramid applies ``max_edge`` itself (``resize_backend = "pyramid"``).
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

    #: see sfmfeat.images.RESIZE_BACKENDS; the official code's resize of each method
    resize_backend: ClassVar[str] = "cv2-area"
    grayscale: ClassVar[bool] = False        # _forward gets H×W luminance (OpenCV weights)
    descriptor_dim: int = 0                  # of the empty Features
    with_geometry: ClassVar[bool] = False    # Features carry scales and orientations
    #: ``extract`` may run on several images at once from threads and spends its time in
    #: native code that releases the GIL (sfmfeat.extract then keeps two images in flight)
    concurrent_images: ClassVar[bool] = False

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

    def _weights(self) -> Path:
        """The file of the config's ``weights`` field (see ``weights.resolve_weights``);
        records its identity for the config hash."""
        path, self.weights_id = resolve_weights(self.config.weights, self.weight_files,
                                                self.name)
        return path

    @classmethod
    def weights_identity(cls, config: Any) -> str | None:
        """The identity ``_weights`` records for ``config``, without loading or downloading
        the file (a user's file is hashed); None for methods without weights."""
        value = getattr(config, "weights", None)
        if value is None or not cls.weight_files:
            return None
        return weights_identity(value, cls.weight_files, cls.name)

    def extract(self, image: np.ndarray) -> Features:
        """Features of one H×W×3 uint8 RGB image, keypoints in its pixels."""
        network_image, factor = self._network_image(image)
        features = self._forward(network_image)
        if features is None or len(features) == 0:
            return Features.empty(self.descriptor_dim, with_geometry=self.with_geometry)
        return to_original_pixels(features, factor)

    def _network_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """The checked, resized (and grayscale) network input, and the factor (W/w, H/h)."""
        image = checked_image(image)
        height, width = image.shape[:2]
        size = (height, width) if self.resize_backend == "pyramid" else \
            self.network_size(height, width)
        network_image = image if size == (height, width) else \
            resize_image(image, size, self.resize_backend)
        if self.grayscale:
            network_image = to_grayscale(network_image)
        return network_image, (width / size[1], height / size[0])

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the network input for an H×W image: the config's ``max_edge`` rule."""
        return max_edge_size(height, width, getattr(self.config, "max_edge", None))

    def _forward(self, image: np.ndarray) -> Features | None:
        """Features of the network input (keypoints in its pixels), or None for none."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _forward nor "
                                  "extract")

    @property
    def config_hash(self) -> str:
        """Hash of the method's stable ``name``, its resolved config and the identity of its
        weights: moving or renaming a class keeps it, custom weights change it."""
        return self.hash_of(self.config, self.weights_id)

    @classmethod
    def hash_of(cls, config: Any, weights_id: str | None) -> str:
        return config_hash(cls.name, config, weights=weights_id)

    def describe_config(self) -> dict[str, Any]:
        return self.description(self.config, self.weights_id)

    @classmethod
    def description(cls, config: Any, weights_id: str | None) -> dict[str, Any]:
        return {"method": cls.name, "config": config_to_dict(config), "weights": weights_id}


def checked_image(image: np.ndarray) -> np.ndarray:
    """``image`` as H×W×3 (a 2-D image is replicated), or InputError."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InputError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    return image


def to_original_pixels(features: Features, factor: tuple[float, float]) -> Features:
    """Features of a network input resized by 1/``factor`` = (W/w, H/h), in original
    pixels (pixel centres at integers in both images)."""
    if factor == (1.0, 1.0):
        return features
    xy = rescale_pixels(features.keypoints, factor)
    scales = None if features.scales is None else features.scales * (0.5 * sum(factor))
    return Features(xy.astype(np.float32), features.scores, features.descriptors,
                    scales, features.orientations)


def to_network_pixels(keypoints: Features, factor: tuple[float, float]) -> Features:
    """Original-image keypoints (and scales) in the pixels of a network input resized by
    1/``factor``: the inverse of ``to_original_pixels``."""
    if factor == (1.0, 1.0):
        return keypoints
    return to_original_pixels(keypoints, (1.0 / factor[0], 1.0 / factor[1]))


class Describer(Extractor):
    """A descriptor-only method: it describes keypoints that a detector found.

    ``default_detector`` is the preset used when the name has no ``+detector`` part.
    """

    default_detector: ClassVar[str] = "sift"

    def describe(self, image: np.ndarray, keypoints: Features) -> Features:
        """Features at the given keypoints (same order; scales/orientations kept): the
        template resizes the image as ``extract`` does, moves the keypoints (and scales)
        into the network input's pixels and calls ``_describe``."""
        xy = keypoints.keypoints
        if not np.isfinite(xy).all():
            raise InputError(f"{self.name}: keypoints with non-finite coordinates")
        if len(xy) == 0:
            return Features(xy, keypoints.scores, np.zeros((0, self.descriptor_dim),
                            np.float32), keypoints.scales, keypoints.orientations)
        network_image, factor = self._network_image(image)
        descriptors = self._describe(network_image, to_network_pixels(keypoints, factor))
        if descriptors is None:
            return Features.empty(self.descriptor_dim,
                                  with_geometry=keypoints.scales is not None)
        return Features(xy, keypoints.scores, descriptors, keypoints.scales,
                        keypoints.orientations)

    def _describe(self, image: np.ndarray, keypoints: Features) -> np.ndarray | None:
        """N×D descriptors of the network input at ``keypoints`` (in its pixels, scales
        included); None: none possible."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _describe nor "
                                  "describe")

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
        return self.pair_hash(self.detector.describe_config(), self.describer.describe_config())

    @classmethod
    def pair_hash(cls, detector: dict[str, Any], describer: dict[str, Any]) -> str:
        """The hash of a pair from its two ``description``s."""
        return config_hash(cls.name, _PairConfig(detector, describer))

    def describe_config(self) -> dict[str, Any]:
        return {"method": self.name, "detector": self.detector.describe_config(),
                "describer": self.describer.describe_config()}


@dataclass(frozen=True)
class _PairConfig:
    detector: dict
    describer: dict

