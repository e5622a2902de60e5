"""Extraction throughput per worker, and the Ray executor's overhead (issue 16).

1. images/s of one worker (one CPU thread, as a Ray actor has) for SIFT, DISK and ALIKED
   on the sacre_coeur images (their own sizes; DISK and ALIKED at their default 1024 px
   long side), from the CPU time of that thread: on a shared machine the wall time mostly
   measures the other processes;
2. wall time of `sfmfeat extract` on IMAGES (default: the 10 sacre_coeur images, each
   under 5 names = 50 images) in process against `--executor ray` on the same machine,
   alternated A/B/A/B: "cold" starts a local Ray instance inside the command (what a
   one-off run pays), "warm" submits to a Ray instance started once beforehand (the
   steady state of a cluster).

    nice -n 19 python benchmarks/throughput.py --work /tmp/throughput
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("throughput")
SACRE_COEUR = Path(__file__).resolve().parents[1].parent / "shared/data/sacre_coeur/mapping"


def per_worker(images: Path, methods: list[str], count: int) -> dict[str, float]:
    """Images/s of one single-threaded extractor (model built beforehand, decode included)."""
    import torch

    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import list_images, read_image

    torch.set_num_threads(1)
    names = list_images(images)[:count]
    rates = {}
    for method in methods:
        extractor = create_extractor(method, device="cpu")
        extractor.extract(read_image(images / names[0]))   # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        for name in names:
            extractor.extract(read_image(images / name))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        # one thread: its CPU time is the wall time it would take on an idle core
        rates[method] = len(names) / cpu
        logger.info("%-8s %.3f images/s per worker from CPU time (%.3f from wall time under "
                    "the load; 1 thread, %d images)", method, rates[method],
                    len(names) / wall, len(names))
    return rates


def fifty_images(source: Path, target: Path, copies: int) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        for copy in range(copies):
            link = target / f"{path.stem}-{copy}{path.suffix}"
            if not link.exists():
                link.symlink_to(path)
    return target


def _extract(images: Path, output: Path, method: str, extra: list[str]) -> float:
    shutil.rmtree(output.with_name(output.name + ".partial"), ignore_errors=True)
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sfmfeat", "-q", "extract", str(images), "-o",
                    str(output), "--features", method, *extra], check=True)
    return time.perf_counter() - start


def overhead(images: Path, work: Path, method: str, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"in-process": [], "ray cold": [], "ray warm": []}
    port = _free_port()
    # a head of our own, in a session of its own: ended below by its process group
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port),
                             "--include-dashboard", "false", "--disable-usage-stats",
                             "--node-ip-address", "127.0.0.1"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_for(port)
        for _ in range(repeats):
            times["in-process"].append(_extract(images, work / "a.h5", method, []))
            times["ray cold"].append(_extract(images, work / "b.h5", method,
                                              ["--executor", "ray"]))
            times["ray warm"].append(_extract(images, work / "c.h5", method,
                                              ["--executor", "ray", "--ray-address", address]))
            logger.info("%s", {k: round(v[-1], 1) for k, v in times.items()})
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
                head.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    return times


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(5)   # the raylet registers after the GCS listens
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the Ray head on port {port} did not start")


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--copies", type=int, default=5, help="names per image (10x5 = 50)")
    parser.add_argument("--methods", default="sift,disk,aliked-n16")
    parser.add_argument("--per-worker-images", type=int, default=3)
    parser.add_argument("--overhead-method", default="sift")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("load before: %s", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    rates = per_worker(args.images, [m for m in args.methods.split(",") if m],
                       args.per_worker_images)
    images = fifty_images(args.images, args.work / "images", args.copies)
    count = len(list(images.iterdir()))
    times = overhead(images, args.work, args.overhead_method, args.repeats)
    print("images/s per worker (1 CPU thread, from its CPU time): "
          + ", ".join(f"{m} {r:.3f}" for m, r in rates.items()))
    reference = sum(times["in-process"]) / len(times["in-process"])
    for key, values in times.items():
        mean = sum(values) / len(values)
        print(f"{args.overhead_method} on {count} images, {key}: mean {mean:.1f} s "
              f"({', '.join(f'{v:.1f}' for v in values)}), {mean / reference:.2f}x in-process")
    logger.info("load after: %s", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
