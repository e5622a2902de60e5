"""Seconds per image of sfmfeat's DISK and R2D2 at 1024×768 on CPU, against the official
implementations measured in the same run.

    python benchmarks/extract_disk_r2d2.py [--methods disk r2d2] [--images 1] [--repeat 2]

Sacre-Coeur mapping images are resized to exactly 1024×768 (so DISK runs unresized and
R2D2 runs its full 9-level pyramid from 1024 px to 256 px). Each implementation runs
every image ``--repeat`` times after loading its weights; the best time per image is kept
(the first call also pays one-off allocations) and averaged over the images. Wall-clock
and process CPU time are both reported: on a shared machine the CPU time is the steadier
figure. The
official code runs in a subprocess (``official_disk_r2d2.py``) from
``$SFMFEAT_OFFICIAL_DISK`` / ``$SFMFEAT_OFFICIAL_R2D2`` (default /tmp/official_disk,
/tmp/official_r2d2); both sides use torch's default thread count. When a checkout is
missing the script says so and prints sfmfeat's figures alone.

Ratio = official seconds / sfmfeat seconds: >= 1.0 means sfmfeat is no slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))

from parity_disk_r2d2 import run_official  # noqa: E402  (beside this script)

SIZE = (1024, 768)
IMAGES = ["93341989_396310999.jpg", "03903474_1471484089.jpg", "10265353_3838484249.jpg"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="DISK/R2D2 extraction speed vs official")
    parser.add_argument("--methods", nargs="+", default=["disk", "r2d2"],
                        choices=["disk", "r2d2"])
    parser.add_argument("--images", type=int, default=1, help="how many images (1-3)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))

    import torch

    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import read_image

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        rgbs, pngs = [], []
        for i, name in enumerate(IMAGES[: args.images]):
            rgb = read_image(SHARED / "data/sacre_coeur/mapping" / name)
            rgb = cv2.resize(rgb, SIZE, interpolation=cv2.INTER_AREA)
            png = Path(tmp) / f"{i}.png"
            cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            rgbs.append(rgb)
            pngs.append(png)
        for method in args.methods:
            extractor = create_extractor(method)
            ours, ours_cpu, counts = [], [], []
            for rgb in rgbs:
                times, cpu_times = [], []
                for _ in range(args.repeat):
                    start, cpu_start = time.perf_counter(), time.process_time()
                    feats = extractor.extract(rgb)
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.process_time() - cpu_start)
                ours.append(min(times))
                ours_cpu.append(min(cpu_times))
                counts.append(len(feats))
            ours_s, ours_c = float(np.mean(ours)), float(np.mean(ours_cpu))
            official = run_official(method, pngs, Path(tmp) / f"{method}.npz",
                                    ["--repeat", str(args.repeat)])
            line = (f"{method}: {SIZE[0]}x{SIZE[1]}, {len(rgbs)} image(s): sfmfeat "
                    f"{ours_s:.2f} s/image wall, {ours_c:.2f} s CPU "
                    f"({np.mean(counts):.0f} keypoints)")
            if official is None:
                print(line + f"; official implementation not found (set "
                      f"SFMFEAT_OFFICIAL_{method.upper()}), no ratio")
                continue
            off_s = float(np.mean([o["times"].min() for o in official]))
            off_c = float(np.mean([o["cpu_times"].min() for o in official]))
            n_off = np.mean([len(o["keypoints"]) for o in official])
            print(line + f"; official {off_s:.2f} s/image wall, {off_c:.2f} s CPU "
                         f"({n_off:.0f} keypoints); ratio official/sfmfeat "
                         f"{off_s / ours_s:.2f}x wall, {off_c / ours_c:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
