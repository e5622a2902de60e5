"""Comparing estimated camera poses with reference poses.

Absolute errors come after a similarity alignment of the estimate onto the reference:
RANSAC over the camera centres (minimal samples of three, Umeyama's closed form), then a
least-squares refit on the inliers. The relative-pose AUC needs no alignment: for every
pair of reference images, the error is the larger of the relative rotation's angle error
and the angle between the relative translation directions (the figure of IMC and the
LightGlue paper); a pair with an image the estimate lacks counts as an infinite error.
The translation direction is not folded with ``180° - error`` as two-view evaluations
do: a reconstruction fixes the sign of every baseline, so a flipped one is an error.

Poses are COLMAP's world-to-camera ``cam_from_world``; images are matched by name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pycolmap

from .errors import ConfigError, ReconstructionError

AUC_THRESHOLDS_DEG: tuple[float, ...] = (5.0, 10.0, 20.0)
# (rotation in degrees, position as a fraction of the reference scale) pairs
SHARE_THRESHOLDS: tuple[tuple[float, float], ...] = ((1.0, 0.01), (2.0, 0.02), (5.0, 0.05),
                                                     (10.0, 0.10))


@dataclass(frozen=True)
class PoseError:
    name: str
    rotation_deg: float
    position: float          # in reference units
    inlier: bool = True      # a centre within the RANSAC threshold after alignment


@dataclass(frozen=True)
class Similarity:
    """``x_reference = scale * rotation @ x_estimate + translation``."""
    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points) @ self.rotation.T + self.translation


@dataclass(frozen=True)
class EvaluationConfig:
    # RANSAC inlier threshold on the aligned camera centres, as a fraction of the
    # reference scale (the median distance of the reference centres to their centroid)
    inlier_threshold: float = 0.05
    max_trials: int = 2000       # every 3-subset when there are fewer
    seed: int = 0
    auc_thresholds_deg: tuple[float, ...] = AUC_THRESHOLDS_DEG
    share_thresholds: tuple[tuple[float, float], ...] = SHARE_THRESHOLDS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.inlier_threshold) and self.inlier_threshold > 0):
            raise ConfigError(f"inlier_threshold must be > 0, got {self.inlier_threshold}")
        if self.max_trials < 1:
            raise ConfigError(f"max_trials must be >= 1, got {self.max_trials}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not self.auc_thresholds_deg or any(not t > 0 for t in self.auc_thresholds_deg):
            raise ConfigError(f"auc_thresholds_deg must be positive angles, got "
                              f"{self.auc_thresholds_deg}")
        if any(len(pair) != 2 or not (pair[0] > 0 and pair[1] > 0)
               for pair in self.share_thresholds):
            raise ConfigError("share_thresholds must be (degrees > 0, fraction > 0) pairs, "
                              f"got {self.share_thresholds}")


@dataclass(frozen=True)
class PoseEvaluation:
    errors: tuple[PoseError, ...]          # the images in both, sorted by name
    missing: tuple[str, ...]               # reference images the estimate lacks
    extra: tuple[str, ...]                 # estimated images absent from the reference
    alignment: Similarity
    reference_scale: float
    inlier_threshold: float                # in reference units
    auc: dict[float, float]                # relative-pose AUC per threshold in degrees
    num_pairs: int
    share_within: dict[tuple[float, float], float] = field(default_factory=dict)

    @property
    def num_reference(self) -> int:
        return len(self.errors) + len(self.missing)

    @property
    def outliers(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.errors if not e.inlier)

    def _stat(self, values: list[float], reduce) -> float:
        return float(reduce(values)) if values else math.inf

    @property
    def median_rotation_deg(self) -> float:
        return self._stat([e.rotation_deg for e in self.errors], np.median)

    @property
    def max_rotation_deg(self) -> float:
        return self._stat([e.rotation_deg for e in self.errors], np.max)

    @property
    def median_position(self) -> float:
        return self._stat([e.position for e in self.errors], np.median)

    @property
    def max_position(self) -> float:
        return self._stat([e.position for e in self.errors], np.max)

    def as_dict(self) -> dict[str, Any]:
        scale = self.reference_scale
        return {
            "num_reference": self.num_reference,
            "num_registered": len(self.errors),
            "missing": list(self.missing),
            "extra": list(self.extra),
            "outliers": list(self.outliers),
            "reference_scale": scale,
            "inlier_threshold": self.inlier_threshold,
            "median_rotation_deg": self.median_rotation_deg,
            "max_rotation_deg": self.max_rotation_deg,
            "median_position": self.median_position,
            "max_position": self.max_position,
            "median_relative_position": self.median_position / scale,
            "max_relative_position": self.max_position / scale,
            "share_within": [{"rotation_deg": r, "relative_position": p, "share": s}
                             for (r, p), s in self.share_within.items()],
            "auc": {f"{t:g}": v for t, v in self.auc.items()},
            "num_pairs": self.num_pairs,
            "alignment": {"scale": self.alignment.scale,
                          "rotation": self.alignment.rotation.tolist(),
                          "translation": self.alignment.translation.tolist()},
            "per_image": [{"name": e.name, "rotation_deg": e.rotation_deg,
                           "position": e.position, "relative_position": e.position / scale,
                           "inlier": e.inlier} for e in self.errors],
        }


# ----------------------------------------------------------------------------- geometry

def rotation_angle_deg(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    cos = (np.trace(rotation_a.T @ rotation_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def vector_angle_deg(vector_a: np.ndarray, vector_b: np.ndarray) -> float:
    norms = np.linalg.norm(vector_a) * np.linalg.norm(vector_b)
    if norms == 0:
        return math.inf
    cos = float(np.dot(vector_a, vector_b)) / norms
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def umeyama(source: np.ndarray, target: np.ndarray) -> Similarity | None:
    """The least-squares similarity mapping ``source`` (N×3) onto ``target`` (Umeyama,
    PAMI 1991), or None when the points are degenerate (coincident or collinear)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_source, mean_target = source.mean(0), target.mean(0)
    centred_source, centred_target = source - mean_source, target - mean_target
    variance = float((centred_source ** 2).sum()) / len(source)
    covariance = centred_target.T @ centred_source / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    if variance <= 0 or singular[1] <= 1e-12 * max(singular[0], 1e-300):
        return None
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / variance
    if not scale > 0:
        return None
    return Similarity(scale, rotation, mean_target - scale * rotation @ mean_source)


def _samples(count: int, max_trials: int, rng: np.random.Generator):
    if math.comb(count, 3) <= max_trials:
        yield from itertools.combinations(range(count), 3)
        return
    for _ in range(max_trials):
        yield tuple(rng.choice(count, 3, replace=False))


def robust_similarity(source: np.ndarray, target: np.ndarray, threshold: float,
                      max_trials: int = 2000, seed: int = 0
                      ) -> tuple[Similarity, np.ndarray]:
    """RANSAC over minimal 3-point samples (most inliers, then least residual), then a
    least-squares refit on the inliers until the inlier set stops changing.

    Returns the similarity and the inlier mask; raises ReconstructionError when no
    sample of three non-collinear points gives three inliers.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    rng = np.random.default_rng(seed)
    best: tuple[int, float] = (0, math.inf)
    best_mask = None
    for sample in _samples(len(source), max_trials, rng):
        model = umeyama(source[list(sample)], target[list(sample)])
        if model is None:
            continue
        residuals = np.linalg.norm(model.apply(source) - target, axis=1)
        mask = residuals < threshold
        score = (int(mask.sum()), float(np.minimum(residuals, threshold).sum()))
        if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
            best, best_mask = score, mask
    if best_mask is None or best[0] < 3:
        raise ReconstructionError(
            "cannot align the estimate to the reference: no three non-collinear camera "
            f"centres agree within {threshold:.3g} reference units")
    mask = best_mask
    for _ in range(10):
        model = umeyama(source[mask], target[mask])
        if model is None:
            raise ReconstructionError("cannot align the estimate to the reference: the "
                                      "inlier camera centres are collinear")
        new_mask = np.linalg.norm(model.apply(source) - target, axis=1) < threshold
        if new_mask.sum() < 3 or np.array_equal(new_mask, mask):
            break
        mask = new_mask
    return model, mask


def reference_scale(centres: np.ndarray) -> float:
    """The median distance of camera centres to their centroid (the unit of relative
    position errors and of the RANSAC threshold)."""
    centres = np.asarray(centres, np.float64)
    return float(np.median(np.linalg.norm(centres - centres.mean(0), axis=1)))


# ----------------------------------------------------------------------------- metrics

def pose_auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1]
    (the cumulative curve of IMC and the LightGlue paper; infinite errors never count)."""
    errors = np.sort(np.asarray(errors, np.float64))
    if not len(errors):
        return [0.0 for _ in thresholds]
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors, recall = np.r_[0.0, errors], np.r_[0.0, recall]
    aucs = []
    for threshold in thresholds:
        last = int(np.searchsorted(errors, threshold))
        x = np.r_[errors[:last], threshold]
        y = np.r_[recall[:last], recall[last - 1]]
        aucs.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / threshold))
    return aucs


def relative_pose_errors(estimate: Mapping[str, pycolmap.Rigid3d],
                         reference: Mapping[str, pycolmap.Rigid3d]) -> list[float]:
    """Per pair of reference images: max(relative rotation error, translation direction
    error) in degrees; infinite when the estimate lacks one of the two images. Pairs whose
    reference centres coincide (no direction) are skipped."""
    names = sorted(reference)
    matrices = {n: (np.asarray(p.rotation.matrix()), np.asarray(p.translation))
                for n, p in reference.items()}
    estimated = {n: (np.asarray(p.rotation.matrix()), np.asarray(p.translation))
                 for n, p in estimate.items() if n in reference}
    errors = []
    for name_i, name_j in itertools.combinations(names, 2):
        (r_i, t_i), (r_j, t_j) = matrices[name_i], matrices[name_j]
        r_ij = r_j @ r_i.T
        t_ij = t_j - r_ij @ t_i
        if np.linalg.norm(t_ij) <= 1e-12 * (np.linalg.norm(t_i) + np.linalg.norm(t_j) + 1e-300):
            continue
        if name_i not in estimated or name_j not in estimated:
            errors.append(math.inf)
            continue
        (e_i, s_i), (e_j, s_j) = estimated[name_i], estimated[name_j]
        e_ij = e_j @ e_i.T
        s_ij = s_j - e_ij @ s_i
        errors.append(max(rotation_angle_deg(e_ij, r_ij), vector_angle_deg(s_ij, t_ij)))
    return errors


def _centre(pose: pycolmap.Rigid3d) -> np.ndarray:
    rotation = np.asarray(pose.rotation.matrix())
    return -rotation.T @ np.asarray(pose.translation)


def _aligned_errors(names: Sequence[str], estimate: Mapping[str, pycolmap.Rigid3d],
                    reference: Mapping[str, pycolmap.Rigid3d], alignment: Similarity,
                    inliers: np.ndarray) -> tuple[PoseError, ...]:
    errors = []
    for index, name in enumerate(names):
        # world_reference -> camera: R_estimate · R_alignment^T
        rotation = np.asarray(estimate[name].rotation.matrix()) @ alignment.rotation.T
        centre = alignment.apply(_centre(estimate[name]))
        errors.append(PoseError(
            name=name,
            rotation_deg=rotation_angle_deg(rotation,
                                            np.asarray(reference[name].rotation.matrix())),
            position=float(np.linalg.norm(centre - _centre(reference[name]))),
            inlier=bool(inliers[index])))
    return tuple(errors)


def evaluate_poses(estimate: Mapping[str, pycolmap.Rigid3d],
                   reference: Mapping[str, pycolmap.Rigid3d],
                   config: EvaluationConfig = EvaluationConfig()) -> PoseEvaluation:
    """Errors of ``estimate`` against ``reference`` (both name -> cam_from_world); see the
    module docstring. Raises ReconstructionError with fewer than 3 images in common."""
    common = sorted(set(estimate) & set(reference))
    missing = tuple(sorted(set(reference) - set(estimate)))
    extra = tuple(sorted(set(estimate) - set(reference)))
    if len(common) < 3:
        examples = ", ".join(sorted(reference)[:3]) or "none"
        raise ReconstructionError(
            f"only {len(common)} images in common with the reference ({len(estimate)} "
            f"estimated, {len(reference)} in the reference, e.g. {examples}); need 3 to "
            "align: check that both name the images the same way")
    source = np.array([_centre(estimate[n]) for n in common])
    target = np.array([_centre(reference[n]) for n in common])
    scale = reference_scale(np.array([_centre(p) for p in reference.values()]))
    if not scale > 0:
        raise ReconstructionError("the reference cameras all have the same centre; "
                                  "positions cannot be compared")
    threshold = config.inlier_threshold * scale
    alignment, inliers = robust_similarity(source, target, threshold, config.max_trials,
                                           config.seed)
    errors = _aligned_errors(common, estimate, reference, alignment, inliers)
    pair_errors = relative_pose_errors(estimate, reference)
    total = len(reference)
    share = {(r, p): sum(e.rotation_deg <= r and e.position <= p * scale
                         for e in errors) / total
             for r, p in config.share_thresholds}
    return PoseEvaluation(
        errors=errors, missing=missing, extra=extra, alignment=alignment,
        reference_scale=scale, inlier_threshold=threshold,
        auc=dict(zip(config.auc_thresholds_deg,
                     pose_auc(pair_errors, config.auc_thresholds_deg))),
        num_pairs=len(pair_errors), share_within=share)


def registered_poses(model: pycolmap.Reconstruction) -> dict[str, pycolmap.Rigid3d]:
    """name -> cam_from_world of the registered images of a pycolmap model."""
    return {image.name: image.cam_from_world() for image in model.images.values()
            if image.has_pose}


def aligned_pose_errors(estimate: pycolmap.Reconstruction,
                        reference: pycolmap.Reconstruction) -> tuple[list[PoseError],
                                                                     list[str]]:
    """Per-image errors of ``estimate`` after the least-squares similarity that maps its
    projection centres onto those of ``reference`` (images matched by name).

    Returns the errors of the registered images and the names of reference images that the
    estimate did not register.
    """
    estimated, references = registered_poses(estimate), registered_poses(reference)
    common = sorted(set(estimated) & set(references))
    missing = sorted(set(references) - set(estimated))
    if len(common) < 3:
        raise ReconstructionError(f"only {len(common)} images in common with the reference; "
                                  "need 3 to align")
    source = np.array([_centre(estimated[n]) for n in common])
    target = np.array([_centre(references[n]) for n in common])
    alignment = umeyama(source, target)
    if alignment is None:
        raise ReconstructionError("cannot estimate the similarity to the reference "
                                  "(degenerate camera positions)")
    errors = _aligned_errors(common, estimated, references, alignment,
                             np.ones(len(common), bool))
    return list(errors), missing
