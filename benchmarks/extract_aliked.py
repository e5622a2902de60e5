"""Seconds per image of sfmfeat's ALIKED at 1024×768 on CPU, against the official
implementation measured in the same run.

    python benchmarks/extract_aliked.py [--models aliked-n16 ...] [--images 2] [--rounds 2]
        [--repeat 2] [--threads 2]

Sacre-Coeur mapping images are resized to exactly 1024×768 (ALIKED then runs unresized).
Both sides get the same RGB arrays, the same torch thread count, one warm-up call per image
and ``--repeat`` timed calls; the best call per image is kept and averaged over images.
The two sides alternate ``--rounds`` times so that load from other processes hits both.
Wall seconds and CPU seconds (process time, all threads) are printed; on a shared machine
the CPU figure is the steadier one. The official code runs in a subprocess
(``official_aliked.py``) from ``$SFMFEAT_OFFICIAL_ALIKED`` (default /tmp/official_aliked)
with ``$SFMFEAT_OFFICIAL_PYTHON`` (default /tmp/venv_tv/bin/python, torch + torchvision);
when either is missing the script says so and prints sfmfeat's figures alone.

Ratio = official seconds / sfmfeat seconds: >= 1.0 means sfmfeat is no slower.
"""

from __future__ import annotations

import argparse
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

from parity_aliked import (MODELS, OFFICIAL, OFFICIAL_PYTHON, official_missing,  # noqa: E402
                           run_official)

SIZE = (1024, 768)
IMAGES = ["93341989_396310999.jpg", "03903474_1471484089.jpg", "10265353_3838484249.jpg"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["aliked-n16"], choices=MODELS)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official", type=Path, default=OFFICIAL)
    parser.add_argument("--official-python", type=Path, default=OFFICIAL_PYTHON)
    args = parser.parse_args(argv)

    import torch

    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import read_image

    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))
    torch.set_num_threads(args.threads)
    folder = SHARED / "data" / "sacre_coeur" / "mapping"
    images = [cv2.resize(read_image(folder / name), SIZE, interpolation=cv2.INTER_AREA)
              for name in IMAGES[:args.images]]
    why = official_missing(args.official, args.official_python)
    if why:
        print(f"official ALIKED unavailable ({why}): printing sfmfeat's figures only")
    print(f"{len(images)} images at {SIZE[0]}x{SIZE[1]}, {args.threads} threads, "
          f"best of {args.repeat} per image, {args.rounds} alternating rounds")
    for model in args.models:
        extractor = create_extractor(model, device="cpu")
        ours = {"wall": np.full(len(images), np.inf), "cpu": np.full(len(images), np.inf)}
        official = {"wall": np.full(len(images), np.inf), "cpu": np.full(len(images), np.inf)}
        counts = []
        for _ in range(args.rounds):
            for i, image in enumerate(images):
                counts.append(len(extractor.extract(image)))  # warm-up
                for _ in range(args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    extractor.extract(image)
                    ours["wall"][i] = min(ours["wall"][i], time.perf_counter() - t0)
                    ours["cpu"][i] = min(ours["cpu"][i], time.process_time() - c0)
            if why:
                continue
            for i, ref in enumerate(run_official(args.official, args.official_python, model,
                                                 images, args.repeat, args.threads)):
                official["wall"][i] = min(official["wall"][i], ref["wall"].min())
                official["cpu"][i] = min(official["cpu"][i], ref["cpu"].min())
        line = (f"{model}: sfmfeat {ours['wall'].mean():.3f} s/image wall, "
                f"{ours['cpu'].mean():.3f} s CPU ({np.mean(counts):.0f} keypoints)")
        if not why:
            line += (f"; official {official['wall'].mean():.3f} s wall, "
                     f"{official['cpu'].mean():.3f} s CPU; ratio official/sfmfeat: "
                     f"wall {official['wall'].mean() / ours['wall'].mean():.2f}x, "
                     f"CPU {official['cpu'].mean() / ours['cpu'].mean():.2f}x")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
