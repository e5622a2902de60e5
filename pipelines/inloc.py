"""InLoc: localize the iPhone 7 queries against the lidar cut-outs.

    python -m pipelines.inloc --dataset DIR --outputs DIR [--pairs FILE]
        [--features sift] [--matcher PRESET] [--retrieval vlad|netvlad]
        [--num-neighbors 40] [--ground-truth POSES]

Steps: pairs (the given file, e.g. hloc's ``pairs-query-netvlad40.txt``, or retrieval
over the cut-outs with VLAD on the local features or NetVLAD) -> local features of the
images in the pairs -> matching -> 2D–3D through the cut-outs' XYZcut maps -> PnP.
Writes the submission file ``InLoc_<features>+<matcher>_<pairs>.txt`` (basenames,
world-to-camera), a per-query log ``..._log.json`` and prints results for DUC1 and DUC2
separately (recall with ``--ground-truth``). The algorithms live in
``sfmfeat.localization``; this file is the dataset's layout and the order of the steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.report import add_no_report_argument
from sfmfeat.config import parse_overrides
from sfmfeat.errors import InputError
from sfmfeat.commands.core import add_executor_arguments, executor_from_args
from sfmfeat.executors import ExecutorConfig
from sfmfeat.extract import extract_features
from sfmfeat.images import list_images
from sfmfeat.localization import inloc
from sfmfeat.localization.results import read_poses, write_poses, write_query_log
from sfmfeat.extractors import default_matcher
from sfmfeat.match import match_pairs
from sfmfeat.pairs import read_pairs, write_pairs
from sfmfeat.report import write_report_after_run
from sfmfeat.runtime import resolve_seed

logger = logging.getLogger("pipelines.inloc")


def list_dataset(dataset: Path) -> tuple[list[str], list[str]]:
    """(query names, cut-out names), relative to the dataset root."""
    for folder in (inloc.QUERY_DIR, inloc.CUTOUT_DIR):
        if not (dataset / folder).is_dir():
            raise InputError(f"{dataset / folder} does not exist: not an InLoc dataset "
                             f"folder (expected {inloc.QUERY_DIR}/ and {inloc.CUTOUT_DIR}/)")
    queries = [f"{inloc.QUERY_DIR}/{n}" for n in list_images(dataset / inloc.QUERY_DIR)]
    cutouts = [f"{inloc.CUTOUT_DIR}/{n}" for n in list_images(dataset / inloc.CUTOUT_DIR)]
    return queries, cutouts


def retrieval_from_file(path: Path) -> dict[str, list[str]]:
    """query -> cut-outs from a pairs file (``query cutout`` per line, either order)."""
    pairs = read_pairs(path)
    if not pairs:
        raise InputError(f"pairs file {path} is empty: no query to localize")
    retrieval: dict[str, list[str]] = {}
    for line, (name0, name1) in enumerate(pairs, 1):
        db0 = name0.startswith(inloc.CUTOUT_DIR + "/")
        db1 = name1.startswith(inloc.CUTOUT_DIR + "/")
        if db0 == db1:
            raise InputError(f"{path}: pair {line} ({name0} {name1}) does not pair a query "
                             f"with a cut-out under {inloc.CUTOUT_DIR}/")
        query, cutout = (name1, name0) if db0 else (name0, name1)
        retrieval.setdefault(query, []).append(cutout)
    return retrieval


def retrieve(dataset: Path, outputs: Path, method: str, queries: list[str],
             cutouts: list[str], features_path: Path, num_neighbors: int,
             device: str | None) -> dict[str, list[str]]:
    from sfmfeat.localization import retrieval as ret

    descriptors = outputs / f"global-{method}.h5"
    if method == "vlad":
        codebook_path = outputs / "vlad-codebook.h5"
        codebook = None
        if codebook_path.is_file():
            codebook = ret.Codebook.load(codebook_path)
            from sfmfeat.store import FeatureReader

            with FeatureReader(features_path) as reader:
                if codebook.features_config_hash != reader.config_hash:
                    codebook = None
        retrained = codebook is None
        if retrained:
            codebook = ret.train_vlad_codebook(features_path, cutouts)
            codebook.save(codebook_path)
        ret.compute_vlad(features_path, descriptors, codebook, queries + cutouts,
                         overwrite=retrained)   # descriptors of an old codebook are void
    elif method.startswith("netvlad"):
        from sfmfeat.localization.netvlad import compute_netvlad

        compute_netvlad(dataset, descriptors, method, image_names=queries + cutouts,
                        device=device)
    else:
        raise InputError(f"unknown retrieval method {method!r}; choose vlad or netvlad")
    with ret.GlobalDescriptorReader(descriptors) as reader:   # unreadable images dropped
        stored = set(reader.names())
    pairs = ret.pairs_from_store(descriptors, num_neighbors,
                                 query_names=[q for q in queries if q in stored],
                                 db_names=[c for c in cutouts if c in stored])
    result: dict[str, list[str]] = {}
    for query, cutout in pairs:
        result.setdefault(query, []).append(cutout)
    return result


def run(dataset: str | Path, outputs: str | Path, pairs: str | Path | None = None,
        features: str = "sift", matcher: str | None = None, retrieval: str = "vlad",
        num_neighbors: int = 40, ground_truth: str | Path | None = None,
        feature_overrides: dict | None = None, device: str | None = None,
        config: inloc.InLocConfig | None = None, write_report: bool = True,
        executor: ExecutorConfig | None = None) -> dict:
    dataset, outputs = Path(dataset), Path(outputs)
    if matcher is None:
        matcher = default_matcher(features)
        logger.info("matcher %s (the default of %s)", matcher, features)
    outputs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    references = read_poses(ground_truth) if ground_truth else None
    queries, cutouts = list_dataset(dataset)
    features_path = outputs / f"feats-{features}.h5"

    retrieval_map: dict[str, list[str]] | None = None
    if pairs is not None:
        pairs_name = Path(pairs).stem
        retrieval_map = retrieval_from_file(Path(pairs))
    else:
        pairs_name = f"{retrieval}{num_neighbors}"
        if retrieval != "vlad":   # NetVLAD works on the images: retrieve before extracting
            start = time.perf_counter()
            retrieval_map = retrieve(dataset, outputs, retrieval, queries, cutouts,
                                     features_path, num_neighbors, device)
            write_pairs(outputs / f"pairs-query-{pairs_name}.txt",
                        [(q, c) for q, cs in retrieval_map.items() for c in cs])
            timings["retrieval"] = time.perf_counter() - start
    if retrieval_map is not None:   # local features only for the images in the pairs
        needed = sorted(set(retrieval_map) | {c for v in retrieval_map.values() for c in v})
    else:
        needed = queries + cutouts

    start = time.perf_counter()
    existing = [n for n in needed if (dataset / n).is_file()]
    for name in sorted(set(needed) - set(existing)):
        logger.warning("%s is named in the pairs but does not exist", dataset / name)
    extraction = extract_features(dataset, features_path, features, image_names=existing,
                                  overrides=feature_overrides, device=device,
                                  executor=executor)
    timings["extraction"] = time.perf_counter() - start
    with_features = set(extraction.valid_names)

    if retrieval_map is None:   # VLAD over the local features of every image
        start = time.perf_counter()
        retrieval_map = retrieve(dataset, outputs, retrieval,
                                 [q for q in queries if q in with_features],
                                 [c for c in cutouts if c in with_features], features_path,
                                 num_neighbors, device)
        write_pairs(outputs / f"pairs-query-{pairs_name}.txt",
                    [(q, c) for q, cs in retrieval_map.items() for c in cs])
        timings["retrieval"] = time.perf_counter() - start

    start = time.perf_counter()
    to_match = [(q, c) for q, cs in retrieval_map.items() for c in cs
                if q in with_features and c in with_features]
    matches_path = outputs / f"matches-{features}_{matcher}_{pairs_name}.h5"
    if not to_match:
        raise InputError("no pair has features on both sides; nothing to match "
                         f"(rejected: {extraction.rejected})")
    match_pairs(to_match, features_path, matches_path, matcher, device=device,
                executor=executor)
    timings["matching"] = time.perf_counter() - start

    start = time.perf_counter()
    report = inloc.localize_inloc(dataset, retrieval_map, features_path, matches_path,
                                  config)
    timings["localization"] = time.perf_counter() - start
    stem = f"InLoc_{features}+{matcher}_{pairs_name}"
    results_path = write_poses(outputs / f"{stem}.txt", report.poses)
    per_floor = report.per_floor(references)
    summary = {
        "num_queries": len(report.results), "num_localized": len(report.poses),
        "per_floor": per_floor, "seconds": timings, "mat_files_read": report.mat_files_read,
        "results": str(results_path),
    }
    log_path = write_query_log(outputs / f"{stem}_log.json", report.log(), summary)
    if write_report:
        write_report_after_run(outputs, log=log_path)
    for floor, entry in per_floor.items():
        line = f"{floor}: {entry['num_localized']}/{entry['num_queries']} localized"
        if "recall" in entry:
            line += " | recall " + " / ".join(
                f"({t:g}m,{r:g}°) {100 * v:.1f}%"
                for (t, r), v in zip(entry["thresholds"], entry["recall"]))
        logger.info(line)
    for name, result in report.results.items():
        if not result.localized:
            logger.info("%s: %s (%s)", name, result.status, result.reason)
    logger.info("submission file: %s", results_path)
    summary["report"] = report
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.inloc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="InLoc root folder")
    parser.add_argument("--outputs", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, help="query-cutout pairs file (else retrieval)")
    parser.add_argument("--features", default="sift", help="local feature preset")
    parser.add_argument("--conf", nargs="*", help="feature config overrides key=value")
    parser.add_argument("--matcher", help="matcher preset (default: the extractor's own)")
    parser.add_argument("--retrieval", default="vlad", help="vlad (no weights) or netvlad")
    parser.add_argument("--num-neighbors", type=int, default=40)
    parser.add_argument("--ground-truth", type=Path, help="reference poses (name qw..tz)")
    parser.add_argument("--device", default=None)
    add_executor_arguments(parser)   # extraction and matching on Ray
    parser.add_argument("--seed", type=int, default=-1,
                        help="seed of the pose RANSAC (default: a fresh one, logged)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_no_report_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def job() -> None:
        pose = replace(inloc.InLocConfig().pose, random_seed=resolve_seed(args.seed))
        run(args.dataset, args.outputs, args.pairs, args.features, args.matcher,
            args.retrieval, args.num_neighbors, args.ground_truth,
            parse_overrides(args.conf), args.device, inloc.InLocConfig(pose=pose),
            write_report=not args.no_report, executor=executor_from_args(args))

    return run_guarded("pipelines.inloc", job)


if __name__ == "__main__":
    sys.exit(main())
