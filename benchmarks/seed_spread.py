"""How much a reconstruction moves with the seed and the CPU thread count.

    python benchmarks/seed_spread.py [--presets sift,disk,aliked-n16,deepdesc,r2d2]
        [--case LABEL:FEATURES:MATCHER:KEY=VALUE;KEY=VALUE:MAPPER ...]
        [--seeds 0,1,2,3,4] [--threads 2,1] [--images DIR] [--work DIR] [--json FILE]

A preset runs with its defaults; ``--case`` runs a preset with a matcher (empty: the
preset's default), overrides and a mapper (default incremental). An override goes to the
matcher when its key starts with ``match.`` (``match.ratio=0.9``), to pycolmap's mapper
options when it starts with ``map.`` (``map.ba_refine_principal_point=1``,
``map.mapper.filter_max_reproj_error=2``), to the reconstruction when it names a
ReconstructionConfig field (``ransac_max_error=2``, ``min_num_inliers=30``,
``camera_mode=single``), else to the extractor; e.g. the
end-to-end tests' own settings:
``--case deepdesc-1024:deepdesc:mnn:detector.max_keypoints=1024``.

For every case and thread count the features and matches are computed once (seed 0) and
reused for the other seeds, so each further run repeats only what the seed drives:
verification (COLMAP's RANSAC) and mapping. Features computed with each thread count are
compared with the first one's (bit-identical or not). Prints one row per case: registered
images and 3D points as min/median/max over every (seed, threads) run, the images that some
run left unregistered, and the wall time of one full run.

The end-to-end tests take their thresholds from this table (see tests/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))

from sfmfeat.reconstruction.pipeline import ReconstructionConfig, reconstruct  # noqa: E402
from sfmfeat.store import FeatureReader  # noqa: E402


def run_once(images: Path, out: Path, case: Case, seed: int, threads: int,
             reuse_from: Path | None) -> dict:
    if reuse_from is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("features.h5", "matches.h5"):
            shutil.copy(reuse_from / name, out / name)
    start = time.perf_counter()
    result = reconstruct(images, out, case.reconstruction_config(seed, threads))
    summary = result.summary
    registered = {im.name for im in result.reconstruction.images.values() if im.has_pose}
    with FeatureReader(out / "features.h5") as features:
        names = features.names()
    return {"case": case.label, "seed": seed, "threads": threads,
            "registered": summary["num_registered"], "images": summary["num_images"],
            "points": summary["num_points3D"], "track": summary["mean_track_length"],
            "verified_pairs": summary["num_verified_pairs"],
            "unregistered": sorted(set(names) - registered),
            "seconds": round(time.perf_counter() - start, 1)}


MATCHER_PREFIX = "match."
MAPPER_PREFIX = "map."
_RECONSTRUCTION_FIELDS = {"ransac_max_error": float, "ransac_confidence": float,
                          "ransac_max_num_trials": int, "min_num_inliers": int,
                          "camera_model": str, "camera_mode": str}


@dataclass(frozen=True)
class Case:
    label: str
    features: str
    matcher: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    mapper: str = "incremental"

    @property
    def feature_options(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self.overrides
                     if not k.startswith((MATCHER_PREFIX, MAPPER_PREFIX))
                     and k not in _RECONSTRUCTION_FIELDS)

    def reconstruction_config(self, seed: int, threads: int) -> ReconstructionConfig:
        """Overrides go where their key says: ``match.K`` to the matcher, ``map.K`` to the
        mapper, a field of ReconstructionConfig (``ransac_max_error``, ``min_num_inliers``,
        ...) to it, the rest to the extractor."""
        matcher = tuple((k[len(MATCHER_PREFIX):], v) for k, v in self.overrides
                        if k.startswith(MATCHER_PREFIX))
        mapping = tuple((k[len(MAPPER_PREFIX):], v) for k, v in self.overrides
                        if k.startswith(MAPPER_PREFIX))
        own = {k: _RECONSTRUCTION_FIELDS[k](v) for k, v in self.overrides
               if k in _RECONSTRUCTION_FIELDS}
        return ReconstructionConfig(
            features=self.features, matcher=self.matcher, random_seed=seed, num_threads=threads,
            feature_options=self.feature_options, matcher_options=matcher, mapper=self.mapper,
            mapper_options=mapping, **own)

    @classmethod
    def parse(cls, text: str) -> "Case":
        label, features, matcher, overrides, mapper = (text.split(":", 4) + [""] * 4)[:5]
        pairs = tuple(sorted(tuple(item.split("=", 1)) for item in overrides.split(";")
                             if item))
        return cls(label, features or label, matcher or None, pairs, mapper or "incremental")


def same_features(a: Path, b: Path) -> bool:
    with FeatureReader(a) as fa, FeatureReader(b) as fb:
        if sorted(fa.names()) != sorted(fb.names()):
            return False
        for name in fa.names():
            x, y = fa.read(name), fb.read(name)
            if not (np.array_equal(x.keypoints, y.keypoints)
                    and np.array_equal(x.descriptors, y.descriptors)):
                return False
    return True


def spread(values: list[float]) -> str:
    return f"{min(values):g} / {statistics.median(values):g} / {max(values):g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="sift,disk,aliked-n16,deepdesc,r2d2")
    parser.add_argument("--case", action="append", default=[],
                        help="LABEL:FEATURES:MATCHER:KEY=VALUE;KEY=VALUE:MAPPER (repeatable)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--images", type=Path, default=SHARED / "data/sacre_coeur/mapping")
    parser.add_argument("--work", type=Path, help="keep the outputs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))
    seeds = [int(s) for s in args.seeds.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="seed-spread-"))
    runs, rows = [], []
    cases = [Case(p, p) for p in args.presets.split(",") if p]
    cases += [Case.parse(text) for text in args.case]
    for case in cases:
        first_features, case_runs, full_seconds = None, [], []
        identical_across_threads = True
        for threads in thread_counts:
            fresh = work / case.label / f"t{threads}_s{seeds[0]}"
            shutil.rmtree(fresh, ignore_errors=True)
            case_runs.append(run_once(args.images, fresh, case, seeds[0], threads, None))
            full_seconds.append(case_runs[-1]["seconds"])
            if first_features is None:
                first_features = fresh / "features.h5"
            else:
                identical_across_threads &= same_features(first_features, fresh / "features.h5")
            for seed in seeds[1:]:
                out = work / case.label / f"t{threads}_s{seed}"
                shutil.rmtree(out, ignore_errors=True)
                case_runs.append(run_once(args.images, out, case, seed, threads, fresh))
            for run in case_runs[-len(seeds):]:
                print(json.dumps(run), flush=True)
        runs += case_runs
        unregistered = sorted({n for r in case_runs for n in r["unregistered"]})
        rows.append((case.label, spread([r["registered"] for r in case_runs]),
                     spread([r["points"] for r in case_runs]),
                     spread([round(r["track"], 2) for r in case_runs]),
                     ", ".join(unregistered) or "-",
                     "yes" if identical_across_threads else "no",
                     spread(full_seconds)))
    print(f"\n{len(seeds)} seeds x threads {thread_counts} on {args.images}")
    print("| case | registered min/med/max | points min/med/max | track | ever unregistered "
          "| features equal across threads | full run s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
