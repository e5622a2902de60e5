"""From a folder of photos to a COLMAP model: extract, pair, match, import, verify, map.

Output folder layout:
    features.h5, matches.h5, pairs.txt, database.db,
    sfm/ (COLMAP binary model of the largest component) with sfm/points3D.ply,
    summary.json (statistics, per-stage timings, config and its hash, sfmfeat version,
    the image folder, the run id, the stores it was built from and what was reused or redone),
    sfm/lineage.json (the stores and, per image, the feature record and image hash).
Every stage resumes: features and matches already stored with the same config, from the
same image content and the same feature records, are reused; changed ones are redone.
A run holds OUT/.sfmfeat.lock (a second run on OUT fails at once, naming the holder's pid)
and first moves an earlier run's summary.json and sfm/ into OUT/previous/, removed
once this run has succeeded: a failed run never leaves a success-looking result behind.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pycolmap

from .. import __version__
from ..config import config_hash, config_to_dict
from ..atomic import write_text_atomic
from ..errors import ConfigError, InputError, ReconstructionError
from ..executors import ExecutorConfig, session, uses_ray
from ..extract import ExtractionReport, extract_features
from ..extractors import default_matcher
from ..features import resolve_device
from ..images import list_images
from ..lineage import store_identity, write_model_lineage
from ..pairs import exhaustive, read_pairs, sequential, write_pairs
from ..runtime import MAX_SEED, cpu_threads, resolve_seed, validate_num_threads
from ..store import FeatureReader, MatchReader, StoreLock, check_matches_lineage
from ..timing import StageTimer
from .database import (CameraMode, validate_camera_model, verify_matches, write_database,
                       write_matches)
from .mapping import (MappingConfig, effective_options, model_statistics, run_mapping,
                      set_focal_priors, verified_pair_statistics)

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
    ransac_confidence: float = 0.999
    ransac_max_num_trials: int = 20000
    random_seed: int = -1               # < 0: a fresh seed, recorded in summary.json
    num_threads: int = -1               # CPU threads of every stage (-1: all cores)
    deterministic: bool = False         # one thread in COLMAP's verification and mapping
    strict: bool = False
    dense: bool = False                 # also run dense MVS into OUT/dense
    dense_max_image_size: int = 1000
    feature_options: tuple[tuple[str, Any], ...] = ()
    matcher_options: tuple[tuple[str, Any], ...] = ()
    # pycolmap mapper options, e.g. (("ba_refine_principal_point", True),) (MappingConfig)
    mapper_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        validate_num_threads(self.num_threads)
        if not 0 < self.ransac_confidence < 1:
            raise ConfigError(f"ransac_confidence must lie in (0, 1), got {self.ransac_confidence}")
        if self.ransac_max_num_trials < 1:
            raise ConfigError(f"ransac_max_num_trials must be >= 1, "
                              f"got {self.ransac_max_num_trials}")
        if self.random_seed > MAX_SEED:
            raise ConfigError(f"random_seed={self.random_seed} is out of range: use 0..{MAX_SEED}"
                              " (or < 0 for a fresh one)")
        if self.mapper_options:   # checked before any work, not after extraction
            MappingConfig(mapper=self.mapper, options=self.mapper_options)

    @property
    def colmap_threads(self) -> int:
        """Threads of COLMAP's RANSAC and mapping: their bundle adjustments sum residuals in
        an order that depends on thread timing, so only one thread replays bit for bit."""
        return 1 if self.deterministic else self.num_threads


@dataclass
class ReconstructionResult:
    output_dir: Path
    reconstruction: pycolmap.Reconstruction
    summary: dict[str, Any]
    rejected: dict[str, str] = field(default_factory=dict)


PREVIOUS_DIR = "previous"
_PREVIOUS_OUTPUTS = ("summary.json", "sfm")  # dense/ keeps its own resumable state
_MAPPING_SCRATCH = re.compile(r"models-[A-Za-z0-9_]{8}")  # tempfile.mkdtemp names


def reconstruct(image_dir: str | Path, output_dir: str | Path,
                config: ReconstructionConfig = ReconstructionConfig(),
                image_names: list[str] | None = None,
                device: str | None = None, stores: GivenStores | None = None,
                executor: ExecutorConfig | None = None) -> ReconstructionResult:
    """Photos in ``image_dir`` -> COLMAP model in ``output_dir`` (see the module doc).

    ``stores``: features (and matches) files to build from instead of extracting (and
    matching) into ``output_dir``; any layout the store reads (ours or hloc's).
    ``executor``: where extraction and matching run (``sfmfeat.executors``; default here);
    it changes no result, so it is not part of the config or its hash."""
    validate_camera_model(config.camera_model)  # everything cheap is checked before any work
    if device and not uses_ray(executor):   # the workers resolve it on their nodes
        resolve_device(device)   # only a given device: resolving None would import torch
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output {output_dir} is a file; give a folder")
    with StoreLock(output_dir, inside=True):
        _set_aside_previous_outputs(output_dir)
        with session(executor):
            result = _resolve_and_run(image_dir, output_dir, config, image_names, device,
                                      stores or GivenStores(), executor)
        shutil.rmtree(output_dir / PREVIOUS_DIR, ignore_errors=True)
    return result


def _set_aside_previous_outputs(output_dir: Path) -> None:
    """Move an earlier run's results into OUT/previous/ (kept there until this run succeeds),
    and drop the mapping scratch folders a killed run left behind."""
    for entry in output_dir.iterdir():
        if entry.is_dir() and _MAPPING_SCRATCH.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    earlier = [name for name in _PREVIOUS_OUTPUTS if (output_dir / name).exists()]
    if not earlier:
        return
    previous = output_dir / PREVIOUS_DIR
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for name in earlier:
        os.replace(output_dir / name, previous / name)
    logger.info("moved the earlier run's %s to %s until this run succeeds",
                ", ".join(earlier), previous)


def _resolve_and_run(image_dir: str | Path, output_dir: str | Path,
                     config: ReconstructionConfig, image_names: list[str] | None,
                     device: str | None, stores: GivenStores,
                     executor: ExecutorConfig | None) -> ReconstructionResult:
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    if image_names is None:
        image_names = list_images(image_dir)  # fails early on a missing or empty folder
    if config.matcher is None:
        config = replace(config, matcher=default_matcher(config.features))
        logger.info("matcher %s (the default for %s)", config.matcher, config.features)
    config = replace(config, random_seed=resolve_seed(config.random_seed))
    output_dir.mkdir(parents=True, exist_ok=True)
    with cpu_threads(config.num_threads):
        return _reconstruct(image_dir, output_dir, config, image_names, device, stores,
                            executor)


def _reconstruct(image_dir: Path, output_dir: Path, config: ReconstructionConfig,
                 image_names: list[str], device: str | None,
                 stores: GivenStores, executor: ExecutorConfig | None) -> ReconstructionResult:
    timer = StageTimer(logger)
    features_path = stores.features or output_dir / "features.h5"
    matches_path = stores.matches or output_dir / "matches.h5"
    pairs_path = output_dir / "pairs.txt"
    database_path = output_dir / "database.db"

    if not stores.matches:
        _import_in_background("sfmfeat.match")   # torch, ~2 s, while the images decode
    with timer.stage("extract"):
        if stores.features:
            extraction = _given_features(features_path, image_names)
        else:
            extraction = extract_features(image_dir, features_path, config.features,
                                          image_names=image_names,
                                          overrides=dict(config.feature_options),
                                          device=device, strict=config.strict,
                                          executor=executor)
    names = [n for n in image_names if n not in extraction.rejected]
    if len(names) < 2:
        raise InputError(f"need at least two readable images in {image_dir}, found "
                         f"{len(names)}")
    with timer.stage("pairs"):
        pairs = _make_pairs(config, names)
        if stores.matches:
            pairs = _pairs_in_matches(matches_path, pairs)
        write_pairs(pairs_path, pairs)
    with timer.stage("match"):
        from ..match import MatchingReport, match_pairs   # torch: not before the first image

        if stores.matches:
            matching = MatchingReport(output=matches_path, already_done=len(pairs))
        else:
            matching = match_pairs(pairs, features_path, matches_path, config.matcher,
                                   overrides=dict(config.matcher_options), device=device,
                                   executor=executor)
    with timer.stage("database"):
        with FeatureReader(features_path) as features:
            image_ids = write_database(database_path, image_dir, names, features,
                                       config.camera_mode, config.camera_model)
        with MatchReader(matches_path) as matches, FeatureReader(features_path) as features:
            check_matches_lineage(matches, features, pairs)
            write_matches(database_path, image_ids, matches, pairs)
        if config.mapper == "global":
            changed = set_focal_priors(database_path)
            if changed:
                logger.info("global mapping: using the initial focal length of %d camera(s) "
                            "as a prior (calibrated two-view geometries)", changed)
    with timer.stage("verify"):
        pycolmap.set_random_seed(config.random_seed)
        num_verified = verify_matches(database_path, config.ransac_max_error,
                                      config.min_num_inliers, config.random_seed,
                                      num_threads=config.colmap_threads,
                                      confidence=config.ransac_confidence,
                                      max_num_trials=config.ransac_max_num_trials)
        logger.info("%d of %d pairs verified", num_verified, len(pairs))
        if num_verified == 0:
            raise ReconstructionError(
                f"no image pair survived geometric verification ({len(pairs)} pairs matched); "
                "the images may not overlap, or the features/matcher are too weak")
    with timer.stage("map"):
        mapped = run_mapping(database_path, image_dir, output_dir / "sfm", MappingConfig(
            mapper=config.mapper, random_seed=config.random_seed,
            num_threads=config.colmap_threads, options=config.mapper_options))
        reconstruction = mapped.reconstruction
    if config.dense:
        from .dense import DenseConfig, densify

        with timer.stage("dense"):
            dense = densify(output_dir / "sfm", image_dir, output_dir / "dense",
                            DenseConfig(max_image_size=config.dense_max_image_size))
    summary = _summary(config, names, extraction.rejected, reconstruction, database_path,
                       timer.seconds, features_path, matches_path)
    summary["image_dir"] = str(image_dir.resolve())  # for the report's pair drawings
    # what the mapper ran with (the principal-point rule adds its decision to the config's)
    summary["mapper_options"] = dict(effective_options(mapped.config))
    if mapped.principal_point_std:
        summary["principal_point_std_px"] = {
            str(camera_id): [round(value, 3) if math.isfinite(value) else None
                             for value in std]
            for camera_id, std in mapped.principal_point_std.items()}
    summary["run_id"] = run_id = uuid.uuid4().hex
    with FeatureReader(features_path) as features, MatchReader(matches_path) as matches:
        summary["stores"] = {"features": store_identity(features),
                             "matches": store_identity(matches)}
        write_model_lineage(output_dir / "sfm", run_id, reconstruction, features, matches)
    summary["resumption"] = {
        "extracted": extraction.extracted, "reextracted_changed": extraction.changed,
        "features_reused": len(extraction.already_done), "pairs_matched": matching.matched,
        "pairs_rematched": matching.rematched, "pairs_reused": matching.already_done}
    if config.dense:
        summary["num_dense_points"] = dense.num_fused_points
        summary["dense_backend"] = dense.backend
        summary["dense_timings"] = dense.timings
    _write_json(output_dir / "summary.json", summary)
    logger.info("registered %d/%d images, %d points, track %.2f, reprojection %.3f px",
                summary["num_registered"], summary["num_images"], summary["num_points3D"],
                summary["mean_track_length"], summary["mean_reprojection_error"])
    return ReconstructionResult(output_dir, reconstruction, summary, extraction.rejected)


def _import_in_background(module: str) -> None:
    """Start importing ``module`` in a thread: the import (mostly torch's, Python bound)
    overlaps the extraction (OpenCV or torch kernels, which release the GIL). A later
    ``import`` of it waits for this one; a failure is left for that import to raise. Not a
    daemon: an interpreter never shuts down in the middle of a C extension's import."""
    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - re-raised by the stage that needs the module
            pass

    threading.Thread(target=run, name=f"import {module}").start()


@dataclass(frozen=True)
class GivenStores:
    """Stores to build from instead of extracting / matching into the output folder."""

    features: Path | None = None
    matches: Path | None = None

    def __post_init__(self) -> None:
        if self.matches is not None and self.features is None:
            raise ConfigError("stores.matches needs stores.features: the features the "
                              "matches were made from")
        for field_name in ("features", "matches"):
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(self, field_name, Path(value))


def _given_features(path: Path, image_names: list[str]) -> ExtractionReport:
    """What a given features store holds of ``image_names``; the others are rejected."""
    with FeatureReader(path) as features:
        stored = set(features.names())
    report = ExtractionReport(output=path,
                              already_done=[n for n in image_names if n in stored])
    for name in image_names:
        if name not in stored:
            report.rejected[name] = f"no features in {path}"
    if report.rejected:
        logger.warning("%d image(s) have no features in %s: %s", len(report.rejected), path,
                       ", ".join(list(report.rejected)[:5]))
    return report


def _pairs_in_matches(path: Path, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``pairs`` a given matches store holds (a warning counts the others)."""
    with MatchReader(path) as matches:
        kept = [pair for pair in pairs if pair in matches]
    if len(kept) < len(pairs):
        logger.warning("%d of %d pairs have no matches in %s; skipped",
                       len(pairs) - len(kept), len(pairs), path)
    if not kept:
        raise InputError(f"{path} holds none of the {len(pairs)} pairs to reconstruct from")
    return kept


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
        "seed": config.random_seed,
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
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))
