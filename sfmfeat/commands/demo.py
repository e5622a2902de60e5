"""``sfmfeat demo [OUTDIR]``: the embedded default job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ReconstructionError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="reconstruct a built-in synthetic scene and score it against the truth")
    p.add_argument("output", nargs="?", type=Path, default=Path("sfmfeat-demo"),
                   help="output folder (default ./sfmfeat-demo)")
    p.add_argument("--features", default="sift")
    p.add_argument("--matcher", default=None, help="default: the extractor's own")
    p.add_argument("--views", type=int, default=12, help="number of synthetic views")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from ..demo import (MAX_RELATIVE_POSITION_ERROR, MAX_ROTATION_ERROR_DEG, run_demo)
    from ..synthetic import SceneConfig

    result = run_demo(args.output, args.features, args.matcher,
                      SceneConfig(seed=args.seed, num_views=args.views), seed=args.seed)
    out = sys.stdout
    out.write(f"{'image':<24} {'rotation error (deg)':>21} {'position error (% of scene)':>28}\n")
    for error in result.errors:
        out.write(f"{error.name:<24} {error.rotation_deg:>21.4f} "
                  f"{100 * error.position / result.scene_extent:>28.4f}\n")
    for name in result.unregistered:
        out.write(f"{name:<24} {'not registered':>21}\n")
    out.write(f"registered {len(result.errors)}/{len(result.errors) + len(result.unregistered)}"
              f" views; max rotation error {result.max_rotation_deg:.4f} deg "
              f"(limit {MAX_ROTATION_ERROR_DEG}); max position error "
              f"{100 * result.max_relative_position:.4f}% of the scene "
              f"(limit {100 * MAX_RELATIVE_POSITION_ERROR}%); "
              f"{'PASS' if result.passed else 'FAIL'}\n")
    out.write(f"model: {args.output / 'sfm'}  report: {args.output / 'demo_report.json'}\n")
    if not result.passed:
        raise ReconstructionError("the demo reconstruction is outside the accuracy limits")
    return 0
