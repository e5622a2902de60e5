"""D2-Net single-scale extraction speed on CPU, against the official code in the same run.

    python benchmarks/extract_d2net.py [--official /tmp/official_d2net] [--sizes 1024x768,1600x1200]

Both implementations load the same checkpoint (by default the random-weight fixture
``../shared/fixtures/d2net/d2_tf.pth.xz``, in the official format) and run on the same image
(a sacre_coeur photo resized to each size). Printed per size, best of ``--repeats``:
- official: total (preprocessing + ``process_multiscale(scales=[1])``), of which the trunk;
- ours (fp32 default = NCHW, bit-equal trunk; fp32 channels-last; bf16 channels-last): total,
  trunk, detection + localisation + sampling, and the speed-up over the official total;
- trunk GFLOP/s against an fp32 (and bf16) GEMM peak measured in this run (best ``torch.mm``,
  re-measured before each size, the best so far is used);
- parity with the official output (rows matched within 0.01 px after the coordinate
  conversion documented in sfmfeat/extractors/d2net.py, descriptor cosine);
- bf16 deviation from our fp32 output and matching accuracy (mutual NN, MMA at 1/3 px)
  on a pair made with a known homography, fp32 vs bf16 (with random weights the absolute
  MMA means little; the loss between the two precisions is the figure);
- peak memory (max RSS above the process baseline) of one extraction, each in a fresh
  subprocess; ours on an 8000×6000 image, which the resize rules bring to 1600×1200.
The official code is imported from ``--official`` (a checkout outside this repository);
when it is missing the script says so and prints our figures alone.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
IMAGE = SHARED / "data/sacre_coeur/mapping/02928139_3448003521.jpg"

from sfmfeat.extractors import d2net as D  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", default=os.environ.get("D2NET_OFFICIAL",
                                                             "/tmp/official_d2net"))
    parser.add_argument("--checkpoint", default=str(SHARED / "fixtures/d2net/d2_tf.pth.xz"),
                        help="an official-format checkpoint (.pth or .pth.xz)")
    parser.add_argument("--sizes", default="1024x768,1600x1200")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "SIZE", "CKPT"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def checkpoint_path(path: str, workdir: Path) -> Path:
    path = Path(path)
    if path.suffix != ".xz":
        return path
    target = workdir / "d2_tf.pth"
    with lzma.open(path) as src, open(target, "wb") as dst:
        dst.write(src.read())
    return target


def import_official(root: str):
    if not (Path(root) / "lib" / "model_test.py").is_file():
        return None
    try:
        import matplotlib.pyplot  # noqa: F401  (lib/utils.py imports it for plotting only)
    except ImportError:
        for name in ("matplotlib", "matplotlib.pyplot"):
            sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(root))  # the official checkout lives outside this repository
    from lib.model_test import D2Net as OfficialD2Net
    from lib.pyramid import process_multiscale
    from lib.utils import preprocess_image

    return OfficialD2Net, process_multiscale, preprocess_image


def test_image(width: int, height: int) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(IMAGE)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def gemm_peak(dtype, best: float = 0.0) -> float:
    """The best ``torch.mm`` throughput (GFLOP/s) over a square and a conv4-like shape."""
    for m, k, n in ((4096, 4096, 4096), (12288, 4608, 512)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        for _ in range(2):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def trunk_gflop(height: int, width: int) -> float:
    flop, h, w = 0, height, width
    for module in D.D2NetNetwork().dense_feature_extraction.model:
        if isinstance(module, torch.nn.Conv2d):
            flop += 2 * module.in_channels * module.out_channels * 9 * h * w
        elif isinstance(module, torch.nn.MaxPool2d):
            h, w = h // 2, w // 2
        elif isinstance(module, torch.nn.AvgPool2d):
            h, w = h - 1, w - 1
    return flop / 1e9


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def run_ours(ext, image):
    """(total, trunk, post, features) of one extraction, steps timed separately."""
    t_total, features = timed(ext.extract, image)
    with torch.inference_mode():
        x = ext.network_input(image)
        t_trunk, dense = timed(ext.dense_features, x)
        t_post, _ = timed(ext.detect_level, dense, None)
    return t_total, t_trunk, t_post, features


def official_to_ours(keypoints: np.ndarray) -> np.ndarray:
    """process_multiscale rows are (i, j, 1/scale); at scale 1 without resizing, ours are
    the official (x, y) + 2 px (see the module docstring of sfmfeat/extractors/d2net.py)."""
    return keypoints[:, [1, 0]].astype(np.float64) + 2.0


def compare(a_kp, a_desc, b_kp, b_desc, max_px):
    from scipy.spatial import cKDTree

    dist, index = cKDTree(b_kp).query(a_kp)
    ok = dist <= max_px
    cos = (a_desc[ok] * b_desc[index[ok]]).sum(1)
    return {"n_a": len(a_kp), "n_b": len(b_kp), "matched": int(ok.sum()),
            "max_px": float(dist[ok].max()) if ok.any() else float("nan"),
            "median_px": float(np.median(dist[ok])) if ok.any() else float("nan"),
            "cos_min": float(cos.min()) if ok.any() else float("nan"),
            "cos_median": float(np.median(cos)) if ok.any() else float("nan")}


def mutual_nn(d0, d1):
    sim = d0 @ d1.T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i0 = np.nonzero(nn10[nn01] == np.arange(len(d0)))[0]
    return i0, nn01[i0]


def mma(ext, image, homography, thresholds=(1, 3)):
    h, w = image.shape[:2]
    warped = cv2.warpPerspective(image, homography, (w, h), flags=cv2.INTER_LINEAR)
    f0, f1 = ext.extract(image), ext.extract(warped)
    i0, i1 = mutual_nn(f0.descriptors, f1.descriptors)
    projected = cv2.perspectiveTransform(f0.keypoints[i0][None].astype(np.float64),
                                         homography)[0]
    err = np.linalg.norm(projected - f1.keypoints[i1], axis=1)
    return len(i0), [float((err <= t).mean()) if len(err) else 0.0 for t in thresholds]


def memory_child(variant: str, size: str, ckpt: str) -> None:
    width, height = map(int, size.split("x"))
    image = test_image(width, height)
    if variant == "official":
        official = import_official(parse_args([]).official)
        model = official[0](model_file=ckpt, use_cuda=False)
        x = torch.tensor(official[2](image, preprocessing="caffe")[None].astype(np.float32))
        base = _rss()
        with torch.no_grad():
            official[1](x, model, scales=[1])
    else:
        ext = D.D2Net(D.D2NetConfig(precision=variant), network=_network(ckpt))
        big = cv2.resize(image, (8000, 6000), interpolation=cv2.INTER_LINEAR)
        base = _rss()
        ext.extract(big)
    print(json.dumps({"peak_above_baseline_mb": (_status_kb("VmHWM") * 1024 - base) / 2**20}))


def _rss() -> int:
    return _status_kb("VmRSS") * 1024


def _status_kb(field: str) -> int:
    """A /proc/self/status field in kB. VmHWM (peak RSS) restarts at exec, unlike
    getrusage's ru_maxrss, which keeps the forking parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _network(ckpt) -> D.D2NetNetwork:
    network = D.D2NetNetwork()
    D.load_d2net_checkpoint(network, ckpt)
    return network


def memory_of(variant: str, size: str, ckpt: Path) -> float | None:
    result = subprocess.run([sys.executable, __file__, "--memory-child", variant, size,
                             str(ckpt)], capture_output=True, text=True)
    if result.returncode:
        print(f"  memory run {variant} failed (exit {result.returncode}): "
              f"{result.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_above_baseline_mb"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    workdir = Path(tempfile.mkdtemp(prefix="d2net_bench_"))
    ckpt = checkpoint_path(args.checkpoint, workdir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, checkpoint {ckpt}")
    official = import_official(args.official)
    if official is None:
        print(f"official D2-Net code not found at {args.official} (clone "
              "mihaidusmanu/d2-net there); printing our figures only")
    else:
        official_model = official[0](model_file=str(ckpt), use_cuda=False).eval()
    variants = {
        "fp32": D.D2Net(D.D2NetConfig(), network=_network(ckpt)),
        "fp32-cl": D.D2Net(D.D2NetConfig(channels_last=True), network=_network(ckpt)),
        "bf16": D.D2Net(D.D2NetConfig(precision="bf16"), network=_network(ckpt)),
    }
    peak32, peak16 = gemm_peak(torch.float32), gemm_peak(torch.bfloat16)
    print(f"GEMM peak (best torch.mm): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")

    for size in args.sizes.split(","):
        width, height = map(int, size.split("x"))
        image = test_image(width, height)
        gflop = trunk_gflop(height, width)
        peak32, peak16 = gemm_peak(torch.float32, peak32), gemm_peak(torch.bfloat16, peak16)
        print(f"\n== {width}x{height} (trunk {gflop:.0f} GFLOP; GEMM peak so far: fp32 "
              f"{peak32:.0f}, bf16 {peak16:.0f} GFLOP/s) ==")
        best: dict[str, list[float]] = {}
        outputs = {}
        for _ in range(args.repeats):  # interleaved, best of repeats
            if official is not None:
                with torch.no_grad():
                    start = time.perf_counter()
                    x = torch.tensor(official[2](image, preprocessing="caffe")[None]
                                     .astype(np.float32))
                    kp, scores, desc = official[1](x, official_model, scales=[1])
                    total = time.perf_counter() - start
                    trunk, _ = timed(official_model.dense_feature_extraction, x)
                outputs["official"] = (kp, desc)
                _keep_best(best, "official", [total, trunk, total - trunk])
            for name, ext in variants.items():
                total, trunk, post, features = run_ours(ext, image)
                outputs[name] = features
                _keep_best(best, name, [total, trunk, post])
        ref_total = best["official"][0] if "official" in best else None
        if ref_total:
            t, tr, post = best["official"]
            print(f"official   total {t:6.2f} s  trunk {tr:6.2f} s ({gflop / tr:5.0f} GFLOP/s, "
                  f"{gflop / tr / peak32:4.0%} of fp32 peak)  rest {post:6.2f} s")
        for name in variants:
            t, tr, post = best[name]
            peak = peak16 if name == "bf16" else peak32
            speed = f"  {ref_total / t:4.1f}x official" if ref_total else ""
            print(f"{name:10s} total {t:6.2f} s  trunk {tr:6.2f} s ({gflop / tr:5.0f} GFLOP/s, "
                  f"{gflop / tr / peak:4.0%} of {'bf16' if name == 'bf16' else 'fp32'} peak)"
                  f"  detect+refine+sample {post:5.3f} s = {post / tr:5.1%} of trunk{speed}")
        if "official" in outputs:
            kp, desc = outputs["official"]
            for name in ("fp32", "fp32-cl"):
                f = outputs[name]
                r = compare(official_to_ours(kp), desc, f.keypoints, f.descriptors, 0.01)
                print(f"parity {name:8s} vs official: {r['matched']}/{r['n_a']} official rows "
                      f"matched within 0.01 px (ours {r['n_b']}), max {r['max_px']:.1e} px, "
                      f"descriptor cosine min {r['cos_min']:.7f}")
        f32, f16 = outputs["fp32"], outputs["bf16"]
        r = compare(f32.keypoints, f32.descriptors, f16.keypoints, f16.descriptors, 0.5)
        print(f"bf16 vs fp32: {r['matched']}/{r['n_a']} fp32 keypoints found within 0.5 px "
              f"(bf16 has {r['n_b']}), median {r['median_px']:.3f} px, max {r['max_px']:.3f} px, "
              f"descriptor cosine median {r['cos_median']:.5f} min {r['cos_min']:.4f}")
        if size == args.sizes.split(",")[0]:
            homography = np.array([[0.9, 0.15, 40.0], [-0.1, 0.95, 30.0], [5e-5, 2e-5, 1.0]])
            for name in ("fp32", "bf16"):
                n, (mma1, mma3) = mma(variants[name], image, homography)
                print(f"matching {name}: {n} mutual-NN matches, MMA@1px {mma1:.3f}, "
                      f"MMA@3px {mma3:.3f} (homography pair)")
    if not args.no_memory:
        print("\npeak memory of one extraction (max RSS above the baseline, fresh process):")
        if official is not None:
            mb = memory_of("official", "1600x1200", ckpt)
            print(f"  official  1600x1200 input: {mb:.0f} MB" if mb else "  official: n/a")
        for variant in ("fp32", "bf16"):
            mb = memory_of(variant, "1600x1200", ckpt)
            print(f"  ours {variant}  8000x6000 image -> 1600x1200 input: {mb:.0f} MB"
                  if mb else f"  ours {variant}: n/a")


def _keep_best(best, name, values):
    best[name] = values if name not in best else [min(a, b) for a, b in zip(best[name], values)]


if __name__ == "__main__":
    main()
