"""``sfmfeat evaluate MODEL REFERENCE``: pose errors of a model against reference poses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..posefiles import FORMATS

    p = subparsers.add_parser(
        "evaluate", help="pose errors and relative-pose AUC of a model against reference poses",
        description="Matches images by name, aligns MODEL onto REFERENCE with a similarity "
                    "(RANSAC over camera centres, then least squares on the inliers) and "
                    "prints rotation/position errors per image, their median and maximum, "
                    "the share of reference images within thresholds (a missing image "
                    "counts as a failure) and the relative-pose AUC at 5/10/20 degrees. "
                    f"Both arguments may be any of: {FORMATS}.")
    p.add_argument("model", type=Path, help="estimated model (e.g. OUT or OUT/sfm of "
                                            "'sfmfeat reconstruct')")
    p.add_argument("reference", type=Path, help="reference poses")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write the full result as JSON ('-' for stdout only)")
    p.add_argument("--inlier-threshold", type=float, default=0.05,
                   help="RANSAC threshold on aligned camera centres, as a fraction of the "
                        "reference scale (median distance of its centres to their "
                        "centroid; default 0.05)")
    p.add_argument("--trials", type=int, default=2000, help="RANSAC samples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="RANSAC seed (default 0)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="score only the reference images whose file is in DIR (a model "
                        "built from a subset of the reference's images)")
    p.add_argument("--no-per-image", action="store_true", help="print the summary only")
    p.set_defaults(func=run)


def format_evaluation(evaluation, per_image: bool = True) -> str:
    scale = evaluation.reference_scale
    lines = []
    if per_image:
        lines.append(f"{'image':<32} {'rotation (deg)':>15} {'position':>12} "
                     f"{'% of scale':>11}")
        for error in evaluation.errors:
            flag = "" if error.inlier else "  outlier"
            lines.append(f"{error.name:<32} {error.rotation_deg:>15.4f} "
                         f"{error.position:>12.5g} {100 * error.position / scale:>11.3f}{flag}")
        lines.extend(f"{name:<32} {'missing':>15}" for name in evaluation.missing)
    shares = ", ".join(f"{100 * share:.1f}% within ({r:g}°, {100 * p:g}%)"
                       for (r, p), share in evaluation.share_within.items())
    auc = " / ".join(f"{100 * v:.1f}" for v in evaluation.auc.values())
    thresholds = "/".join(f"{t:g}" for t in evaluation.auc)
    lines += [
        f"registered {len(evaluation.errors)}/{evaluation.num_reference} reference images"
        f" ({len(evaluation.missing)} missing, {len(evaluation.extra)} not in the reference,"
        f" {len(evaluation.outliers)} alignment outliers)",
        f"rotation error median {evaluation.median_rotation_deg:.4f}° max "
        f"{evaluation.max_rotation_deg:.4f}°; position error median "
        f"{evaluation.median_position:.4g} ({100 * evaluation.median_position / scale:.3f}%)"
        f" max {evaluation.max_position:.4g} ({100 * evaluation.max_position / scale:.3f}%)"
        f" of the reference scale {scale:.4g}",
        f"share of reference images: {shares}",
        f"relative-pose AUC@{thresholds}°: {auc} % over {evaluation.num_pairs} pairs",
    ]
    return "\n".join(lines)


def run(args) -> int:
    from ..evaluation import EvaluationConfig, evaluate_poses
    from ..posefiles import match_names, read_camera_poses, restrict_to_folder

    config = EvaluationConfig(inlier_threshold=args.inlier_threshold,
                              max_trials=args.trials, seed=args.seed)
    reference = read_camera_poses(args.reference)
    if args.images is not None:
        reference = restrict_to_folder(reference, args.images)
    estimate, reference = match_names(read_camera_poses(args.model), reference)
    evaluation = evaluate_poses(estimate, reference, config)
    payload = json.dumps(evaluation.as_dict(), indent=1) + "\n"
    if args.json is not None and str(args.json) == "-":
        sys.stdout.write(payload)
        return 0
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(payload)
    print(format_evaluation(evaluation, per_image=not args.no_per_image))
    return 0
