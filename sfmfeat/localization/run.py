"""Localize query photos end to end: query features, pairs, matching, 2D–3D + PnP, files.

This is the Python API behind ``sfmfeat localize`` and the pipelines. Per-query timings:
``2d3d`` and ``pnp`` are measured per query; ``features``, ``retrieval`` and ``matching``
are batch steps, reported per query as their batch time divided by the number of queries
(keys suffixed ``_amortized``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycolmap

from ..errors import ImageReadError, InputError
from ..extract import extract_features, extractor_from_store
from ..images import image_size
from ..lineage import check_features_belong_to_model
from ..match import match_pairs
from ..pairs import Pair, exhaustive, read_pairs, write_pairs
from ..store import FeatureReader, FeatureStores, MatchReader, check_matches_lineage
from .queries import QueryList
from .results import (DEFAULT_THRESHOLDS, evaluate, format_recall, read_poses, write_json,
                      write_poses, write_query_log)
from .model_localization import LocalizationConfig, LocalizationReport, ModelIndex, localize, \
    retrieval_from_pairs

logger = logging.getLogger(__name__)

# pairs: "exhaustive" (every registered db image), a pairs-file path, a list of pairs, or a
# function query names -> pairs (e.g. retrieval)
PairsSource = str | Path | Sequence[Pair] | Callable[[list[str]], list[Pair]]


@dataclass
class LocalizationRun:
    report: LocalizationReport
    poses_path: Path
    log_path: Path
    evaluation: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def model_folder(model: str | Path | pycolmap.Reconstruction) -> Path | None:
    """The folder holding the model files (OUT/sfm for a `sfmfeat reconstruct` OUT)."""
    if isinstance(model, pycolmap.Reconstruction):
        return None
    path = Path(model)
    if path.is_dir() and not (path / "images.bin").exists() and (path / "sfm").is_dir():
        path = path / "sfm"  # the output folder of `sfmfeat reconstruct`
    return path


def load_model(model: str | Path | pycolmap.Reconstruction) -> tuple[pycolmap.Reconstruction,
                                                                     str]:
    if isinstance(model, pycolmap.Reconstruction):
        return model, "the model"
    from ..reconstruction.triangulation import read_model

    path = model_folder(model)
    return read_model(path), f"model {path}"


def extractor_spec_like(reader: FeatureReader) -> tuple[str, dict[str, Any]]:
    """The preset name and overrides recorded in ``reader`` (the database features), so
    that query features are made by the very same extractor."""
    if not reader.spec:
        raise InputError(f"{reader.path} does not record the extractor that made it; pass the "
                         "same --features/--conf as for the database")
    return str(reader.spec["preset"]), dict(reader.spec["overrides"])


def intrinsics_size_mismatch(path: Path, camera: pycolmap.Camera, where: str) -> str | None:
    """Why a query's intrinsics cannot be used for its image (None when they can).

    A size that disagrees with the image is an error for that query, not rescaled: a
    different size may be a crop as well as a resize, and a silently wrong focal length
    gives a wrong pose (COLMAP and hloc use the given intrinsics as they are)."""
    try:
        width, height = image_size(path)
    except ImageReadError:
        return None  # the extraction names the unreadable image
    if (width, height) == (camera.width, camera.height):
        return None
    return (f"query {path.name}: the intrinsics at {where} are for {camera.width}x"
            f"{camera.height} px but the image is {width}x{height} px; fix that line (scale "
            "the focal length and principal point to the image size)")


def resolve_pairs(source: PairsSource, query_names: list[str], db_names: list[str]
                  ) -> list[Pair]:
    if callable(source):
        return list(source(query_names))
    if isinstance(source, (str, Path)):
        if str(source) == "exhaustive":
            return exhaustive(query_names, db_names)
        path = Path(source)
        pairs = read_pairs(path)
        if not pairs:
            raise InputError(f"pairs file {path} is empty: it names no image pair")
        return pairs
    return list(source)


def recorded_matcher(db_features: str | Path, features: str) -> tuple[str, dict[str, Any], str]:
    """(preset, config overrides, where it was found) of the matcher a model was built with:
    the ``matches.h5`` beside ``db_features``, else its ``summary.json``, else the default
    matcher of the ``features`` preset."""
    from ..extractors import default_matcher
    from ..hloc import METHOD as HLOC

    folder = Path(db_features).parent
    matches = folder / "matches.h5"
    if matches.is_file():
        with MatchReader(matches) as reader:
            if reader.method != HLOC:   # hloc records no matcher
                recorded = reader.config.get("config", {})
                return reader.method, dict(recorded), f"recorded in {matches}"
    summary = folder / "summary.json"
    if summary.is_file():
        import json

        config = json.loads(summary.read_text()).get("config", {})
        if config.get("matcher"):
            options = dict(config.get("matcher_options") or ())
            return config["matcher"], options, f"recorded in {summary}"
    if not features:
        raise InputError(f"no matcher recorded beside {db_features} (no matches.h5 of ours or "
                         "summary.json): pass --matcher")
    return default_matcher(features), {}, f"the default of {features}; no matches.h5 or " \
        f"summary.json in {folder}"


def run_localization(model: str | Path | pycolmap.Reconstruction,
                     db_features: str | Path, query_dir: str | Path,
                     queries: QueryList, output_dir: str | Path,
                     pairs: PairsSource = "exhaustive", features: str | None = None,
                     feature_overrides: Mapping[str, Any] | None = None,
                     matcher: str | None = None,
                     matcher_overrides: Mapping[str, Any] | None = None,
                     config: LocalizationConfig | None = None,
                     ground_truth: str | Path | Mapping[str, pycolmap.Rigid3d] | None = None,
                     poses_name: str = "poses.txt", prepend_camera_name: bool = False,
                     thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
                     device: str | None = None, query_features: str | Path | None = None,
                     query_matches: str | Path | None = None) -> LocalizationRun:
    """Localize ``queries`` (images in ``query_dir``) against ``model``.

    db_features: the features.h5 the model's keypoints come from (keypoint indices must
    match the model's points2D). Query features are extracted with the same extractor and
    config unless ``features`` is given. Writes ``output_dir/{query_features.h5,
    query_pairs.txt, query_matches.h5, <poses_name>, <stem>_log.json}`` and, with
    ``ground_truth``, ``<stem>_eval.json``. Every query gets a log entry; queries that fail
    (missing image, bad intrinsics line, no pairs, too few inliers) get no pose.
    ``matcher`` None: the matcher the model was built with (``recorded_matcher``).
    ``query_features`` (and ``query_matches``, of the query-database pairs): files made
    elsewhere (ours or hloc's) used instead of extracting (and matching) the queries.
    """
    if query_matches is not None and query_features is None:
        raise InputError("query matches need the query features they were made from")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    reconstruction, source = load_model(model)
    index = ModelIndex(reconstruction, source)
    seconds["load_model"] = time.perf_counter() - start
    db_features = Path(db_features)
    with FeatureReader(db_features) as reader:
        db_names = [n for n in index.names if n in reader]
        if not db_names:
            raise InputError(f"no registered image of {source} has features in {db_features}")
        check_features_belong_to_model(reconstruction, model_folder(model), reader, source)
        extractor = None
        if query_features is not None:
            features = features or (reader.spec or {}).get("preset")   # for the matcher
        elif features is None:
            features, stored = extractor_spec_like(reader)
            if not feature_overrides:
                extractor = extractor_from_store(reader, device=device)
            feature_overrides = {**stored, **dict(feature_overrides or {})}
    if query_matches is not None:
        logger.info("localizing with the matches in %s", query_matches)
    elif matcher is None:
        matcher, recorded, origin = recorded_matcher(db_features, features)
        matcher_overrides = {**recorded, **dict(matcher_overrides or {})}
        logger.info("localizing with matcher %s (%s)", matcher, origin)
    else:
        logger.info("localizing with matcher %s (given)", matcher)
    errors: dict[str, str] = {}
    for where, message in queries.errors.items():
        errors[where] = message
    query_dir = Path(query_dir)
    names = []
    for name in queries.names:
        if not (query_dir / name).is_file():
            errors[name] = (f"query image {query_dir / name} does not exist"
                            f" (listed at {queries.sources.get(name, '?')})")
        elif (mismatch := intrinsics_size_mismatch(query_dir / name, queries.cameras[name],
                                                   queries.sources.get(name, "?"))):
            errors[name] = mismatch
        else:
            names.append(name)
    timings: dict[str, float] = {}
    if query_features is not None:
        query_features = Path(query_features)
        with FeatureReader(query_features) as reader:
            for name in [n for n in names if n not in reader]:
                errors[name] = f"query {name!r} has no features in {query_features}"
        names = [n for n in names if n not in errors]
    elif names:
        query_features = output_dir / "query_features.h5"
        start = time.perf_counter()
        extraction = extract_features(query_dir, query_features, features, image_names=names,
                                      overrides=dict(feature_overrides or {}), device=device,
                                      extractor=extractor)
        timings["features_amortized"] = (time.perf_counter() - start) / len(names)
        for name, reason in extraction.rejected.items():
            errors[name] = f"query image rejected: {reason}"
        names = [n for n in names if n not in extraction.rejected]
    start = time.perf_counter()
    pair_list = resolve_pairs(pairs, names, db_names) if names else []
    retrieval = retrieval_from_pairs(pair_list, names)
    query_pairs = [(q, d) for q, dbs in retrieval.items() for d in dbs]
    write_pairs(output_dir / "query_pairs.txt", query_pairs)
    if names:
        timings["retrieval_amortized"] = (time.perf_counter() - start) / len(names)
    for name in names:
        if name not in retrieval:
            errors[name] = f"query {name!r} has no database image in the pairs"
    names = [n for n in names if n in retrieval]
    matches_path = Path(query_matches) if query_matches else output_dir / "query_matches.h5"
    if query_pairs and query_matches is not None:
        with FeatureReader(query_features) as queries_reader, \
                FeatureReader(db_features) as db_reader, MatchReader(matches_path) as given:
            check_matches_lineage(given, FeatureStores([queries_reader, db_reader]),
                                  query_pairs)
    elif query_pairs:
        start = time.perf_counter()
        match_pairs(query_pairs, query_features, matches_path, matcher,
                    overrides=dict(matcher_overrides or {}), reference_features=db_features,
                    device=device)
        timings["matching_amortized"] = (time.perf_counter() - start) / max(len(names), 1)
    start = time.perf_counter()
    if names:
        report = localize(index, {n: queries.cameras[n] for n in names}, retrieval,
                          query_features, matches_path, config, shared_timings=timings)
    else:
        report = LocalizationReport()
    seconds["localize"] = time.perf_counter() - start
    from .model_localization import QueryResult

    for key, message in errors.items():
        report.results[key] = QueryResult(name=key, status="error", reason=message)
        if key not in queries.errors:  # read_queries has logged its own
            logger.error("%s", message)
    stem = Path(poses_name).stem
    poses_path = write_poses(output_dir / poses_name, report.poses, prepend_camera_name)
    summary = report.summary()
    folder = model_folder(model)  # what the run read, for `sfmfeat report`
    summary["inputs"] = {"model": str(folder.resolve()) if folder else None,
                         "db_features": str(db_features.resolve()),
                         "query_dir": str(query_dir.resolve())}
    evaluation = None
    if ground_truth is not None:
        references = (read_reference_poses(ground_truth)
                      if not isinstance(ground_truth, Mapping) else dict(ground_truth))
        wanted = set(queries.cameras) | set(errors)
        basenames = {n.replace("\\", "/").split("/")[-1] for n in wanted}
        references = {n: p for n, p in references.items()
                      if n in wanted or n.replace("\\", "/").split("/")[-1] in basenames}
        if not references:
            raise InputError(f"the ground truth {ground_truth} names none of the queries")
        evaluation = evaluate(report.poses, references, thresholds)
        write_json(output_dir / f"{stem}_eval.json", evaluation)
        logger.info("%s", format_recall(evaluation))
        summary["evaluation"] = {k: v for k, v in evaluation.items() if k != "per_query"}
    log_path = write_query_log(output_dir / f"{stem}_log.json", report.log(), summary)
    logger.info("localized %d of %d queries -> %s", len(report.poses), len(report.results),
                poses_path)
    return LocalizationRun(report, poses_path, log_path, evaluation, seconds)


def read_reference_poses(source: str | Path) -> dict[str, pycolmap.Rigid3d]:
    """Reference poses from a pose file or a COLMAP model folder (registered images)."""
    path = Path(source)
    if path.is_dir():
        from ..reconstruction.triangulation import read_model

        model = read_model(path)
        return {im.name: im.cam_from_world() for im in model.images.values() if im.has_pose}
    return read_poses(path)


def vlad_retrieval(db_features: str | Path, work_dir: str | Path, num_neighbors: int,
                   db_names: Sequence[str] | None = None,
                   query_features: str | Path | None = None
                   ) -> Callable[[list[str]], list[Pair]]:
    """A pairs function for :func:`run_localization`: VLAD over the local features (the
    codebook is learned on the database images; no downloaded weights), top
    ``num_neighbors`` database images per query, in bounded memory."""
    work_dir = Path(work_dir)
    query_features = Path(query_features or work_dir / "query_features.h5")

    def pairs_for(query_names: list[str]) -> list[Pair]:
        from . import retrieval

        names = list(db_names) if db_names is not None else None
        if names is None:
            with FeatureReader(db_features) as reader:
                names = reader.names()
        codebook = retrieval.train_vlad_codebook(db_features, names)
        db_vlad = retrieval.compute_vlad(db_features, work_dir / "db_vlad.h5", codebook, names,
                                         overwrite=True)
        query_vlad = retrieval.compute_vlad(query_features, work_dir / "query_vlad.h5",
                                            codebook, query_names, overwrite=True)
        return retrieval.pairs_from_store(query_vlad, num_neighbors, query_names=query_names,
                                          db_descriptors=db_vlad, db_names=names)

    return pairs_for


def netvlad_retrieval(image_dir: str | Path, db_names: Sequence[str], work_dir: str | Path,
                      num_neighbors: int, device: str | None = None,
                      query_image_dir: str | Path | None = None
                      ) -> Callable[[list[str]], list[Pair]]:
    """A pairs function: NetVLAD (official weights) top ``num_neighbors`` per query.
    Query images are read from ``query_image_dir`` (default: ``image_dir``)."""
    work_dir = Path(work_dir)
    query_image_dir = query_image_dir or image_dir

    def pairs_for(query_names: list[str]) -> list[Pair]:
        from . import retrieval
        from .netvlad import compute_netvlad

        db_desc = compute_netvlad(image_dir, work_dir / "db_netvlad.h5",
                                  image_names=list(db_names), device=device)
        query_desc = compute_netvlad(query_image_dir, work_dir / "query_netvlad.h5",
                                     image_names=query_names, device=device)
        return retrieval.pairs_from_store(query_desc, num_neighbors, query_names=query_names,
                                          db_descriptors=db_desc, db_names=list(db_names))

    return pairs_for
