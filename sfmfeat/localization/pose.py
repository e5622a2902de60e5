"""Absolute pose of one camera from 2D–3D correspondences (LO-RANSAC PnP + refinement).

Inputs follow the sfmfeat convention (pixel centre at integer coordinates); the +0.5 shift
to COLMAP's convention happens here and nowhere else in the localization code. A failure
returns ``None``: no fallback pose is ever invented.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import pycolmap

from ..errors import InputError
from ..reconstruction.database import to_colmap_keypoints

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoseConfig:
    max_error: float = 12.0             # RANSAC inlier threshold in pixels
    min_num_inliers: int = 12           # fewer inliers than this = failure (no pose)
    min_inlier_ratio: float = 0.01      # RANSAC's assumed minimum ratio (bounds the trials)
    confidence: float = 0.99999
    max_num_trials: int = 10000
    min_num_trials: int = 100
    estimate_focal_length: bool = False  # P4P-f in RANSAC (for cameras without a prior)
    refine_focal_length: bool = False
    refine_extra_params: bool = False
    random_seed: int = -1               # -1 = non-deterministic (COLMAP's default)
    return_covariance: bool = False

    def __post_init__(self) -> None:
        if self.max_error <= 0:
            raise InputError(f"PoseConfig.max_error={self.max_error}: must be > 0 pixels")
        if self.min_num_inliers < 3:
            raise InputError(f"PoseConfig.min_num_inliers={self.min_num_inliers}: need >= 3")
        if not 0 < self.min_inlier_ratio <= 1:
            raise InputError(f"PoseConfig.min_inlier_ratio={self.min_inlier_ratio}: "
                             "must lie in (0, 1]")


@dataclass
class PoseResult:
    cam_from_world: pycolmap.Rigid3d
    num_inliers: int                    # inlier correspondences
    inlier_mask: np.ndarray             # bool, one per correspondence
    num_correspondences: int
    camera: pycolmap.Camera             # the (possibly refined) camera, a copy of the input
    covariance: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / max(self.num_correspondences, 1)


def estimation_options(config: PoseConfig) -> pycolmap.AbsolutePoseEstimationOptions:
    options = pycolmap.AbsolutePoseEstimationOptions()
    options.estimate_focal_length = config.estimate_focal_length
    options.ransac.max_error = config.max_error
    options.ransac.min_inlier_ratio = config.min_inlier_ratio
    options.ransac.confidence = config.confidence
    options.ransac.max_num_trials = config.max_num_trials
    options.ransac.min_num_trials = min(config.min_num_trials, config.max_num_trials)
    options.ransac.random_seed = config.random_seed
    return options


def refinement_options(config: PoseConfig) -> pycolmap.AbsolutePoseRefinementOptions:
    options = pycolmap.AbsolutePoseRefinementOptions()
    options.refine_focal_length = config.refine_focal_length or config.estimate_focal_length
    options.refine_extra_params = config.refine_extra_params
    return options


def estimate_pose(points2D: np.ndarray, points3D: np.ndarray, camera: pycolmap.Camera,
                  config: PoseConfig | None = None) -> PoseResult | None:
    """PnP with LO-RANSAC and non-linear refinement; ``None`` when no pose is found.

    points2D: N×2 in sfmfeat pixels (pixel centre at integers); points3D: N×3 world points.
    The caller's ``camera`` is never modified (COLMAP refines focal length in place, so a
    copy is passed and returned in the result).
    """
    config = config or PoseConfig()
    points2D = np.asarray(points2D, dtype=np.float64)
    points3D = np.asarray(points3D, dtype=np.float64)
    if points2D.ndim != 2 or points2D.shape[1] != 2:
        raise InputError(f"points2D must be N×2, got shape {points2D.shape}")
    if points3D.ndim != 2 or points3D.shape[1] != 3:
        raise InputError(f"points3D must be N×3, got shape {points3D.shape}")
    if len(points2D) != len(points3D):
        raise InputError(f"{len(points2D)} 2D points but {len(points3D)} 3D points")
    count = len(points2D)
    if count < max(4, config.min_num_inliers):
        logger.debug("only %d correspondences, need %d", count, config.min_num_inliers)
        return None
    finite = np.isfinite(points2D).all(1) & np.isfinite(points3D).all(1)
    if not finite.all():
        raise InputError(f"{int((~finite).sum())} correspondences have non-finite coordinates")
    camera = copy.copy(camera)
    try:
        answer = pycolmap.estimate_and_refine_absolute_pose(
            to_colmap_keypoints(points2D, np.float64), points3D, camera,
            estimation_options=estimation_options(config),
            refinement_options=refinement_options(config),
            return_covariance=config.return_covariance)
    except (ValueError, RuntimeError) as err:  # degenerate input inside COLMAP
        logger.debug("pose estimation failed: %s", err)
        return None
    if answer is None:
        return None
    mask = np.asarray(answer["inlier_mask"], dtype=bool)
    num_inliers = int(mask.sum())
    if num_inliers < config.min_num_inliers:
        return None
    return PoseResult(cam_from_world=answer["cam_from_world"], num_inliers=num_inliers,
                      inlier_mask=mask, num_correspondences=count, camera=camera,
                      covariance=answer.get("covariance"))
