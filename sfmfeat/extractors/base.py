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
from typing import Any, ClassVar

import numpy as np

from ..config import config_hash, config_to_dict
from ..errors import ConfigError
from ..weights import WeightFile


@dataclass(frozen=True, eq=False)
class Features:
    """Local features of one image.

    keypoints:    N×2 float32, (x, y) in original-image pixels, pixel centre at integers.
    scores:       N float32, detection confidence (higher is better).
    descriptors:  N×D float32.
    scales:       optional N float32, keypoint diameter in pixels (OpenCV ``KeyPoint.size``).
    orientations: optional N float32, degrees in [0, 360) (OpenCV ``KeyPoint.angle``).
    image_size:   optional (width, height) of the original image; matchers that normalise
                  keypoints by it (LightGlue) read it. The store fills it in on reading.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    scales: np.ndarray | None = None
    orientations: np.ndarray | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        kp = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 2)
        n = len(kp)
        desc = np.asarray(self.descriptors, dtype=np.float32)
        if desc.ndim != 2 or len(desc) != n:
            raise ValueError(f"descriptors must be N×D with N={n}, got shape {desc.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(scores) != n:
            raise ValueError(f"scores must have N={n} entries, got {len(scores)}")
        object.__setattr__(self, "keypoints", kp)
        object.__setattr__(self, "descriptors", desc)
        object.__setattr__(self, "scores", scores)
        for field in ("scales", "orientations"):
            value = getattr(self, field)
            if value is not None:
                value = np.asarray(value, dtype=np.float32).reshape(-1)
                if len(value) != n:
                    raise ValueError(f"{field} must have N={n} entries, got {len(value)}")
                object.__setattr__(self, field, value)
        if self.image_size is not None:
            size = tuple(int(v) for v in np.asarray(self.image_size).reshape(-1))
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"image_size must be (width, height) > 0, got {self.image_size}")
            object.__setattr__(self, "image_size", size)

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def descriptor_dim(self) -> int:
        return self.descriptors.shape[1]

    def subset(self, index: np.ndarray) -> "Features":
        """The features at ``index`` (an index array or a boolean mask)."""
        return Features(
            keypoints=self.keypoints[index],
            scores=self.scores[index],
            descriptors=self.descriptors[index],
            scales=None if self.scales is None else self.scales[index],
            orientations=None if self.orientations is None else self.orientations[index],
            image_size=self.image_size,
        )

    def top_k(self, k: int | None) -> "Features":
        """The ``k`` highest-scoring features (stable order for ties); all when k is None."""
        if k is None or k <= 0 or len(self) <= k:
            return self
        order = np.argsort(-self.scores, kind="stable")[:k]
        return self.subset(np.sort(order))

    @classmethod
    def empty(cls, descriptor_dim: int, with_geometry: bool = False) -> "Features":
        zeros = np.zeros(0, np.float32)
        return cls(
            keypoints=np.zeros((0, 2), np.float32),
            scores=zeros,
            descriptors=np.zeros((0, descriptor_dim), np.float32),
            scales=zeros if with_geometry else None,
            orientations=zeros if with_geometry else None,
        )


def resolve_device(device: str | None) -> str:
    """``device`` or, when None, "cuda" if a GPU is present else "cpu".

    Raises ConfigError for a device torch does not know or a CUDA device without CUDA."""
    try:
        import torch
    except ImportError:
        if device not in (None, "cpu"):
            raise ConfigError(f"device {device!r}: torch is not installed; use cpu") from None
        return "cpu"
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"device {device!r} is not a torch device ({err}); use cpu or "
                          "cuda") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this torch has no usable CUDA device; use "
                          "--device cpu or leave --device out")
    if parsed.type == "cuda" and parsed.index is not None \
            and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                          "device(s) present")
    return device


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

    @abc.abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """Features of one H×W×3 uint8 RGB image."""

    @property
    def kind(self) -> str:
        return f"{type(self).__module__}.{type(self).__qualname__}"

    @property
    def config_hash(self) -> str:
        return config_hash(self.kind, self.config)

    def describe_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": config_to_dict(self.config)}


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
        return config_hash(self.kind, _PairConfig(self.detector.describe_config(),
                                                  self.describer.describe_config()))

    def describe_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "detector": self.detector.describe_config(),
                "describer": self.describer.describe_config()}


@dataclass(frozen=True)
class _PairConfig:
    detector: dict
    describer: dict


def replace_config(config: Any, **changes: Any) -> Any:
    return dataclasses.replace(config, **changes)
