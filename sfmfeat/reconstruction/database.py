"""Writing our features and matches into a COLMAP database: the one importer, for a new
reconstruction (:func:`write_database`) and for a known model (:func:`write_model_database`,
used by triangulation).

This is the one place where the +0.5 pixel shift happens (:func:`to_colmap_keypoints`,
also used for the 2D points handed to COLMAP's estimators): sfmfeat puts pixel centres at
integer coordinates, COLMAP at half-integers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path, PurePosixPath

import numpy as np
import pycolmap

from ..errors import ConfigError, InputError, ReconstructionError
from ..pairs import Pair
from ..progress import tqdm
from ..store import FeatureReader, MatchReader

logger = logging.getLogger(__name__)

COLMAP_PIXEL_OFFSET = 0.5


class CameraMode(str, Enum):
    AUTO = "auto"              # shared when folder, size and EXIF focal agree, else per image
    SINGLE = "single"          # one camera shared by all images (same size required)
    PER_FOLDER = "per-folder"  # one camera per sub-folder
    PER_IMAGE = "per-image"    # one camera per image


def to_colmap_keypoints(keypoints: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """N×2 sfmfeat pixel coordinates in COLMAP's convention (``dtype``: float32 for the
    database, float64 for estimators)."""
    return np.asarray(keypoints, dtype)[:, :2] + COLMAP_PIXEL_OFFSET


def from_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    return np.asarray(keypoints, np.float32)[:, :2] - COLMAP_PIXEL_OFFSET


def validate_camera_model(name: str) -> str:
    """``name`` if COLMAP knows the camera model, else a ConfigError listing the known ones
    (called before any work, so a typo does not surface after extraction and matching)."""
    known = [m for m in pycolmap.CameraModelId.__members__ if m != "INVALID"]
    if name not in known:
        raise ConfigError(f"camera model {name!r} is unknown; choose one of {', '.join(known)}")
    return name


def infer_camera(image_path: Path, size: tuple[int, int], model: str = "SIMPLE_RADIAL"
                 ) -> pycolmap.Camera:
    """A camera for an image of ``size`` (w, h): the EXIF focal length as a prior when the
    file has one, else focal 1.2·max(w, h) without prior (COLMAP's rule)."""
    width, height = size
    focal, has_prior = 1.2 * max(width, height), False
    try:
        exif_camera = pycolmap.infer_camera_from_image(image_path)
        if (exif_camera.width, exif_camera.height) == (width, height):
            focal = float(exif_camera.mean_focal_length())
            has_prior = bool(exif_camera.has_prior_focal_length)
    except (ValueError, RuntimeError, OSError) as err:
        logger.debug("no EXIF camera for %s: %s", image_path, err)
    camera = pycolmap.Camera.create_from_model_name(0, model, focal, width, height)
    camera.has_prior_focal_length = has_prior
    return camera


def _camera_group(name: str, mode: CameraMode) -> str:
    if mode is CameraMode.SINGLE:
        return ""
    if mode is CameraMode.PER_FOLDER:
        return str(PurePosixPath(name).parent)
    return name


def write_database(database_path: str | Path, image_dir: str | Path, names: list[str],
                   features: FeatureReader, camera_mode: CameraMode | str = CameraMode.AUTO,
                   camera_model: str = "SIMPLE_RADIAL",
                   cameras: dict[str, pycolmap.Camera] | None = None) -> dict[str, int]:
    """Create a fresh database with cameras, images and keypoints; returns name -> image id.

    ``cameras`` (optional) gives known intrinsics per image name and bypasses ``camera_mode``.
    """
    database_path = fresh_database(database_path)
    camera_mode = CameraMode(camera_mode)
    image_ids: dict[str, int] = {}
    group_camera: dict[str, tuple[int, tuple[int, int]]] = {}
    with pycolmap.Database.open(database_path) as db, pycolmap.DatabaseTransaction(db):
        for name in tqdm(names, desc="import images", unit="img"):
            size = features.image_size(name)
            if cameras is not None and name in cameras:
                camera_id = db.write_camera(cameras[name])
            else:
                camera = None
                if camera_mode is CameraMode.AUTO:
                    camera = infer_camera(Path(image_dir) / name, size, camera_model)
                    group = (f"{PurePosixPath(name).parent}|{size}|{camera.params[0]:.3f}"
                             if camera.has_prior_focal_length else name)
                else:
                    group = _camera_group(name, camera_mode)
                if group not in group_camera:
                    camera = camera or infer_camera(Path(image_dir) / name, size, camera_model)
                    group_camera[group] = (db.write_camera(camera), size)
                camera_id, camera_size = group_camera[group]
                if camera_size != size:
                    raise InputError(
                        f"camera mode {camera_mode.value!r} shares one camera between images of "
                        f"sizes {camera_size} and {size} ({name}); use --camera-mode per-image"
                    )
            image_ids[name] = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
        import_keypoints(db, image_ids, features.keypoints)
    return image_ids


def fresh_database(database_path: str | Path) -> Path:
    """``database_path`` with any earlier database (and its WAL files) removed."""
    database_path = Path(database_path)
    database_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database_path}{suffix}").unlink(missing_ok=True)
    return database_path


def write_model_database(reference: pycolmap.Reconstruction,
                         database_path: str | Path) -> dict[str, int]:
    """A fresh database whose camera, rig, image and frame ids equal the model's;
    name -> image id (keypoints: :func:`import_keypoints`)."""
    database_path = fresh_database(database_path)
    ids: dict[str, int] = {}
    with pycolmap.Database.open(database_path) as db, pycolmap.DatabaseTransaction(db):
        for camera in reference.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in reference.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for image_id, image in reference.images.items():
            db.write_image(pycolmap.Image(name=image.name, camera_id=image.camera_id,
                                          image_id=image_id), use_image_id=True)
            ids[image.name] = image_id
        for frame in reference.frames.values():
            db.write_frame(frame, use_frame_id=True)
    return ids


def import_keypoints(db: pycolmap.Database, image_ids: dict[str, int],
                     keypoints: Callable[[str], np.ndarray]) -> None:
    """Write every image's keypoints (``keypoints(name)``, sfmfeat convention)."""
    for name, image_id in tqdm(image_ids.items(), desc="import keypoints", unit="img"):
        db.write_keypoints(image_id, to_colmap_keypoints(keypoints(name)))


def write_matches(database_path: str | Path, image_ids: dict[str, int], matches: MatchReader,
                  pairs: Iterable[Pair], min_num_matches: int = 1) -> int:
    """Write the raw matches of ``pairs`` (images missing from ``image_ids`` are skipped);
    returns the number of pairs written."""
    written = 0
    with pycolmap.Database.open(database_path) as db, pycolmap.DatabaseTransaction(db):
        for name0, name1 in tqdm(list(pairs), desc="import matches", unit="pair"):
            if name0 not in image_ids or name1 not in image_ids:
                continue
            pair_matches, _ = matches.read(name0, name1)
            if len(pair_matches) < min_num_matches:
                continue
            db.write_matches(image_ids[name0], image_ids[name1],
                             pair_matches.astype(np.uint32))
            written += 1
    return written


def verify_matches(database_path: str | Path, max_error: float = 4.0,
                   min_num_inliers: int = 15, random_seed: int = -1,
                   num_threads: int = -1, confidence: float = 0.999,
                   max_num_trials: int = 20000) -> int:
    """COLMAP's RANSAC (E/F/H) on every matched pair; returns the verified pair count.
    ``confidence`` is COLMAP's default; ``max_num_trials`` twice its 10000."""
    options = pycolmap.TwoViewGeometryOptions(min_num_inliers=min_num_inliers)
    options.ransac.max_error = max_error
    options.ransac.confidence = confidence
    options.ransac.max_num_trials = max_num_trials
    options.ransac.min_inlier_ratio = 0.1
    options.ransac.random_seed = random_seed
    try:
        pycolmap.geometric_verification(
            database_path, pycolmap.GeometricVerifierOptions(num_threads=num_threads),
            two_view_geometry_options=options)
    except (ValueError, RuntimeError) as err:
        raise ReconstructionError(f"geometric verification failed on {database_path}: {err}")
    with pycolmap.Database.open(database_path) as db:
        pair_ids, geometries = db.read_two_view_geometries()
    return sum(1 for g in geometries if len(g.inlier_matches) > 0)
