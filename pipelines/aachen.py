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
Local-feature protocol: the shipped pair list and database intrinsics, triangulation with
fixed poses and COLMAP's RANSAC verification, registration of the night queries only.
The algorithms live in ``sfmfeat``; this file is the layout and the order of the steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pycolmap

from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.report import add_no_report_argument
from sfmfeat.config import parse_overrides
from sfmfeat.errors import InputError
from sfmfeat.extract import extract_features
from sfmfeat.localization.pose import PoseConfig
from sfmfeat.localization.queries import QueryList, read_query_lists
from sfmfeat.localization.results import format_recall
from sfmfeat.localization.run import netvlad_retrieval, run_localization, vlad_retrieval
from sfmfeat.localization.model_localization import LocalizationConfig
from sfmfeat.extractors import default_matcher
from sfmfeat.match import match_pairs
from sfmfeat.pairs import Pair, exhaustive, read_pairs, write_pairs
from sfmfeat.report import REPORT_NAME, write_report_after_run
from sfmfeat.reconstruction.triangulation import (TriangulationConfig, load_reference,
                                                  read_model, triangulate_model)
from sfmfeat.runtime import resolve_seed

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


def method_name(args) -> str:
    retrieval = (Path(args.query_pairs).stem if args.query_pairs
                 else f"{args.retrieval}{args.num_loc if args.retrieval != 'exhaustive' else ''}")
    return f"{args.features}+{args.matcher}_{retrieval}"


def check_pairs_file(path: Path | None) -> None:
    """Fail before any heavy step when a given pairs file is missing, malformed or empty."""
    if path is not None and not read_pairs(path):
        raise InputError(f"pairs file {path} is empty: it names no image pair")


def triangulate_database(args, reference, images: Path, db_features: Path, pairs: list,
                         outputs: Path, sfm_name: str, verification: str):
    """Match the database pairs and re-triangulate the reference model with them."""
    db_matches = outputs / f"db_matches_{args.features}+{args.matcher}.h5"
    match_pairs(pairs, db_features, db_matches, args.matcher,
                overrides=parse_overrides(args.matcher_conf), device=args.device)
    triangulation = triangulate_model(
        reference, outputs / f"{sfm_name}_{args.features}+{args.matcher}", db_features,
        db_matches, pairs, image_dir=images,
        config=TriangulationConfig(verification=verification, random_seed=args.seed))
    logger.info("triangulation: %s", triangulation.summary())
    return triangulation


def run_full(args, dataset: Path, outputs: Path) -> dict:
    images = dataset / IMAGES
    layout = LAYOUT[args.version]
    check_pairs_file(args.query_pairs)
    check_pairs_file(args.db_pairs)
    reference = load_reference_model(dataset, args.version)
    db_names = sorted(im.name for im in reference.images.values() if im.has_pose)
    logger.info("reference: %d images, %d points", len(db_names), reference.num_points3D())
    feature_overrides = parse_overrides(args.conf)
    db_features = outputs / f"db_features_{args.features}.h5"
    extraction = extract_features(images, db_features, args.features, image_names=db_names,
                                  overrides=feature_overrides, device=args.device)
    if extraction.rejected:
        raise InputError(f"{len(extraction.rejected)} database image(s) unreadable, e.g. "
                         + "; ".join(list(extraction.rejected.values())[:3]))
    pairs = (read_pairs(args.db_pairs) if args.db_pairs
             else database_pairs(reference, args.num_covis))
    if not pairs:
        raise InputError("no database pairs to triangulate from")
    write_pairs(outputs / "db_pairs.txt", pairs)
    triangulation = triangulate_database(args, reference, images, db_features, pairs,
                                         outputs, "sfm", args.verification)
    queries = read_query_lists(query_lists(dataset))
    method = method_name(args)
    return localize_queries(args, triangulation, db_features, images, queries,
                            outputs, f"{layout['prefix']}{method}.txt", db_names)


def localize_queries(args, triangulation, db_features: Path, images: Path,
                     queries: QueryList, outputs: Path, poses_name: str,
                     db_names: list[str]) -> dict:
    query_dir = outputs / "queries"
    if args.query_pairs:
        pairs = Path(args.query_pairs)
    elif args.retrieval == "exhaustive":
        pairs = "exhaustive"
    elif args.retrieval == "netvlad":
        pairs = netvlad_retrieval(images, db_names, query_dir, args.num_loc, args.device)
    else:
        pairs = vlad_retrieval(db_features, query_dir, args.num_loc, db_names)
    config = LocalizationConfig(
        pose=PoseConfig(max_error=args.ransac_max_error, random_seed=args.seed),
        covisibility_clustering=args.covisibility_clustering)
    run = run_localization(triangulation.reconstruction, db_features, images, queries, query_dir, pairs=pairs,
                           features=args.features, feature_overrides=parse_overrides(args.conf),
                           matcher=args.matcher,
                           matcher_overrides=parse_overrides(args.matcher_conf),
                           config=config, ground_truth=args.ground_truth,
                           poses_name=poses_name, device=args.device)
    submission = outputs / poses_name
    submission.write_bytes(run.poses_path.read_bytes())
    summary = run.report.summary()
    print(f"localized {summary['num_localized']} of {summary['num_queries']} queries -> "
          f"{submission}")
    for name, reason in run.report.failures.items():
        print(f"  not localized: {name}: {reason}")
    print("mean seconds per query: " + ", ".join(
        f"{k} {v:.3f}" for k, v in summary["mean_seconds_per_query"].items()))
    if run.evaluation is not None:
        print(format_recall(run.evaluation))
    if not args.no_report:
        write_report_after_run(query_dir, outputs / REPORT_NAME, log=run.log_path,
                               model=triangulation.database_path.parent)
    return {"submission": str(submission), "log": str(run.log_path), **summary}


def run_local(args, dataset: Path, outputs: Path) -> dict:
    """The local-feature protocol: shipped pairs and intrinsics, night queries only."""
    layout = LAYOUT[args.version]
    images = dataset / IMAGES
    database, pairs_file = dataset / layout["database"], dataset / layout["pairs"]
    for path in (database, pairs_file):
        if not path.is_file():
            raise InputError(f"--protocol local needs {path} (shipped with the dataset)")
    shipped = shipped_cameras(database)
    reference = load_reference(load_reference_model(dataset, args.version))
    for image in reference.images.values():  # use the shipped database intrinsics
        if image.name in shipped:
            camera = shipped[image.name]
            reference.cameras[image.camera_id].params = camera.params
    db_names = sorted(im.name for im in reference.images.values() if im.has_pose)
    all_pairs = read_pairs(pairs_file)
    if not all_pairs:
        raise InputError(f"pairs file {pairs_file} is empty: it names no image pair")
    db_set = set(db_names)
    db_pairs = [p for p in all_pairs if p[0] in db_set and p[1] in db_set]
    night = {n: c for n, c in shipped.items() if n.startswith("query/night")}
    if not night:
        raise InputError(f"{database} holds no query/night/... image")
    query_pairs = [p for p in all_pairs if (p[0] in night) != (p[1] in night)]
    feature_overrides = parse_overrides(args.conf)
    db_features = outputs / f"db_features_{args.features}.h5"
    needed = sorted({n for p in db_pairs for n in p} | set(db_names))
    extract_features(images, db_features, args.features, image_names=needed,
                     overrides=feature_overrides, device=args.device)
    triangulation = triangulate_database(args, reference, images, db_features, db_pairs,
                                         outputs, "sfm_local", "ransac")
    queries = QueryList(cameras=night, sources={n: str(database) for n in night})
    pairs_path = outputs / "local_query_pairs.txt"
    write_pairs(pairs_path, query_pairs)
    args.query_pairs = str(pairs_path)
    method = f"{args.features}+{args.matcher}_local"
    return localize_queries(args, triangulation, db_features, images, queries,
                            outputs, f"{layout['prefix']}{method}.txt", db_names)


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
    p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="extractor config override (repeatable)")
    p.add_argument("--matcher", help="matcher preset (default: the extractor's own)")
    p.add_argument("--matcher-conf", action="append", metavar="KEY=VALUE")
    p.add_argument("--protocol", default="full", choices=("full", "local"))
    p.add_argument("--retrieval", default="vlad", choices=("vlad", "netvlad", "exhaustive"))
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
    p.add_argument("-v", "--verbose", action="store_true")
    add_no_report_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_guarded("pipelines.aachen", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    dataset, outputs = args.dataset, args.outputs
    if args.matcher is None:
        args.matcher = default_matcher(args.features)
        logger.info("matcher %s (the default of %s)", args.matcher, args.features)
    if not dataset.is_dir():
        raise InputError(f"dataset folder {dataset} does not exist")
    if not (dataset / IMAGES).is_dir():
        raise InputError(f"{dataset / IMAGES} does not exist: not an Aachen dataset")
    outputs.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(**{**vars(args), "seed": resolve_seed(args.seed)})
    summary = (run_local if args.protocol == "local" else run_full)(args, dataset, outputs)
    return 0 if summary.get("num_localized") else 1


if __name__ == "__main__":
    sys.exit(main())
