"""sfmfeat's SIFT pipeline against pycolmap's own (extract_features + match_exhaustive +
incremental_mapping) on the same images, timed as a user runs them: whole processes.

    python benchmarks/reconstruct.py [IMAGES] [--synthetic 50] [--synthetic-size 640x480]
                                     [--rounds 2] [--features sift]

Each run is a fresh subprocess started from scratch (interpreter start-up and imports
included): ``python -m sfmfeat reconstruct IMAGES OUT --features F --seed 0`` (a copy of this
checkout's code taken at the start; its default outputs: stores, database, model and report)
and a ``python -c`` that runs pycolmap's extract_features, match_exhaustive and
incremental_mapping (CPU, default options, seed 0). The two alternate ours / pycolmap for
``--rounds`` rounds, on the image folder given (default: the shared sacre_coeur set) and, with
``--synthetic N``, on an N-view synthetic scene (``sfmfeat.synthetic``). Prints each run's wall
time, the ratio ours/pycolmap of their sums and both models' registered images and 3D points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared/data/sacre_coeur/mapping"

PYCOLMAP_RUN = """
import json, sys
from pathlib import Path
import pycolmap
pycolmap.logging.minloglevel = 2
images, out = Path(sys.argv[1]), Path(sys.argv[2])
database = out / "database.db"
pycolmap.set_random_seed(0)
pycolmap.extract_features(database, images, device=pycolmap.Device.cpu)
pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
models = pycolmap.incremental_mapping(database, images, out / "sfm",
                                      pycolmap.IncrementalPipelineOptions(random_seed=0))
best = max(models.values(), key=lambda m: m.num_reg_images()) if models else None
print(json.dumps({"num_registered": best.num_reg_images() if best else 0,
                  "num_points3D": best.num_points3D() if best else 0}))
"""


def run_ours(code: Path, images: Path, out: Path, features: str) -> tuple[float, dict]:
    """``code``: the folder holding the sfmfeat package to run."""
    env = dict(os.environ, PYTHONPATH=str(code))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sfmfeat", "reconstruct", str(images), str(out),
                    "--features", features, "--seed", "0"], env=env, cwd=code, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return seconds, {"num_registered": summary["num_registered"],
                     "num_points3D": summary["num_points3D"], "timings": summary["timings"]}


def run_pycolmap(images: Path, out: Path) -> tuple[float, dict]:
    out.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PYCOLMAP_RUN, str(images), str(out)],
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def compare(label: str, images: Path, work: Path, rounds: int, features: str) -> None:
    runs: dict[str, list[tuple[float, dict]]] = {"sfmfeat": [], "pycolmap": []}
    for i in range(rounds):
        for name in runs:
            out = work / f"{name}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            result = (run_ours(work / "code", images, out, features) if name == "sfmfeat"
                      else run_pycolmap(images, out))
            runs[name].append(result)
            shutil.rmtree(out, ignore_errors=True)
            print(f"  round {i + 1} {name:8s}: {result[0]:.1f} s, {result[1]['num_registered']} "
                  f"images, {result[1]['num_points3D']} points", flush=True)
    ours = sum(s for s, _ in runs["sfmfeat"])
    theirs = sum(s for s, _ in runs["pycolmap"])
    print(f"=== {label}: {images} ===")
    stages = runs["sfmfeat"][-1][1]["timings"]
    print("sfmfeat in-process stages of its last run (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"whole-process wall time ratio sfmfeat/pycolmap: {ours / theirs:.2f} "
          f"({ours / rounds:.1f} s vs {theirs / rounds:.1f} s per run; per round "
          + ", ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(runs["sfmfeat"], runs["pycolmap"]))
          + ")")
    for key in ("num_registered", "num_points3D"):
        print(f"{key:15s} sfmfeat {[r[key] for _, r in runs['sfmfeat']]} "
              f"pycolmap {[r[key] for _, r in runs['pycolmap']]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--features", default="sift")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also an N-view synthetic scene (0: none)")
    parser.add_argument("--synthetic-size", default="640x480", help="WIDTHxHEIGHT of its views")
    parser.add_argument("--no-images", action="store_true", help="only the synthetic scene")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reconstruct-"))
    try:
        # a snapshot of this checkout's package: editing it during a run is safe
        shutil.copytree(REPO / "sfmfeat", work / "code" / "sfmfeat",
                        ignore=shutil.ignore_patterns("__pycache__"))
        if not args.no_images:
            compare(args.images.name, args.images, work, args.rounds, args.features)
        if args.synthetic:
            from sfmfeat.synthetic import SceneConfig, SyntheticScene

            images = work / "synthetic"
            width, height = (int(x) for x in args.synthetic_size.split("x"))
            SyntheticScene(SceneConfig(num_views=args.synthetic, width=width,
                                       height=height)).write_images(images)
            compare(f"synthetic scene, {args.synthetic} views {width}x{height}", images, work,
                    args.rounds,
                    args.features)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
