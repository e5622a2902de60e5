"""Sparse mapping (incremental or global) of a verified database, and model statistics."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from ..errors import ReconstructionError

logger = logging.getLogger(__name__)

MAPPERS = ("incremental", "global")


@dataclass(frozen=True)
class MappingConfig:
    mapper: str = "incremental"
    min_model_size: int = 3
    num_threads: int = -1
    random_seed: int = -1
    extract_colors: bool = True


def set_focal_priors(database_path: str | Path) -> int:
    """Mark every camera's focal length as a prior (global mapping needs calibrated pairs).

    Returns the number of cameras changed. Verification must run after this call.
    """
    changed = 0
    with pycolmap.Database.open(database_path) as db:
        for camera in db.read_all_cameras():
            if not camera.has_prior_focal_length:
                camera.has_prior_focal_length = True
                db.update_camera(camera)
                changed += 1
    return changed


def run_mapping(database_path: str | Path, image_dir: str | Path, output_dir: str | Path,
                config: MappingConfig = MappingConfig()) -> pycolmap.Reconstruction:
    """Map the database and write the largest model to ``output_dir`` (COLMAP binary)."""
    if config.mapper not in MAPPERS:
        raise ReconstructionError(f"unknown mapper {config.mapper!r}; choose one of {MAPPERS}")
    output_dir = Path(output_dir)
    with pycolmap.Database.open(database_path) as db:
        num_images = db.num_images()
    scratch = Path(tempfile.mkdtemp(prefix="models-", dir=output_dir.parent))
    try:
        if config.mapper == "incremental":
            options = pycolmap.IncrementalPipelineOptions(
                min_model_size=config.min_model_size, num_threads=config.num_threads,
                random_seed=config.random_seed, extract_colors=config.extract_colors)
            with tqdm(total=num_images, desc="incremental mapping", unit="img") as bar:
                models = pycolmap.incremental_mapping(
                    database_path, image_dir, scratch, options,
                    initial_image_pair_callback=lambda: _advance(bar, 2),
                    next_image_callback=lambda: _advance(bar, 1))
        else:
            options = pycolmap.GlobalPipelineOptions()
            options.num_threads = config.num_threads
            options.random_seed = config.random_seed
            options.min_model_size = config.min_model_size
            logger.info("global mapping of %d images", num_images)
            models = pycolmap.global_mapping(database_path, image_dir, scratch, options)
        if not models:
            raise ReconstructionError(
                f"{config.mapper} mapping reconstructed no model from {num_images} images: too "
                "few verified matches; try more features, another matcher or exhaustive pairs")
        largest = max(models.values(), key=lambda rec: (rec.num_reg_images(),
                                                         rec.num_points3D()))
        if len(models) > 1:
            logger.warning("mapping produced %d models; keeping the largest (%d images)",
                           len(models), largest.num_reg_images())
        if output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True)
        largest.write_binary(str(output_dir))
        largest.export_PLY(str(output_dir / "points3D.ply"))
        return largest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _advance(bar: tqdm, count: int) -> None:
    # restarted models call back again; the bar counts at most every image once
    bar.update(max(0, min(count, bar.total - bar.n)))


def model_statistics(reconstruction: pycolmap.Reconstruction) -> dict[str, float | int]:
    """The statistics of Schönberger et al. CVPR'17 for a sparse model."""
    registered = reconstruction.num_reg_images()
    observations = reconstruction.compute_num_observations()
    return {
        "num_registered": registered,
        "num_points3D": reconstruction.num_points3D(),
        "num_observations": observations,
        "mean_track_length": float(reconstruction.compute_mean_track_length()),
        "mean_observations_per_image": float(observations / registered) if registered else 0.0,
        "mean_reprojection_error": float(reconstruction.compute_mean_reprojection_error()),
    }


def verified_pair_statistics(database_path: str | Path) -> dict[str, int]:
    with pycolmap.Database.open(database_path) as db:
        _, geometries = db.read_two_view_geometries()
    inliers = [len(g.inlier_matches) for g in geometries]
    return {"num_verified_pairs": int(sum(1 for n in inliers if n > 0)),
            "num_inlier_matches": int(np.sum(inliers)) if inliers else 0}
