"""Aachen Day-Night v1.0 / v1.1: localize the queries against the reference model.

    python -m pipelines.aachen --dataset DIR --outputs DIR [--version 1.0|1.1]
        [--features sift] [--conf KEY=VALUE] [--matcher PRESET]
        [--protocol full|local] [--retrieval vlad|netvlad|exhaustive]
        [--num-covis 20] [--num-loc 50] [--query-pairs FILE] [--ground-truth POSES]

Official layout (``DIR``):
    images/images_upright/{db,query,sequences}/...
    3D-models/aachen_cvpr2018_db.nvm, 3D-models/database_intrinsics.txt      (v1.0)
    3D-models/aachen_v_1_1/{cameras,images,points3D}.bin, or its aachen_v_1_1.nvm and
        database_intrinsics_v1_1.txt                                         (v1.1)
    queries/*_time_queries_with_intrinsics.txt
    database.db + image_pairs_to_match.txt (v1.0), database_v1_1.db +
        image_pairs_to_match_v1_1.txt (v1.1)                       (--protocol local)

Full protocol: reference poses -> database features -> covisibility pairs -> matching ->
triangulation with the poses fixed -> query features -> retrieval pairs -> matching ->
2D–3D + PnP -> ``Aachen_eval_<method>.txt`` / ``Aachen_v1_1_eval_<method>.txt``.
Every step is resumable: a killed run picks up where it stopped, a rerun of a finished
run does no work (each step logs "already done").
Local-feature protocol: the shipped pair list and database intrinsics, triangulation with
fixed poses and COLMAP's RANSAC verification, registration of the night queries only.
The algorithms live in ``sfmfeat``; this file is the layout and the order of the steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pycolmap

from sfmfeat.atomic import write_text_atomic
from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.core import add_conf_argument, add_executor_arguments, executor_from_args
from sfmfeat.commands.report import add_no_report_argument
from sfmfeat.config import parse_overrides
from sfmfeat.errors import InputError
from sfmfeat.executors import ExecutorConfig
from sfmfeat.extractors import default_matcher
from sfmfeat.localization.model_localization import LocalizationConfig
from sfmfeat.localization.pose import PoseConfig
from sfmfeat.localization.queries import QueryList, read_query_lists
from sfmfeat.localization.reference import (database_features_step, database_matching_step,
                                            registered_names, triangulation_step)
from sfmfeat.localization.results import summary_text
from sfmfeat.localization.retrieval import RETRIEVAL_METHODS, RetrievalConfig
from sfmfeat.localization.run import LocalizationRunConfig, run_localization
from sfmfeat.pairs import Pair, exhaustive, read_pairs, write_pairs
from sfmfeat.reconstruction.triangulation import TriangulationConfig, load_reference, read_model
from sfmfeat.report import REPORT_NAME, write_report_after_run
from sfmfeat.runtime import resolve_seed
from sfmfeat.steps import StepRecord

logger = logging.getLogger("pipelines.aachen")

IMAGES = "images/images_upright"
LAYOUT = {
    "1.0": {"nvm": "3D-models/aachen_cvpr2018_db.nvm",
            "intrinsics": "3D-models/database_intrinsics.txt", "colmap": None,
            "database": "database.db", "pairs": "image_pairs_to_match.txt",
            "prefix": "Aachen_eval_"},
    "1.1": {"nvm": "3D-models/aachen_v_1_1/aachen_v_1_1.nvm",
            "intrinsics": "3D-models/aachen_v_1_1/database_intrinsics_v1_1.txt",
            "colmap": "3D-models/aachen_v_1_1", "database": "database_v1_1.db",
            "pairs": "image_pairs_to_match_v1_1.txt", "prefix": "Aachen_v1_1_eval_"},
}



@dataclass(frozen=True)
class AachenConfig:
    """One Aachen run (the options of ``python -m pipelines.aachen``)."""

    version: str = "1.0"
    protocol: str = "full"                 # full | local
    features: str = "sift"
    feature_overrides: dict = field(default_factory=dict)
    matcher: str | None = None             # default: the extractor's own
    matcher_overrides: dict = field(default_factory=dict)
    retrieval: str = "vlad"                # exhaustive or a retrieval method
    num_covis: int = 20
    num_loc: int = 50
    db_pairs: Path | None = None           # instead of covisibility
    query_pairs: Path | None = None        # instead of retrieval
    verification: str = "poses"
    ransac_max_error: float = 12.0
    covisibility_clustering: bool = False
    ground_truth: Path | None = None
    seed: int = -1
    device: str | None = None
    executor: ExecutorConfig | None = None  # the database extraction and matching on Ray
    write_report: bool = True

    def __post_init__(self) -> None:
        if self.version not in LAYOUT:
            raise InputError(f"Aachen version {self.version!r}: choose one of "
                             + ", ".join(sorted(LAYOUT)))
        if self.protocol not in ("full", "local"):
            raise InputError(f"protocol {self.protocol!r}: choose full or local")
        if self.retrieval != "exhaustive" and self.retrieval not in RETRIEVAL_METHODS:
            raise InputError(f"retrieval {self.retrieval!r}: choose exhaustive or one of "
                             + ", ".join(RETRIEVAL_METHODS))

    @property
    def method(self) -> str:
        """The method part of the submission file's name."""
        pairs = (Path(self.query_pairs).stem if self.query_pairs else self.retrieval
                 + (str(self.num_loc) if self.retrieval != "exhaustive" else ""))
        return f"{self.features}+{self.matcher}_{pairs}"


def run(dataset: str | Path, outputs: str | Path, config: AachenConfig = AachenConfig()
        ) -> dict:
    """Run the protocol of ``config`` on the dataset; the summary of the localization."""
    dataset, outputs = Path(dataset), Path(outputs)
    if not dataset.is_dir():
        raise InputError(f"dataset folder {dataset} does not exist")
    if not (dataset / IMAGES).is_dir():
        raise InputError(f"{dataset / IMAGES} does not exist: not an Aachen dataset")
    if config.matcher is None:
        config = replace(config, matcher=default_matcher(config.features))
        logger.info("matcher %s (the default of %s)", config.matcher, config.features)
    config = replace(config, seed=resolve_seed(config.seed))
    outputs.mkdir(parents=True, exist_ok=True)
    return (run_local if config.protocol == "local" else run_full)(dataset, outputs, config)


def run_full(dataset: Path, outputs: Path, config: AachenConfig) -> dict:
    """The full protocol: every query against the re-triangulated reference."""
    images = dataset / IMAGES
    check_pairs_file(config.query_pairs)
    check_pairs_file(config.db_pairs)
    reference = load_reference_model(dataset, config.version)
    db_names = registered_names(reference)
    logger.info("reference: %d images, %d points", len(db_names), reference.num_points3D())
    db_features = database_features_step(
        images, db_names, outputs / f"db_features_{config.features}.h5", config.features,
        config.feature_overrides, config.device, executor=config.executor)
    pairs = (read_pairs(config.db_pairs) if config.db_pairs
             else database_pairs(reference, config.num_covis))
    if not pairs:
        raise InputError("no database pairs to triangulate from")
    write_pairs(outputs / "db_pairs.txt", pairs)
    model = triangulate_database(reference, images, db_features, pairs, outputs, "sfm",
                                 config.verification, config)
    queries = read_query_lists(query_lists(dataset))
    return localize_queries(model, db_features, images, queries, outputs,
                            query_pairs_source(config), config.method, config)


def run_local(dataset: Path, outputs: Path, config: AachenConfig) -> dict:
    """The local-feature protocol: shipped pairs and intrinsics, night queries only."""
    layout = LAYOUT[config.version]
    images = dataset / IMAGES
    database, pairs_file = dataset / layout["database"], dataset / layout["pairs"]
    for path in (database, pairs_file):
        if not path.is_file():
            raise InputError(f"--protocol local needs {path} (shipped with the dataset)")
    shipped = shipped_cameras(database)
    reference = with_intrinsics(load_reference(load_reference_model(dataset, config.version)),
                                shipped)
    db_names = registered_names(reference)
    db_pairs, query_pairs, night = split_local_pairs(pairs_file, db_names, shipped, database)
    needed = sorted({n for p in db_pairs for n in p} | set(db_names))
    db_features = database_features_step(
        images, needed, outputs / f"db_features_{config.features}.h5", config.features,
        config.feature_overrides, config.device, strict=False, executor=config.executor)
    model = triangulate_database(reference, images, db_features, db_pairs, outputs,
                                 "sfm_local", "ransac", config)
    queries = QueryList(cameras=night, sources={n: str(database) for n in night})
    pairs_path = outputs / "local_query_pairs.txt"
    write_pairs(pairs_path, query_pairs)
    return localize_queries(model, db_features, images, queries, outputs, pairs_path,
                            f"{config.features}+{config.matcher}_local", config)


def triangulate_database(reference: pycolmap.Reconstruction, images: Path, db_features: Path,
                         pairs: list[Pair], outputs: Path, sfm_name: str, verification: str,
                         config: AachenConfig) -> Path:
    """Match the database pairs and re-triangulate the reference model with them."""
    name = f"{config.features}+{config.matcher}"
    db_matches = database_matching_step(pairs, db_features, outputs / f"db_matches_{name}.h5",
                                        config.matcher, config.matcher_overrides,
                                        config.device, executor=config.executor)
    return triangulation_step(
        reference, images, db_features, db_matches, pairs, outputs / f"{sfm_name}_{name}",
        TriangulationConfig(verification=verification, random_seed=config.seed),
        StepRecord(outputs / "steps.json"))


def query_pairs_source(config: AachenConfig) -> Path | str | RetrievalConfig:
    if config.query_pairs:
        return Path(config.query_pairs)
    if config.retrieval == "exhaustive":
        return "exhaustive"
    return RetrievalConfig(method=config.retrieval, num_neighbors=config.num_loc)


def localize_queries(model: Path, db_features: Path, images: Path, queries: QueryList,
                     outputs: Path, pairs, method: str, config: AachenConfig) -> dict:
    """Localize the queries (in ``outputs/queries``) and write the submission file."""
    query_dir = outputs / "queries"
    poses_name = f"{LAYOUT[config.version]['prefix']}{method}.txt"
    pose = PoseConfig(max_error=config.ransac_max_error, random_seed=config.seed)
    run = run_localization(model, db_features, images, queries, query_dir, pairs=pairs,
                           config=LocalizationRunConfig(
                               features=config.features,
                               feature_overrides=config.feature_overrides,
                               matcher=config.matcher,
                               matcher_overrides=config.matcher_overrides,
                               localization=LocalizationConfig(
                                   pose=pose,
                                   covisibility_clustering=config.covisibility_clustering),
                               poses_name=poses_name, device=config.device, db_images=images),
                           ground_truth=config.ground_truth)
    submission = write_text_atomic(outputs / poses_name, run.poses_path.read_text())
    print(summary_text(run.report.results, submission, evaluation=run.evaluation))
    if config.write_report:
        write_report_after_run(query_dir, outputs / REPORT_NAME, log=run.log_path, model=model)
    return {"submission": str(submission), "log": str(run.log_path), **run.report.summary()}


def with_intrinsics(reference: pycolmap.Reconstruction, shipped: dict[str, pycolmap.Camera]
                    ) -> pycolmap.Reconstruction:
    """``reference`` with the shipped database intrinsics."""
    for image in reference.images.values():
        if image.name in shipped:
            reference.cameras[image.camera_id].params = shipped[image.name].params
    return reference


def split_local_pairs(pairs_file: Path, db_names: list[str],
                      shipped: dict[str, pycolmap.Camera], database: Path
                      ) -> tuple[list[Pair], list[Pair], dict[str, pycolmap.Camera]]:
    """(database pairs, night query pairs, night query cameras) of the shipped pairs."""
    all_pairs = read_pairs(pairs_file)
    if not all_pairs:
        raise InputError(f"pairs file {pairs_file} is empty: it names no image pair")
    db_set = set(db_names)
    db_pairs = [p for p in all_pairs if p[0] in db_set and p[1] in db_set]
    night = {n: c for n, c in shipped.items() if n.startswith("query/night")}
    if not night:
        raise InputError(f"{database} holds no query/night/... image")
    query_pairs = [p for p in all_pairs if (p[0] in night) != (p[1] in night)]
    return db_pairs, query_pairs, night


def load_reference_model(dataset: Path, version: str) -> pycolmap.Reconstruction:
    """The reference poses (with the shipped 3D points, used for covisibility pairs)."""
    layout = LAYOUT[version]
    colmap = dataset / layout["colmap"] if layout["colmap"] else None
    if colmap is not None and (colmap / "images.bin").is_file():
        return read_model(colmap)
    nvm, intrinsics = dataset / layout["nvm"], dataset / layout["intrinsics"]
    if not nvm.is_file():
        raise InputError(f"{dataset} is not an Aachen v{version} dataset: missing {nvm}"
                         + (f" and {colmap}/images.bin" if colmap else ""))
    if not intrinsics.is_file():
        raise InputError(f"missing the database intrinsics {intrinsics}")
    from sfmfeat.reconstruction.nvm import reconstruction_from_nvm

    return reconstruction_from_nvm(nvm, intrinsics, with_points=True)

def query_lists(dataset: Path) -> list[Path]:
    lists = sorted((dataset / "queries").glob("*_time_queries_with_intrinsics.txt"))
    if not lists:
        raise InputError(f"no {dataset}/queries/*_time_queries_with_intrinsics.txt")
    return lists

def database_pairs(reference: pycolmap.Reconstruction, num_covis: int) -> list[Pair]:
    names = sorted(im.name for im in reference.images.values() if im.has_pose)
    if reference.num_points3D() > 0:
        from sfmfeat.localization.covisibility import covisibility_pairs

        return covisibility_pairs(reference, num_covis)
    logger.warning("the reference has no 3D points: exhaustive database pairs")
    return exhaustive(names)

def check_pairs_file(path: Path | None) -> None:
    """Fail before any heavy step when a given pairs file is missing, malformed or empty."""
    if path is not None and not read_pairs(path):
        raise InputError(f"pairs file {path} is empty: it names no image pair")

def shipped_cameras(database: Path) -> dict[str, pycolmap.Camera]:
    """name -> camera of every image in a shipped COLMAP database."""
    with pycolmap.Database.open(database) as db:
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        result = {}
        for image in db.read_all_images():
            camera = cameras[image.camera_id]
            camera.has_prior_focal_length = True
            result[image.name] = camera
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.aachen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("--version", default="1.0", choices=sorted(LAYOUT))
    p.add_argument("--features", default="sift")
    add_conf_argument(p)
    p.add_argument("--matcher", help="matcher preset (default: the extractor's own)")
    add_conf_argument(p, "--matcher-conf", "matcher")
    p.add_argument("--protocol", default="full", choices=("full", "local"))
    p.add_argument("--retrieval", default="vlad",
                   help="exhaustive, or a retrieval method: vlad (no weights), netvlad, ...")
    p.add_argument("--num-covis", type=int, default=20, help="covisibility neighbours")
    p.add_argument("--num-loc", type=int, default=50, help="retrieved images per query")
    p.add_argument("--db-pairs", type=Path, help="database pairs file (instead of covisibility)")
    p.add_argument("--query-pairs", type=Path, help="query pairs file (instead of retrieval)")
    p.add_argument("--verification", default="poses",
                   choices=("poses", "ransac", "poses+ransac", "none"))
    p.add_argument("--ransac-max-error", type=float, default=12.0)
    p.add_argument("--covisibility-clustering", action="store_true")
    p.add_argument("--ground-truth", type=Path, help="reference query poses, if you have any")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--device")
    add_executor_arguments(p)   # the database steps (extraction, matching) on Ray
    p.add_argument("-v", "--verbose", action="store_true")
    add_no_report_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def job() -> int:
        config = AachenConfig(
            version=args.version, protocol=args.protocol, features=args.features,
            feature_overrides=parse_overrides(args.conf), matcher=args.matcher,
            matcher_overrides=parse_overrides(args.matcher_conf), retrieval=args.retrieval,
            num_covis=args.num_covis, num_loc=args.num_loc, db_pairs=args.db_pairs,
            query_pairs=args.query_pairs, verification=args.verification,
            ransac_max_error=args.ransac_max_error,
            covisibility_clustering=args.covisibility_clustering,
            ground_truth=args.ground_truth, seed=args.seed, device=args.device,
            executor=executor_from_args(args), write_report=not args.no_report)
        return 0 if run(args.dataset, args.outputs, config).get("num_localized") else 1

    return run_guarded("pipelines.aachen", job)


if __name__ == "__main__":
    sys.exit(main())
