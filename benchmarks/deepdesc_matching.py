"""DeepDesc vs SIFT descriptors on the same SIFT keypoints: RANSAC-verified mutual-NN matches.

    python benchmarks/deepdesc_matching.py [--max-keypoints 2048] [--sweep]

For every image pair (lightglue_assets pairs and sacre_coeur pairs) the SIFT keypoints of
each image (OpenCV's default detector, the strongest by response) are described by SIFT
(L2-normalised), RootSIFT and DeepDesc; descriptors are matched by mutual nearest
neighbour (L2) and verified with a fundamental-matrix RANSAC (OpenCV USAC_MAGSAC, 1 px,
confidence 0.9999). Printed: verified matches and inlier ratio per pair and their sums.
``--sweep`` also tries other support factors / orientation / anti-aliasing settings: it is
how the DeepDesc default patch support was chosen.

Needs the staged shared data (``../shared``) and DeepDesc weights (SFMFEAT_WEIGHTS_DIR or
``../shared/weights``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sfmfeat.extractors import create_extractor
from sfmfeat.extractors.deepdesc import DeepDesc, DeepDescConfig
from sfmfeat.images import read_image
from sfmfeat.matchers import create_matcher

SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR",
                             Path(__file__).resolve().parents[1].parent / "shared"))


def image_pairs() -> list[tuple[str, Path, Path]]:
    lg = SHARED / "data" / "lightglue_assets"
    sc = SHARED / "data" / "sacre_coeur" / "mapping"
    pairs = [("lightglue", lg / "DSC_0410.JPG", lg / "DSC_0411.JPG"),
             ("lightglue", lg / "sacre_coeur1.jpg", lg / "sacre_coeur2.jpg")]
    # the sacre_coeur pairs with the most overlap (most SIFT verified matches among all 45),
    # covering all 10 images; pairs that barely overlap measure only RANSAC noise
    pairs += [("sacre_coeur", sc / f"{a}.jpg", sc / f"{b}.jpg") for a, b in SACRE_COEUR_PAIRS]
    return pairs


SACRE_COEUR_PAIRS = [
    ("10265353_3838484249", "60584745_2207571072"),
    ("71295362_4051449754", "93341989_396310999"),
    ("17295357_9106075285", "93341989_396310999"),
    ("51091044_3486849416", "71295362_4051449754"),
    ("51091044_3486849416", "93341989_396310999"),
    ("44120379_8371960244", "71295362_4051449754"),
    ("02928139_3448003521", "44120379_8371960244"),
    ("32809961_8274055477", "60584745_2207571072"),
    ("03903474_1471484089", "44120379_8371960244"),
]


def verify(kp0, kp1, matches) -> int:
    if len(matches) < 8:
        return 0
    _, mask = cv2.findFundamentalMat(kp0[matches[:, 0]], kp1[matches[:, 1]], cv2.USAC_MAGSAC,
                                     1.0, 0.9999, 10000)
    return 0 if mask is None else int(mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--sweep", action="store_true",
                        help="also DeepDesc with other support factors and toggles")
    parser.add_argument("--factors", default="5,8,11,22,30",
                        help="support factors tried by --sweep (side / keypoint size)")
    parser.add_argument("--sacre-coeur-only", action="store_true")
    parser.add_argument("--pairs", type=int, default=None, help="only the first N pairs")
    args = parser.parse_args()
    if "SFMFEAT_WEIGHTS_DIR" not in os.environ:
        os.environ["SFMFEAT_WEIGHTS_DIR"] = str(SHARED / "weights")
    cv2.setRNGSeed(0)
    # OpenCV's default SIFT detector (the papers' setting), the strongest by response, with
    # Lowe's L2-normalised descriptor; RootSIFT is derived from it (L1-root is scale-free)
    sift = create_extractor("rootsift", {"max_keypoints": args.max_keypoints,
                                         "normalization": "l2"})
    matcher = create_matcher("mnn")
    base = DeepDescConfig()
    configs = {"deepdesc": base}
    if args.sweep:
        for factor in (float(f) for f in args.factors.split(",")):
            if factor != base.support_factor:
                configs[f"f{factor:g}"] = DeepDescConfig(support_factor=factor)
        configs["upright" if base.oriented else "oriented"] = DeepDescConfig(
            oriented=not base.oriented)
        configs["no-antialias" if base.antialias else "antialias"] = DeepDescConfig(
            antialias=not base.antialias)
    describers = {name: DeepDesc(conf) for name, conf in configs.items()}

    pairs = image_pairs()
    if args.sacre_coeur_only:
        pairs = [p for p in pairs if p[0] == "sacre_coeur"]
    pairs = pairs[:args.pairs]
    cache: dict[Path, dict] = {}
    timing = {name: 0.0 for name in describers}

    def features(path: Path) -> dict:
        if path not in cache:
            image = read_image(path)
            feats = sift.extract(image)
            root = feats.descriptors / np.abs(feats.descriptors).sum(1, keepdims=True)
            out = {"kp": feats.keypoints, "sift": feats.descriptors, "rootsift": np.sqrt(root)}
            for name, d in describers.items():
                start = time.perf_counter()
                out[name] = d.describe(image, feats).descriptors
                timing[name] += time.perf_counter() - start
            cache[path] = out
        return cache[path]

    methods = ["sift", "rootsift"] + list(describers)
    totals = {(group, m): [0, 0] for group in ("lightglue", "sacre_coeur") for m in methods}
    print(f"{'pair':48s} " + " ".join(f"{m:>16s}" for m in methods))
    for group, p0, p1 in pairs:
        f0, f1 = features(p0), features(p1)
        cells = []
        for m in methods:
            matches, _ = matcher.match(f0[m], f1[m])
            inl = verify(f0["kp"], f1["kp"], matches)
            totals[group, m][0] += inl
            totals[group, m][1] += len(matches)
            cells.append(f"{inl:5d}/{len(matches):5d} {inl / max(len(matches), 1):4.2f}")
        print(f"{p0.stem[:22]:>22s}-{p1.stem[:22]:<22s}    " + " ".join(f"{c:>16s}"
                                                                    for c in cells))
    print("\ntotals: verified matches / mutual-NN matches, inlier ratio")
    for group in ("lightglue", "sacre_coeur"):
        if not any(totals[group, m][1] for m in methods):
            continue
        row = " ".join(f"{m}={totals[group, m][0]}/{totals[group, m][1]} "
                       f"({totals[group, m][0] / max(totals[group, m][1], 1):.3f})"
                       for m in methods)
        print(f"  {group}: {row}")
    for name, seconds in timing.items():
        print(f"  {name}: {seconds:.1f} s describing {len(cache)} images "
              f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
