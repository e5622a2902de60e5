"""The Sacre-Coeur night query against every mapping image: RANSAC-verified matches per
extractor.

    python benchmarks/night_query.py [sift disk r2d2 aliked-n16 ...] [--conf disk:max_edge=1600]
        [--matcher mnn|lightglue|...]

Every extractor preset named on the command line extracts features from
``query/night.jpg`` and the ten ``mapping`` images with its default settings. Each
(query, mapping) pair is matched by mutual nearest neighbour (matcher preset ``mnn``, no
ratio test; ``--matcher`` names another preset, e.g. ``lightglue``) and verified by a fundamental matrix (OpenCV USAC_ACCURATE, 2 px
Sampson threshold, confidence 0.9999, 10000 iterations, RNG seed 0, identical for all
extractors). A pair counts as verified when it keeps at least ``--min-inliers`` (15).
The first extractor named (``sift`` by default) is the reference of the ratio column.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))

THRESHOLD_PX = 2.0


def verified_inliers(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray) -> int:
    if len(matches) < 8:
        return 0
    cv2.setRNGSeed(0)
    _, mask = cv2.findFundamentalMat(kp0[matches[:, 0]].astype(np.float64),
                                     kp1[matches[:, 1]].astype(np.float64),
                                     cv2.USAC_ACCURATE, THRESHOLD_PX, 0.9999, 10000)
    return 0 if mask is None else int(mask.sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="night query vs mapping images")
    parser.add_argument("extractors", nargs="*", default=["sift", "disk", "r2d2"])
    parser.add_argument("--conf", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="override a field of one extractor's config")
    parser.add_argument("--min-inliers", type=int, default=15)
    parser.add_argument("--matcher", default="mnn", help="matcher preset (default mnn)")
    parser.add_argument("--data", type=Path, default=SHARED / "data/sacre_coeur")
    args = parser.parse_args(argv)
    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))

    from sfmfeat.config import parse_overrides
    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import list_images, read_image
    from sfmfeat.matchers import create_matcher

    overrides: dict[str, list[str]] = {}
    for item in args.conf:
        name, _, kv = item.partition(":")
        overrides.setdefault(name, []).append(kv)
    mapping = list_images(args.data / "mapping")
    query = read_image(args.data / "query" / "night.jpg")
    images = [read_image(args.data / "mapping" / n) for n in mapping]

    results: dict[str, dict] = {}
    for name in args.extractors:
        extractor = create_extractor(name, parse_overrides(overrides.get(name)))
        matcher = create_matcher(args.matcher, features_method=name)
        start = time.perf_counter()
        fq, *feats = [dataclasses.replace(extractor.extract(im), image_size=im.shape[1::-1])
                      for im in (query, *images)]
        seconds = time.perf_counter() - start
        mutual, inliers = [], []
        for f in feats:
            m, _ = matcher.match(fq, f)
            mutual.append(len(m))
            inliers.append(verified_inliers(fq.keypoints, f.keypoints, m))
        results[name] = {"n_query": len(fq), "mutual": mutual, "inliers": inliers,
                         "seconds": seconds}
        print(f"{name}: {len(fq)} keypoints on the night query, {sum(mutual)} {args.matcher} "
              f"matches, {sum(inliers)} verified, extraction {seconds:.0f} s", flush=True)

    names = list(results)
    print(f"\nRANSAC-verified matches (F, {THRESHOLD_PX:g} px) night.jpg -> mapping image")
    print(f"{'mapping image':<28}" + "".join(f"{n:>12}" for n in names))
    for i, image_name in enumerate(mapping):
        print(f"{image_name:<28}" + "".join(f"{results[n]['inliers'][i]:>12}" for n in names))
    print(f"{'TOTAL verified':<28}" + "".join(f"{sum(results[n]['inliers']):>12}"
                                              for n in names))
    print(f"{'pairs >= ' + str(args.min_inliers) + ' inliers':<28}" + "".join(
        f"{sum(v >= args.min_inliers for v in results[n]['inliers']):>12}" for n in names))
    print(f"{args.matcher + ' matches':<28}" + "".join(f"{sum(results[n]['mutual']):>12}"
                                                 for n in names))
    print(f"{'query keypoints':<28}" + "".join(f"{results[n]['n_query']:>12}" for n in names))
    reference = names[0]
    base = max(sum(results[reference]["inliers"]), 1)
    print(f"{'ratio vs ' + reference:<28}" + "".join(
        f"{sum(results[n]['inliers']) / base:>11.2f}x" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
