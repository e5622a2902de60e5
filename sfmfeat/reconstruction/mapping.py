"""Sparse mapping (incremental, global or hierarchical) of a verified database, and model
statistics."""

from __future__ import annotations

import difflib
import logging
import math
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..errors import ConfigError, ReconstructionError
from ..progress import tqdm

logger = logging.getLogger(__name__)

MAPPERS = ("incremental", "global", "hierarchical")


@dataclass(frozen=True)
class MappingConfig:
    mapper: str = "incremental"
    min_model_size: int = 10     # COLMAP's default, lowered to the image count for small sets
    attempts: int = 3            # remap with another seed while images stay unregistered
    num_threads: int = -1
    random_seed: int = -1
    extract_colors: bool = True
    # hierarchical: the scene is cut into overlapping clusters of at most this many images,
    # mapped incrementally each (in parallel) and merged (COLMAP's defaults)
    leaf_max_num_images: int = 500
    cluster_image_overlap: int = 50
    # (name, value) overrides of pycolmap's options of the mapper: IncrementalPipelineOptions
    # (incremental, and each cluster of hierarchical) or GlobalPipelineOptions, nested ones
    # dotted, e.g. ("ba_refine_principal_point", True), ("mapper.filter_max_reproj_error", 2)
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.leaf_max_num_images < 2 or self.cluster_image_overlap < 0:
            raise ReconstructionError(
                f"hierarchical mapping: leaf_max_num_images={self.leaf_max_num_images} (need "
                f">= 2) and cluster_image_overlap={self.cluster_image_overlap} (need >= 0)")
        if self.mapper in MAPPERS:
            apply_mapper_options(_pipeline_options(self.mapper), self.options, self.mapper)


# The incremental mapper refines the principal point when every camera is shared by at
# least this many images (COLMAP keeps it fixed). Measured against metric ground truth
# (README, "Cameras and the principal point"): with one camera for the 11 / 8 Strecha
# images, SIFT's median rotation error went from 0.49 to 0.06-0.08 degrees; refined per image
# it went to 11 degrees on fox. 8 is the fewest images per camera measured. Not in the
# hierarchical mapper: its clusters refine the shared camera each their own way and then
# fail to merge (tests/test_hierarchical.py registered 12 of 18 images with it).
SHARED_CAMERA_MIN_IMAGES = 8
_REFINE_PRINCIPAL_POINT = "ba_refine_principal_point"
# ... and keeps it refined only where the model determines it: its standard deviation
# (``principal_point_uncertainty``) at most this angle through the focal length, else the
# database is mapped again with it fixed. Measured with one camera: SIFT 0.011 / 0.013 degrees
# on fountain-P11 / Herz-Jesus-P8, 0.041 on fox, ALIKED-n16 and DISK 0.039-0.056 on the
# three; 4.9 on the demo's 12 views on a level arc around one target (there the tilt of
# every view trades for the principal point's height: refined, it drifted 20 px and the
# views' rotation error grew from 0.10 to 1.84 degrees).
# The limit lies well between them and below a real principal point's usual offset from
# the image centre (Strecha's camera: 0.36-0.40 degrees), so a point kept refined beats the
# centre. The covariance takes at most COVARIANCE_MAX_IMAGES views (its dense Schur
# complement grows with their square; fewer views only widen the deviation).
PRINCIPAL_POINT_MAX_STD_DEGREES = 0.25
COVARIANCE_MAX_IMAGES = 200

# sfmfeat's defaults for the incremental mapper where they differ from COLMAP's (each one
# overridable): a global bundle adjustment after the model grew by 30 % rather than 10 %, and
# one local adjustment per new image rather than up to two. Measured against ground truth
# (README, "Mapper options"): median rotation errors level with COLMAP's defaults over three
# seeds on the Strecha sets and fox (SIFT with both camera modes, ALIKED), mapping of the
# 50-view synthetic scene a third faster. COLMAP's option to leave redundant points out of
# the global adjustment was faster still but lost up to 0.17 degrees.
INCREMENTAL_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("ba_global_frames_ratio", 1.3),
    ("ba_global_points_ratio", 1.3),
    ("ba_local_max_refinements", 1),
)

# set by sfmfeat from its own settings (threads, seed, model size, colours), not overridable
_OWNED_OPTIONS = frozenset({"num_threads", "random_seed", "min_model_size", "extract_colors"})
_PLAIN_TYPES = (bool, int, float, str)


def _pipeline_options(mapper: str) -> Any:
    """The pycolmap options object a mapper's overrides apply to."""
    if mapper == "global":
        return pycolmap.GlobalPipelineOptions()
    return pycolmap.IncrementalPipelineOptions()


def _plain_options(options: Any, prefix: str = "") -> list[str]:
    """The dotted names of every plain (bool/int/float/str) option under ``options``."""
    names = []
    for name in dir(options):
        if name.startswith("_"):
            continue
        value = getattr(options, name)
        if isinstance(value, _PLAIN_TYPES):
            names.append(prefix + name)
        elif hasattr(value, "todict") and not callable(value):
            names += _plain_options(value, f"{prefix}{name}.")
    return names


def _parse_option(key: str, raw: Any, current: Any, mapper: str) -> Any:
    kind = type(current)
    if isinstance(raw, kind) or (kind is float and isinstance(raw, int)
                                 and not isinstance(raw, bool)):
        return kind(raw)
    text = str(raw).strip()
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True,
                    "false": False, "0": False, "no": False}[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f"{mapper} mapper option {key}={raw!r}: expected "
                          f"{kind.__name__} (its default is {current!r})") from None


def apply_mapper_options(options: Any, overrides: tuple[tuple[str, Any], ...],
                         mapper: str) -> Any:
    """``options`` (a pycolmap pipeline options object) with ``overrides`` set, each checked:
    an unknown or non-plain name, a name sfmfeat sets itself, or a value of the wrong type
    is a ConfigError naming it."""
    for key, raw in overrides:
        *groups, leaf = key.split(".")
        target = options
        for group in groups:
            target = getattr(target, group, None)
        current = getattr(target, leaf, None) if target is not None else None
        if leaf in _OWNED_OPTIONS:
            raise ConfigError(f"{mapper} mapper option {key!r} is set by sfmfeat (from "
                              "--threads and --seed); leave it out")
        if not isinstance(current, _PLAIN_TYPES):
            known = _plain_options(options)
            close = difflib.get_close_matches(key, known, n=3)
            raise ConfigError(f"{mapper} mapper option {key!r} is not a pycolmap option"
                              + (f"; did you mean {', '.join(close)}?" if close else
                                 f"; options: {', '.join(known[:8])}, ..."))
        setattr(target, leaf, _parse_option(key, raw, current, mapper))
    return options


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


def effective_options(config: MappingConfig) -> tuple[tuple[str, Any], ...]:
    """The option overrides a mapping with ``config`` runs with: sfmfeat's defaults for
    the incremental mapper (``INCREMENTAL_DEFAULTS``, also each cluster of the hierarchical
    one), then the config's own, which win."""
    if config.mapper == "global":
        return config.options
    given = {key for key, _ in config.options}
    return tuple(item for item in INCREMENTAL_DEFAULTS if item[0] not in given) + \
        config.options


def decide_principal_point(database_path: str | Path, config: MappingConfig) -> MappingConfig:
    """``config`` with the principal point decided in its options: the incremental mapper
    refines it when every camera of the database is shared by at least
    SHARED_CAMERA_MIN_IMAGES images. Unchanged when the options decide already, and for the
    hierarchical and global mappers."""
    if (config.mapper != "incremental"
            or any(k == _REFINE_PRINCIPAL_POINT for k, _ in config.options)):
        return config
    with pycolmap.Database.open(database_path) as db:
        images_per_camera = Counter(image.camera_id for image in db.read_all_images())
    refine = bool(images_per_camera) and min(images_per_camera.values()) >= \
        SHARED_CAMERA_MIN_IMAGES
    if refine:
        logger.info("refining the principal point: every camera is shared by >= %d images "
                    "(--mapper-conf %s=false keeps it fixed)", SHARED_CAMERA_MIN_IMAGES,
                    _REFINE_PRINCIPAL_POINT)
    return replace(config, options=config.options + ((_REFINE_PRINCIPAL_POINT, refine),))


@dataclass(frozen=True)
class MappedModel:
    """The model a mapping kept, the config it ran with (the principal-point decision in
    its options) and, where the rule refined it, each camera's principal-point standard
    deviation (pixels, x and y; ``principal_point_uncertainty``)."""

    reconstruction: pycolmap.Reconstruction
    config: MappingConfig
    principal_point_std: dict[int, tuple[float, float]]


def run_mapping(database_path: str | Path, image_dir: str | Path, output_dir: str | Path,
                config: MappingConfig = MappingConfig()) -> MappedModel:
    """Map the database and write the largest model to ``output_dir`` (COLMAP binary).

    Where the principal point is refined by sfmfeat's rule (``decide_principal_point``) and
    the model leaves it undetermined (``PRINCIPAL_POINT_MAX_STD_DEGREES``), the database is
    mapped again with it fixed."""
    if config.mapper not in MAPPERS:
        raise ReconstructionError(f"unknown mapper {config.mapper!r}; choose one of {MAPPERS}")
    output_dir = Path(output_dir)
    decided = decide_principal_point(database_path, config)
    rule_refines = decided is not config and dict(decided.options)[_REFINE_PRINCIPAL_POINT]
    config = decided
    best = _map_best(database_path, image_dir, output_dir.parent, config)
    std: dict[int, tuple[float, float]] = {}
    if rule_refines:
        std = principal_point_uncertainty(best)
        undetermined = {camera_id: value for camera_id, value in std.items()
                        if _std_degrees(best.cameras[camera_id], value)
                        > PRINCIPAL_POINT_MAX_STD_DEGREES}
        if undetermined:
            logger.warning(
                "the views leave the principal point undetermined (%s; limit %.2f degrees): "
                "mapping again with it fixed at the image centre (--mapper-conf %s=true "
                "refines it anyway)",
                "; ".join(f"camera {camera_id}: std {sx:.1f} / {sy:.1f} px"
                          for camera_id, (sx, sy) in undetermined.items()),
                PRINCIPAL_POINT_MAX_STD_DEGREES, _REFINE_PRINCIPAL_POINT)
            config = replace(config, options=tuple(
                (key, False if key == _REFINE_PRINCIPAL_POINT else value)
                for key, value in config.options))
            best = _map_best(database_path, image_dir, output_dir.parent, config)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    best.write_binary(str(output_dir))
    best.export_PLY(str(output_dir / "points3D.ply"))
    return MappedModel(best, config, std)


def _map_best(database_path: str | Path, image_dir: str | Path, scratch_parent: Path,
              config: MappingConfig) -> pycolmap.Reconstruction:
    """The largest model of up to ``config.attempts`` mapping runs (another seed each while
    images stay unregistered)."""
    with pycolmap.Database.open(database_path) as db:
        num_images = db.num_images()
    best = None
    for attempt in range(max(1, config.attempts)):
        seed = config.random_seed + attempt if config.random_seed >= 0 else -1
        model = _map_once(database_path, image_dir, scratch_parent, config, num_images, seed)
        if model is not None and (best is None or _size(model) > _size(best)):
            best = model
        if best is not None and best.num_reg_images() == num_images:
            break
        logger.warning("mapping attempt %d registered %d of %d images%s", attempt + 1,
                       0 if best is None else best.num_reg_images(), num_images,
                       "; retrying with another seed" if attempt + 1 < config.attempts else "")
    if best is None:
        raise ReconstructionError(
            f"{config.mapper} mapping reconstructed no model from {num_images} images: too "
            "few verified matches; try more features, another matcher or exhaustive pairs")
    return best


def principal_point_uncertainty(reconstruction: pycolmap.Reconstruction,
                                max_images: int = COVARIANCE_MAX_IMAGES
                                ) -> dict[int, tuple[float, float]]:
    """Per camera, the standard deviation (pixels; x, y) of its principal point in a bundle
    adjustment of the model that refines every intrinsic, at the model's mean reprojection
    error: the inverse of the adjustment's Hessian (gauge fixed by two poses). On at most
    ``max_images`` registered images, evenly spaced (fewer views only widen it). A camera
    whose covariance cannot be estimated (a singular problem) gets infinity."""
    image_ids = sorted(reconstruction.reg_image_ids())
    if len(image_ids) > max_images:
        image_ids = [image_ids[i] for i in np.linspace(0, len(image_ids) - 1, max_images,
                                                       dtype=int)]
    camera_ids = sorted({reconstruction.images[image_id].camera_id for image_id in image_ids})
    std = dict.fromkeys(camera_ids, (math.inf, math.inf))
    if len(image_ids) < 2:
        return std
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in image_ids:
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = True
    # the adjuster only builds the problem here: the model is evaluated, never changed
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, reconstruction)
    covariance = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(),
                                                 reconstruction, adjuster)
    if covariance is None:
        return std
    sigma = reconstruction.compute_mean_reprojection_error()
    for camera_id in camera_ids:
        camera = reconstruction.cameras[camera_id]
        block = covariance.get_other_params_cov(camera.params)
        if block is not None and block.shape[0] == len(camera.params):
            variance = np.diag(block)[list(camera.principal_point_idxs())]
            sx, sy = sigma * np.sqrt(np.maximum(variance, 0))
            std[camera_id] = (float(sx), float(sy))
    return std


def _std_degrees(camera: pycolmap.Camera, std: tuple[float, float]) -> float:
    return float(np.degrees(np.arctan(max(std) / camera.mean_focal_length())))


def _size(model: pycolmap.Reconstruction) -> tuple[int, int]:
    return model.num_reg_images(), model.num_points3D()


def _map_once(database_path: str | Path, image_dir: str | Path, scratch_parent: Path,
              config: MappingConfig, num_images: int,
              seed: int) -> pycolmap.Reconstruction | None:
    """One mapping run; the largest model, or None when nothing was reconstructed."""
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="models-", dir=scratch_parent))
    min_model_size = max(2, min(config.min_model_size, num_images))
    try:
        if config.mapper == "incremental":
            options = apply_mapper_options(pycolmap.IncrementalPipelineOptions(
                min_model_size=min_model_size, num_threads=config.num_threads,
                random_seed=seed, extract_colors=config.extract_colors),
                effective_options(config), config.mapper)
            with tqdm(total=num_images, desc="incremental mapping", unit="img") as bar:
                models = pycolmap.incremental_mapping(
                    database_path, image_dir, scratch, options,
                    initial_image_pair_callback=lambda: _advance(bar, 2),
                    next_image_callback=lambda: _advance(bar, 1))
        elif config.mapper == "hierarchical":
            models = _map_hierarchically(database_path, image_dir, scratch, config,
                                         min_model_size, num_images, seed)
        else:
            options = apply_mapper_options(pycolmap.GlobalPipelineOptions(), config.options,
                                           config.mapper)
            options.num_threads = config.num_threads
            options.random_seed = seed
            options.min_model_size = min_model_size
            logger.info("global mapping of %d images", num_images)
            models = pycolmap.global_mapping(database_path, image_dir, scratch, options)
    except (ValueError, RuntimeError) as err:   # COLMAP's failed checks, as one line
        raise ReconstructionError(f"{config.mapper} mapping of {database_path} failed: "
                                  f"{str(err).strip().splitlines()[-1]}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not models:
        return None
    if len(models) > 1:
        logger.info("mapping produced %d models; keeping the largest", len(models))
    return max(models.values(), key=_size)


def _map_hierarchically(database_path: str | Path, image_dir: str | Path, scratch: Path,
                        config: MappingConfig, min_model_size: int, num_images: int,
                        seed: int) -> dict[int, pycolmap.Reconstruction]:
    options = pycolmap.HierarchicalPipelineOptions()
    options.num_threads = config.num_threads
    # clusters mapped at once; one with one thread, so that a seeded run replays
    options.num_workers = 1 if config.num_threads == 1 else -1
    options.clustering_options.leaf_max_num_images = config.leaf_max_num_images
    options.clustering_options.image_overlap = config.cluster_image_overlap
    incremental = apply_mapper_options(options.incremental_options, effective_options(config),
                                       config.mapper)
    incremental.min_model_size = min_model_size
    incremental.num_threads = config.num_threads
    incremental.random_seed = seed
    incremental.extract_colors = config.extract_colors
    clusters = -(-num_images // config.leaf_max_num_images)
    logger.info("hierarchical mapping of %d images (%s)", num_images,
                f"about {clusters} clusters of <= {config.leaf_max_num_images} images"
                if clusters > 1 else "one cluster: the scene is not partitioned")
    return pycolmap.hierarchical_mapping(database_path, image_dir, scratch, options)


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
