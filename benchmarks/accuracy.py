"""Pose accuracy of reconstructions against a reference set, for choosing defaults.

    python benchmarks/accuracy.py --set fox [--subset 12] [--case LABEL:FEATURES:MATCHER:K=V;K=V ...]
        [--seed 0] [--threads 2] [--work DIR] [--json FILE]
    python benchmarks/accuracy.py --images DIR --reference POSES ...

``--set`` names a set placed by ``benchmarks/reference_sets.py`` (images and
``reference_poses.txt`` under ``~/.cache/sfmfeat-references/<set>``); ``--subset N`` takes
N images evenly spaced in name order (the reference keeps all its poses; only the subset's
are scored). Each ``--case`` is ``label:features:matcher:overrides:mapper`` as in
``benchmarks/seed_spread.py`` (empty matcher: the preset's default; overrides of the
extractor, of the matcher as ``match.K=V``, of pycolmap's mapper as ``map.K=V``, of
verification as ``ransac_max_error=V``, ``ransac_confidence=V``,
``ransac_max_num_trials=N`` or ``min_num_inliers=N``, of the cameras as
``camera_mode=single`` or ``camera_model=OPENCV``). Cases that share features and feature overrides reuse the first
one's ``features.h5``, and those that also share the matcher its ``matches.h5``, also across
runs with the same ``--work`` (``WORK/<set>/stores``); the time column adds the reused
stages' first time back so rows compare. Each case's model goes to
``WORK/<set>/<label>-seed<N>``, so runs of other seeds can share ``--work`` at once.

Prints one row per case: registered / subset images, 3D points, rotation and position error
(median, max; position as % of the reference scale), relative-pose AUC@5/10/20° and the
wall time. Smallest cases first; run it under ``nice -n 19`` on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from seed_spread import Case

from sfmfeat.atomic import atomic_path, write_text_atomic
from sfmfeat.evaluation import EvaluationConfig, evaluate_poses, registered_poses
from sfmfeat.extractors import default_matcher
from sfmfeat.posefiles import match_names, read_camera_poses, restrict_to_folder
from sfmfeat.reconstruction.pipeline import reconstruct

logger = logging.getLogger("accuracy")

DEFAULT_CACHE = Path.home() / ".cache" / "sfmfeat-references"
DEFAULT_CASES = (
    "sift:sift", "sift-mnn:sift:mnn",
    "disk-mnn:disk:mnn", "disk:disk:mnn-ratio",
    "aliked-n16-mnn:aliked-n16:mnn", "aliked-n16:aliked-n16:mnn-ratio",
)


def subset_images(images: Path, count: int | None, work: Path) -> Path:
    """A folder of links to ``count`` images evenly spaced in name order; runs sharing
    ``work`` (other seeds, other cases) share it, so it is built aside and renamed into
    place, and reused when it holds the same images."""
    names = sorted(p.name for p in images.iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if count is None or count >= len(names):
        return images
    step = len(names) / count
    chosen = [names[int(i * step)] for i in range(count)]
    folder = work / f"images-{count}"

    def holds_chosen() -> bool:
        return folder.is_dir() and sorted(p.name for p in folder.iterdir()) == chosen

    if holds_chosen():
        return folder
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=work))
    for name in chosen:
        (staging / name).symlink_to((images / name).resolve())
    if folder.is_dir() and not holds_chosen():   # another selection's: stale
        shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:   # another run placed it first
        shutil.rmtree(staging)
        if not holds_chosen():
            raise
    return folder


class StoreCache:
    """Features (per extractor and options) and matches (per matcher too) of earlier cases,
    kept under ``WORK/stores`` across runs, with the seconds they took: a case that shares
    them starts from a copy, and ``reconstruct`` reuses what its config hashes say is
    current (anything else is recomputed)."""

    def __init__(self, root: Path, images: Path):
        self.root, self.images = root, images.name

    def _folder(self, case: Case, stage: str) -> Path:
        key = [self.images, case.features, case.feature_options]
        if stage == "match":
            config = case.reconstruction_config(0, 1)
            key += [case.matcher or default_matcher(case.features), config.matcher_options]
        return self.root / f"{stage}-{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}"

    def restore(self, case: Case, out: Path) -> dict[str, float]:
        """Copies the cached stores into ``out``; their stages' seconds."""
        seconds = {}
        for stage, name in (("extract", "features.h5"), ("match", "matches.h5")):
            folder = self._folder(case, stage)
            if (folder / "seconds.json").is_file():
                shutil.copy(folder / name, out / name)
                seconds[stage] = json.loads((folder / "seconds.json").read_text())["seconds"]
        return seconds

    def save(self, case: Case, out: Path, timings: dict[str, float]) -> None:
        for stage, name in (("extract", "features.h5"), ("match", "matches.h5")):
            folder = self._folder(case, stage)
            if not (folder / "seconds.json").is_file():
                with atomic_path(folder / name, parents=True) as partial:
                    shutil.copy(out / name, partial)
                write_text_atomic(folder / "seconds.json",
                                  json.dumps({"seconds": timings.get(stage, 0.0)}))


def run_case(case: Case, images: Path, out: Path, reference: dict, seed: int, threads: int,
             cache: StoreCache | None = None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cached = cache.restore(case, out) if cache is not None else {}
    start = time.perf_counter()
    result = reconstruct(images, out, case.reconstruction_config(seed, threads))
    seconds = time.perf_counter() - start
    timings = dict(result.summary["timings"])
    for stage, stage_seconds in cached.items():  # the time the reused stage took once
        seconds += stage_seconds - timings.get(stage, 0.0)
        timings[stage] = stage_seconds
    if cache is not None:
        cache.save(case, out, timings)
    estimate, ref = match_names(registered_poses(result.reconstruction),
                                restrict_to_folder(reference, images))
    evaluation = evaluate_poses(estimate, ref, EvaluationConfig(seed=seed))
    scale = evaluation.reference_scale
    return {
        "case": case.label, "features": case.features, "matcher": case.matcher or "default",
        "overrides": dict(case.overrides),
        "registered": len(evaluation.errors), "images": evaluation.num_reference,
        "points": result.summary["num_points3D"], "track": result.summary["mean_track_length"],
        "outliers": len(evaluation.outliers),
        "rot_median": evaluation.median_rotation_deg, "rot_max": evaluation.max_rotation_deg,
        "pos_median_pct": 100 * evaluation.median_position / scale,
        "pos_max_pct": 100 * evaluation.max_position / scale,
        "auc": {f"{t:g}": v for t, v in evaluation.auc.items()},
        "seconds": round(seconds, 1), "extract_seconds": round(timings.get("extract", 0), 1),
        "match_seconds": round(timings.get("match", 0), 1), "reused": sorted(cached),
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| case | reg | points | track | rot med / max (°) | pos med / max (% scale) "
             "| AUC@5/10/20 | time (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} |||||||")
            continue
        auc = " / ".join(f"{100 * v:.1f}" for v in r["auc"].values())
        lines.append(f"| {r['case']} | {r['registered']}/{r['images']} | {r['points']} | "
                     f"{r['track']:.2f} | {r['rot_median']:.3f} / {r['rot_max']:.3f} | "
                     f"{r['pos_median_pct']:.2f} / {r['pos_max_pct']:.2f} | {auc} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", help="a set placed by benchmarks/reference_sets.py")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--subset", type=int)


def reference_images(args: argparse.Namespace) -> tuple[Path, dict, Path]:
    """(subset image folder, reference poses, work folder) of --set or --images/--reference."""
    if args.set:
        images, reference_path = (args.cache / args.set / "images",
                                  args.cache / args.set / "reference_poses.txt")
    elif args.images and args.reference:
        images, reference_path = args.images, args.reference
    else:
        raise SystemExit("give --set, or --images and --reference")
    work = args.work / (args.set or images.name)
    return subset_images(images, args.subset, work), read_camera_poses(reference_path), work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_reference_arguments(parser)
    parser.add_argument("--case", action="append", help="LABEL:FEATURES:MATCHER:K=V;K=V")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=-1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sfmfeat-accuracy"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    images, reference, work = reference_images(args)
    cases = [Case.parse(text) for text in (args.case or DEFAULT_CASES)]
    rows: list[dict] = []
    cache = StoreCache(work / "stores", images)
    for case in cases:
        try:
            row = run_case(case, images, work / f"{case.label}-seed{args.seed}", reference,
                           args.seed, args.threads, cache)
        except Exception as err:  # one failed case must not lose the others' rows
            logger.error("%s failed: %s", case.label, err)
            row = {"case": case.label, "error": " ".join(str(err).split())[:120]}
        rows.append(row)
        print(format_table([row]).splitlines()[-1], flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{args.set or images}: {len(list(images.iterdir()))} images, seed {args.seed}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
