"""Mutual NN + ratio matching: sfmfeat's chunked matcher in fp32 and with its bf16 candidate
search, against a naive full-distance-matrix implementation, all measured in this run, each
in its own subprocess (for peak memory).

    python benchmarks/match.py [--sizes 8000 32000] [--dims 128 512] [--threads 2]
    python benchmarks/match.py --features features.h5 [--preset mnn-ratio]

The first form prints, per size, the time (median of ``--repeats`` calls after a first one,
whose time is printed too) and peak resident memory of each, the speed-ups
fp32/bf16 and naive/fp32, and how many matches of the bf16 path equal the fp32 path's. The
second matches every pair of a features file both ways and prints the same agreement and
speed-up per pair (real descriptors have many more near-ties than random ones).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

import numpy as np


def _data(n: int, dim: int):
    """Unit descriptors; half of set 1 are noisy copies of set 0 (cosine ~0.85, as real
    matches), the other half unrelated, in shuffled order."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    noise = torch.randn(n, dim, generator=generator) * (0.6 / dim ** 0.5)
    b = torch.nn.functional.normalize(a + noise, dim=1)
    b[n // 2:] = torch.nn.functional.normalize(torch.randn(n - n // 2, dim,
                                                           generator=generator), dim=1)
    return a, b[torch.randperm(n, generator=generator)]


def _naive(a, b, ratio: float = 0.8):
    import torch

    distances = torch.cdist(a, b)                      # full N0×N1 matrix
    values, indices = distances.topk(2, dim=1, largest=False)
    keep = values[:, 0] <= ratio * values[:, 1]
    keep &= distances.argmin(dim=0)[indices[:, 0]] == torch.arange(len(a))
    rows = torch.nonzero(keep).flatten()
    return np.stack([rows.numpy(), indices[rows, 0].numpy()], 1)


def _ours(precision: str, preset: str = "mnn-ratio"):
    from sfmfeat.matchers import create_matcher

    return create_matcher(preset, {"precision": precision})


def run_one(method: str, n: int, dim: int, threads: int, preset: str,
            repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    a, b = _data(n, dim)
    matcher = None if method == "naive" else _ours(method, preset)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    # the first call pays one-off costs (kernel selection, first-touch page faults); a
    # pipeline matches many pairs in one process, so the median of the later calls is the
    # figure compared, the first call is reported beside it
    for _ in range(1 + repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            matches = _naive(a, b) if matcher is None else matcher.match(a, b)[0]
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "first_seconds": times[0],
            "seconds": float(np.median(times[1:])) if repeats else times[0],
            "matches": matches.tolist(), "peak_rss_mib": peak_kib / 1024,
            "extra_mib": (peak_kib - baseline_kib) / 1024}


def _agreement(first: list, second: list) -> str:
    same = len(set(map(tuple, first)) & set(map(tuple, second)))
    total = max(len(first), len(second))
    return f"{same}/{total}" + (" (identical)" if first == second else "")


def _random_sizes(args) -> None:
    print(f"{'N':>6} {'D':>4} | {'fp32 s':>7} {'bf16 s':>7} {'naive s':>7} | "
          f"{'fp32/bf16':>9} {'naive/fp32':>10} | {'peak MiB fp32':>13} {'bf16':>6} "
          f"{'naive':>6} | bf16 = fp32 matches | first call fp32 / bf16")
    for n in args.sizes:
        for dim in args.dims:
            rows = {}
            for method in ("fp32", "bf16", "naive"):
                out = subprocess.run([sys.executable, __file__, "--one", method, str(n),
                                      str(dim), "--threads", str(args.threads),
                                      "--preset", args.preset,
                                      "--repeats", str(args.repeats)],
                                     capture_output=True, text=True, check=True)
                rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
            fp32, bf16, naive = rows["fp32"], rows["bf16"], rows["naive"]
            print(f"{n:>6} {dim:>4} | {fp32['seconds']:>7.2f} {bf16['seconds']:>7.2f} "
                  f"{naive['seconds']:>7.2f} | {fp32['seconds'] / bf16['seconds']:>8.2f}x "
                  f"{naive['seconds'] / fp32['seconds']:>9.2f}x | "
                  f"{fp32['peak_rss_mib']:>13.0f} {bf16['peak_rss_mib']:>6.0f} "
                  f"{naive['peak_rss_mib']:>6.0f} | "
                  f"{_agreement(bf16['matches'], fp32['matches'])} | first call "
                  f"{fp32['first_seconds']:.2f} / {bf16['first_seconds']:.2f} s", flush=True)


def _features_pairs(args) -> None:
    import torch

    from sfmfeat.store import FeatureReader

    torch.set_num_threads(args.threads)
    reader = FeatureReader(args.features)
    names = reader.names()
    descriptors = {name: reader.read(name).descriptors for name in names}
    matchers = {p: _ours(p, args.preset) for p in ("fp32", "bf16")}
    total = {"fp32": 0.0, "bf16": 0.0}
    identical = 0
    pairs = list(itertools.combinations(names, 2))
    print(f"{'pair':>40} | {'N0':>6} {'N1':>6} | {'fp32 s':>7} {'bf16 s':>7} {'ratio':>6} | "
          f"agreement")
    for name0, name1 in pairs:
        result, seconds = {}, {}
        for precision in ("fp32", "bf16", "fp32", "bf16"):   # second round is timed
            start = time.perf_counter()
            result[precision] = matchers[precision].match(descriptors[name0],
                                                          descriptors[name1])[0].tolist()
            seconds[precision] = time.perf_counter() - start
        for precision in total:
            total[precision] += seconds[precision]
        identical += result["fp32"] == result["bf16"]
        label = f"{name0[:18]}-{name1[:18]}"
        print(f"{label:>40} | {len(descriptors[name0]):>6} {len(descriptors[name1]):>6} | "
              f"{seconds['fp32']:>7.3f} {seconds['bf16']:>7.3f} "
              f"{seconds['fp32'] / seconds['bf16']:>5.2f}x | "
              f"{_agreement(result['bf16'], result['fp32'])}", flush=True)
    print(f"{len(pairs)} pairs, {identical} identical; total fp32 {total['fp32']:.2f} s, "
          f"bf16 {total['bf16']:.2f} s, ratio {total['fp32'] / total['bf16']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="mnn-ratio")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls after the first (their median is reported)")
    parser.add_argument("--features", help="match every pair of this features file")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "N", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one[0], int(args.one[1]), int(args.one[2]), args.threads,
                         args.preset, args.repeats)
        print(json.dumps(result))
    elif args.features:
        _features_pairs(args)
    else:
        _random_sizes(args)


if __name__ == "__main__":
    main()
