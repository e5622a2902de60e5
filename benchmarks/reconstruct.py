"""sfmfeat's SIFT pipeline against pycolmap's own (extract_features + match_exhaustive +
incremental_mapping) on the same images, in one process run.

    python benchmarks/reconstruct.py [IMAGES] [--features sift] [--matcher mnn-ratio]

Prints each pipeline's stage times, the time ratio ours/pycolmap and both models' statistics.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pycolmap

from sfmfeat.reconstruction.mapping import model_statistics
from sfmfeat.reconstruction.pipeline import ReconstructionConfig, reconstruct

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/sacre_coeur/mapping"


def run_pycolmap(images: Path, out: Path) -> tuple[dict, dict]:
    database = out / "database.db"
    timings = {}
    start = time.perf_counter()
    pycolmap.extract_features(database, images, device=pycolmap.Device.cpu)
    timings["extract"] = time.perf_counter() - start
    start = time.perf_counter()
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    timings["match+verify"] = time.perf_counter() - start
    start = time.perf_counter()
    options = pycolmap.IncrementalPipelineOptions(random_seed=0)
    models = pycolmap.incremental_mapping(database, images, out / "sfm", options)
    timings["map"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    largest = max(models.values(), key=lambda m: m.num_reg_images())
    return timings, model_statistics(largest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--features", default="sift")
    parser.add_argument("--matcher", default="mnn-ratio")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-reconstruct-"))
    try:
        pycolmap.set_random_seed(0)
        start = time.perf_counter()
        result = reconstruct(args.images, work / "ours", ReconstructionConfig(
            features=args.features, matcher=args.matcher, random_seed=0))
        ours_total = time.perf_counter() - start
        ours_stats = {k: result.summary[k] for k in model_statistics(result.reconstruction)}
        (work / "colmap").mkdir()
        theirs_timings, theirs_stats = run_pycolmap(args.images, work / "colmap")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"images: {args.images}")
    print("sfmfeat  stages (s): " + ", ".join(f"{k} {v:.2f}"
                                             for k, v in result.summary["timings"].items()))
    print("pycolmap stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in theirs_timings.items()))
    print(f"time ratio sfmfeat/pycolmap: {ours_total / theirs_timings['total']:.2f} "
          f"({ours_total:.1f} s vs {theirs_timings['total']:.1f} s)")
    print(f"{'statistic':<28} {'sfmfeat':>10} {'pycolmap':>10}")
    for key in ours_stats:
        print(f"{key:<28} {ours_stats[key]:>10.3f} {theirs_stats[key]:>10.3f}")


if __name__ == "__main__":
    main()
