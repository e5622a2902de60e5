"""Types shared by extractors, matchers and the store: ``Features`` and device resolution.

This module imports neither torch nor any network, so the store, the matchers and the CLI
can use it without paying for the extractors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


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
    if device == "cpu":   # no torch import: SIFT and the store run without it
        return device
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
