"""Localize your own query photos against a model made by ``sfmfeat reconstruct``.

    python -m pipelines.localize --model RECONSTRUCTION_DIR --queries QUERY_DIR
        --outputs DIR [--query-list FILE] [--pairs exhaustive|FILE|retrieval:vlad:K]
        [--ground-truth POSES_OR_MODEL] [--matcher PRESET] [--matcher-conf KEY=VALUE]
        [--conf KEY=VALUE] [--covisibility-clustering] ... (every option of
        ``sfmfeat localize``)

``RECONSTRUCTION_DIR`` is the output folder of ``sfmfeat reconstruct`` (``sfm/`` model and
``features.h5``); the queries are extracted with the same extractor and config. Without
``--query-list`` every image of ``QUERY_DIR`` is a query with intrinsics from its EXIF
(focal length estimated in PnP when the file has none). Writes ``DIR/poses.txt``
(``name qw qx qy qz tx ty tz``, world-to-camera), ``DIR/poses_log.json`` (per query:
status, inliers, matched database images, timings) and, with ``--ground-truth``,
``DIR/poses_eval.json``. The steps are those of ``run_localization``: query features ->
query pairs -> query matching -> 2D–3D + PnP -> evaluation -> results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.localize import (PhotoQueries, add_localize_arguments, localize_photos,
                                       pairs_source, photo_queries, run_config)
from sfmfeat.localization.model_localization import LocalizationReport
from sfmfeat.localization.run import LocalizationRunConfig


def run(dataset: PhotoQueries, outputs: str | Path,
        config: LocalizationRunConfig = LocalizationRunConfig(), pairs="exhaustive",
        write_report: bool = True) -> LocalizationReport:
    """Localize ``dataset``'s photos into ``outputs``; the localization report."""
    return localize_photos(dataset, Path(outputs), config, pairs, write_report)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.localize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="`sfmfeat reconstruct` output folder (or a model folder)")
    p.add_argument("--queries", type=Path, required=True, help="folder of query photos")
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("-v", "--verbose", action="store_true")
    add_localize_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def job() -> int:
        report = run(photo_queries(args.model, args.queries, args), args.outputs,
                     run_config(args), pairs_source(args.pairs), not args.no_report)
        return 0 if report.poses else 1

    return run_guarded("pipelines.localize", job)


if __name__ == "__main__":
    sys.exit(main())
