"""Localize query photos end to end, as a list of steps a reader can follow:

    query features -> query pairs (given or retrieval) -> query matching -> 2D–3D + PnP
    -> evaluation (with ground truth) -> results files

Each step is a function of a few typed arguments and the run's frozen
:class:`LocalizationRunConfig`; each is resumable and idempotent: a rerun of a finished
run redoes nothing and logs "<step>: already done" for every step (extraction and
matching resume through their stores, the others through the run's ``steps.json``).
:func:`run_localization` composes them; it is the Python API behind ``sfmfeat localize``
and the pipelines. Per-query timings: ``2d3d`` and ``pnp`` are measured per query;
``features``, ``retrieval`` and ``matching`` are batch steps, reported per query as their
batch time divided by the number of queries (keys suffixed ``_amortized``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycolmap

from ..errors import ImageReadError, InputError
from ..extract import extract_features, spec_of_store
from ..extractors import ExtractorSpec, resolve_spec
from ..images import image_size
from ..lineage import check_features_belong_to_model
from ..match import match_pairs
from ..pairs import Pair, exhaustive, read_pairs, write_pairs
from ..steps import StepRecord, file_identity, step_key
from ..store import FeatureReader, FeatureStores, MatchReader, check_matches_lineage
from ..timing import StageTimer
from .model_localization import (LocalizationConfig, LocalizationReport, ModelIndex, QueryResult,
                                 localize, retrieval_from_pairs)
from .queries import QueryList
from .results import (DEFAULT_THRESHOLDS, evaluate, format_recall, read_poses, read_query_log,
                      write_json, write_poses, write_query_log)
from .retrieval import ImageSet, RetrievalConfig, retrieve

logger = logging.getLogger(__name__)

# pairs: "exhaustive" (every registered db image), a pairs-file path, a list of pairs, or
# retrieval by global descriptor (the one policy of ``retrieval.retrieve``)
PairsSource = str | Path | Sequence[Pair] | RetrievalConfig
STEPS_FILE = "steps.json"


@dataclass(frozen=True)
class LocalizationRunConfig:
    """Everything a localization run does besides its inputs.

    features/feature_overrides: the query extractor (default: the one recorded in the
    database features, with its overrides); matcher/matcher_overrides: default the one the
    model was built with (``recorded_matcher``); db_images: the model's images, for
    retrieval methods that read images (NetVLAD)."""

    features: str | None = None
    feature_overrides: Mapping[str, Any] = field(default_factory=dict)
    matcher: str | None = None
    matcher_overrides: Mapping[str, Any] = field(default_factory=dict)
    localization: LocalizationConfig = LocalizationConfig()
    poses_name: str = "poses.txt"
    prepend_camera_name: bool = False
    thresholds: tuple[tuple[float, float], ...] = DEFAULT_THRESHOLDS
    device: str | None = None
    db_images: Path | None = None

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise InputError("LocalizationRunConfig.thresholds: give at least one "
                             "(meters, degrees) pair")
        if Path(self.poses_name).name != self.poses_name or not self.poses_name:
            raise InputError(f"poses_name {self.poses_name!r}: a file name, no folder")


@dataclass
class LocalizationRun:
    report: LocalizationReport
    poses_path: Path
    log_path: Path
    evaluation: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelInputs:
    """The model side of a run: the model, its index, the database features and what
    makes query features and matches compatible with them."""

    index: ModelIndex
    source: str
    folder: Path | None
    db_features: Path
    db_names: list[str]
    extractor: ExtractorSpec | None     # None: query features are given
    features: str | None                # the query features' preset (for the matcher)
    matcher: str | None
    matcher_overrides: dict[str, Any]


@dataclass
class QueryFeatures:
    path: Path
    names: list[str]                    # queries with features
    errors: dict[str, str]              # query -> why it has none


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


def query_extractor(reader: FeatureReader, config: LocalizationRunConfig) -> ExtractorSpec:
    """The extractor of the query features: the database's own (recorded in ``reader``,
    the database features) with ``config``'s overrides on top, or ``config.features``."""
    if config.features is not None:
        return resolve_spec(config.features, dict(config.feature_overrides))
    if not reader.spec:
        raise InputError(f"{reader.path} does not record the extractor that made it; pass the "
                         "same --features/--conf as for the database")
    if not config.feature_overrides:
        return spec_of_store(reader)
    return resolve_spec(str(reader.spec["preset"]), {**reader.spec["overrides"],
                                                     **config.feature_overrides})


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


def resolve_pairs(source: str | Path | Sequence[Pair], query_names: list[str],
                  db_names: list[str]) -> list[Pair]:
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




# ------------------------------------------------------------------------------ steps

def open_model(model: str | Path | pycolmap.Reconstruction, db_features: str | Path,
               config: LocalizationRunConfig, queries_given: bool,
               matches_given: bool) -> ModelInputs:
    """Load the model and check the database features belong to it; settle the query
    extractor and the matcher (the model's own unless ``config`` names others)."""
    reconstruction, source = load_model(model)
    index = ModelIndex(reconstruction, source)
    db_features = Path(db_features)
    with FeatureReader(db_features) as reader:
        db_names = [n for n in index.names if n in reader]
        if not db_names:
            raise InputError(f"no registered image of {source} has features in {db_features}")
        check_features_belong_to_model(reconstruction, model_folder(model), reader, source)
        extractor = None if queries_given else query_extractor(reader, config)
        features = extractor.name if extractor else (
            config.features or (reader.spec or {}).get("preset"))
    matcher, overrides = config.matcher, dict(config.matcher_overrides)
    if matches_given:
        matcher = None
    elif matcher is None:
        matcher, recorded, origin = recorded_matcher(db_features, features)
        overrides = {**recorded, **overrides}
        logger.info("localizing with matcher %s (%s)", matcher, origin)
    else:
        logger.info("localizing with matcher %s (given)", matcher)
    return ModelInputs(index, source, model_folder(model), db_features, db_names, extractor,
                       features, matcher, overrides)


def check_queries(queries: QueryList, query_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(queries to localize, query -> error) for missing images and unusable intrinsics."""
    errors = dict(queries.errors)
    names = []
    for name in queries.names:
        where = queries.sources.get(name, "?")
        if not (query_dir / name).is_file():
            errors[name] = f"query image {query_dir / name} does not exist (listed at {where})"
        elif mismatch := intrinsics_size_mismatch(query_dir / name, queries.cameras[name],
                                                  where):
            errors[name] = mismatch
        else:
            names.append(name)
    return names, errors


def query_features_step(query_dir: Path, names: list[str], model: ModelInputs,
                        output: Path, config: LocalizationRunConfig,
                        given: Path | None = None) -> QueryFeatures:
    """Query features: extracted by the database's extractor into ``output`` (resumed,
    image by image), or ``given`` (made elsewhere: ours or hloc's)."""
    if given is not None:
        with FeatureReader(given) as reader:
            errors = {n: f"query {n!r} has no features in {given}" for n in names
                      if n not in reader}
        logger.info("query features: given (%s)", given)
        return QueryFeatures(Path(given), [n for n in names if n not in errors], errors)
    if not names:
        return QueryFeatures(output, [], {})
    spec = model.extractor
    extraction = extract_features(query_dir, output, spec.name, image_names=names,
                                  overrides=dict(spec.overrides), device=config.device,
                                  extractor=spec.build(config.device))
    if not extraction.extracted:
        logger.info("query features: already done (%s)", output)
    errors = {n: f"query image rejected: {reason}" for n, reason in extraction.rejected.items()}
    return QueryFeatures(output, [n for n in names if n not in errors], errors)


def query_pairs_step(source: PairsSource, features: QueryFeatures, model: ModelInputs,
                     query_dir: Path, output: Path, config: LocalizationRunConfig,
                     record: StepRecord) -> dict[str, list[str]]:
    """Query -> database images: from ``source`` (exhaustive, a pairs file or list, or
    retrieval), written to ``output`` (a pairs file)."""
    names = features.names
    key = step_key(source=source, names=names, db_names=model.db_names,
                   files=[file_identity(p) for p in (
                       source if isinstance(source, (str, Path)) and str(source) !=
                       "exhaustive" else None, features.path, model.db_features)])

    def compute() -> list[Pair]:
        if not names:
            pairs: list[Pair] = []
        elif isinstance(source, RetrievalConfig):
            # sorted: the codebook's training sample must not follow the model's image order
            database = tuple(sorted(model.db_names))
            pairs = retrieve(ImageSet(tuple(names), query_dir, features.path),
                             ImageSet(database, config.db_images, model.db_features),
                             output.parent, source, device=config.device)
        else:
            pairs = resolve_pairs(source, names, model.db_names)
        retrieval = retrieval_from_pairs(pairs, names)
        write_pairs(output, [(q, d) for q, dbs in retrieval.items() for d in dbs])
        return pairs

    pairs = record.run("query pairs", key, [output], compute, lambda: read_pairs(output))
    return retrieval_from_pairs(pairs, names)


def query_matching_step(retrieval: Mapping[str, Sequence[str]], features: QueryFeatures,
                        model: ModelInputs, output: Path, config: LocalizationRunConfig,
                        given: Path | None = None) -> Path:
    """Matches of every query-database pair into ``output`` (resumed pair by pair), or
    ``given`` (made elsewhere), checked to come from these features."""
    pairs = [(q, d) for q, dbs in retrieval.items() for d in dbs]
    if given is not None:
        with FeatureReader(features.path) as queries_reader, \
                FeatureReader(model.db_features) as db_reader, MatchReader(given) as reader:
            check_matches_lineage(reader, FeatureStores([queries_reader, db_reader]), pairs)
        logger.info("query matching: given (%s)", given)
        return Path(given)
    if pairs:
        report = match_pairs(pairs, features.path, output, model.matcher,
                             overrides=model.matcher_overrides,
                             reference_features=model.db_features, device=config.device)
        if not report.matched:
            logger.info("query matching: already done (%s)", output)
    return output


def pose_step(model: ModelInputs, queries: QueryList, retrieval: Mapping[str, list[str]],
              features: QueryFeatures, matches: Path, config: LocalizationRunConfig,
              record: StepRecord, output: Path,
              shared_timings: Mapping[str, float]) -> LocalizationReport:
    """2D–3D correspondences through the model's tracks and PnP, per query; the results
    are kept in ``output`` (a per-query log)."""
    names = [n for n in features.names if n in retrieval]
    cameras = {n: queries.cameras[n] for n in names}
    key = step_key(config=config.localization, retrieval={n: retrieval[n] for n in names},
                   cameras={n: f"{c.model.name} {c.width} {c.height} {c.params_to_string()} "
                               f"{c.has_prior_focal_length}" for n, c in cameras.items()},
                   files=[file_identity(p) for p in (features.path, matches,
                                                     model.db_features, model.folder)],
                   model=model.index.digest())

    def compute() -> LocalizationReport:
        report = (localize(model.index, cameras, retrieval, features.path, matches,
                           config.localization, shared_timings=shared_timings)
                  if names else LocalizationReport())
        write_query_log(output, report.log())
        return report

    def load() -> LocalizationReport:
        entries = read_query_log(output)["queries"]
        return LocalizationReport({n: QueryResult.from_log_entry(n, e)
                                   for n, e in entries.items()})

    return record.run("2D-3D + pose", key, [output], compute, load)


def with_errors(report: LocalizationReport, errors: Mapping[str, str],
                logged: Mapping[str, str]) -> LocalizationReport:
    """``report`` with an error entry for every query that did not reach the pose step."""
    for key, message in errors.items():
        report.results[key] = QueryResult(name=key, status="error", reason=message)
        if key not in logged:  # read_queries has logged its own
            logger.error("%s", message)
    return report


def evaluation_step(report: LocalizationReport, ground_truth: Any, wanted: set[str],
                    output: Path, config: LocalizationRunConfig,
                    record: StepRecord) -> dict[str, Any] | None:
    """Recall and median errors against reference poses (``output``: the evaluation)."""
    if ground_truth is None:
        return None
    key = step_key(poses={n: str(p) for n, p in report.poses.items()}, wanted=sorted(wanted),
                   thresholds=config.thresholds,
                   truth=file_identity(ground_truth) if isinstance(ground_truth, (str, Path))
                   else {n: str(p) for n, p in ground_truth.items()})

    def compute() -> dict[str, Any]:
        references = (read_reference_poses(ground_truth)
                      if not isinstance(ground_truth, Mapping) else dict(ground_truth))
        basenames = {n.replace("\\", "/").split("/")[-1] for n in wanted}
        references = {n: p for n, p in references.items()
                      if n in wanted or n.replace("\\", "/").split("/")[-1] in basenames}
        if not references:
            raise InputError(f"the ground truth {ground_truth} names none of the queries")
        evaluation = evaluate(report.poses, references, config.thresholds)
        write_json(output, evaluation)
        return evaluation

    evaluation = record.run("evaluation", key, [output], compute,
                            lambda: json.loads(output.read_text(encoding="utf-8")))
    logger.info("%s", format_recall(evaluation))
    return evaluation


def results_step(report: LocalizationReport, model: ModelInputs, query_dir: Path,
                 output_dir: Path, evaluation: Mapping[str, Any] | None,
                 config: LocalizationRunConfig, record: StepRecord) -> tuple[Path, Path]:
    """The pose file (submission format) and the per-query log with the run's summary."""
    stem = Path(config.poses_name).stem
    poses_path, log_path = output_dir / config.poses_name, output_dir / f"{stem}_log.json"
    summary = report.summary()
    summary["inputs"] = {"model": str(model.folder.resolve()) if model.folder else None,
                         "db_features": str(model.db_features.resolve()),
                         "query_dir": str(query_dir.resolve())}   # for `sfmfeat report`
    if evaluation is not None:
        summary["evaluation"] = {k: v for k, v in evaluation.items() if k != "per_query"}
    timing = ("seconds", "mean_seconds_per_query", "timings")   # not what the files say
    key = step_key(log={n: {k: v for k, v in e.items() if k not in timing}
                        for n, e in report.log().items()},
                   summary={k: v for k, v in summary.items() if k not in timing},
                   poses_name=config.poses_name, prepend=config.prepend_camera_name)

    def compute() -> tuple[Path, Path]:
        write_poses(poses_path, report.poses, config.prepend_camera_name)
        write_query_log(log_path, report.log(), summary)
        return poses_path, log_path

    paths = record.run("results", key, [poses_path, log_path], compute,
                       lambda: (poses_path, log_path))
    logger.info("localized %d of %d queries -> %s", len(report.poses), len(report.results),
                poses_path)
    return paths


# ------------------------------------------------------------------------------- run

def run_localization(model: str | Path | pycolmap.Reconstruction,
                     db_features: str | Path, query_dir: str | Path,
                     queries: QueryList, output_dir: str | Path,
                     pairs: PairsSource = "exhaustive",
                     config: LocalizationRunConfig = LocalizationRunConfig(),
                     ground_truth: str | Path | Mapping[str, pycolmap.Rigid3d] | None = None,
                     query_features: str | Path | None = None,
                     query_matches: str | Path | None = None) -> LocalizationRun:
    """Localize ``queries`` (images in ``query_dir``) against ``model``.

    db_features: the features.h5 the model's keypoints come from (keypoint indices must
    match the model's points2D). Writes ``output_dir/{query_features.h5,
    query_pairs.txt, query_matches.h5, <poses_name>, <stem>_log.json, steps.json}`` and,
    with ``ground_truth``, ``<stem>_eval.json``. Every query gets a log entry; queries
    that fail (missing image, bad intrinsics line, no pairs, too few inliers) get no pose.
    ``query_features`` (and ``query_matches``, of the query-database pairs): files made
    elsewhere (ours or hloc's) used instead of extracting (and matching) the queries.
    """
    if query_matches is not None and query_features is None:
        raise InputError("query matches need the query features they were made from")
    output_dir, query_dir = Path(output_dir), Path(query_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = StepRecord(output_dir / STEPS_FILE)
    stem = Path(config.poses_name).stem
    timer = StageTimer(logger)
    with timer.stage("load_model"):
        inputs = open_model(model, db_features, config, query_features is not None,
                            query_matches is not None)
    names, errors = check_queries(queries, query_dir)
    with timer.stage("features"):
        features = query_features_step(query_dir, names, inputs,
                                       output_dir / "query_features.h5", config,
                                       Path(query_features) if query_features else None)
    errors.update(features.errors)
    with timer.stage("retrieval"):
        retrieval = query_pairs_step(pairs, features, inputs, query_dir,
                                     output_dir / "query_pairs.txt", config, record)
    errors.update({n: f"query {n!r} has no database image in the pairs"
                   for n in features.names if n not in retrieval})
    with timer.stage("matching"):
        matches = query_matching_step(retrieval, features, inputs,
                                      output_dir / "query_matches.h5", config,
                                      Path(query_matches) if query_matches else None)
    batch = _batch_timings(timer, features, retrieval, query_features, query_matches)
    report = pose_step(inputs, queries, retrieval, features, matches, config, record,
                       output_dir / f"{stem}_results.json", batch)
    report = with_errors(report, errors, queries.errors)
    evaluation = evaluation_step(report, ground_truth, set(queries.cameras) | set(errors),
                                 output_dir / f"{stem}_eval.json", config, record)
    poses_path, log_path = results_step(report, inputs, query_dir, output_dir, evaluation,
                                        config, record)
    return LocalizationRun(report, poses_path, log_path, evaluation, timer.seconds)


def _batch_timings(timer: StageTimer, features: QueryFeatures,
                   retrieval: Mapping[str, list[str]], query_features: Any,
                   query_matches: Any) -> dict[str, float]:
    """Per-query amortised seconds of the batch steps that ran here."""
    timings = {}
    if features.names and query_features is None:
        timings["features_amortized"] = timer.seconds["features"] / len(features.names)
    if features.names:
        timings["retrieval_amortized"] = timer.seconds["retrieval"] / len(features.names)
    if retrieval and query_matches is None:
        timings["matching_amortized"] = timer.seconds["matching"] / max(len(retrieval), 1)
    return timings


def read_reference_poses(source: str | Path) -> dict[str, pycolmap.Rigid3d]:
    """Reference poses from a pose file or a COLMAP model folder (registered images)."""
    path = Path(source)
    if path.is_dir():
        from ..reconstruction.triangulation import read_model

        model = read_model(path)
        return {im.name: im.cam_from_world() for im in model.images.values() if im.has_pose}
    return read_poses(path)
