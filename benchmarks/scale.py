"""How the stores, the database import and pair generation grow with the collection (issue 16).

Synthetic records of realistic shape go through the real code paths (FeatureWriter /
FeatureReader, MatchWriter / MatchReader, retrieval_pairs, write_database + write_matches):

  images series  N = 1k, 10k, 100k images of K keypoints (K×2, K scores, K×D descriptors):
                 write features.h5 (shards + merge), read every record back;
  pairs series   P = 10k, 100k, 1M retrieval-style pairs (20 neighbours per image, so
                 P/20 images): pair generation from 256-D global descriptors, write and read
                 matches.h5 (100 matches per pair), import keypoints and matches into a
                 COLMAP database (images of 512 keypoints, 8-D descriptors: the import
                 reads only keypoints).

Each measurement runs in a fresh process: its wall time and its peak resident memory
(ru_maxrss) are the driver's. The table prints per-item times and the growth ratios
against the issue's targets (times: CPU seconds of the phase's process, which a loaded
machine inflates much less than wall time): driver memory <= 1.2x from 10k to 100k
images, per-item time <= 1.5x from 10k to 1M pairs, database import of 1M pairs within
2 GiB.

    nice -n 19 python benchmarks/scale.py --work /tmp/scale            # the full sizes
    python benchmarks/scale.py --work /tmp/scale --images 1000,10000 --pairs 10000,100000
    python benchmarks/scale.py --work /tmp/scale --reference-commit c7706e6   # A/B

``--reference-commit REV`` runs every phase on REV's sfmfeat too (a snapshot taken at the
start, as is this checkout's), each size alternating reference then current, and prints
current/reference ratios of CPU time per item and of peak memory (c7706e6: the last
commit with one HDF5 group per record, store schema 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("scale")

NEIGHBOURS = 20
MATCHES_PER_PAIR = 100
DB_KEYPOINTS, DB_DIM = 512, 8


def _name(index: int) -> str:
    return f"seq{index // 1000:04d}/img{index:07d}.jpg"


def _names(count: int) -> list[str]:
    return [_name(i) for i in range(count)]


def _pool(keypoints: int, dim: int, seed: int = 0, size: int = 8) -> list:
    from sfmfeat.features import Features

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        kp = (rng.random((keypoints, 2), np.float32) * [1600, 1200]).astype(np.float32)
        pool.append(Features(keypoints=kp, scores=rng.random(keypoints, np.float32),
                             descriptors=rng.standard_normal((keypoints, dim), np.float32),
                             image_size=(1600, 1200)))
    return pool


def _ring_pairs(num_images: int) -> list[tuple[str, str]]:
    """Retrieval-shaped pairs without the retrieval: image i with its next NEIGHBOURS."""
    names = _names(num_images)
    return [(names[i], names[(i + j) % num_images]) for i in range(num_images)
            for j in range(1, NEIGHBOURS + 1)]


# ------------------------------------------------------------------ one phase per process

def phase_features_write(work: Path, count: int, keypoints: int, dim: int) -> int:
    from sfmfeat.store import FeatureWriter

    pool = _pool(keypoints, dim)
    path = work / f"features-{count}-{keypoints}x{dim}.h5"
    with FeatureWriter(path, method="synthetic", config_hash="0", config={},
                       overwrite=True, flush_items=64) as writer:
        # names made one at a time: the memory measured is the store's, not that of a list
        # of the names (100k names: 7.7 MiB of Python strings in any driver holding one)
        for index in range(count):
            writer.write(_name(index), pool[index % len(pool)], (1600, 1200))
    return count


def phase_features_read(work: Path, count: int, keypoints: int, dim: int) -> int:
    from sfmfeat.store import FeatureReader

    with FeatureReader(work / f"features-{count}-{keypoints}x{dim}.h5") as reader:
        names = reader.names()
        for name in names:
            reader.read(name)
    return len(names)


def phase_pairs(work: Path, count: int, *_: int) -> int:
    from sfmfeat.localization.retrieval import retrieval_pairs

    num_images = count // NEIGHBOURS
    rng = np.random.default_rng(1)
    descriptors = rng.standard_normal((num_images, 256), np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    names = _names(num_images)
    pairs = retrieval_pairs(descriptors, descriptors, names, names, NEIGHBOURS)
    return len(pairs)


def phase_matches_write(work: Path, count: int, *_: int) -> int:
    from sfmfeat.store import MatchWriter

    rng = np.random.default_rng(2)
    matches = rng.integers(0, DB_KEYPOINTS, (MATCHES_PER_PAIR, 2)).astype(np.int32)
    scores = rng.random(MATCHES_PER_PAIR, np.float32)
    pairs = _ring_pairs(count // NEIGHBOURS)
    with MatchWriter(work / f"matches-{count}.h5", method="synthetic", config_hash="0",
                     config={}, features_config_hash="0", overwrite=True,
                     flush_items=256) as writer:
        for name0, name1 in pairs:
            writer.write(name0, name1, matches, scores, features_digests=("a" * 16, "b" * 16))
    return len(pairs)


def phase_matches_read(work: Path, count: int, *_: int) -> int:
    from sfmfeat.store import MatchReader

    pairs = _ring_pairs(count // NEIGHBOURS)
    with MatchReader(work / f"matches-{count}.h5") as reader:
        for pair in pairs:
            reader.read(*pair)
    return len(pairs)


def phase_db_import(work: Path, count: int, *_: int) -> int:
    from sfmfeat.reconstruction.database import write_database, write_matches
    from sfmfeat.store import FeatureReader, MatchReader

    num_images = count // NEIGHBOURS
    database = work / f"database-{count}.db"
    features = work / f"features-{num_images}-{DB_KEYPOINTS}x{DB_DIM}.h5"
    with FeatureReader(features) as reader:
        ids = write_database(database, work, _names(num_images), reader, "single")
    with MatchReader(work / f"matches-{count}.h5") as matches:
        written = write_matches(database, ids, matches, _ring_pairs(num_images))
    database.unlink()
    return written


PHASES = {"features-write": phase_features_write, "features-read": phase_features_read,
          "pairs": phase_pairs, "matches-write": phase_matches_write,
          "matches-read": phase_matches_read, "db-import": phase_db_import}


def _measure(work: Path, phase: str, count: int, keypoints: int = 0, dim: int = 0,
             code: Path | None = None) -> dict:
    """Runs one phase in a fresh process (on the sfmfeat in folder ``code``, default the
    installed one): its wall time, items and peak RSS."""
    command = [sys.executable, __file__, "--work", str(work), "--phase", phase,
               "--count", str(count), "--keypoints", str(keypoints), "--dim", str(dim)]
    env = dict(os.environ, PYTHONPATH=str(code)) if code else None
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    output = process.stdout.read()
    process.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"phase {phase} ({count}) failed")
    result = json.loads(output.strip().splitlines()[-1])
    # CPU time (user + system) of the phase's process: on a shared machine its wall time
    # mostly measures the other processes
    result.update(phase=phase, count=count, wall=seconds, peak_mib=usage.ru_maxrss / 1024,
                  cpu=usage.ru_utime + usage.ru_stime, side=code.name if code else "")
    logger.info("%-9s %-15s %8d: %8.1f s wall, %8.1f s CPU, %7.1f us CPU/item, peak "
                "%7.1f MiB", result["side"], phase, count, result["seconds"], result["cpu"],
                1e6 * result["cpu"] / max(1, result["items"]), result["peak_mib"])
    return result


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(work: Path, images: list[int], pairs: list[int], keypoints: int, dim: int,
        keep: bool, code: Path | None = None) -> list[dict]:
    """The two series on the sfmfeat in ``code`` (default: the installed one)."""
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    need = 2.2 * max(images, default=0) * keypoints * (4 * dim + 12)   # file + shards, merged
    if need > free:
        raise SystemExit(f"{work}: {free / 2**30:.1f} GiB free, the {max(images)}-image "
                         f"store needs about {need / 2**30:.1f} GiB: pass fewer --keypoints")
    if any(count // NEIGHBOURS <= 2 * NEIGHBOURS for count in pairs):
        raise SystemExit(f"--pairs: each size needs more than {2 * NEIGHBOURS * NEIGHBOURS} pairs "
                         f"({NEIGHBOURS} neighbours per image, no pair twice)")
    rows = []
    for count in images:
        rows.append(_measure(work, "features-write", count, keypoints, dim, code))
        store = work / f"features-{count}-{keypoints}x{dim}.h5"
        rows[-1]["file_mib"] = store.stat().st_size / 2**20
        rows.append(_measure(work, "features-read", count, keypoints, dim, code))
        if not keep:
            store.unlink()
    for count in pairs:
        rows.append(_measure(work, "pairs", count, code=code))
        rows.append(_measure(work, "matches-write", count, code=code))
        rows[-1]["file_mib"] = (work / f"matches-{count}.h5").stat().st_size / 2**20
        rows.append(_measure(work, "matches-read", count, code=code))
        # the database import reads the keypoints of the pair series' images
        _measure(work, "features-write", count // NEIGHBOURS, DB_KEYPOINTS, DB_DIM, code)
        rows.append(_measure(work, "db-import", count, code=code))
        if not keep:
            for path in work.glob(f"*-{count}.h5"):
                path.unlink()
            (work / f"features-{count // NEIGHBOURS}-{DB_KEYPOINTS}x{DB_DIM}.h5").unlink()
    return rows


def table(rows: list[dict], images: list[int], pairs: list[int]) -> str:
    by = {(r["phase"], r["count"]): r for r in rows}
    lines = [f"{'phase':<15} {'items':>9} {'wall s':>9} {'CPU s':>9} {'CPU us/item':>11} "
             f"{'peak MiB':>9} {'file MiB':>9}"]
    for r in rows:
        per = 1e6 * r["cpu"] / max(1, r["items"])
        file_mib = f"{r['file_mib']:9.0f}" if "file_mib" in r else f"{'':>9}"
        lines.append(f"{r['phase']:<15} {r['items']:>9} {r['seconds']:9.1f} {r['cpu']:9.1f} "
                     f"{per:11.1f} {r['peak_mib']:9.1f} {file_mib}")
    lines.append("")
    lines.append("growth (target)")

    def ratio(phase: str, key: str, small: int, large: int) -> float:
        a, b = by[(phase, small)], by[(phase, large)]
        if key == "peak_mib":
            return b["peak_mib"] / a["peak_mib"]
        return (b["cpu"] / b["items"]) / (a["cpu"] / a["items"])

    if len(images) >= 2:
        small, large = sorted(images)[-2:]
        for phase in ("features-write", "features-read"):
            value = ratio(phase, "peak_mib", small, large)
            lines.append(f"  {phase} peak memory {large}/{small} images: {value:5.2f}x "
                         f"(<= 1.20x: {'met' if value <= 1.2 else 'NOT met'})")
            value = ratio(phase, "seconds", small, large)
            lines.append(f"  {phase} CPU time per image {large}/{small}: {value:5.2f}x")
    if len(pairs) >= 2:
        small, large = min(pairs), max(pairs)
        for phase in ("pairs", "matches-write", "matches-read", "db-import"):
            value = ratio(phase, "seconds", small, large)
            lines.append(f"  {phase} CPU time per pair {large}/{small} pairs: {value:5.2f}x "
                         f"(<= 1.50x: {'met' if value <= 1.5 else 'NOT met'})")
            value = ratio(phase, "peak_mib", small, large)
            lines.append(f"  {phase} peak memory {large}/{small} pairs: {value:5.2f}x")
        peak = by[("db-import", large)]["peak_mib"]
        lines.append(f"  db-import of {large} pairs: peak {peak / 1024:.2f} GiB "
                     f"(<= 2 GiB: {'met' if peak <= 2048 else 'NOT met'})")
    return "\n".join(lines)


def compare(work: Path, commit: str, images: list[int], pairs: list[int], keypoints: int,
            dim: int) -> list[dict]:
    """Every size on ``commit``'s sfmfeat then on this checkout's, and the ratios."""
    repo = Path(__file__).resolve().parents[1]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        sides = {"reference": Path(tmp) / "reference", "current": Path(tmp) / "current"}
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "sfmfeat"],
                                 check=True, capture_output=True).stdout
        sides["reference"].mkdir()
        subprocess.run(["tar", "-x", "-C", str(sides["reference"])], input=archive,
                       check=True)
        shutil.copytree(repo / "sfmfeat", sides["current"] / "sfmfeat",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for count in images:
            for code in sides.values():
                rows += run(work, [count], [], keypoints, dim, False, code)
        for count in pairs:
            for code in sides.values():
                rows += run(work, [], [count], keypoints, dim, False, code)
    by = {(r["side"], r["phase"], r["count"]): r for r in rows}
    print(f"\ncurrent / reference ({commit}): CPU time per item, peak memory")
    for side, phase, count in by:
        if side != "current":
            continue
        new, old = by[("current", phase, count)], by[("reference", phase, count)]
        print(f"  {phase:<15} {count:>9}: {new['cpu'] / old['cpu']:5.2f}x CPU "
              f"({1e6 * old['cpu'] / old['items']:.0f} -> {1e6 * new['cpu'] / new['items']:.0f}"
              f" us/item), {new['peak_mib'] / old['peak_mib']:5.2f}x memory "
              f"({old['peak_mib']:.0f} -> {new['peak_mib']:.0f} MiB)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (large)")
    parser.add_argument("--images", default="1000,10000,100000")
    parser.add_argument("--pairs", default="10000,100000,1000000")
    parser.add_argument("--keypoints", type=int, default=256,
                        help="keypoints per image of the images series (default 256: the "
                             "100k-image store is ~13 GiB; 1024 needs ~54 GiB)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--reference-commit", metavar="REV",
                        help="also run every phase on this commit's sfmfeat; print ratios")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:   # a child process: one measurement
        start = time.perf_counter()
        items = PHASES[args.phase](args.work, args.count, args.keypoints, args.dim)
        print(json.dumps({"items": items, "seconds": time.perf_counter() - start}))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("sfmfeat").setLevel(logging.WARNING)   # no progress bars
    images = [int(v) for v in args.images.split(",") if v]
    pairs = [int(v) for v in args.pairs.split(",") if v]
    logger.info("load %s", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.reference_commit:
        rows = compare(args.work, args.reference_commit, images, pairs, args.keypoints,
                       args.dim)
        current = [r for r in rows if r["side"] == "current"]
        print("\nthis checkout:\n" + table(current, images, pairs))
    else:
        rows = run(args.work, images, pairs, args.keypoints, args.dim, args.keep)
        print(table(rows, images, pairs))
    logger.info("load %s", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
