"""``sfmfeat localize``: query photos against an SfM model."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import parse_overrides
from ..errors import InputError
from ..runtime import resolve_seed
from .core import add_conf_argument
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
    add_localize_arguments(p)
    p.set_defaults(func=run)


def add_localize_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sfmfeat localize``, shared with ``pipelines.localize``."""
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
    add_conf_argument(p)
    p.add_argument("--matcher", help="matcher preset (default: the one the model was built "
                                      "with, from MODEL's matches.h5 or summary.json, else "
                                      "the extractor's default)")
    add_conf_argument(p, "--matcher-conf", "matcher")
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


def _db_features(model: Path, given: Path | None) -> Path:
    if not model.is_dir():
        raise InputError(f"model folder {model} does not exist")
    if given:
        return given
    for candidate in (model / "features.h5", model.parent / "features.h5"):
        if candidate.is_file():
            return candidate
    raise InputError(f"no features.h5 beside {model}; pass --db-features (the features "
                     "the model was built from)")


def run(args) -> int:
    report = localize_photos(photo_queries(args.model, args.queries, args), args.output,
                             run_config(args), pairs_source(args.pairs),
                             write_report=not args.no_report)
    return 0 if report.poses else 1


@dataclass(frozen=True)
class PhotoQueries:
    """Query photos and the model to localize them against (``sfmfeat localize``)."""

    model: Path                          # model folder or `sfmfeat reconstruct` output
    queries: Path                        # folder of query images
    query_lists: tuple[Path, ...] = ()   # intrinsics files (default: EXIF)
    db_features: Path | None = None      # default: MODEL/features.h5 or MODEL/../features.h5
    query_features: Path | None = None   # made elsewhere, instead of extracting
    query_matches: Path | None = None    # and their matches, instead of matching
    ground_truth: Path | None = None


def photo_queries(model: Path, queries: Path, args) -> PhotoQueries:
    """The PhotoQueries of parsed ``add_localize_arguments`` options."""
    return PhotoQueries(model, queries, tuple(args.query_list or ()), args.db_features,
                        args.query_features, args.query_matches, args.ground_truth)


def localize_photos(dataset: PhotoQueries, output: Path, config, pairs="exhaustive",
                    write_report: bool = True):
    """Localize the photos (the verb and ``pipelines.localize``); prints the summary and
    writes the report page; the localization report."""
    from ..localization.results import summary_text
    from ..localization.run import run_localization

    result = run_localization(
        dataset.model, _db_features(dataset.model, dataset.db_features), dataset.queries,
        query_list(dataset.queries, list(dataset.query_lists)), output, pairs=pairs,
        config=config, ground_truth=dataset.ground_truth,
        query_features=dataset.query_features, query_matches=dataset.query_matches)
    print(summary_text(result.report.results, result.poses_path, result.log_path,
                       result.evaluation))
    if write_report:
        from ..report import write_report_after_run

        write_report_after_run(output, log=result.log_path)
    return result.report


def query_list(queries_dir: Path, lists: list[Path] | None):
    """The queries and their intrinsics: from query-list files, else every image of the
    folder with intrinsics from its EXIF."""
    from ..images import list_images
    from ..localization.queries import queries_from_exif, read_query_lists

    if lists:
        return read_query_lists(lists)
    return queries_from_exif(queries_dir, list_images(queries_dir))


def run_config(args):
    """The run config of the localization options (shared with ``pipelines.localize``)."""
    from ..localization.model_localization import LocalizationConfig
    from ..localization.pose import PoseConfig
    from ..localization.run import LocalizationRunConfig

    pose = PoseConfig(max_error=args.ransac_max_error, min_num_inliers=args.min_inliers,
                      refine_focal_length=args.refine_focal_length,
                      random_seed=resolve_seed(args.seed))
    return LocalizationRunConfig(
        features=args.features, feature_overrides=parse_overrides(args.conf),
        matcher=args.matcher, matcher_overrides=parse_overrides(args.matcher_conf),
        localization=LocalizationConfig(pose=pose,
                                        covisibility_clustering=args.covisibility_clustering),
        prepend_camera_name=args.prepend_camera_name, device=args.device,
        db_images=args.db_images)


def pairs_source(spec: str):
    """``exhaustive``, a pairs file, or ``retrieval:METHOD:K`` (any registered retrieval
    method: vlad over the local features, netvlad on --db-images and the queries, ...)."""
    from ..localization.retrieval import RetrievalConfig

    if not spec.startswith("retrieval:"):
        return spec
    parts = spec.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise InputError(f"--pairs {spec!r}: expected retrieval:METHOD:K, e.g. "
                         "retrieval:vlad:20 or retrieval:netvlad:20")
    return RetrievalConfig(method=parts[1], num_neighbors=int(parts[2]))
