"""Comparing an estimated model with ground-truth poses after similarity alignment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap

from .errors import ReconstructionError


@dataclass(frozen=True)
class PoseError:
    name: str
    rotation_deg: float
    position: float          # in ground-truth units


def rotation_angle_deg(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    cos = (np.trace(rotation_a.T @ rotation_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def aligned_pose_errors(estimate: pycolmap.Reconstruction,
                        reference: pycolmap.Reconstruction) -> tuple[list[PoseError],
                                                                     list[str]]:
    """Per-image errors of ``estimate`` after the least-squares similarity that maps its
    projection centres onto those of ``reference`` (images matched by name).

    Returns the errors of the registered images and the names of reference images that the
    estimate did not register.
    """
    ref_by_name = {im.name: im for im in reference.images.values() if im.has_pose}
    est_by_name = {im.name: im for im in estimate.images.values() if im.has_pose}
    common = sorted(set(ref_by_name) & set(est_by_name))
    missing = sorted(set(ref_by_name) - set(est_by_name))
    if len(common) < 3:
        raise ReconstructionError(f"only {len(common)} images in common with the reference; "
                                  "need 3 to align")
    source = np.array([est_by_name[n].projection_center() for n in common])
    target = np.array([ref_by_name[n].projection_center() for n in common])
    ref_from_est = pycolmap.estimate_sim3d(source, target)
    if ref_from_est is None:
        raise ReconstructionError("cannot estimate the similarity to the reference "
                                  "(degenerate camera positions)")
    rotation = ref_from_est.rotation.matrix()
    errors = []
    for name, src in zip(common, source):
        aligned_centre = ref_from_est * src
        # world_ref -> cam: R_est · R_align^T
        aligned_rotation = est_by_name[name].cam_from_world().rotation.matrix() @ rotation.T
        reference_rotation = ref_by_name[name].cam_from_world().rotation.matrix()
        errors.append(PoseError(
            name=name,
            rotation_deg=rotation_angle_deg(aligned_rotation, reference_rotation),
            position=float(np.linalg.norm(aligned_centre - ref_by_name[name].projection_center())),
        ))
    return errors, missing
