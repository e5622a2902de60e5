"""``sfmfeat export hloc``: our features, matches or global descriptors in hloc's layout."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write our stores in another tool's layout")
    formats = p.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    k = formats.add_parser(
        "hloc", help="hloc's HDF5 layout (features, matches or global descriptors)",
        description="Writes INPUT (a features, matches or global-descriptor file, of kind "
                    "detected from the file) in the layout hloc's reconstruction, "
                    "triangulation, localize_sfm and pairs_from_retrieval read.")
    k.add_argument("input", type=Path, help="features, matches or global-descriptor .h5")
    k.add_argument("-o", "--output", type=Path, required=True, help="hloc .h5 to write")
    k.add_argument("--features", type=Path, action="append",
                   help="the features the matches were made from (matches only: hloc's "
                        "matches0 has one entry per keypoint); repeat for query and "
                        "database features")
    k.add_argument("--pairs", type=Path, help="export only these pairs (matches only)")
    k.add_argument("--half", action="store_true",
                   help="float16 keypoints, descriptors and scores (hloc's as_half default); "
                        "default float32")
    k.add_argument("--int16", action="store_true",
                   help="int16 matches0 (hloc's own dtype; refused when a keypoint index "
                        "exceeds 32767); default int32")
    k.set_defaults(func=run_hloc)


def run_hloc(args) -> int:
    from .. import hloc
    from ..store import FeatureReader, MatchReader

    if args.output.resolve() == args.input.resolve():
        raise InputError(f"{args.output} is the input file; give another output path")
    kind, _ = hloc.file_kind(args.input)
    if kind != "matches" and (args.features or args.pairs or args.int16):
        raise InputError(f"{args.input} holds {kind.replace('_', ' ')}: --features, --pairs "
                         "and --int16 apply to matches only")
    if kind == "features":
        with FeatureReader(args.input) as reader:
            count = hloc.export_features(reader, args.output, half=args.half)
        logger.info("%d images -> %s", count, args.output)
    elif kind == "matches":
        if args.features is None:
            raise InputError(f"{args.input} holds matches: pass --features (the features "
                             "they were made from) to export them")
        from ..pairs import read_pairs

        pairs = read_pairs(args.pairs) if args.pairs else None
        readers = [FeatureReader(path) for path in args.features]
        try:
            with MatchReader(args.input) as matches:
                count = hloc.export_matches(matches, readers, args.output, pairs,
                                            int16=args.int16, half=args.half)
        finally:
            for reader in readers:
                reader.close()
        logger.info("%d pairs -> %s", count, args.output)
    else:
        from ..localization.retrieval import GlobalDescriptorReader

        with GlobalDescriptorReader(args.input) as reader:
            count = hloc.export_global_descriptors(reader, args.output, half=args.half)
        logger.info("%d global descriptors -> %s", count, args.output)
    return 0
