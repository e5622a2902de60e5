"""Speed of the batched patch sampler + DeepDesc, against a per-keypoint cv2.warpAffine loop,
and CAPS seconds per image.

    python benchmarks/extract_patches.py [--keypoints 8192] [--repeats 3] [--threads N]

DeepDesc: SIFT keypoints (the strongest ``--keypoints``) of a sacre_coeur photo; their
64×64 patches are cut
- by ``extract_patches`` (one grid_sample per chunk of keypoints; no pyramid, the same
  geometry as the loop), and by ``DeepDesc.patches`` (the default: with the anti-aliasing
  pyramid), and
- by the reference: a Python loop calling ``cv2.warpAffine`` once per keypoint with
  dsize 64×64 (``affine_for_patch``: the same geometry, border replicate) — the strongest
  per-keypoint baseline (no full-image warps).
Printed: keypoints/s of sampling alone and of sampling + the CNN3 network (batched), and
ours / loop ratios, all measured in this run (best of ``--repeats``), plus how far the two
samplers' patches differ.

CAPS: seconds per image (SIFT keypoints excluded, ResUNet + sampling) on a 1024×768
image, with the released weights when present in the weights dir, else the random-weight
parity fixture (same network, same cost). The official CAPS code is not run here (it needs
torchvision, which does not import beside this torch); its network is the same sequence of
PyTorch ops, so its time per image is the same network cost.
"""

from __future__ import annotations

import argparse
import lzma
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sfmfeat.extractors import create_extractor
from sfmfeat.extractors.deepdesc import DeepDesc, DeepDescConfig, grayscale
from sfmfeat.extractors.patches import affine_for_patch, extract_patches
from sfmfeat.images import read_image

SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR",
                             Path(__file__).resolve().parents[1].parent / "shared"))
IMAGE = SHARED / "data" / "sacre_coeur" / "mapping" / "17295357_9106075285.jpg"


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def loop_patches(gray: np.ndarray, xy: np.ndarray, radii: np.ndarray, angles: np.ndarray,
                 size: int = 64) -> np.ndarray:
    out = np.empty((len(xy), 1, size, size), np.float32)
    for i in range(len(xy)):
        m = np.array(affine_for_patch(xy[i], radii[i], angles[i], size))
        out[i, 0] = cv2.warpAffine(gray, m, (size, size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
    return out


def bench_deepdesc(args) -> None:
    image = read_image(IMAGE)
    sift = create_extractor("rootsift", {"max_keypoints": args.keypoints,
                                         "contrast_threshold": 0.01})
    feats = sift.extract(image)
    deepdesc = DeepDesc(DeepDescConfig())
    factor = deepdesc.config.support_factor
    xy = feats.keypoints.astype(np.float64)
    radii = feats.scales.astype(np.float64) * factor / 2
    angles = feats.orientations.astype(np.float64)
    gray = grayscale(image)
    n = len(xy)
    print(f"DeepDesc: {n} SIFT keypoints on {IMAGE.name} ({image.shape[1]}x{image.shape[0]}), "
          f"support {factor:g} x size, 64x64 patches, {torch.get_num_threads()} torch threads, "
          f"{cv2.getNumThreads()} cv2 threads")

    t_ours, ours = best_of(args.repeats, lambda: extract_patches(
        torch.from_numpy(gray)[None], xy, radii, angles, 64))
    t_default, default = best_of(args.repeats, lambda: deepdesc.patches(image, feats))
    t_loop, loop = best_of(args.repeats, lambda: loop_patches(gray, xy, radii, angles))
    diff = np.abs(ours.numpy() - loop)
    with torch.inference_mode():
        t_net, _ = best_of(1, lambda: torch.cat([deepdesc.net(default[i:i + 1024])
                                                 for i in range(0, n, 1024)]))
    print(f"  patch agreement ours vs loop: mean |diff| {diff.mean():.4f}, "
          f"99.9% {np.quantile(diff, 0.999):.3f} grey levels (cv2 quantises positions to 1/32 px)")
    rows = [("extract_patches (same geometry as loop)", t_ours),
            ("DeepDesc.patches (default, anti-aliased)", t_default),
            ("cv2.warpAffine loop (reference)", t_loop)]
    print(f"  {'sampler':44s} {'sampling kp/s':>14s} {'vs loop':>8s} "
          f"{'+network kp/s':>14s} {'vs loop':>8s}")
    for name, t in rows:
        print(f"  {name:44s} {n / t:14.0f} {t_loop / t:7.2f}x "
              f"{n / (t + t_net):14.1f} {(t_loop + t_net) / (t + t_net):7.2f}x")
    print(f"  network alone: {n / t_net:.1f} patches/s ({t_net:.2f} s for {n})")


def bench_caps(args) -> None:
    from sfmfeat.extractors.caps import Caps, CapsConfig, WEIGHTS
    from sfmfeat.weights import weights_dir

    tmp = None
    source = "released weights"
    if not (weights_dir() / WEIGHTS.relative_path).is_file():
        fixture = SHARED / "fixtures" / "caps" / "caps_rand.pth.xz"
        if not fixture.is_file():
            print("CAPS: no weights and no fixture checkpoint; skipped")
            return
        tmp = Path(tempfile.mkdtemp(prefix="sfmfeat-caps-bench-"))
        (tmp / "caps").mkdir()
        with lzma.open(fixture) as src, open(tmp / WEIGHTS.relative_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.environ["SFMFEAT_WEIGHTS_DIR"] = str(tmp)
        source = "random-weight fixture checkpoint (same network and cost)"
    try:
        caps = Caps(CapsConfig())
        image = cv2.resize(read_image(IMAGE), (1024, 768), interpolation=cv2.INTER_AREA)
        feats = create_extractor("rootsift", {"max_keypoints": args.keypoints}).extract(image)
        seconds, _ = best_of(args.repeats, lambda: caps.describe(image, feats))
        print(f"CAPS: {seconds:.2f} s per 1024x768 image ({len(feats)} keypoints, {source}, "
              f"{torch.get_num_threads()} torch threads); official code not run here")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keypoints", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and cv2 threads (default: library defaults)")
    parser.add_argument("--skip-caps", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))
    bench_deepdesc(args)
    if not args.skip_caps:
        bench_caps(args)


if __name__ == "__main__":
    main()
