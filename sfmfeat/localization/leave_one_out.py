"""Leave-one-out evaluation: each image of a posed model is localized against a model
triangulated (with the poses fixed) from the other images, and compared with its
reference pose.

Errors are reported in world units and relative to the median camera-to-scene distance
(the scale of an SfM model is arbitrary). The reference can be any model; for an
evaluation independent of the features under test, :func:`colmap_sift_model` builds one
with COLMAP's own SIFT pipeline.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import ReconstructionError, SfmfeatError
from ..pairs import Pair
from ..reconstruction.triangulation import TriangulationConfig, triangulate_model
from .results import pose_errors
from .model_localization import LocalizationConfig, localize

logger = logging.getLogger(__name__)


def colmap_sift_model(image_dir: str | Path, work_dir: str | Path,
                      max_num_features: int = 4096, max_image_size: int = 1024,
                      seed: int = 0, num_threads: int = -1,
                      max_attempts: int = 4) -> pycolmap.Reconstruction:
    """COLMAP's SIFT pipeline (extraction, exhaustive matching, incremental mapping), one
    camera per image; returns the largest model. Mapping is retried with the next seeds
    (up to ``max_attempts``) while some image stays unregistered."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "colmap_sift.db"
    database.unlink(missing_ok=True)
    pycolmap.set_random_seed(seed)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.sift.max_num_features = max_num_features
    extraction.num_threads = num_threads
    pycolmap.extract_features(database, image_dir, extraction_options=extraction,
                              device=pycolmap.Device.cpu,
                              camera_mode=pycolmap.CameraMode.PER_IMAGE)
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    with pycolmap.Database.open(database) as db:
        image_count = db.num_images()
    best = None
    for attempt in range(max_attempts):  # incremental mapping depends on the seed
        options = pycolmap.IncrementalPipelineOptions()
        options.random_seed = seed + attempt
        options.num_threads = num_threads
        model_dir = work_dir / "colmap_sift"
        shutil.rmtree(model_dir, ignore_errors=True)
        models = pycolmap.incremental_mapping(database, image_dir, model_dir, options)
        for model in models.values():
            if best is None or model.num_reg_images() > best.num_reg_images():
                best = model
        if best is not None and best.num_reg_images() == image_count:
            break
        logger.info("COLMAP SIFT mapping (seed %d) registered %d of %d images; retrying",
                    seed + attempt, best.num_reg_images() if best else 0, image_count)
    if best is None:
        raise ReconstructionError(f"COLMAP SIFT mapping of {image_dir} failed")
    return best


def median_scene_distance(model: pycolmap.Reconstruction) -> float:
    """Median over cameras of the median distance from the camera to its 3D points."""
    distances = []
    for image in model.images.values():
        if not image.has_pose:
            continue
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        if ids:
            xyz = np.array([model.points3D[i].xyz for i in ids])
            distances.append(np.median(np.linalg.norm(xyz - image.projection_center(), axis=1)))
    if not distances:
        raise ReconstructionError("the reference model has no 3D points to measure the "
                                  "camera-to-scene distance")
    return float(np.median(distances))


@dataclass
class HeldOutResult:
    name: str
    localized: bool
    translation_error: float
    rotation_error_deg: float
    relative_translation_error: float   # / median camera-to-scene distance
    num_inliers: int
    num_correspondences: int
    num_points3D: int                   # of the model triangulated without this image
    timings: dict[str, float] = field(default_factory=dict)
    reason: str | None = None


def leave_one_out(reference: pycolmap.Reconstruction, features: str | Path,
                  matches: str | Path, pairs: Sequence[Pair], work_dir: str | Path,
                  triangulation: TriangulationConfig | None = None,
                  localization: LocalizationConfig | None = None,
                  names: Sequence[str] | None = None,
                  scene_distance: float | None = None) -> list[HeldOutResult]:
    """Localize each registered image of ``reference`` (or ``names``) against the model
    triangulated from the others with ``features``/``matches`` (pairs without it)."""
    work_dir = Path(work_dir)
    triangulation = triangulation or TriangulationConfig(extract_colors=False)
    scale = scene_distance or median_scene_distance(reference)
    registered = {im.name: im for im in reference.images.values() if im.has_pose}
    results = []
    for name in names or sorted(registered):
        held_out = registered[name]
        others = copy.copy(reference)
        others.deregister_frame(others.images[held_out.image_id].frame_id)
        kept_pairs = [p for p in pairs if name not in p]
        camera = reference.cameras[held_out.camera_id]
        try:
            model = triangulate_model(others, work_dir / f"without_{held_out.image_id}",
                                      features, matches, kept_pairs,
                                      config=triangulation).reconstruction
            db_names = sorted({n for p in pairs if name in p for n in p} - {name})
            result = localize(model, {name: camera}, {name: db_names}, features, matches,
                              localization, progress=False).results[name]
        except SfmfeatError as err:
            results.append(HeldOutResult(name, False, np.inf, np.inf, np.inf, 0, 0, 0,
                                         reason=str(err)))
            continue
        if result.localized:
            dt, dr = pose_errors(result.cam_from_world, held_out.cam_from_world())
        else:
            dt, dr = np.inf, np.inf
        results.append(HeldOutResult(name, result.localized, dt, dr, dt / scale,
                                     result.num_inliers, result.num_correspondences,
                                     model.num_points3D(), dict(result.timings),
                                     result.reason))
    return results
