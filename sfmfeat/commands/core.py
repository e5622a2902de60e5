"""CLI verbs of the reconstruction spine: extract, pairs, match, reconstruct."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import parse_overrides
from ..errors import InputError
from ..images import list_images, read_image_list
from .report import add_no_report_argument

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_extract(subparsers)
    _register_pairs(subparsers)
    _register_match(subparsers)
    _register_reconstruct(subparsers)


def add_conf_argument(parser: argparse.ArgumentParser, flag: str = "--conf",
                      what: str = "extractor") -> None:
    parser.add_argument(flag, action="append", metavar="KEY=VALUE",
                        help=f"override a field of the {what} config (repeatable)")


def add_reproducibility_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=-1,
                        help="random seed of RANSAC and mapping (default: a fresh one, "
                             "recorded in summary.json as 'seed' to replay the run)")
    parser.add_argument("--threads", type=int, default=-1, metavar="N",
                        help="CPU threads of every stage (default -1: all cores)")
    parser.add_argument("--deterministic", action="store_true",
                        help="one thread in COLMAP's verification and mapping, so that a "
                             "rerun with the same --seed gives the identical model")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where to extract/match: this process (default) or Ray workers "
                             "(pip install 'sfmfeat[ray]'); images and outputs must be on a "
                             "file system every node sees")
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="a running Ray cluster (`ray start --head` prints it; default: "
                             "start a local Ray instance)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="Ray workers (default 0: one per CPU, or per GPU on cuda)")


def executor_from_args(args: argparse.Namespace):
    """The ExecutorConfig of --executor (None: in process); fails at once without Ray."""
    from ..executors import ExecutorConfig, import_ray

    if args.executor == "local":
        if args.ray_address or args.workers:
            raise InputError("--ray-address and --workers apply to --executor ray only")
        return None
    config = ExecutorConfig(kind="ray", address=args.ray_address, num_workers=args.workers)
    import_ray()   # before any work
    return config


def _register_extract(subparsers) -> None:
    p = subparsers.add_parser("extract", help="extract local features into an HDF5 file")
    p.add_argument("images", type=Path, help="image folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="features .h5 file")
    p.add_argument("--features", default="sift", help="extractor preset (default: sift)")
    p.add_argument("--image-list", type=Path, help="text file of image names to extract")
    add_conf_argument(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    p.add_argument("--overwrite", action="store_true", help="discard existing results")
    add_format_argument(p)
    add_executor_arguments(p)
    p.set_defaults(func=_run_extract)


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("sfmfeat", "hloc"), default="sfmfeat",
                        help="layout of OUTPUT: ours (default) or hloc's (float32, int32); "
                             "with hloc, our resumable store is kept beside it as "
                             "OUTPUT.sfmfeat.h5")
    parser.add_argument("--half", action="store_true",
                        help="with --format hloc: float16 keypoints, descriptors and scores "
                             "(hloc's as_half)")


def _store_path(args) -> Path:
    """Where the command's own store goes: OUTPUT, or beside it for --format hloc."""
    if args.half and args.format != "hloc":
        raise InputError("--half applies to --format hloc only")
    if args.format == "hloc":
        from ..hloc import detect

        if args.output.is_file() and not detect(args.output) and not args.overwrite:
            raise InputError(f"{args.output} is not an hloc-layout file (an sfmfeat store?): "
                             "--format hloc would replace it; choose another -o or pass "
                             "--overwrite")
        return args.output.with_name(args.output.name + ".sfmfeat.h5")
    return args.output


def _run_extract(args) -> int:
    from ..extract import extract_features

    names = read_image_list(args.image_list) if args.image_list else None
    store = _store_path(args)
    report = extract_features(args.images, store, args.features, image_names=names,
                              overrides=parse_overrides(args.conf), device=args.device,
                              strict=args.strict, overwrite=args.overwrite,
                              executor=executor_from_args(args))
    _log_rejected(report.rejected)
    if args.format == "hloc":
        from ..hloc import export_features
        from ..store import FeatureReader

        with FeatureReader(store) as reader:
            export_features(reader, args.output, report.valid_names, half=args.half)
    logger.info("%d extracted, %d already done, %d rejected in %.1f s -> %s",
                len(report.extracted), len(report.already_done), len(report.rejected),
                report.seconds, args.output)
    return 0


def _log_rejected(rejected: dict[str, str]) -> None:
    for name, reason in rejected.items():
        logger.warning("rejected %s: %s", name, reason)


def _register_pairs(subparsers) -> None:
    p = subparsers.add_parser("pairs", help="write a list of image pairs to match")
    kinds = p.add_subparsers(dest="pairs_kind", metavar="KIND", required=True)
    for kind, text in (("exhaustive", "all pairs"), ("sequential", "ordered frames"),
                       ("file", "normalise an existing pairs file")):
        k = kinds.add_parser(kind, help=text)
        if kind == "file":
            k.add_argument("input", type=Path, help="pairs file to read")
        else:
            source = k.add_mutually_exclusive_group(required=True)
            source.add_argument("--images", type=Path, help="image folder")
            source.add_argument("--image-list", type=Path, help="text file of image names")
            if kind == "exhaustive":
                k.add_argument("--reference-list", type=Path,
                               help="pair each image only with these names")
            else:
                k.add_argument("--window", type=int, default=10)
                k.add_argument("--no-quadratic", action="store_true",
                               help="no 2^k links beyond the window")
                k.add_argument("--loop-closure-every", type=int, default=0, metavar="N",
                               help="pair every N-th frame with every N-th frame")
        k.add_argument("-o", "--output", type=Path, required=True)
        k.set_defaults(func=_run_pairs)
    from .retrieval import register_pair_kinds  # the retrieval and covisibility kinds

    register_pair_kinds(kinds)


def _run_pairs(args) -> int:
    from .. import pairs as pairs_lib

    if args.pairs_kind == "file":
        pairs = pairs_lib.read_pairs(args.input)
    else:
        names = (read_image_list(args.image_list) if args.image_list
                 else list_images(args.images))
        if args.pairs_kind == "exhaustive":
            reference = read_image_list(args.reference_list) if args.reference_list else None
            pairs = pairs_lib.exhaustive(names, reference)
        else:
            pairs = pairs_lib.sequential(names, args.window, not args.no_quadratic,
                                         args.loop_closure_every)
    if not pairs:
        raise InputError("no pairs: need at least two images")
    pairs_lib.write_pairs(args.output, pairs)
    logger.info("%d pairs -> %s", len(pairs), args.output)
    return 0


def _register_match(subparsers) -> None:
    p = subparsers.add_parser("match", help="match the features of image pairs")
    p.add_argument("--pairs", type=Path, required=True, help="pairs file")
    p.add_argument("--features", type=Path, required=True, help="features .h5 file")
    p.add_argument("--reference-features", type=Path,
                   help="second features file for the right-hand images (e.g. database)")
    p.add_argument("-o", "--output", type=Path, required=True, help="matches .h5 file")
    p.add_argument("--matcher", default="mnn-ratio", help="matcher preset (default mnn-ratio)")
    add_conf_argument(p, what="matcher")
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")
    add_format_argument(p)
    p.add_argument("--int16", action="store_true",
                   help="with --format hloc: int16 matches0 (refused past index 32767)")
    add_executor_arguments(p)
    p.set_defaults(func=_run_match)


def _run_match(args) -> int:
    from ..match import match_pairs
    from ..pairs import read_pairs

    pairs = read_pairs(args.pairs)
    if not pairs:
        raise InputError(f"pairs file {args.pairs} is empty")
    if args.int16 and args.format != "hloc":
        raise InputError("--int16 applies to --format hloc only")
    store = _store_path(args)
    report = match_pairs(pairs, args.features, store, args.matcher,
                         overrides=parse_overrides(args.conf),
                         reference_features=args.reference_features, device=args.device,
                         overwrite=args.overwrite, executor=executor_from_args(args))
    if args.format == "hloc":
        from ..hloc import export_matches
        from ..store import FeatureReader, MatchReader

        readers = [FeatureReader(p) for p in (args.features, args.reference_features) if p]
        try:
            with MatchReader(store) as matches:
                export_matches(matches, readers, args.output, pairs, int16=args.int16,
                               half=args.half)
        finally:
            for reader in readers:
                reader.close()
    logger.info("%d pairs matched, %d already done in %.1f s -> %s", report.matched,
                report.already_done, report.seconds, args.output)
    return 0


def _register_reconstruct(subparsers) -> None:
    from ..reconstruction.database import CameraMode
    from ..reconstruction.mapping import MAPPERS

    p = subparsers.add_parser("reconstruct", help="photos -> COLMAP model, end to end")
    p.add_argument("images", type=Path, help="image folder")
    p.add_argument("output", type=Path, help="output folder")
    p.add_argument("--features", default="sift")
    p.add_argument("--matcher", default=None,
                   help="matcher preset (default: the extractor's own, e.g. mnn-ratio for "
                        "sift, mnn for d2net and r2d2)")
    p.add_argument("--pairs", default="exhaustive",
                   help="exhaustive, sequential or a pairs file (default exhaustive)")
    p.add_argument("--window", type=int, default=10, help="window of sequential pairs")
    p.add_argument("--image-list", type=Path, help="reconstruct only these images")
    p.add_argument("--camera-mode", default="auto", choices=[m.value for m in CameraMode])
    p.add_argument("--camera-model", default="SIMPLE_RADIAL")
    p.add_argument("--mapper", default="incremental", choices=MAPPERS)
    add_conf_argument(p)
    add_conf_argument(p, "--matcher-conf", "matcher")
    p.add_argument("--mapper-conf", action="append", metavar="KEY=VALUE",
                   help="set an option of pycolmap's mapper (IncrementalPipelineOptions, or "
                        "GlobalPipelineOptions with --mapper global; nested ones dotted: "
                        "mapper.filter_max_reproj_error=2; repeatable)")
    add_reproducibility_arguments(p)
    p.add_argument("--device")
    p.add_argument("--strict", action="store_true", help="fail on any unreadable image")
    p.add_argument("--dense", action="store_true",
                   help="also run dense MVS into OUTPUT/dense (fused.ply, meshed-poisson.ply)")
    p.add_argument("--dense-max-image-size", type=int, default=1000)
    add_no_report_argument(p)
    p.add_argument("--features-file", type=Path,
                   help="build from this features .h5 (ours or hloc's) instead of extracting; "
                        "--features then only picks the default matcher")
    p.add_argument("--matches-file", type=Path,
                   help="and from these matches (ours or hloc's; needs --features-file) "
                        "instead of matching: the pairs it holds are used")
    add_executor_arguments(p)
    p.set_defaults(func=_run_reconstruct)


def _run_reconstruct(args) -> int:
    from ..reconstruction.pipeline import GivenStores, ReconstructionConfig, reconstruct

    pairs = args.pairs
    if pairs not in ("exhaustive", "sequential"):
        pairs = str(Path(pairs).resolve())
    config = ReconstructionConfig(
        features=args.features, matcher=args.matcher, pairs=pairs,
        sequential_window=args.window, camera_mode=args.camera_mode,
        camera_model=args.camera_model, mapper=args.mapper, random_seed=args.seed,
        num_threads=args.threads, deterministic=args.deterministic, strict=args.strict,
        dense=args.dense, dense_max_image_size=args.dense_max_image_size,
        feature_options=tuple(sorted(parse_overrides(args.conf).items())),
        matcher_options=tuple(sorted(parse_overrides(args.matcher_conf).items())),
        mapper_options=tuple(sorted(parse_overrides(args.mapper_conf).items())))
    names = read_image_list(args.image_list) if args.image_list else None
    stores = GivenStores(features=args.features_file, matches=args.matches_file)
    result = reconstruct(args.images, args.output, config, image_names=names,
                         device=args.device, stores=stores,
                         executor=executor_from_args(args))
    _log_rejected(result.rejected)
    s = result.summary
    logger.info("registered %d/%d images, %d points, mean track length %.2f, mean "
                "reprojection error %.3f px; model in %s", s["num_registered"],
                s["num_images"], s["num_points3D"], s["mean_track_length"],
                s["mean_reprojection_error"], args.output / "sfm")
    if not args.no_report:
        from ..report import write_report_after_run

        write_report_after_run(args.output)
    return 0
