"""Retrieval memory and time: chunked top-k vs the dense similarity matrix.

    python benchmarks/retrieval.py [--db 100000] [--queries 1000] [--dim 4096] [--k 50]
                                   [--dense-db 20000] [--hloc /tmp/official_hloc]
                                   [--dense-full]

1. A size where the dense matrix fits (``--dense-db`` database images): the reference is
   hloc's dense retrieval (``q @ dbᵀ`` on the whole database, a Q×N self mask, top-k by
   ``hloc.pairs_from_retrieval.pairs_from_score_matrix`` from the official checkout given by
   ``--hloc``; a re-implementation of the same three steps when it is not there), and ours
   is ``sfmfeat.localization.retrieval.retrieval_pairs``; both get the same in-memory
   descriptors and must return the same pairs.
2. ``--db`` random unit descriptors in a global-descriptor store on disk (the layout
   ``GlobalDescriptorWriter`` writes; generated once into ``--workdir``) and ``--queries``
   queries, through ``pairs_from_store``: the database is never loaded whole.

Every measurement runs in a fresh process; peak memory is that process's maximum
resident set size (``ru_maxrss``), so imports and the descriptors count too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))


def _descriptors(seed: int, n: int, dim: int, chunk: int = 8192):
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------- child runs

def child_dense(args) -> dict:
    """Case 1 in one process: ``method`` is hloc (dense) or ours (chunked)."""
    import torch  # noqa: F401  (both import it: same baseline)

    q = np.concatenate(list(_descriptors(1, args.queries, args.dim)))
    db = np.concatenate(list(_descriptors(2, args.dense_db, args.dim)))
    qn = [f"query/{i:06d}.jpg" for i in range(len(q))]
    dn = [f"db/{i:07d}.jpg" for i in range(len(db))]
    baseline = _rss()
    start = time.perf_counter()
    if args.method == "hloc":
        pairs_from_score_matrix, source = _hloc(args.hloc)
        sim = torch.einsum("id,jd->ij", torch.from_numpy(q), torch.from_numpy(db))
        invalid = np.array(qn)[:, None] == np.array(dn)[None]
        pairs = [(qn[i], dn[j]) for i, j in
                 pairs_from_score_matrix(sim, invalid, args.k, min_score=0)]
    else:
        from sfmfeat.localization.retrieval import retrieval_pairs

        source = "sfmfeat"
        pairs = retrieval_pairs(q, db, qn, dn, args.k, min_score=0, memory_mb=args.memory_mb)
    seconds = time.perf_counter() - start
    # the set of pairs (the rank order of near-equal scores may differ between BLAS sums)
    digest = hashlib.sha256("\n".join(sorted(f"{a} {b}" for a, b in pairs)).encode()
                            ).hexdigest()[:16]
    return {"seconds": seconds, "peak": _peak(), "baseline": baseline, "pairs": len(pairs),
            "digest": digest, "source": source}


def _hloc(path: str):
    """hloc's own top-k from the official checkout, or the same steps re-implemented."""
    if path and (Path(path) / "hloc" / "pairs_from_retrieval.py").is_file():
        sys.path.insert(0, path)
        import logging

        from hloc.pairs_from_retrieval import pairs_from_score_matrix
        logging.getLogger("hloc").setLevel(logging.WARNING)
        return pairs_from_score_matrix, "hloc (official code)"

    import torch

    def pairs_from_score_matrix(scores, invalid, num_select, min_score=None):
        invalid = torch.from_numpy(invalid)
        if min_score is not None:
            invalid |= scores < min_score
        scores.masked_fill_(invalid, float("-inf"))
        topk = torch.topk(scores, num_select, dim=1)
        valid = topk.values.isfinite().numpy()
        return [(i, topk.indices[i, j].item()) for i, j in zip(*np.where(valid))]

    return pairs_from_score_matrix, "dense re-implementation (hloc checkout not found)"


def child_store(args) -> dict:
    """Case 2: ours streams the store; the dense reference (``--dense-full``) first loads
    every descriptor, as hloc's ``get_descriptors`` does, then runs its dense top-k."""
    import torch  # noqa: F401  (both import it: same baseline)

    from sfmfeat.localization.retrieval import GlobalDescriptorReader, pairs_from_store

    store = Path(args.store)
    qn = [f"query/{i:06d}.jpg" for i in range(args.queries)]
    dn = [f"db/{i:07d}.jpg" for i in range(args.db)]
    baseline = _rss()
    start = time.perf_counter()
    source = "sfmfeat"
    if args.method == "hloc":
        pairs_from_score_matrix, source = _hloc(args.hloc)
        with GlobalDescriptorReader(store) as reader:
            q = torch.from_numpy(reader.read_many(qn))
            db = torch.from_numpy(reader.read_many(dn))
        sim = torch.einsum("id,jd->ij", q, db)
        invalid = np.array(qn)[:, None] == np.array(dn)[None]
        pairs = pairs_from_score_matrix(sim, invalid, args.k, min_score=0)
    else:
        pairs = pairs_from_store(store, args.k, query_names=qn, db_names=dn, min_score=0,
                                 memory_mb=args.memory_mb)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": _peak(), "baseline": baseline, "pairs": len(pairs),
            "source": source}


# ----------------------------------------------------------------------- store writing

def make_store(path: Path, num_db: int, num_queries: int, dim: int) -> None:
    """A global-descriptor store of random unit descriptors, written by
    GlobalDescriptorWriter (kept between runs while its sizes are the same)."""
    from sfmfeat.localization.retrieval import GlobalDescriptorReader, GlobalDescriptorWriter

    config = {"n": num_db, "q": num_queries, "dim": dim}
    if path.is_file():
        with GlobalDescriptorReader(path) as reader:
            if reader.config == config:
                return
    start = time.perf_counter()
    with GlobalDescriptorWriter(path, "random", "bench", config, overwrite=True,
                                flush_items=8192) as writer:
        for prefix, seed, count, width in (("query", 1, num_queries, 6), ("db", 2, num_db, 7)):
            index = 0
            for block in _descriptors(seed, count, dim):
                for row in block:
                    writer.write(f"{prefix}/{index:0{width}d}.jpg", row)
                    index += 1
    print(f"  wrote {path} ({path.stat().st_size / GIB:.2f} GiB) in "
          f"{time.perf_counter() - start:.0f} s")


# ------------------------------------------------------------------------------- main

def run_child(kind: str, args, **extra) -> dict:
    argv = [sys.executable, __file__, "--child", kind]
    for key, value in {**vars(args), **extra}.items():
        if key in ("child",) or value is None or isinstance(value, bool):
            continue
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"{kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--dense-db", type=int, default=20_000)
    parser.add_argument("--memory-mb", type=float, default=512.0)
    parser.add_argument("--hloc", default="/tmp/official_hloc")
    parser.add_argument("--workdir", default="/tmp/sfmfeat-bench-retrieval")
    parser.add_argument("--child", default=None)
    parser.add_argument("--method", default="ours")
    parser.add_argument("--store", default=None)
    parser.add_argument("--dense-full", action="store_true",
                        help="also run the dense reference at the full size (needs > 2 GiB)")
    args = parser.parse_args()
    if args.child:
        result = child_dense(args) if args.child == "dense" else child_store(args)
        print(json.dumps(result))
        return

    print(f"Retrieval benchmark: D={args.dim}, k={args.k}, {args.queries} queries, "
          f"working memory bound {args.memory_mb:.0f} MiB")
    print(f"\n1. {args.dense_db} database images in memory (the dense matrix fits)")
    ref = run_child("dense", args, method="hloc")
    ours = run_child("dense", args, method="ours")
    for label, r in ((ref["source"], ref), ("sfmfeat chunked", ours)):
        print(f"  {label:48s} {r['seconds']:7.2f} s  peak {r['peak'] / GIB:5.2f} GiB  "
              f"(+{(r['peak'] - r['baseline']) / GIB:4.2f} GiB over the loaded descriptors)"
              f"  {r['pairs']} pairs")
    working = (ours["peak"] - ours["baseline"]) / max(ref["peak"] - ref["baseline"], 1)
    print(f"  same pairs: {ref['digest'] == ours['digest'] and ref['pairs'] == ours['pairs']}"
          f" | time ratio sfmfeat/reference {ours['seconds'] / ref['seconds']:.2f}"
          f" | working-memory ratio {working:.2f}")

    print(f"\n2. {args.db} database images in a global-descriptor store on disk")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / f"global-{args.db}x{args.dim}.h5"
    make_store(store, args.db, args.queries, args.dim)
    big = run_child("store", args, store=str(store), method="ours")
    dense_bytes = 4 * args.db * args.dim + 4 * args.queries * args.db + args.queries * args.db
    print(f"  {'sfmfeat pairs_from_store (streamed)':48s} {big['seconds']:7.2f} s  peak "
          f"{big['peak'] / GIB:5.2f} GiB  {big['pairs']} pairs -> "
          f"{'under' if big['peak'] < 2 * GIB else 'OVER'} 2 GiB")
    if args.dense_full:
        ref = run_child("store", args, store=str(store), method="hloc")
        print(f"  {ref['source'] + ' (all loaded)':48s} {ref['seconds']:7.2f} s  peak "
              f"{ref['peak'] / GIB:5.2f} GiB  {ref['pairs']} pairs -> "
              f"{'under' if ref['peak'] < 2 * GIB else 'OVER'} 2 GiB | time ratio "
              f"sfmfeat/reference {big['seconds'] / ref['seconds']:.2f}, peak ratio "
              f"{big['peak'] / ref['peak']:.2f}")
    print(f"  dense reference would hold {dense_bytes / GIB:.2f} GiB (database + similarity "
          f"matrix + self mask) before top-k; with the {args.db} images also as queries "
          f"(SfM retrieval, hloc PR #338) the matrix alone is "
          f"{4 * args.db * args.db / GIB:.0f} GiB")


if __name__ == "__main__":
    main()
