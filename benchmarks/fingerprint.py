"""Cost of resumption by content: fingerprinting every image (size, mtime, BLAKE2b of the
file) against extracting its features, both measured in this run.

    python benchmarks/fingerprint.py [--images DIR] [--features sift] [--repeats 5]

Prints the seconds of one extraction of the folder, of fingerprinting it (the work a
rerun does to decide what to re-extract; the files are in the page cache, as on a rerun,
and also after dropping them from it when the OS allows), and the ratio in percent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sfmfeat.extract import extract_features
from sfmfeat.images import list_images
from sfmfeat.store import image_fingerprint

REPO = Path(__file__).resolve().parents[1]


def _drop_from_page_cache(paths: list[Path]) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path,
                        default=REPO.parent / "shared" / "data" / "sacre_coeur" / "mapping")
    parser.add_argument("--features", default="sift")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = [args.images / name for name in list_images(args.images)]
    megabytes = sum(p.stat().st_size for p in paths) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_features(args.images, Path(tmp) / "features.h5", args.features)
        extraction = time.perf_counter() - start

    def fingerprint_all() -> float:
        start = time.perf_counter()
        for path in paths:
            image_fingerprint(path)
        return time.perf_counter() - start

    fingerprint_all()  # warm the page cache, as a rerun finds it
    warm = statistics.median(fingerprint_all() for _ in range(args.repeats))
    cold = []
    for _ in range(args.repeats):
        if not _drop_from_page_cache(paths):
            break
        cold.append(fingerprint_all())
    print(f"{len(paths)} images, {megabytes:.1f} MB, features {args.features}")
    print(f"extraction            {extraction:8.3f} s")
    print(f"fingerprints (cached) {warm:8.4f} s  = {100 * warm / extraction:.3f} % of extraction")
    if cold:
        value = statistics.median(cold)
        print(f"fingerprints (cold)   {value:8.4f} s  = {100 * value / extraction:.3f} % of "
              "extraction (page cache dropped with posix_fadvise)")


if __name__ == "__main__":
    main()
