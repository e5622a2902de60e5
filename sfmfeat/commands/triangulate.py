"""``sfmfeat triangulate``: re-triangulate a reference model's known poses with new features."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..runtime import resolve_seed

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..reconstruction.triangulation import VERIFICATIONS

    p = subparsers.add_parser(
        "triangulate", help="triangulate known poses (COLMAP or NVM model) with our features",
        description="Keeps the reference cameras and poses fixed and triangulates 3D points "
                    "from FEATURES/MATCHES. Matches are verified with the known epipolar "
                    "geometry (--verification poses) and/or COLMAP's RANSAC. FEATURES must "
                    "record the extractor that made it (as `sfmfeat extract`/`reconstruct` "
                    "write it), so that queries can later be localized against the model "
                    "with the same extractor.")
    p.add_argument("reference", type=Path, help="COLMAP model folder or .nvm file")
    p.add_argument("output", type=Path, help="output model folder")
    p.add_argument("--intrinsics", type=Path,
                   help="'name MODEL w h params...' per image (required for .nvm)")
    p.add_argument("--features", type=Path, required=True, help="features .h5")
    p.add_argument("--matches", type=Path, required=True, help="matches .h5")
    p.add_argument("--pairs", type=Path, required=True, help="pairs file")
    p.add_argument("--images", type=Path, help="image folder (for point colours)")
    p.add_argument("--verification", default="poses", choices=VERIFICATIONS)
    p.add_argument("--max-epipolar-error", type=float, default=4.0)
    p.add_argument("--min-matches", type=int, default=15)
    p.add_argument("--seed", type=int, default=-1)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..extract import spec_of_store
    from ..pairs import read_pairs
    from ..reconstruction.triangulation import TriangulationConfig, triangulate_model

    pairs = read_pairs(args.pairs)
    if not pairs:
        raise InputError(f"pairs file {args.pairs} is empty: it names no image pair")
    # the model is only as reusable as its features: localize rebuilds their extractor
    spec = spec_of_store(args.features)
    config = TriangulationConfig(verification=args.verification,
                                 max_epipolar_error=args.max_epipolar_error,
                                 min_num_matches=args.min_matches,
                                 random_seed=resolve_seed(args.seed),
                                 extract_colors=args.images is not None)
    report = triangulate_model(args.reference, args.output, args.features, args.matches,
                               pairs, image_dir=args.images, intrinsics=args.intrinsics,
                               config=config)
    summary = report.summary()
    summary["features"] = {"preset": spec.name, "overrides": spec.overrides,
                           "config_hash": spec.config_hash()}
    (args.output / "triangulation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['num_points3D']} points, mean track {summary['mean_track_length']:.2f}, "
          f"{summary['num_verified_pairs']}/{summary['num_pairs']} pairs verified, "
          f"{100 * summary['inlier_ratio']:.1f}% of matches kept -> {args.output}")
    return 0
