"""Generation time and size of the HTML report: a real run folder and a synthetic one of
any size (default 5000 images), against the run's own time where there is one.

    python benchmarks/report.py [--run OUT] [--images 5000] [--points 500000] [--repeats 3]

``--run OUT``: a `sfmfeat reconstruct` output (e.g. of the Sacre-Coeur images); its report
time is compared with the run's total in summary.json. The synthetic model
(``sfmfeat.synthetic.write_synthetic_run``: cameras on a circle, each point seen by 4
consecutive images, a database of the neighbouring pairs) is built once under a temporary
folder. Each line: seconds (min / median over the repeats, the imports of the first call
included in its own line), HTML size in MB and what the page capped.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sfmfeat.report import write_report
from sfmfeat.synthetic import write_synthetic_run


def _first_call_seconds(run: Path, output: Path) -> float:
    """A fresh interpreter: the imports (plotly, OpenCV, pycolmap) are part of the cost a
    run pays once."""
    code = ("import time; t = time.perf_counter(); from sfmfeat.report import write_report; "
            f"write_report({str(run)!r}, {str(output)!r}); print(time.perf_counter() - t)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def measure(run: Path, label: str, repeats: int) -> None:
    output = run / "report-benchmark.html"
    first = _first_call_seconds(run, output)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        write_report(run, output)
        seconds.append(time.perf_counter() - start)
    page = output.read_text(encoding="utf-8")
    notes = re.findall(r"<p class=note>([^<]*)", page)
    print(f"{label}: first call (fresh interpreter) {first:.2f} s; warm min "
          f"{min(seconds):.2f} / median {statistics.median(seconds):.2f} s over {repeats}; "
          f"{len(page) / 1e6:.1f} MB")
    for note in notes:
        print(f"    note: {note}")
    summary = json.loads((run / "summary.json").read_text())
    total = (summary.get("timings") or {}).get("total")
    if total:
        print(f"    the run itself took {total:.1f} s: the report adds "
              f"{100 * first / total:.1f} % (first call)")
    output.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a `sfmfeat reconstruct` output folder")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--points", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.run:
        measure(args.run, f"run {args.run}", args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = write_synthetic_run(Path(tmp) / "run", args.images, args.points)
        print(f"synthetic model: {args.images} images, {args.points} points, built in "
              f"{time.perf_counter() - start:.1f} s")
        measure(run, f"synthetic {args.images} images", args.repeats)


if __name__ == "__main__":
    main()
