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
samplers' patches differ, and the memory floor: the time to allocate and write the output
array, which bounds the ratio any sampler can reach against the loop on this machine.

CAPS: seconds per image (SIFT keypoints excluded, ResUNet + sampling) on a 1024×768
image, with the released weights when present in the weights dir, else the random-weight
parity fixture (same network, same cost). With ``--official DIR --official-python PY`` (a
checkout of qianqianwang68/caps outside the repository and a Python that has torchvision,
e.g. a venv with torch 2.14.1 + torchvision 0.29.1) the official ``CAPSNet.extract_features``
runs in a subprocess on the same input, and the ratio and descriptor difference are printed;
without them the script says so and prints our figure alone.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sfmfeat.extractors import create_extractor
from sfmfeat.extractors.deepdesc import DeepDesc, DeepDescConfig
from sfmfeat.extractors.patches import affine_for_patch, extract_patches
from sfmfeat.images import read_image, to_grayscale

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
    gray = to_grayscale(image, rounded=False)
    n = len(xy)
    print(f"DeepDesc: {n} SIFT keypoints on {IMAGE.name} ({image.shape[1]}x{image.shape[0]}), "
          f"support {factor:g} x size, 64x64 patches, {torch.get_num_threads()} torch threads, "
          f"{cv2.getNumThreads()} cv2 threads")

    t_ours, ours = best_of(args.repeats, lambda: extract_patches(
        torch.from_numpy(gray)[None], xy, radii, angles, 64))
    t_default, default = best_of(args.repeats, lambda: deepdesc.patches(image, feats))
    t_loop, loop = best_of(args.repeats, lambda: loop_patches(gray, xy, radii, angles))
    diff = np.abs(ours.numpy() - loop)
    t_net, _ = best_of(1, lambda: deepdesc.describe_patches(default))
    # the least any sampler must spend: allocating and writing N float32 64×64 patches
    t_floor, _ = best_of(args.repeats, lambda: torch.empty(n, 1, 64, 64).fill_(1.0))
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
    print(f"  memory floor (allocate + write the {n} output patches): {t_floor * 1e3:.1f} ms, "
          f"i.e. no sampler can beat the loop by more than {t_loop / t_floor:.1f}x here")
    print(f"  network alone: {n / t_net:.1f} patches/s ({t_net:.2f} s for {n}, batches of "
          f"{deepdesc.batch_size})")


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
        seconds, ours = best_of(args.repeats, lambda: caps.describe(image, feats))
        print(f"CAPS: ours {seconds:.2f} s per 1024x768 image ({len(feats)} keypoints, {source}, "
              f"{torch.get_num_threads()} torch threads)")
        official = run_official_caps(args, caps, image, feats.keypoints)
        if official is None:
            return
        t_official, desc = official
        desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        print(f"CAPS: official {t_official:.2f} s per image; speed ours vs official "
              f"{t_official / seconds:.2f}x; max |normalised descriptor diff| "
              f"{np.abs(ours.descriptors - desc).max():.2e}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


_OFFICIAL_CAPS = r"""
import json, sys, time, types
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from CAPS.network import CAPSNet
data = np.load(sys.argv[2])
threads, repeats = int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
args = types.SimpleNamespace(pretrained=False, backbone="resnet50", coarse_feat_dim=128,
                             fine_feat_dim=128)
model = CAPSNet(args, "cpu")
state = torch.load(sys.argv[3], map_location="cpu")["state_dict"]
model.load_state_dict(state)
model.eval()
im = torch.from_numpy(data["image"])[None]
coord = torch.from_numpy(data["coord"])[None]
times = []
with torch.no_grad():
    for _ in range(repeats):
        start = time.perf_counter()
        feat_c, feat_f = model.extract_features(im, coord)
        desc = torch.cat((feat_c, feat_f), -1).squeeze(0)
        times.append(time.perf_counter() - start)
np.save(sys.argv[6], desc.numpy())
print(json.dumps({"seconds": min(times)}))
"""


def run_official_caps(args, caps, image, xy):
    """(seconds, N×256 descriptors) of the official code, or None (with a message)."""
    from sfmfeat.extractors.caps import WEIGHTS, preprocess
    from sfmfeat.weights import weights_dir

    if (not args.official or not (Path(args.official) / "CAPS" / "network.py").is_file()
            or not shutil.which(args.official_python)):
        print("CAPS: official code not available (pass --official DIR with a checkout of "
              "qianqianwang68/caps and --official-python PY with torchvision); no ratio")
        return None
    with tempfile.TemporaryDirectory(prefix="sfmfeat-caps-official-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, image=preprocess(image)[0].numpy(), coord=xy.astype(np.float32))
        out = Path(tmp) / "desc.npy"
        cmd = [args.official_python, "-c", _OFFICIAL_CAPS, str(Path(args.official).resolve()),
               str(inputs), str(weights_dir() / WEIGHTS.relative_path),
               str(torch.get_num_threads()), str(args.repeats), str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if result.returncode != 0:
            print("CAPS: official run failed: " + result.stderr.strip().splitlines()[-1])
            return None
        seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
        return seconds, np.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keypoints", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and cv2 threads (default: library defaults)")
    parser.add_argument("--skip-caps", action="store_true")
    parser.add_argument("--skip-deepdesc", action="store_true")
    parser.add_argument("--official", default="/tmp/official_caps",
                        help="checkout of qianqianwang68/caps (outside the repository)")
    parser.add_argument("--official-python", default="/tmp/venv_caps/bin/python",
                        help="a Python with torchvision for the official CAPS code")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))
    if not args.skip_deepdesc:
        bench_deepdesc(args)
    if not args.skip_caps:
        bench_caps(args)


if __name__ == "__main__":
    main()
