"""Parity of sfmfeat's DISK and R2D2 with the official implementations.

    python benchmarks/parity_disk_r2d2.py [--methods disk r2d2] [--images DIR] [--limit N]

The official code is run from checkouts outside the repository, in a subprocess
(``official_disk_r2d2.py``): ``$SFMFEAT_OFFICIAL_DISK`` (default /tmp/official_disk, with
its unets / torch-dimcheck / torch-localize submodules under ``submodules/``) and
``$SFMFEAT_OFFICIAL_R2D2`` (default /tmp/official_r2d2). Weights come from
``$SFMFEAT_WEIGHTS_DIR`` (default ../shared/weights). Both sides get the same decoded
pixels (written once as PNG) and the default preset settings.

Per image and overall it prints: keypoint counts, the share of official keypoints that
have one of ours within 0.5 px (same R2D2 pyramid level) and the reverse, and the cosine
of the descriptors of those matched pairs.
Acceptance: >= 99 % of keypoints within 0.5 px, cosine >= 0.999.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
RUNNER = Path(__file__).with_name("official_disk_r2d2.py")
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))


def official_pythonpath(method: str) -> str | None:
    """PYTHONPATH for the official checkout of ``method``, or None when it is absent."""
    if method == "disk":
        root = Path(os.environ.get("SFMFEAT_OFFICIAL_DISK", "/tmp/official_disk"))
        paths = [root] + [root / "submodules" / s
                          for s in ("unets", "torch-dimcheck", "torch-localize")]
        marker = root / "disk" / "model" / "disk.py"
    else:
        root = Path(os.environ.get("SFMFEAT_OFFICIAL_R2D2", "/tmp/official_r2d2"))
        paths = [root]
        marker = root / "extract.py"
    if not marker.is_file() or not all(p.is_dir() for p in paths):
        return None
    return os.pathsep.join(str(p) for p in paths)


def weight_file(method: str) -> Path:
    from sfmfeat.extractors.disk import DISK_DEPTH
    from sfmfeat.extractors.r2d2 import R2D2_WASF_N16
    from sfmfeat.weights import resolve

    return resolve(DISK_DEPTH if method == "disk" else R2D2_WASF_N16, download=False)


def run_official(method: str, images: list[Path], out: Path, extra: list[str] = ()):
    pythonpath = official_pythonpath(method)
    if pythonpath is None:
        return None
    env = dict(os.environ, PYTHONPATH=pythonpath)
    # -P: the benchmarks folder (which has its own extract.py) is not put on sys.path
    cmd = [sys.executable, "-P", str(RUNNER), method, *map(str, images),
           "--weights", str(weight_file(method)), "--out", str(out), *extra]
    subprocess.run(cmd, check=True, env=env)
    data = np.load(out)
    return [{k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")}
            for i in range(len(images))]


def compare(ours, official, radius: float = 0.5) -> dict:
    """Nearest-neighbour association of keypoints (per R2D2 level when scales exist)."""
    def groups(scales, n):
        if scales is None:
            return {0: np.arange(n)}
        keys = np.round(np.log2(np.asarray(scales, np.float64)) * 4).astype(int)
        return {k: np.flatnonzero(keys == k) for k in np.unique(keys)}

    kp_a, kp_b = np.asarray(ours["keypoints"], np.float64), official["keypoints"]
    ga = groups(ours.get("scales"), len(kp_a))
    gb = groups(official.get("scales"), len(kp_b))
    matched_b = np.zeros(len(kp_b), bool)
    matched_a = np.zeros(len(kp_a), bool)
    cosines = []
    for key, ib in gb.items():
        ia = ga.get(key, np.zeros(0, int))
        if not len(ia) or not len(ib):
            continue
        dist, nn = cKDTree(kp_a[ia]).query(kp_b[ib])
        ok = dist <= radius
        matched_b[ib[ok]] = True
        da = ours["descriptors"][ia[nn[ok]]]
        db = official["descriptors"][ib[ok]]
        cosines.append(np.sum(da * db, 1) / np.linalg.norm(da, axis=1)
                       / np.linalg.norm(db, axis=1))
        dist_a, _ = cKDTree(kp_b[ib]).query(kp_a[ia])
        matched_a[ia[dist_a <= radius]] = True
    cos = np.concatenate(cosines) if cosines else np.zeros(0)
    return {"n_ours": len(kp_a), "n_official": len(kp_b),
            "official_matched": matched_b.mean() if len(kp_b) else 1.0,
            "ours_matched": matched_a.mean() if len(kp_a) else 1.0,
            "cosines": cos}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="DISK/R2D2 parity with the official code")
    parser.add_argument("--methods", nargs="+", default=["disk", "r2d2"],
                        choices=["disk", "r2d2"])
    parser.add_argument("--images", type=Path, default=SHARED / "data/sacre_coeur/mapping")
    parser.add_argument("--start", type=int, default=0, help="skip the first images")
    parser.add_argument("--limit", type=int, default=0, help="N images only")
    args = parser.parse_args(argv)
    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))

    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import list_images, read_image

    names = list_images(args.images)[args.start:]
    names = names[: args.limit or None]
    with tempfile.TemporaryDirectory() as tmp:
        pngs, rgbs = [], []
        for i, name in enumerate(names):
            rgb = read_image(args.images / name)
            png = Path(tmp) / f"{i:03d}.png"
            cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            pngs.append(png)
            rgbs.append(rgb)
        for method in args.methods:
            official = run_official(method, pngs, Path(tmp) / f"{method}.npz")
            if official is None:
                print(f"{method}: official implementation not found (set "
                      f"SFMFEAT_OFFICIAL_{method.upper()}); parity not measured")
                continue
            extractor = create_extractor(method)
            print(f"\n{method}: {'image':<28} {'n_ours':>7} {'n_off':>7} {'off<=0.5':>9} "
                  f"{'ours<=0.5':>9} {'cos_min':>8} {'cos_p1':>8} {'cos>=.999':>9}")
            totals = []
            for name, rgb, off in zip(names, rgbs, official):
                feats = extractor.extract(rgb)
                ours = {"keypoints": feats.keypoints, "descriptors": feats.descriptors,
                        "scales": feats.scales if method == "r2d2" else None}
                r = compare(ours, off)
                totals.append(r)
                cos = r["cosines"]
                print(f"{method}: {name:<28} {r['n_ours']:>7} {r['n_official']:>7} "
                      f"{r['official_matched']:>9.4f} {r['ours_matched']:>9.4f} "
                      f"{cos.min() if len(cos) else float('nan'):>8.5f} "
                      f"{np.percentile(cos, 1) if len(cos) else float('nan'):>8.5f} "
                      f"{(cos >= 0.999).mean() if len(cos) else float('nan'):>9.4f}")
            n_off = sum(r["n_official"] for r in totals)
            n_ours = sum(r["n_ours"] for r in totals)
            off_m = sum(r["official_matched"] * r["n_official"] for r in totals) / max(n_off, 1)
            ours_m = sum(r["ours_matched"] * r["n_ours"] for r in totals) / max(n_ours, 1)
            cos = np.concatenate([r["cosines"] for r in totals])
            print(f"{method}: ALL {len(totals)} images: keypoints ours {n_ours} official "
                  f"{n_off}; official within 0.5 px {100 * off_m:.2f} %, ours within 0.5 px "
                  f"{100 * ours_m:.2f} %; descriptor cosine min {cos.min():.6f} "
                  f"mean {cos.mean():.6f}, >= 0.999 for {100 * (cos >= 0.999).mean():.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
