"""Mutual NN + ratio matching: sfmfeat's chunked matcher against a naive full-distance-matrix
implementation, both measured in this run, each in its own subprocess (for peak memory).

    python benchmarks/match.py [--sizes 8000 32000] [--dims 128 512]

Prints time and peak resident memory of each, and the ratios naive/ours.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _data(n: int, dim: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    noise = torch.randn(n, dim, generator=generator)
    b = torch.nn.functional.normalize(a + 0.5 * noise, dim=1)
    return a, b


def _naive(a, b, ratio: float = 0.8):
    import torch

    distances = torch.cdist(a, b)                      # full N0×N1 matrix
    values, indices = distances.topk(2, dim=1, largest=False)
    keep = values[:, 0] <= ratio * values[:, 1]
    keep &= distances.argmin(dim=0)[indices[:, 0]] == torch.arange(len(a))
    return torch.nonzero(keep).flatten()


def run_one(method: str, n: int, dim: int) -> dict:
    import torch

    from sfmfeat.matchers import create_matcher

    a, b = _data(n, dim)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.inference_mode():
        if method == "naive":
            count = len(_naive(a, b))
        else:
            count = len(create_matcher("mnn-ratio").match(a, b)[0])
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "n": n, "dim": dim, "seconds": seconds, "matches": count,
            "peak_rss_mib": peak_kib / 1024, "extra_mib": (peak_kib - baseline_kib) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "N", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    print(f"{'N':>6} {'D':>4} | {'ours s':>8} {'naive s':>8} {'speed-up':>8} | "
          f"{'ours peak MiB':>13} {'naive peak MiB':>14} {'ours extra MiB':>14} | matches")
    for n in args.sizes:
        for dim in args.dims:
            rows = {}
            for method in ("ours", "naive"):
                out = subprocess.run([sys.executable, __file__, "--one", method, str(n), str(dim)],
                                     capture_output=True, text=True, check=True)
                rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
            ours, naive = rows["ours"], rows["naive"]
            agree = "same" if ours["matches"] == naive["matches"] else \
                f"{ours['matches']} vs {naive['matches']}"
            print(f"{n:>6} {dim:>4} | {ours['seconds']:>8.2f} {naive['seconds']:>8.2f} "
                  f"{naive['seconds'] / ours['seconds']:>7.2f}x | {ours['peak_rss_mib']:>13.0f} "
                  f"{naive['peak_rss_mib']:>14.0f} {ours['extra_mib']:>14.0f} | {agree}",
                  flush=True)


if __name__ == "__main__":
    main()
