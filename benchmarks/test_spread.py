"""The spread of every figure an end-to-end test checks, over seeds and CPU thread counts.

    python benchmarks/test_spread.py [--seeds 0,1,2,3,4] [--threads 2,1] [-k EXPR]
        [--figures FILE]

Runs the tests that check measured figures (those using the ``figures`` fixture of
tests/conftest.py) once per (seed, threads), with SFMFEAT_TEST_SEED / SFMFEAT_TEST_THREADS
set, and prints one row per (test, figure): min / median / max over the runs, the test's
threshold, and whether every run met it. A threshold is sound when the worst run clears it
with margin, not when one run does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression to select tests")
    parser.add_argument("--figures", type=Path, help="JSON-lines file of every figure "
                        "(default: a temporary file); an existing file is appended to")
    args = parser.parse_args()
    figures = args.figures or Path(tempfile.mkstemp(prefix="figures-", suffix=".jsonl")[1])
    outcomes = []
    for threads in args.threads.split(","):
        for seed in args.seeds.split(","):
            env = {**os.environ, "SFMFEAT_TEST_SEED": seed, "SFMFEAT_TEST_THREADS": threads,
                   "SFMFEAT_TEST_FIGURES": str(figures)}
            command = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
                       "--no-header", "-o", "addopts="]
            if args.keyword:
                command += ["-k", args.keyword]
            start = time.perf_counter()
            run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            last = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
            outcomes.append((seed, threads, round(time.perf_counter() - start), last))
            print(f"seed {seed} threads {threads}: {last}", flush=True)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for line in figures.read_text().splitlines():
        record = json.loads(line)
        groups[(record["test"], record["figure"])].append(record)
    print(f"\nfigures in {figures}")
    print("| test | figure | runs | min / median / max | threshold | all met |")
    print("|---|---|---|---|---|---|")
    for (test, figure), records in sorted(groups.items()):
        values = [r["value"] for r in records]
        operator, threshold = records[0]["operator"], records[0]["threshold"]
        met = all(r["met"] for r in records)
        print(f"| {test.split('::', 1)[-1]} | {figure} | {len(values)} | {_fmt(min(values))} / "
              f"{_fmt(statistics.median(values))} / {_fmt(max(values))} | {operator} "
              f"{threshold} | {'yes' if met else 'NO'} |")
    print("\n| seed | threads | seconds | pytest |")
    print("|---|---|---|---|")
    for seed, threads, seconds, last in outcomes:
        print(f"| {seed} | {threads} | {seconds} | {last} |")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
