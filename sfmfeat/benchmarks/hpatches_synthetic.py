"""HPatches-format sequences generated from any images.

Each source image gives one sequence folder laid out exactly as ``hpatches-sequences-release``:
``1.ppm .. 6.ppm`` and ``H_1_2 .. H_1_6`` (three lines of three numbers mapping pixel
coordinates of image 1 to image k, pixel centres at integers as in sfmfeat).

- ``v_<name>``: viewpoint. The image is a textured plane seen head-on by camera 1. Cameras
  2..6 look at the same plane from increasingly oblique directions (tilt about a random axis in
  the plane, growing from ``tilt_range[0]`` to ``tilt_range[1]`` degrees), with a random roll
  and distance (scale) change, so each ``H_1_k = K [r1 r2 t]_k · (K [r1 r2 t]_1)^-1`` is the
  homography a real camera motion induces. Image 1 is a central crop of the (resized) source, and
  images 2..6 are warped from the whole source, so the warped views are mostly filled.
- ``i_<name>``: illumination. Same pixels (``H_1_k`` = identity), increasingly strong
  photometric changes: gain and gamma, a colour cast, a smooth shading gradient, a soft shadow
  and sensor noise.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..errors import InputError
from ..images import read_image
from .hpatches import TARGET_INDICES, write_homography

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    max_size: int = 320                         # long side of the source after resizing, px
    crop: float = 0.8                           # image 1 = this central fraction of the source
    focal: float = 1.0                          # focal length / long side of image 1
    tilt_range: tuple[float, float] = (10.0, 55.0)   # degrees, image 2 .. image 6
    max_roll: float = 20.0                      # degrees, random in-plane rotation
    scale_range: tuple[float, float] = (0.75, 1.3)   # random distance change (zoom)
    noise_sigma: float = 3.0                    # grey levels, illumination sequences at k=6
    seed: int = 0


def generate_sequences(images: Sequence[str | Path], output_dir: str | Path,
                       num_illumination: int, num_viewpoint: int,
                       config: SyntheticConfig = SyntheticConfig()) -> list[str]:
    """Write ``num_illumination`` i_ and ``num_viewpoint`` v_ sequences to ``output_dir``.

    Source images are used in order, cycling when there are fewer than requested. Returns the
    sequence names.
    """
    images = [Path(p) for p in images]
    if not images:
        raise InputError("no source image given for the synthetic HPatches sequences")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    jobs = [("i", k) for k in range(num_illumination)] + [("v", k) for k in range(num_viewpoint)]
    for number, (kind, k) in enumerate(jobs):
        source = images[(k if kind == "i" else k + num_illumination) % len(images)]
        stem = "".join(c if c.isalnum() else "_" for c in source.stem).lower()
        name = f"{kind}_{stem}_{k}"
        rng = np.random.default_rng([config.seed, number])
        image = _resize(read_image(source), config.max_size)
        if kind == "i":
            views, homographies = _illumination(image, config, rng)
        else:
            views, homographies = _viewpoint(image, config, rng)
        _write_sequence(output_dir / name, views, homographies)
        names.append(name)
    logger.info("wrote %d synthetic HPatches sequences to %s", len(names), output_dir)
    return names


def _resize(image: np.ndarray, max_size: int) -> np.ndarray:
    scale = max_size / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _write_sequence(folder: Path, views: list[np.ndarray], homographies: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, view in enumerate(views, start=1):
        if not cv2.imwrite(str(folder / f"{index}.ppm"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR)):
            raise InputError(f"cannot write {folder / f'{index}.ppm'}")
    for index, matrix in zip(TARGET_INDICES, homographies):
        write_homography(folder / f"H_1_{index}", matrix)


# ------------------------------------------------------------------------------ viewpoint

def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    rvec = np.asarray(axis, np.float64) / np.linalg.norm(axis) * angle
    return cv2.Rodrigues(rvec)[0]


def plane_homography(intrinsics: np.ndarray, rotation: np.ndarray, centre: np.ndarray
                     ) -> np.ndarray:
    """Homography from plane coordinates (X, Y, 1) on z=0 to the image of a camera with
    world-to-camera ``rotation`` and camera ``centre``."""
    t = -rotation @ centre
    return intrinsics @ np.column_stack([rotation[:, 0], rotation[:, 1], t])


def _viewpoint(source: np.ndarray, config: SyntheticConfig, rng: np.random.Generator
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    src_h, src_w = source.shape[:2]
    width, height = round(src_w * config.crop), round(src_h * config.crop)
    x0, y0 = (src_w - width) // 2, (src_h - height) // 2
    focal = config.focal * max(width, height)
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1.0]])
    # camera 1: head-on at distance 1, so the plane coordinates are normalised image-1 rays
    to_plane = np.linalg.inv(plane_homography(K, np.eye(3), np.array([0, 0, -1.0])))
    crop_to_source = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]])
    views = [np.ascontiguousarray(source[y0:y0 + height, x0:x0 + width])]
    homographies = []
    tilts = np.linspace(*config.tilt_range, len(TARGET_INDICES))
    for tilt in tilts:
        tilt = math.radians(tilt + rng.uniform(-3, 3))
        direction = rng.uniform(0, 2 * math.pi)
        axis = np.array([math.cos(direction), math.sin(direction), 0.0])
        roll = math.radians(rng.uniform(-config.max_roll, config.max_roll))
        distance = 1.0 / rng.uniform(*config.scale_range)
        target = np.array([*rng.uniform(-0.05, 0.05, 2), 0.0])
        # camera k looks at ``target`` along its optical axis, tilted away from the normal
        rotation = _rotation([0, 0, 1], roll) @ _rotation(axis, tilt)
        centre = target - distance * rotation.T @ np.array([0, 0, 1.0])
        H = plane_homography(K, rotation, centre) @ to_plane
        H /= H[2, 2]
        warp = H @ np.linalg.inv(crop_to_source)     # source pixels -> image k
        views.append(cv2.warpPerspective(source, warp, (width, height), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        homographies.append(H)
    return views, homographies


# ------------------------------------------------------------------------------ illumination

def _illumination(image: np.ndarray, config: SyntheticConfig, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    height, width = image.shape[:2]
    base = image.astype(np.float32) / 255.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    views = [image]
    strengths = np.linspace(0.3, 1.0, len(TARGET_INDICES))
    for strength in strengths:
        darker = rng.random() < 0.5
        gain = 1.0 + strength * (rng.uniform(-0.6, -0.3) if darker else rng.uniform(0.2, 0.5))
        gamma = math.exp(strength * rng.uniform(-0.5, 0.5))
        cast = 1.0 + strength * rng.uniform(-0.25, 0.25, 3).astype(np.float32)
        # smooth shading: a linear ramp in a random direction
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (math.cos(angle) * (xs / width - 0.5) + math.sin(angle) * (ys / height - 0.5))
        shading = 1.0 + strength * 0.8 * ramp
        # a soft elliptical shadow
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.2, 0.5) * max(width, height)
        shadow = 1.0 - strength * 0.5 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2)
                                               / (2 * radius ** 2))
        out = np.power(base, gamma) * gain * cast[None, None, :]
        out *= (shading * shadow)[:, :, None]
        out = out * 255.0 + rng.normal(0, config.noise_sigma * strength, out.shape)
        views.append(np.clip(np.round(out), 0, 255).astype(np.uint8))
    return views, [np.eye(3) for _ in TARGET_INDICES]
