"""Run the official ALIKED (a checkout of Shiaoming/ALIKED outside this repository) on RGB
arrays saved as .npy; used by ``extract_aliked.py`` and ``parity_aliked.py``.

    PYTHON official_aliked.py CHECKOUT MODEL OUT.npz IMAGE.npy [...] [--repeat R] [--threads T]

PYTHON must have torch and torchvision (the official network calls
``torchvision.ops.deform_conv2d``), e.g. ``python -m venv /tmp/venv_tv &&
/tmp/venv_tv/bin/pip install torch==2.14.1 torchvision==0.29.1``.
The official ``ALIKED.run`` is called with its demo defaults (top_k -1, scores_th 0.2,
n_limit 5000) on CPU. Two things of the checkout are bypassed without editing it: the
compiled ``custom_ops`` package (not built: the official code then falls back to its
pure-torch ``get_patches``, the path LightGlue and hloc use) and ``torch.cuda.synchronize``
(called unconditionally by the official forward, unavailable without CUDA).
Writes keypoints (official pixel output), descriptors, scores and per-call timings.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkout")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    sys.modules["custom_ops"] = None  # makes `from custom_ops import ...` fail -> fallback
    torch.cuda.synchronize = lambda *a, **k: None
    sys.path.insert(0, args.checkout)
    from nets.aliked import ALIKED  # noqa: E402  (the official code)

    if args.threads:
        torch.set_num_threads(args.threads)
    model = ALIKED(model_name=args.model, device="cpu", top_k=-1, scores_th=0.2,
                   n_limit=5000)
    result: dict[str, np.ndarray] = {}
    for i, path in enumerate(args.images):
        image = np.load(path)
        model.run(image)  # warm-up: one-off allocations
        wall, cpu = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            out = model.run(image)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        result[f"{i}/keypoints"] = out["keypoints"]
        result[f"{i}/descriptors"] = out["descriptors"]
        result[f"{i}/scores"] = out["scores"]
        result[f"{i}/wall"] = np.array(wall)
        result[f"{i}/cpu"] = np.array(cpu)
    np.savez(args.out, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
