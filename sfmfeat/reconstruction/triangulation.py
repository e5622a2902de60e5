"""Triangulate a reference model's known poses with new features.

The reference (a COLMAP model, or NVM + intrinsics through :mod:`.nvm`) fixes cameras and
poses; our keypoints and matches go into a fresh database whose camera and image ids
equal the model's, the matches are verified with the *known* epipolar geometry (and
optionally COLMAP's RANSAC), and ``pycolmap.triangulate_points`` adds the 3D points.
The poses are never changed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import InputError, ReconstructionError
from ..pairs import Pair, unique_pairs
from ..progress import tqdm
from ..store import FeatureReader, MatchReader, check_matches_lineage
from .database import (import_keypoints, to_colmap_keypoints, verify_matches,
                       write_model_database)

logger = logging.getLogger(__name__)

VERIFICATIONS = ("poses", "ransac", "poses+ransac", "none")


@dataclass(frozen=True)
class TriangulationConfig:
    verification: str = "poses"         # poses | ransac | poses+ransac | none
    max_epipolar_error: float = 4.0     # px, symmetric point-to-epipolar-line distance
    ransac_max_error: float = 4.0       # px, COLMAP two-view RANSAC ("ransac" modes)
    min_num_matches: int = 15           # pairs with fewer verified matches are dropped
    min_match_score: float | None = None
    min_tri_angle: float = 1.5          # degrees (COLMAP's filter_min_tri_angle)
    max_reprojection_error: float = 4.0  # px (COLMAP's filter_max_reproj_error)
    extract_colors: bool = True
    random_seed: int = -1
    num_threads: int = -1

    def __post_init__(self) -> None:
        if self.verification not in VERIFICATIONS:
            raise InputError(f"verification {self.verification!r}: choose one of "
                             + ", ".join(VERIFICATIONS))
        if self.max_epipolar_error <= 0 or self.ransac_max_error <= 0:
            raise InputError("epipolar and RANSAC errors must be positive")


@dataclass
class TriangulationReport:
    reconstruction: pycolmap.Reconstruction
    database_path: Path
    num_pairs: int = 0
    num_verified_pairs: int = 0
    num_matches: int = 0
    num_inlier_matches: int = 0
    skipped_pairs: dict[str, str] = field(default_factory=dict)
    max_pose_change: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        rec = self.reconstruction
        return {
            "num_images": rec.num_images(), "num_reg_images": rec.num_reg_images(),
            "num_points3D": rec.num_points3D(),
            "mean_track_length": rec.compute_mean_track_length() if rec.num_points3D() else 0,
            "mean_reprojection_error": (rec.compute_mean_reprojection_error()
                                        if rec.num_points3D() else 0),
            "num_pairs": self.num_pairs, "num_verified_pairs": self.num_verified_pairs,
            "num_matches": self.num_matches, "num_inlier_matches": self.num_inlier_matches,
            "inlier_ratio": self.num_inlier_matches / max(self.num_matches, 1),
            "max_pose_change": self.max_pose_change, "seconds": self.seconds,
            "skipped_pairs": len(self.skipped_pairs),
        }


def load_reference(path: str | Path | pycolmap.Reconstruction,
                   intrinsics: str | Path | None = None) -> pycolmap.Reconstruction:
    """A reference model: a Reconstruction, a COLMAP model folder, or an NVM file (with
    ``intrinsics``). Returned without 3D points (a copy; the input is untouched)."""
    if isinstance(path, pycolmap.Reconstruction):
        reference = copy.copy(path)
    else:
        path = Path(path)
        if path.suffix.lower() == ".nvm":
            if intrinsics is None:
                raise InputError(f"{path} is an NVM model: give its intrinsics file "
                                 "(name MODEL w h params... per line)")
            from .nvm import reconstruction_from_nvm

            return reconstruction_from_nvm(path, intrinsics)
        reference = read_model(path)
    reference.delete_all_points2D_and_points3D()
    return reference


def read_model(path: str | Path) -> pycolmap.Reconstruction:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model folder {path} does not exist")
    has_bin = all((path / f"{n}.bin").is_file() for n in ("cameras", "images", "points3D"))
    has_txt = all((path / f"{n}.txt").is_file() for n in ("cameras", "images", "points3D"))
    if not (has_bin or has_txt):
        raise InputError(f"{path} holds no COLMAP model (cameras/images/points3D .bin or "
                         ".txt)")
    try:
        return pycolmap.Reconstruction(path)
    except (ValueError, RuntimeError) as err:
        raise InputError(f"cannot read the COLMAP model in {path}: {err}") from None


def epipolar_inliers(keypoints0: np.ndarray, keypoints1: np.ndarray, matches: np.ndarray,
                     camera0: pycolmap.Camera, camera1: pycolmap.Camera,
                     cam0_from_world: pycolmap.Rigid3d, cam1_from_world: pycolmap.Rigid3d,
                     max_error: float) -> tuple[np.ndarray, np.ndarray]:
    """(inlier mask, E) for matches (K×2 indices into sfmfeat-convention keypoints) under
    the known relative pose: both symmetric point-to-epipolar-line distances, measured in
    normalised camera coordinates, must be within ``max_error`` pixels of each camera."""
    cam1_from_cam0 = cam1_from_world * cam0_from_world.inverse()
    essential = np.asarray(pycolmap.essential_matrix_from_pose(cam1_from_cam0))
    if len(matches) == 0:
        return np.zeros(0, bool), essential
    p0 = to_colmap_keypoints(np.asarray(keypoints0)[matches[:, 0]], np.float64)
    p1 = to_colmap_keypoints(np.asarray(keypoints1)[matches[:, 1]], np.float64)
    x0 = np.c_[camera0.cam_from_img(p0), np.ones(len(p0))]
    x1 = np.c_[camera1.cam_from_img(p1), np.ones(len(p1))]
    line1 = x0 @ essential.T            # epipolar lines in image 1: E x0
    line0 = x1 @ essential              # epipolar lines in image 0: E^T x1
    numerator = np.abs(np.sum(x1 * line1, axis=1))
    error1 = numerator / np.maximum(np.linalg.norm(line1[:, :2], axis=1), 1e-12)
    error0 = numerator / np.maximum(np.linalg.norm(line0[:, :2], axis=1), 1e-12)
    mask = ((error0 <= camera0.cam_from_img_threshold(max_error))
            & (error1 <= camera1.cam_from_img_threshold(max_error)))
    return mask & np.isfinite(error0) & np.isfinite(error1), essential


def import_features_and_matches(reference: pycolmap.Reconstruction, database_path: Path,
                                image_ids: dict[str, int], features: FeatureReader,
                                matches: MatchReader, pairs: list[Pair],
                                config: TriangulationConfig,
                                report: TriangulationReport) -> None:
    """Keypoints (+0.5) for every model image, then matches (raw and/or verified)."""
    missing = [n for n in image_ids if n not in features]
    if missing:
        raise InputError(f"{len(missing)} model image(s) have no features in "
                         f"{features.path}: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    keypoints: dict[str, np.ndarray] = {}

    def get_keypoints(name: str) -> np.ndarray:
        if name not in keypoints:
            keypoints[name] = features.keypoints(name)
        return keypoints[name]

    with pycolmap.Database.open(database_path) as db, pycolmap.DatabaseTransaction(db):
        import_keypoints(db, image_ids, get_keypoints)
        for name0, name1 in tqdm(pairs, desc="verify with known poses", unit="pair"):
            if name0 not in image_ids or name1 not in image_ids:
                report.skipped_pairs[f"{name0} {name1}"] = "image not in the model"
                continue
            if not (reference.images[image_ids[name0]].has_pose
                    and reference.images[image_ids[name1]].has_pose):
                report.skipped_pairs[f"{name0} {name1}"] = "image without a pose"
                continue
            if (name0, name1) not in matches:
                report.skipped_pairs[f"{name0} {name1}"] = "no matches stored"
                continue
            report.num_pairs += 1
            pair_matches, scores = matches.read(name0, name1)
            if config.min_match_score is not None:
                pair_matches = pair_matches[scores >= config.min_match_score]
            report.num_matches += len(pair_matches)
            id0, id1 = image_ids[name0], image_ids[name1]
            if config.verification in ("ransac", "none") or len(pair_matches) == 0:
                inliers = pair_matches
            else:
                image0, image1 = reference.images[id0], reference.images[id1]
                mask, essential = epipolar_inliers(
                    get_keypoints(name0), get_keypoints(name1), pair_matches,
                    reference.cameras[image0.camera_id], reference.cameras[image1.camera_id],
                    image0.cam_from_world(), image1.cam_from_world(),
                    config.max_epipolar_error)
                inliers = pair_matches[mask]
            if len(inliers) < config.min_num_matches:
                report.skipped_pairs[f"{name0} {name1}"] = (
                    f"{len(inliers)} matches after verification < {config.min_num_matches}")
                continue
            inliers = inliers.astype(np.uint32)
            if config.verification in ("ransac", "poses+ransac"):
                db.write_matches(id0, id1, inliers)  # COLMAP verifies them below
                continue
            db.write_matches(id0, id1, pair_matches.astype(np.uint32))
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geometry.inlier_matches = inliers
            if config.verification == "poses":
                image0, image1 = reference.images[id0], reference.images[id1]
                geometry.E = essential
                geometry.cam2_from_cam1 = (image1.cam_from_world()
                                           * image0.cam_from_world().inverse())
            db.write_two_view_geometry(id0, id1, geometry)
            report.num_verified_pairs += 1
            report.num_inlier_matches += len(inliers)
    if config.verification in ("ransac", "poses+ransac") and report.num_pairs:
        report.num_verified_pairs = verify_matches(
            database_path, max_error=config.ransac_max_error,
            min_num_inliers=config.min_num_matches, random_seed=config.random_seed,
            num_threads=config.num_threads)
        with pycolmap.Database.open(database_path) as db:
            _, geometries = db.read_two_view_geometries()
        report.num_inlier_matches = sum(len(g.inlier_matches) for g in geometries)


def _pose_change(reference: pycolmap.Reconstruction, result: pycolmap.Reconstruction
                 ) -> float:
    change = 0.0
    for image_id, image in reference.images.items():
        if not image.has_pose or image_id not in result.images:
            continue
        other = result.images[image_id]
        if not other.has_pose:
            continue
        a, b = image.cam_from_world().matrix(), other.cam_from_world().matrix()
        change = max(change, float(np.abs(np.asarray(a) - np.asarray(b)).max()))
    return change


def triangulate_model(reference: str | Path | pycolmap.Reconstruction,
                      output_dir: str | Path, features: str | Path, matches: str | Path,
                      pairs: Iterable[Pair], image_dir: str | Path | None = None,
                      intrinsics: str | Path | None = None,
                      config: TriangulationConfig | None = None) -> TriangulationReport:
    """Re-triangulate ``reference``'s known poses with our features and matches.

    Writes ``output_dir/{database.db, cameras.bin, images.bin, points3D.bin, ...}`` and
    returns the report (with the reconstruction). Poses and intrinsics stay fixed.
    """
    config = config or TriangulationConfig()
    output_dir = Path(output_dir)
    if isinstance(reference, (str, Path)) and output_dir.resolve() == Path(reference).resolve():
        raise InputError(f"the output {output_dir} is the reference model {reference}: "
                         "triangulating into it would overwrite it; give another folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    reference = load_reference(reference, intrinsics)
    if reference.num_reg_images() == 0:
        raise InputError("the reference model has no image with a pose")
    pairs = unique_pairs(pairs)
    if not pairs:
        raise InputError("no image pairs to triangulate from (empty pairs list)")
    database_path = output_dir / "database.db"
    image_ids = write_model_database(reference, database_path)
    report = TriangulationReport(reconstruction=reference, database_path=database_path)
    timings["database"] = time.perf_counter() - start
    with FeatureReader(features) as feature_reader, MatchReader(matches) as match_reader:
        check_matches_lineage(match_reader, feature_reader,
                              [p for p in pairs if p[0] in feature_reader
                               and p[1] in feature_reader])
        start = time.perf_counter()
        import_features_and_matches(reference, database_path, image_ids, feature_reader,
                                    match_reader, pairs, config, report)
        timings["import_and_verify"] = time.perf_counter() - start
    logger.info("%d/%d pairs verified, %d of %d matches kept (%.1f%%)",
                report.num_verified_pairs, report.num_pairs, report.num_inlier_matches,
                report.num_matches, 100 * report.num_inlier_matches / max(report.num_matches, 1))
    if report.num_verified_pairs == 0:
        raise ReconstructionError(
            f"no pair kept {config.min_num_matches} verified matches "
            f"({len(report.skipped_pairs)} skipped, e.g. "
            f"{next(iter(report.skipped_pairs.items()), ('', ''))}); nothing to triangulate")
    options = pycolmap.IncrementalPipelineOptions()
    options.extract_colors = bool(config.extract_colors and image_dir is not None)
    options.num_threads = config.num_threads
    options.random_seed = config.random_seed
    options.min_num_matches = config.min_num_matches
    options.mapper.filter_min_tri_angle = config.min_tri_angle
    options.mapper.filter_max_reproj_error = config.max_reprojection_error
    start = time.perf_counter()
    try:
        result = pycolmap.triangulate_points(reference, database_path,
                                             str(image_dir or output_dir), output_dir,
                                             clear_points=True, options=options)
    except (ValueError, RuntimeError) as err:
        raise ReconstructionError(f"triangulation into {output_dir} failed: {err}") from None
    timings["triangulate"] = time.perf_counter() - start
    report.reconstruction = result
    report.max_pose_change = _pose_change(reference, result)
    report.seconds = timings
    if report.max_pose_change > 1e-6:
        logger.warning("triangulation moved the known poses by up to %.3g",
                       report.max_pose_change)
    if result.num_points3D() == 0:
        raise ReconstructionError(f"triangulation produced no 3D point in {output_dir}; "
                                  "check the pairs, the matches and the reference poses")
    logger.info("triangulated %d points (mean track %.2f) in %.1f s", result.num_points3D(),
                result.compute_mean_track_length(), sum(timings.values()))
    return report
