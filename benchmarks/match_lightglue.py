"""LightGlue on CPU: sfmfeat's port against the official implementation, same inputs, same run.

    python benchmarks/match_lightglue.py [--sizes 1024 2048 4096] [--repeat 3] [--threads 1]
        [--official /tmp/official_lightglue] [--memory 16384]

The official code is a checkout of cvg/LightGlue outside this repository (``--official``,
default ``$SFMFEAT_OFFICIAL_LIGHTGLUE`` or /tmp/official_lightglue); only its
``lightglue/lightglue.py`` is imported (by path: the package ``__init__`` needs kornia),
and ``LightGlue(features=...)`` loads the official weights from a private torch-hub cache
that links the files of ``$SFMFEAT_WEIGHTS_DIR/lightglue``. Without the checkout only our
timings are printed.

Inputs per size N (as the parity fixtures' timing table): N keypoints per image uniform in
[0, 1024) × [0, 768), image size 1024 × 768, standard-normal 128-d descriptors L2-normalised,
``torch.Generator().manual_seed(N)``; both images independent. Timed with the adaptive
mechanisms off (all 9 layers: the same arithmetic for every input), plus the real fixture
pairs with the official defaults. Printed: ms per pair (median of ``--repeat`` after one
warm-up), speed-ups, agreement of matches0 with the official output, the achieved GFLOP/s of
our transformer and attention arithmetic (the output projections folded into the FFNs), and
the fp32 / bf16 GEMM rate measured in this run.

``--parity FEATURES.h5`` instead compares matches, scores, stop and pruning with the official
code on the first ``--num-pairs`` pairs of that features file (e.g. sfmfeat's own ALIKED or
DISK features of the sacre_coeur images), adaptive off and at the defaults, fp32.

``--memory N`` runs our matcher once on N×N random keypoints (official defaults) in a fresh
process and prints its peak resident memory above the loaded-model baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))

OFFICIAL = Path(os.environ.get("SFMFEAT_OFFICIAL_LIGHTGLUE", "/tmp/official_lightglue"))
DIM, FFN = 256, 512


def transformer_flop(n0: int, n1: int, layers: int = 9,
                     output_projections: bool = True) -> float:
    """Multiply-adds × 2 of the linear layers and attention products of ``layers`` layers;
    without the two output projections per layer, which sfmfeat folds into the FFNs (the
    arithmetic it runs: 9% fewer linear multiply-adds)."""
    projection = DIM * DIM if output_projections else 0
    self_linear = DIM * 3 * DIM + projection + 2 * DIM * FFN + FFN * DIM
    cross_linear = 2 * DIM * DIM + projection + 2 * DIM * FFN + FFN * DIM
    linear = (n0 + n1) * (self_linear + cross_linear)
    attention = 2 * (n0 * n0 + n1 * n1) * DIM + 2 * 2 * n0 * n1 * DIM   # q·kᵀ and p·v
    return 2.0 * layers * (linear + attention)


def gemm_rate(dtype, size: int = 1024, repeat: int = 5) -> float:
    import torch

    a = torch.randn(2 * size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2.0 * 2 * size * size * size * repeat / (time.perf_counter() - start) / 1e9


def synthetic(n: int):
    import torch

    generator = torch.Generator().manual_seed(n)
    sides = []
    for _ in range(2):
        kp = torch.rand(n, 2, generator=generator) * torch.tensor([1024.0, 768.0])
        desc = torch.nn.functional.normalize(torch.randn(n, 128, generator=generator), dim=1)
        sides.append((kp.numpy(), desc.numpy(), np.array([1024.0, 768.0], np.float32)))
    return sides


def fixture_inputs(name: str):
    data = np.load(SHARED / "fixtures" / "lightglue" / f"{name}.npz")
    return [(data[f"keypoints{i}"], data[f"descriptors{i}"], data[f"image_size{i}"])
            for i in (0, 1)]


class Official:
    def __init__(self, checkout: Path, weights_root: Path) -> None:
        self.hub = tempfile.TemporaryDirectory(prefix="official-lightglue-hub-")
        cache = Path(self.hub.name) / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        for name in ("aliked", "disk"):
            os.symlink(weights_root / "lightglue" / f"{name}_lightglue.pth",
                       cache / f"{name}_lightglue_v0-1_arxiv.pth")
        os.environ["TORCH_HOME"] = self.hub.name
        spec = importlib.util.spec_from_file_location(
            "official_lightglue", checkout / "lightglue" / "lightglue.py")
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.models: dict = {}

    def model(self, weights: str, adaptive: bool):
        key = (weights, adaptive)
        if key not in self.models:
            conf = {} if adaptive else {"depth_confidence": -1, "width_confidence": -1}
            self.models[key] = self.module.LightGlue(features=weights, **conf).eval()
        return self.models[key]

    def __call__(self, weights: str, adaptive: bool, sides, full: bool = False):
        import torch

        data = {f"image{i}": {"keypoints": torch.from_numpy(kp)[None],
                              "descriptors": torch.from_numpy(desc)[None],
                              "image_size": torch.from_numpy(size)[None]}
                for i, (kp, desc, size) in enumerate(sides)}
        with torch.inference_mode():
            out = self.model(weights, adaptive)(data)
        if full:
            return {k: (v[0].numpy() if k != "stop" else int(v)) for k, v in out.items()
                    if k not in ("matches", "scores")}
        return out["matches0"][0].numpy(), out["matching_scores0"][0].numpy(), int(out["stop"])


class Ours:
    def __init__(self) -> None:
        self.models: dict = {}

    def __call__(self, weights: str, adaptive: bool, sides, precision: str = "fp32",
                 full: bool = False):
        from sfmfeat.extractors.base import Features
        from sfmfeat.matchers.lightglue import LightGlue, LightGlueConfig

        key = (weights, adaptive, precision)
        if key not in self.models:
            conf = {} if adaptive else {"depth_confidence": -1, "width_confidence": -1}
            self.models[key] = LightGlue(LightGlueConfig(weights=weights, precision=precision,
                                                         **conf), device="cpu")
        feats = [Features(keypoints=kp, descriptors=desc, scores=np.ones(len(kp)),
                          image_size=tuple(int(v) for v in size)) for kp, desc, size in sides]
        out = self.models[key].forward(*feats)
        if full:
            return out
        return out.matches0, out.matching_scores0, out.stop


def timed(run, repeat: int):
    result = run()   # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def agreement(a, b) -> str:
    same = float(np.mean(a[0] == b[0])) * 100
    return f"{same:6.2f}% / {float(np.abs(a[1] - b[1]).max()):.1e}"


def parity_table(features_path: Path, num_pairs: int, official, ours) -> None:
    import itertools

    from sfmfeat.matchers.lightglue import weights_for_features
    from sfmfeat.store import FeatureReader

    with FeatureReader(features_path) as reader:
        weights = weights_for_features(reader.method)
        names = sorted(reader.names())
        feats = {n: reader.read(n) for n in names}
    print(f"{features_path} ({reader.method}, LightGlue weights {weights}); matches0 / "
          "matches1 identical, max |Δscore| (all entries), stop, prune identical; at the "
          "defaults also ms per pair (one call each) of the official code, ours in fp32 and "
          "ours in bf16 (its matches0 agreement with the official)")
    def sides_of(name0: str, name1: str):
        return [(feats[n].keypoints, feats[n].descriptors,
                 np.asarray(feats[n].image_size, np.float32)) for n in (name0, name1)]

    pairs = list(itertools.combinations(names, 2))[:num_pairs]
    warm = sides_of(*pairs[0])      # models built and loaded before anything is timed
    for adaptive in (False, True):
        official(weights, adaptive, warm)
        ours(weights, adaptive, warm)
    ours(weights, True, warm, "bf16")
    for name0, name1 in pairs:
        sides = sides_of(name0, name1)
        row = [f"{name0} {name1} ({len(feats[name0])}/{len(feats[name1])})"]
        for adaptive in (False, True):
            start = time.perf_counter()
            ref = official(weights, adaptive, sides, full=True)
            official_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            got = ours(weights, adaptive, sides, full=True)
            ours_ms = (time.perf_counter() - start) * 1000
            same0 = float(np.mean(ref["matches0"] == got.matches0)) * 100
            same1 = float(np.mean(ref["matches1"] == got.matches1)) * 100
            dscore = max(float(np.abs(ref["matching_scores0"] - got.matching_scores0).max()),
                         float(np.abs(ref["matching_scores1"] - got.matching_scores1).max()))
            prune = float(np.mean(np.concatenate([ref["prune0"] == got.prune0,
                                                  ref["prune1"] == got.prune1]))) * 100
            row.append(f"{'defaults' if adaptive else 'full'}: {same0:.2f}%/{same1:.2f}% "
                       f"{dscore:.1e} stop {got.stop}/{ref['stop']} prune {prune:.1f}% "
                       f"matches {int((got.matches0 >= 0).sum())}/"
                       f"{int((ref['matches0'] >= 0).sum())}")
            if adaptive:
                start = time.perf_counter()
                low = ours(weights, adaptive, sides, "bf16", full=True)
                bf16_ms = (time.perf_counter() - start) * 1000
                row.append(f"ms official {official_ms:.0f}, fp32 {ours_ms:.0f} "
                           f"({official_ms / ours_ms:.2f}x), bf16 {bf16_ms:.0f} "
                           f"({official_ms / bf16_ms:.2f}x, "
                           f"{float(np.mean(ref['matches0'] == low.matches0)) * 100:.2f}%)")
        print(" | ".join(row), flush=True)


def memory_run(n: int) -> dict:
    import torch

    from sfmfeat.extractors.base import Features
    from sfmfeat.matchers.lightglue import LightGlue, LightGlueConfig

    matcher = LightGlue(LightGlueConfig(weights="aliked"), device="cpu")
    feats = [Features(keypoints=kp, descriptors=desc, scores=np.ones(n), image_size=(1024, 768))
             for kp, desc, _ in synthetic(n)]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = matcher.forward(*feats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "seconds": time.perf_counter() - start, "stop": out.stop,
            "extra_mib": (peak - baseline) / 1024, "peak_mib": peak / 1024,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--official", type=Path, default=OFFICIAL)
    parser.add_argument("--no-fixtures", action="store_true")
    parser.add_argument("--parity", type=Path, help="features.h5: parity table instead")
    parser.add_argument("--num-pairs", type=int, default=6)
    parser.add_argument("--memory", type=int, help="peak memory of one N×N pair instead")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_run(args.memory_child)))
        return
    if args.memory:
        cmd = [sys.executable, __file__, "--memory-child", str(args.memory),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['n']} x {row['n']} keypoints (defaults, random descriptors): "
              f"{row['seconds']:.1f} s, {row['stop']} layers, peak RSS {row['peak_mib']:.0f} MiB, "
              f"{row['extra_mib']:.0f} MiB above the loaded model ({row['threads']} threads)")
        return
    weights_root = Path(os.environ.get("SFMFEAT_WEIGHTS_DIR", "~/.cache/sfmfeat/weights"))
    weights_root = weights_root.expanduser()
    official = None
    if (args.official / "lightglue" / "lightglue.py").is_file():
        official = Official(args.official, weights_root)
    else:
        print(f"no official checkout at {args.official}: timing sfmfeat only")
    ours = Ours()
    if args.parity:
        if official is None:
            raise SystemExit("--parity needs the official checkout")
        parity_table(args.parity, args.num_pairs, official, ours)
        return
    fp32_peak, bf16_peak = gemm_rate(torch.float32), gemm_rate(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GEMM peak measured "
          f"now: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s")
    print("adaptive off (9 layers), random inputs; agreement = matches0 identical / max "
          "|Δscore| vs official")
    print(f"{'N':>5} | {'official ms':>11} | {'fp32 ms':>8} {'x':>5} {'GFLOP/s':>8} "
          f"{'agreement':>17} | {'bf16 ms':>8} {'x':>5} {'GFLOP/s':>8} {'agreement':>17}")
    for n in args.sizes:
        sides = synthetic(n)
        flop = transformer_flop(n, n, output_projections=False)   # what ours computes
        fp32_ms, fp32 = timed(lambda: ours("aliked", False, sides), args.repeat)
        bf16_ms, bf16 = timed(lambda: ours("aliked", False, sides, "bf16"), args.repeat)
        ref_ms, ref = (timed(lambda: official("aliked", False, sides), args.repeat)
                       if official else (float("nan"), fp32))
        print(f"{n:>5} | {ref_ms:>11.0f} | {fp32_ms:>8.0f} {ref_ms / fp32_ms:>5.2f} "
              f"{flop / fp32_ms / 1e6:>8.0f} {agreement(fp32, ref):>17} | {bf16_ms:>8.0f} "
              f"{ref_ms / bf16_ms:>5.2f} {flop / bf16_ms / 1e6:>8.0f} {agreement(bf16, ref):>17}",
              flush=True)
    if args.no_fixtures or not (SHARED / "fixtures" / "lightglue").is_dir():
        return
    print("real pairs (fixtures), official defaults (early exit + pruning); stop = layers run")
    print(f"{'pair':>34} | {'official ms':>11} {'stop':>4} | {'fp32 ms':>8} {'x':>5} "
          f"{'stop':>4} {'agreement':>17} | {'bf16 ms':>8} {'x':>5} {'stop':>4} {'agreement':>17}")
    for path in sorted((SHARED / "fixtures" / "lightglue").glob("*.npz")):
        weights = path.stem.split("_")[0]
        sides = fixture_inputs(path.stem)
        fp32_ms, fp32 = timed(lambda: ours(weights, True, sides), args.repeat)
        bf16_ms, bf16 = timed(lambda: ours(weights, True, sides, "bf16"), args.repeat)
        ref_ms, ref = (timed(lambda: official(weights, True, sides), args.repeat)
                       if official else (float("nan"), fp32))
        print(f"{path.stem:>34} | {ref_ms:>11.0f} {ref[2]:>4} | {fp32_ms:>8.0f} "
              f"{ref_ms / fp32_ms:>5.2f} {fp32[2]:>4} {agreement(fp32, ref):>17} | "
              f"{bf16_ms:>8.0f} {ref_ms / bf16_ms:>5.2f} {bf16[2]:>4} {agreement(bf16, ref):>17}",
              flush=True)


if __name__ == "__main__":
    main()
