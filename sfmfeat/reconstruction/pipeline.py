"""From a folder of photos to a COLMAP model: extract, pair, match, import, verify, map.

Output folder layout:
    features.h5, matches.h5, pairs.txt, database.db,
    sfm/ (COLMAP binary model of the largest component) with sfm/points3D.ply,
    summary.json (statistics, per-stage timings, config and its hash, sfmfeat version).
Every stage resumes: features and matches already stored with the same config are reused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pycolmap

from .. import __version__
from ..config import config_hash, config_to_dict
from ..errors import InputError, ReconstructionError
from ..extract import extract_features
from ..extractors import default_matcher
from ..images import list_images
from ..pairs import exhaustive, read_pairs, sequential, write_pairs
from ..store import FeatureReader, MatchReader
from ..timing import StageTimer
from .database import CameraMode, verify_matches, write_database, write_matches
from .mapping import (MappingConfig, model_statistics, run_mapping, set_focal_priors,
                      verified_pair_statistics)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionConfig:
    features: str = "sift"
    matcher: str | None = None          # None: the extractor's default (mnn-ratio, mnn, ...)
    pairs: str = "exhaustive"          # "exhaustive", "sequential" or a pairs-file path
    sequential_window: int = 10
    camera_mode: str = CameraMode.AUTO.value
    camera_model: str = "SIMPLE_RADIAL"
    mapper: str = "incremental"
    min_num_inliers: int = 15
    ransac_max_error: float = 4.0
    random_seed: int = -1
    strict: bool = False
    dense: bool = False                 # also run dense MVS into OUT/dense
    dense_max_image_size: int = 1000
    feature_options: tuple[tuple[str, Any], ...] = ()
    matcher_options: tuple[tuple[str, Any], ...] = ()


@dataclass
class ReconstructionResult:
    output_dir: Path
    reconstruction: pycolmap.Reconstruction
    summary: dict[str, Any]
    rejected: dict[str, str] = field(default_factory=dict)


def reconstruct(image_dir: str | Path, output_dir: str | Path,
                config: ReconstructionConfig = ReconstructionConfig(),
                image_names: list[str] | None = None,
                device: str | None = None) -> ReconstructionResult:
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    if image_names is None:
        image_names = list_images(image_dir)  # fails early on a missing or empty folder
    if config.matcher is None:
        config = replace(config, matcher=default_matcher(config.features))
        logger.info("matcher %s (the default for %s)", config.matcher, config.features)
    output_dir.mkdir(parents=True, exist_ok=True)
    timer = StageTimer(logger)
    features_path = output_dir / "features.h5"
    matches_path = output_dir / "matches.h5"
    pairs_path = output_dir / "pairs.txt"
    database_path = output_dir / "database.db"

    with timer.stage("extract"):
        extraction = extract_features(image_dir, features_path, config.features,
                                      image_names=image_names,
                                      overrides=dict(config.feature_options),
                                      device=device, strict=config.strict)
    names = [n for n in image_names if n not in extraction.rejected]
    if len(names) < 2:
        raise InputError(f"need at least two readable images in {image_dir}, found "
                         f"{len(names)}")
    with timer.stage("pairs"):
        pairs = _make_pairs(config, names)
        write_pairs(pairs_path, pairs)
    with timer.stage("match"):
        from ..match import match_pairs   # torch: not imported before the first image

        match_pairs(pairs, features_path, matches_path, config.matcher,
                    overrides=dict(config.matcher_options), device=device)
    with timer.stage("database"):
        with FeatureReader(features_path) as features:
            image_ids = write_database(database_path, image_dir, names, features,
                                       config.camera_mode, config.camera_model)
        with MatchReader(matches_path) as matches:
            write_matches(database_path, image_ids, matches, pairs)
        if config.mapper == "global":
            changed = set_focal_priors(database_path)
            if changed:
                logger.info("global mapping: using the initial focal length of %d camera(s) "
                            "as a prior (calibrated two-view geometries)", changed)
    with timer.stage("verify"):
        if config.random_seed >= 0:
            pycolmap.set_random_seed(config.random_seed)
        num_verified = verify_matches(database_path, config.ransac_max_error,
                                      config.min_num_inliers, config.random_seed)
        logger.info("%d of %d pairs verified", num_verified, len(pairs))
        if num_verified == 0:
            raise ReconstructionError(
                f"no image pair survived geometric verification ({len(pairs)} pairs matched); "
                "the images may not overlap, or the features/matcher are too weak")
    with timer.stage("map"):
        reconstruction = run_mapping(database_path, image_dir, output_dir / "sfm",
                                     MappingConfig(mapper=config.mapper,
                                                   random_seed=config.random_seed))
    if config.dense:
        from .dense import DenseConfig, densify

        with timer.stage("dense"):
            dense = densify(output_dir / "sfm", image_dir, output_dir / "dense",
                            DenseConfig(max_image_size=config.dense_max_image_size))
    summary = _summary(config, names, extraction.rejected, reconstruction, database_path,
                       timer.seconds, features_path, matches_path)
    if config.dense:
        summary["num_dense_points"] = dense.num_fused_points
        summary["dense_backend"] = dense.backend
        summary["dense_timings"] = dense.timings
    _write_json(output_dir / "summary.json", summary)
    logger.info("registered %d/%d images, %d points, track %.2f, reprojection %.3f px",
                summary["num_registered"], summary["num_images"], summary["num_points3D"],
                summary["mean_track_length"], summary["mean_reprojection_error"])
    return ReconstructionResult(output_dir, reconstruction, summary, extraction.rejected)


def _make_pairs(config: ReconstructionConfig, names: list[str]) -> list[tuple[str, str]]:
    if config.pairs == "exhaustive":
        return exhaustive(names)
    if config.pairs == "sequential":
        return sequential(names, window=config.sequential_window)
    pairs = read_pairs(config.pairs)
    known = set(names)
    kept = [p for p in pairs if p[0] in known and p[1] in known]
    if len(kept) < len(pairs):
        logger.warning("%d pairs in %s name images without features; skipped",
                       len(pairs) - len(kept), config.pairs)
    if not kept:
        raise InputError(f"no usable pair in {config.pairs}")
    return kept


def _summary(config: ReconstructionConfig, names: list[str], rejected: dict[str, str],
             reconstruction: pycolmap.Reconstruction, database_path: Path,
             timings: dict[str, float], features_path: Path,
             matches_path: Path) -> dict[str, Any]:
    with FeatureReader(features_path) as features, MatchReader(matches_path) as matches:
        hashes = {"features": features.config_hash, "matches": matches.config_hash}
    return {
        "num_images": len(names),
        **model_statistics(reconstruction),
        **verified_pair_statistics(database_path),
        "rejected_images": rejected,
        "timings": {**timings, "total": round(sum(timings.values()), 3)},
        "config": config_to_dict(config),
        "config_hash": config_hash("sfmfeat.reconstruct", _HashInput(config_to_dict(config),
                                                                     hashes)),
        "store_config_hashes": hashes,
        "version": __version__,
        "pycolmap_version": pycolmap.__version__,
    }


@dataclass(frozen=True)
class _HashInput:
    config: dict
    stores: dict


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
