"""Run the OFFICIAL DISK (cvlab-epfl/disk) or R2D2 (naver/r2d2) implementation on images.

This is glue only: it imports the official code from a checkout outside this repository
(never copied here) and writes its output, converted to sfmfeat's keypoint convention,
to an .npz file. It is started by ``parity_disk_r2d2.py`` and ``extract_disk_r2d2.py``
in a subprocess whose PYTHONPATH holds the checkout, e.g.::

    PYTHONPATH=/tmp/official_r2d2 python benchmarks/official_disk_r2d2.py r2d2 \\
        --weights W.pt --out out.npz IMG...

What is official and what is glue:
- DISK: the network (``disk.DISK``), its ``features(kind="nms", window_size, cutoff=0, n)``
  detection, descriptor sampling and normalisation are official. ``detect.py`` can only
  resize into a fixed (height, width) box, so the glue resizes to a long side as sfmfeat
  does (bilinear, antialiased), zero-pads right/bottom to a multiple of 16 as
  ``detect.py``'s ``Image._pad`` does, and drops keypoints in the padding after top-k as
  ``detect.py``'s ``to_image_coord`` mask does.
- R2D2: ``extract.load_network``, ``NonMaxSuppression`` and ``extract_multiscale`` are
  official; the top-k is ``extract.py``'s ``scores.argsort()[-top_k:]``. torchvision is
  not importable beside this torch, so ``tools.dataloader.norm_RGB`` (ToTensor +
  Normalize) is replaced by the same arithmetic.
- Import-only dependencies of the official packages that inference never calls
  (imageio, tensorboard's logger) are stubbed.

Keypoints are converted to pixel centres at integer coordinates: DISK
``(x + 0.5) · W / w - 0.5`` from its network-input pixels; R2D2 from ``x · W / w`` to
``(x + 0.5) · W / w - 0.5`` using the level size recovered from the official scale.
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import numpy as np


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run_disk(args, images):
    import torch
    import torch.nn.functional as F

    sys.modules.setdefault("imageio", types.ModuleType("imageio"))
    logger = types.ModuleType("disk.common.logger")
    logger.Logger = object
    sys.modules["disk.common.logger"] = logger
    from disk import DISK  # official

    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    model = DISK(window=8, desc_dim=128)          # as detect.py
    model.load_state_dict(state["extractor"])
    model.eval()

    def one(rgb):
        h, w = rgb.shape[:2]
        bitmap = torch.from_numpy(np.array(rgb)).to(torch.float32)
        bitmap = bitmap.permute(2, 0, 1)[None] / 255.0
        nh, nw = h, w
        if args.max_edge and max(h, w) > args.max_edge:
            s = args.max_edge / max(h, w)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            bitmap = F.interpolate(bitmap, size=(nh, nw), mode="bilinear",
                                   align_corners=False, antialias=True)
        bitmap = F.pad(bitmap, (0, -nw % 16, 0, -nh % 16))
        with torch.no_grad():
            feats = model.features(bitmap, kind="nms", window_size=args.nms_window,
                                   cutoff=0.0, n=args.max_keypoints)[0]
        kp, desc, score = feats.kp.numpy(), feats.desc.numpy(), feats.kp_logp.numpy()
        inside = (kp[:, 0] < nw) & (kp[:, 1] < nh)
        kp, desc, score = kp[inside].astype(np.float64), desc[inside], score[inside]
        kp[:, 0] = (kp[:, 0] + 0.5) * (w / nw) - 0.5
        kp[:, 1] = (kp[:, 1] + 0.5) * (h / nh) - 0.5
        return kp, desc, score, None

    return one


def run_r2d2(args, images):
    import torch

    dataloader = types.ModuleType("tools.dataloader")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def norm_rgb(img):
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        return (t - mean) / std

    dataloader.norm_RGB = norm_rgb
    sys.modules["tools.dataloader"] = dataloader
    import extract  # official

    net = extract.load_network(args.weights)
    detector = extract.NonMaxSuppression(rel_thr=0.7, rep_thr=0.7)
    scale_f = 2 ** 0.25

    def one(rgb):
        h, w = rgb.shape[:2]
        img = extract.norm_RGB(rgb)[None]
        xys, desc, scores = extract.extract_multiscale(
            net, img, detector, scale_f=scale_f, min_scale=0.0, max_scale=1.0,
            min_size=args.min_size, max_size=args.max_size)
        xys, desc, scores = xys.numpy(), desc.numpy(), scores.numpy()
        idxs = scores.argsort()[-args.max_keypoints or None:]
        xys, desc, scores = xys[idxs].astype(np.float64), desc[idxs], scores[idxs]
        # the level of each keypoint from its official scale 32 / s
        levels = [scale_f ** -k for k in range(64)]
        s = np.array([min(levels, key=lambda v: abs(32 / v - size)) for size in xys[:, 2]])
        nw = np.array([round(w * v) for v in s])
        nh = np.array([round(h * v) for v in s])
        kp = np.stack([xys[:, 0] + 0.5 * w / nw - 0.5, xys[:, 1] + 0.5 * h / nh - 0.5], 1)
        return kp, desc, scores, xys[:, 2]

    return one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["disk", "r2d2"])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-keypoints", type=int, default=5000)
    parser.add_argument("--max-edge", type=int, default=1024)       # disk
    parser.add_argument("--nms-window", type=int, default=5)        # disk
    parser.add_argument("--min-size", type=int, default=256)        # r2d2
    parser.add_argument("--max-size", type=int, default=1024)       # r2d2
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    one = (run_disk if args.method == "disk" else run_r2d2)(args, args.images)
    out = {}
    for i, path in enumerate(args.images):
        rgb = _read_rgb(path)
        times, cpu_times = [], []
        for _ in range(args.repeat):
            start, cpu_start = time.perf_counter(), time.process_time()
            kp, desc, score, size = one(rgb)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        out[f"{i}/keypoints"] = kp
        out[f"{i}/descriptors"] = desc
        out[f"{i}/scores"] = score
        if size is not None:
            out[f"{i}/scales"] = size
        out[f"{i}/times"] = np.array(times)
        out[f"{i}/cpu_times"] = np.array(cpu_times)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
