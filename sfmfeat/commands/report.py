"""``sfmfeat report`` (the HTML page of a run) and ``sfmfeat show-matches`` (one pair)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="one self-contained HTML page of a reconstruct or localize run",
        description="Write OUT/report.html (or -o): 3D view, match graph, per-image table, "
                    "histograms, timings, config and versions. Works offline.")
    p.add_argument("run", type=Path, help="output folder of `sfmfeat reconstruct` or "
                                          "`sfmfeat localize`")
    p.add_argument("-o", "--output", type=Path, help="HTML file (default RUN/report.html)")
    p.add_argument("--log", type=Path, help="localization log to show (default: the newest "
                                            "*_log.json in RUN)")
    p.add_argument("--model", type=Path, help="model a localization ran against, when its "
                                              "log does not name it")
    p.add_argument("--max-points", type=int, default=50_000,
                   help="3D points drawn (an even subsample beyond; default 50000)")
    p.set_defaults(func=_run_report)

    s = subparsers.add_parser("show-matches", help="draw the matches of one image pair of a "
                                                   "reconstruct run (inliers green, outliers red)")
    s.add_argument("run", type=Path, help="output folder of `sfmfeat reconstruct`")
    s.add_argument("name0")
    s.add_argument("name1")
    s.add_argument("-o", "--output", type=Path, required=True, help="PNG file")
    s.add_argument("--images", type=Path,
                   help="image folder (default: the one recorded in RUN/summary.json)")
    s.add_argument("--height", type=int, help="rows of each image (default: full size)")
    s.set_defaults(func=_run_show_matches)


def add_no_report_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-report", action="store_true",
                        help="do not write OUT/report.html at the end")


def _run_report(args) -> int:
    from ..report import ReportLimits, write_report

    path = write_report(args.run, args.output, log=args.log, model=args.model,
                        limits=ReportLimits(max_points=args.max_points))
    logger.info("report -> %s", path)
    return 0


def _run_show_matches(args) -> int:
    import cv2

    from ..errors import ReportError
    from ..report import load_run, render_pair

    run = load_run(args.run)
    if run.kind != "reconstruction" or run.database is None:
        raise ReportError(f"{args.run} is not a `sfmfeat reconstruct` output with a "
                          "database.db; show-matches draws the pairs of a reconstruction")
    image_dir = args.images or run.image_dir
    if image_dir is None:
        raise ReportError(f"{args.run}/summary.json does not record the image folder; "
                          "pass --images")
    if args.output.suffix.lower() != ".png":
        raise ReportError(f"{args.output}: give a .png file")
    drawing, inliers, matches = render_pair(run.database, Path(image_dir), args.name0,
                                            args.name1, args.height)
    if not cv2.imwrite(str(args.output), drawing[:, :, ::-1]):
        raise ReportError(f"OpenCV could not write {args.output}")
    logger.info("%s - %s: %d inliers of %d matches -> %s", args.name0, args.name1, inliers,
                matches, args.output)
    return 0
