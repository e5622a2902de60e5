"""SIFT and RootSIFT through OpenCV.

Keypoints keep their OpenCV scale (``size``) and orientation (``angle``), so
descriptor-only methods can describe them. Descriptors are L1-normalised then
square-rooted (RootSIFT, Arandjelović & Zisserman 2012; COLMAP's default "L1_ROOT") or
L2-normalised (Lowe); both are unit-norm and match with the same nearest-neighbour code.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config import Relation, ValidatedConfig, at_least, between, greater_than, one_of
from ..features import Features
from .base import Extractor


@dataclass(frozen=True)
class SiftConfig(ValidatedConfig):
    """Defaults follow COLMAP's SIFT extraction: peak threshold 0.02/3 per scale layer, edge
    threshold 10, the largest-scale features kept when capped, RootSIFT (L1-root)
    normalisation. The cap is higher than COLMAP's 8192 so that ~1-megapixel photos keep
    every detection; it bounds the matching cost on large images."""

    max_keypoints: int | None = 16384    # None keeps all
    keep_largest_scales: bool = True     # cap by scale (as COLMAP) instead of by response
    normalization: str = "l1-root"       # "l1-root" (RootSIFT, COLMAP's default) or "l2"
    upright: bool = False                # orientation fixed to 0, duplicates by angle merged
    n_octave_layers: int = 3
    contrast_threshold: float = 0.02     # OpenCV divides it by n_octave_layers
    edge_threshold: float = 10.0
    sigma: float = 1.6
    max_octave: int | None = None        # drop detections above this octave (first is -1)
    max_orientations: int | None = None  # orientations kept per location (COLMAP: 2)
    precise_upscale: bool = False        # OpenCV's alternative 2x upsampling of octave -1
    max_edge: int | None = 3200          # long side cap before detection (COLMAP's 3200)

    rules = {"max_keypoints": at_least(1), "normalization": one_of("l1-root", "l2"),
             "n_octave_layers": between(1, 16), "contrast_threshold": at_least(0),
             "edge_threshold": greater_than(0), "sigma": between(0.01, 10),
             "max_octave": at_least(-1), "max_orientations": at_least(1),
             "max_edge": at_least(16)}
    relations = (Relation(("upright", "max_orientations"),
                          "max_orientations must be None with upright=true (upright "
                          "keeps one orientation per keypoint)",
                          lambda c: not (c.upright and c.max_orientations is not None)),)


class Sift(Extractor):
    name = "sift"
    config_class = SiftConfig
    resize_backend = "cv2-area"
    grayscale = True
    descriptor_dim = 128
    with_geometry = True
    concurrent_images = True   # cv2's SIFT releases the GIL and keeps no per-call state
    presets = {
        "sift": SiftConfig(),
        "sift-l2": SiftConfig(normalization="l2"),          # Lowe's L2-normalised descriptor
        "sift-upright": SiftConfig(upright=True),
        # RootSIFT on OpenCV's default detector settings: the strongest 8192 by response
        "rootsift": SiftConfig(max_keypoints=8192, keep_largest_scales=False,
                               contrast_threshold=0.04),
    }

    def __init__(self, config: SiftConfig | None = None, device: str | None = None) -> None:
        super().__init__(config, "cpu")   # OpenCV's SIFT runs on the CPU; torch is not needed
        self._sift = cv2.SIFT_create(
            nfeatures=0, nOctaveLayers=self.config.n_octave_layers,
            contrastThreshold=self.config.contrast_threshold,
            edgeThreshold=self.config.edge_threshold, sigma=self.config.sigma,
            enable_precise_upscale=self.config.precise_upscale,
        )

    def _forward(self, gray: np.ndarray) -> Features | None:
        # One Gaussian pyramid for detection and description (detect + compute build two:
        # 24% of a default extraction) when few detections are dropped afterwards; with a
        # small cap, describing only the kept ones is cheaper. Upright keypoints get angle-0
        # descriptors, computed after the merge below.
        cap = self.config.max_keypoints
        if self.config.upright or (cap is not None and cap < _DESCRIBE_ALL_MIN_CAP):
            keypoints, all_descriptors = self._sift.detect(gray, None), None
        else:
            keypoints, all_descriptors = self._sift.detectAndCompute(gray, None)
            for index, kp in enumerate(keypoints):
                kp.class_id = index
        if self.config.max_octave is not None:
            keypoints = [kp for kp in keypoints if _octave(kp) <= self.config.max_octave]
        if self.config.upright:
            keypoints = _upright_unique(keypoints)
        elif self.config.max_orientations is not None:
            keypoints = _limit_orientations(keypoints, self.config.max_orientations)
        keypoints = _strongest(keypoints, self.config.max_keypoints,
                               by_size=self.config.keep_largest_scales)
        if not keypoints:
            return None
        # compute() builds its pyramid from the lowest octave among the keypoints it gets;
        # when that is octave -1, as detectAndCompute's, the descriptors are the same
        if all_descriptors is not None and min(_octave(kp) for kp in keypoints) == -1:
            descriptors = all_descriptors[[kp.class_id for kp in keypoints]]
        else:
            keypoints, descriptors = self._sift.compute(gray, keypoints)
        if descriptors is None or not keypoints:
            return None
        descriptors = descriptors.astype(np.float32)
        if self.config.normalization == "l1-root":
            descriptors /= np.maximum(np.abs(descriptors).sum(1, keepdims=True), 1e-8)
            descriptors = np.sqrt(descriptors)
        else:
            descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-8)
        # cv2 places pixel centres at integer coordinates, as sfmfeat does
        return Features(
            keypoints=np.array([kp.pt for kp in keypoints], np.float32),
            scores=np.array([kp.response for kp in keypoints], np.float32),
            descriptors=descriptors,
            scales=np.array([kp.size for kp in keypoints], np.float32),
            orientations=np.array([kp.angle % 360.0 for kp in keypoints], np.float32),
        )


_DESCRIBE_ALL_MIN_CAP = 8192   # a ~1-megapixel photo has 6k-12k detections


def _octave(keypoint) -> int:
    """OpenCV packs the octave in the low byte of ``KeyPoint.octave`` (255 = octave -1)."""
    octave = keypoint.octave & 255
    return octave - 256 if octave >= 128 else octave


def _limit_orientations(keypoints: list, limit: int) -> list:
    """Keep at most ``limit`` orientations per (position, size), in detection order (OpenCV
    lists the dominant orientation first)."""
    count: dict[tuple, int] = {}
    kept = []
    for kp in keypoints:
        key = (round(kp.pt[0], 3), round(kp.pt[1], 3), round(kp.size, 3))
        if count.get(key, 0) < limit:
            count[key] = count.get(key, 0) + 1
            kept.append(kp)
    return kept


def _upright_unique(keypoints: list) -> list:
    """Zero the orientation and keep one keypoint per (position, size)."""
    unique = {}
    for kp in keypoints:
        key = (round(kp.pt[0], 3), round(kp.pt[1], 3), round(kp.size, 3))
        if key not in unique or kp.response > unique[key].response:
            unique[key] = cv2.KeyPoint(kp.pt[0], kp.pt[1], kp.size, 0.0, kp.response,
                                       kp.octave, kp.class_id)
    return list(unique.values())


def _strongest(keypoints: list, limit: int | None, by_size: bool = False) -> list:
    if limit is None or len(keypoints) <= limit:
        return list(keypoints)
    key = [-(kp.size if by_size else kp.response) for kp in keypoints]
    order = np.argsort(key, kind="stable")[:limit]
    return [keypoints[i] for i in sorted(order)]
