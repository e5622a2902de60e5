"""``sfmfeat localize``: query photos against an SfM model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import parse_overrides
from ..errors import InputError
from ..runtime import resolve_seed
from .report import add_no_report_argument

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "localize", help="localize query images against an SfM model",
        description="Localize query images against a model (a COLMAP model folder or the "
                    "output folder of `sfmfeat reconstruct`). Writes OUTPUT/poses.txt "
                    "(name qw qx qy qz tx ty tz, world-to-camera) and a per-query log.")
    p.add_argument("model", type=Path, help="model folder (or `sfmfeat reconstruct` output)")
    p.add_argument("queries", type=Path, help="folder of query images")
    p.add_argument("output", type=Path, help="output folder")
    intr = p.add_mutually_exclusive_group()
    intr.add_argument("--query-list", type=Path, action="append",
                      help="'name MODEL w h params...' per line (repeatable)")
    intr.add_argument("--exif", action="store_true",
                      help="intrinsics from EXIF (default when no --query-list): every "
                           "image of the query folder is a query")
    p.add_argument("--db-features", type=Path,
                   help="features.h5 of the model's images (default: MODEL/features.h5 or "
                        "MODEL/../features.h5)")
    p.add_argument("--pairs", default="exhaustive",
                   help="'exhaustive' (every model image), a pairs file, "
                        "'retrieval:vlad:K' (VLAD over the local features, top K) or "
                        "'retrieval:netvlad:K' (official NetVLAD weights; needs --db-images)")
    p.add_argument("--db-images", type=Path,
                   help="folder of the model's images (for retrieval:netvlad)")
    p.add_argument("--features", help="extractor preset for the queries (default: the one "
                                      "of --db-features)")
    p.add_argument("--query-features", type=Path,
                   help="query features made elsewhere (ours or hloc's) instead of extracting")
    p.add_argument("--query-matches", type=Path,
                   help="and their matches to the database images (ours or hloc's; needs "
                        "--query-features) instead of matching")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="extractor config override (repeatable)")
    p.add_argument("--matcher", help="matcher preset (default: the one the model was built "
                                      "with, from MODEL's matches.h5 or summary.json, else "
                                      "the extractor's default)")
    p.add_argument("--matcher-conf", action="append", metavar="KEY=VALUE")
    p.add_argument("--ransac-max-error", type=float, default=12.0, help="PnP threshold (px)")
    p.add_argument("--min-inliers", type=int, default=12)
    p.add_argument("--covisibility-clustering", action="store_true")
    p.add_argument("--refine-focal-length", action="store_true")
    p.add_argument("--ground-truth", type=Path,
                   help="reference poses (pose file or COLMAP model): print and save recall "
                        "at (0.25m,2°)/(0.5m,5°)/(5m,10°) and median errors")
    p.add_argument("--prepend-camera-name", action="store_true",
                   help="write 'camera/name' instead of the basename")
    p.add_argument("--seed", type=int, default=-1, help="RANSAC seed (default: a fresh one, logged)")
    p.add_argument("--device")
    add_no_report_argument(p)
    p.set_defaults(func=run)


def _db_features(args) -> Path:
    if args.db_features:
        return args.db_features
    for candidate in (args.model / "features.h5", args.model.parent / "features.h5"):
        if candidate.is_file():
            return candidate
    raise InputError(f"no features.h5 beside {args.model}; pass --db-features (the features "
                     "the model was built from)")


def run(args) -> int:
    from ..images import list_images
    from ..localization.pose import PoseConfig
    from ..localization.queries import queries_from_exif, read_query_lists
    from ..localization.results import format_recall
    from ..localization.run import run_localization
    from ..localization.model_localization import LocalizationConfig

    if not args.model.is_dir():
        raise InputError(f"model folder {args.model} does not exist")
    if args.query_list:
        queries = read_query_lists(args.query_list)
    else:
        queries = queries_from_exif(args.queries, list_images(args.queries))
    pairs = args.pairs
    db_features = _db_features(args)
    if pairs.startswith("retrieval:"):
        pairs = _retrieval(pairs, db_features, args)
    config = LocalizationConfig(
        pose=PoseConfig(max_error=args.ransac_max_error, min_num_inliers=args.min_inliers,
                        refine_focal_length=args.refine_focal_length,
                        random_seed=resolve_seed(args.seed)),
        covisibility_clustering=args.covisibility_clustering)
    result = run_localization(
        args.model, db_features, args.queries, queries, args.output, pairs=pairs,
        features=args.features, feature_overrides=parse_overrides(args.conf),
        matcher=args.matcher, matcher_overrides=parse_overrides(args.matcher_conf),
        config=config, ground_truth=args.ground_truth,
        prepend_camera_name=args.prepend_camera_name, device=args.device,
        query_features=args.query_features, query_matches=args.query_matches)
    report = result.report
    summary = report.summary()
    print(f"localized {summary['num_localized']} of {summary['num_queries']} queries "
          f"-> {result.poses_path} (log: {result.log_path})")
    for name, reason in report.failures.items():  # most reasons already name the query
        print(f"  not localized: {reason if name in reason else f'{name}: {reason}'}")
    timing = summary["mean_seconds_per_query"]
    print("mean seconds per query: " + ", ".join(f"{k} {v:.3f}" for k, v in timing.items()))
    if result.evaluation is not None:
        print(format_recall(result.evaluation))
    if not args.no_report:
        from ..report import write_report_after_run

        write_report_after_run(args.output, log=result.log_path)
    return 0 if summary["num_localized"] else 1


def _retrieval(spec: str, db_features: Path, args):
    """``retrieval:vlad:K`` (codebook learned on the database features, no weights) or
    ``retrieval:netvlad:K`` (official weights; database images in --db-images)."""
    from ..localization.run import netvlad_retrieval, vlad_retrieval
    from ..store import FeatureReader

    parts = spec.split(":")
    if len(parts) != 3 or parts[1] not in ("vlad", "netvlad") or not parts[2].isdigit():
        raise InputError(f"--pairs {spec!r}: expected retrieval:vlad:K or retrieval:netvlad:K")
    if parts[1] == "vlad":
        return vlad_retrieval(db_features, args.output, int(parts[2]))
    if args.db_images is None:
        raise InputError("--pairs retrieval:netvlad:K needs --db-images (the model's images)")
    with FeatureReader(db_features) as reader:
        db_names = reader.names()
    return netvlad_retrieval(args.db_images, db_names, args.output, int(parts[2]),
                             args.device, query_image_dir=args.queries)
