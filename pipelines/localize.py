"""Localize your own query photos against a model made by ``sfmfeat reconstruct``.

    python -m pipelines.localize --model RECONSTRUCTION_DIR --queries QUERY_DIR
        --outputs DIR [--query-list FILE] [--pairs exhaustive|FILE|retrieval:vlad:K]
        [--ground-truth POSES_OR_MODEL] [--matcher PRESET] [--covisibility-clustering]

``RECONSTRUCTION_DIR`` is the output folder of ``sfmfeat reconstruct`` (``sfm/`` model and
``features.h5``); the queries are extracted with the same extractor and config. Without
``--query-list`` every image of ``QUERY_DIR`` is a query with intrinsics from its EXIF
(focal length estimated in PnP when the file has none). Writes ``DIR/poses.txt``
(``name qw qx qy qz tx ty tz``, world-to-camera), ``DIR/poses_log.json`` (per query:
status, inliers, matched database images, timings) and, with ``--ground-truth``,
``DIR/poses_eval.json``. Same as ``sfmfeat localize``; this file only orders the steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sfmfeat import cli
from sfmfeat.commands.report import add_no_report_argument


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.localize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="`sfmfeat reconstruct` output folder (or a model folder)")
    p.add_argument("--queries", type=Path, required=True, help="folder of query photos")
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("--query-list", type=Path, action="append",
                   help="'name MODEL w h params...' per line (default: EXIF)")
    p.add_argument("--db-features", type=Path)
    p.add_argument("--pairs", default="exhaustive")
    p.add_argument("--matcher", help="default: the matcher the model was built with")
    p.add_argument("--ground-truth", type=Path)
    p.add_argument("--covisibility-clustering", action="store_true")
    p.add_argument("--seed", type=int, default=-1)
    add_no_report_argument(p)
    args = p.parse_args(argv)
    command = ["localize", str(args.model), str(args.queries), str(args.outputs),
               "--pairs", args.pairs, "--seed", str(args.seed)]
    if args.matcher:
        command += ["--matcher", args.matcher]
    for path in args.query_list or []:
        command += ["--query-list", str(path)]
    if args.db_features:
        command += ["--db-features", str(args.db_features)]
    if args.ground_truth:
        command += ["--ground-truth", str(args.ground_truth)]
    if args.covisibility_clustering:
        command.append("--covisibility-clustering")
    if args.no_report:
        command.append("--no-report")
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
