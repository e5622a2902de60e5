"""Parity of sfmfeat's ALIKED with the official implementation on the sacre_coeur images.

    python benchmarks/parity_aliked.py [--models aliked-n16 ...] [--resize-max 1024|none]

Each mapping image is read with ``sfmfeat.images.read_image`` and resized as sfmfeat does
(long side ``--resize-max``, area interpolation); the official ``ALIKED.run`` gets that
same RGB array (``official_aliked.py`` in a subprocess), and its keypoints are mapped to
original pixels with the same ``(x + 0.5)·s - 0.5`` rule. sfmfeat extracts from the
original image. Printed per model: keypoints of each side, the share of official
keypoints with an sfmfeat keypoint within 0.5 px, and the descriptor cosine of those pairs.

The official checkout and its interpreter come from ``--official`` / ``--official-python``
(default ``$SFMFEAT_OFFICIAL_ALIKED`` or /tmp/official_aliked, and
``$SFMFEAT_OFFICIAL_PYTHON`` or /tmp/venv_tv/bin/python).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))

OFFICIAL = Path(os.environ.get("SFMFEAT_OFFICIAL_ALIKED", "/tmp/official_aliked"))
OFFICIAL_PYTHON = Path(os.environ.get("SFMFEAT_OFFICIAL_PYTHON", "/tmp/venv_tv/bin/python"))
MODELS = ["aliked-n16", "aliked-n32", "aliked-t16", "aliked-n16rot"]


def official_missing(checkout: Path, python: Path) -> str | None:
    """Why the official code cannot run, or None."""
    if not (checkout / "nets" / "aliked.py").is_file():
        return f"no official ALIKED checkout at {checkout} (Shiaoming/ALIKED)"
    if not python.is_file():
        return f"no interpreter with torchvision at {python}"
    return None


def run_official(checkout: Path, python: Path, model: str, images: list[np.ndarray],
                 repeat: int = 1, threads: int = 0) -> list[dict[str, np.ndarray]]:
    """The official outputs (and timings) for each image, from a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(images):
            paths.append(str(Path(tmp) / f"{i}.npy"))
            np.save(paths[-1], image)
        out = Path(tmp) / "out.npz"
        cmd = [str(python), str(Path(__file__).with_name("official_aliked.py")),
               str(checkout), model, str(out), *paths, "--repeat", str(repeat),
               "--threads", str(threads)]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        data = np.load(out)
        return [{key.split("/", 1)[1]: data[key] for key in data.files
                 if key.startswith(f"{i}/")} for i in range(len(images))]


def compare(ours, official_xy: np.ndarray, official_desc: np.ndarray):
    """(matched share within 0.5 px, cosines of the matched pairs)."""
    from scipy.spatial import cKDTree

    dist, index = cKDTree(ours.keypoints).query(official_xy)
    ok = dist <= 0.5
    cos = np.sum(official_desc[ok] * ours.descriptors[index[ok]], axis=1)
    return ok, cos


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--resize-max", default="1024")
    parser.add_argument("--official", type=Path, default=OFFICIAL)
    parser.add_argument("--official-python", type=Path, default=OFFICIAL_PYTHON)
    args = parser.parse_args(argv)

    import torch

    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import list_images, read_image, resize_max_edge

    os.environ.setdefault("SFMFEAT_WEIGHTS_DIR", str(SHARED / "weights"))
    why = official_missing(args.official, args.official_python)
    if why:
        print(f"official ALIKED unavailable: {why}; nothing to compare")
        return 1
    resize_max = None if args.resize_max.lower() == "none" else int(args.resize_max)
    folder = SHARED / "data" / "sacre_coeur" / "mapping"
    images = [read_image(folder / name) for name in list_images(folder)]
    resized = [resize_max_edge(im, resize_max)[0] for im in images]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for model in args.models:
        extractor = create_extractor(model, {"max_edge": resize_max}, device="cpu")
        official = run_official(args.official, args.official_python, model, resized)
        n_off = n_ours = n_ok = 0
        cosines = []
        for image, small, ref in zip(images, resized, official):
            ours = extractor.extract(image)
            scale = np.array([image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]])
            xy = (ref["keypoints"].astype(np.float64) + 0.5) * scale - 0.5
            ok, cos = compare(ours, xy, ref["descriptors"])
            n_off, n_ours, n_ok = n_off + len(xy), n_ours + len(ours), n_ok + ok.sum()
            cosines.append(cos)
        cos = np.concatenate(cosines)
        print(f"{model} (resize_max {resize_max}, {len(images)} images): official {n_off} "
              f"keypoints, sfmfeat {n_ours}; within 0.5 px: {100 * n_ok / n_off:.3f}%; "
              f"descriptor cosine of matched: min {cos.min():.7f}, mean {cos.mean():.7f}, "
              f">= 0.999: {100 * np.mean(cos >= 0.999):.3f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
