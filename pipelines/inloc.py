"""InLoc: localize the iPhone 7 queries against the lidar cut-outs.

    python -m pipelines.inloc --dataset DIR --outputs DIR [--pairs FILE]
        [--features sift] [--conf KEY=VALUE] [--matcher PRESET] [--matcher-conf KEY=VALUE]
        [--retrieval vlad|netvlad|...] [--num-neighbors 40] [--ground-truth POSES]

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
from dataclasses import dataclass, field, replace
from pathlib import Path

from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.core import add_conf_argument, add_executor_arguments, executor_from_args
from sfmfeat.commands.report import add_no_report_argument
from sfmfeat.config import parse_overrides
from sfmfeat.errors import InputError
from sfmfeat.executors import ExecutorConfig
from sfmfeat.extract import extract_features
from sfmfeat.extractors import default_matcher
from sfmfeat.images import list_images
from sfmfeat.localization import inloc
from sfmfeat.localization.results import read_poses, summary_text, write_poses, write_query_log
from sfmfeat.localization.retrieval import (ImageSet, RetrievalConfig, retrieval_needs,
                                            retrieve)
from sfmfeat.match import match_pairs
from sfmfeat.pairs import read_pairs, write_pairs
from sfmfeat.report import write_report_after_run
from sfmfeat.runtime import resolve_seed

logger = logging.getLogger("pipelines.inloc")


@dataclass(frozen=True)
class InLocRunConfig:
    """One InLoc run (the options of ``python -m pipelines.inloc``)."""

    pairs: Path | None = None             # query-cutout pairs file (else retrieval)
    features: str = "sift"
    feature_overrides: dict = field(default_factory=dict)
    matcher: str | None = None            # default: the extractor's own
    matcher_overrides: dict = field(default_factory=dict)
    retrieval: str = "vlad"               # a retrieval method
    num_neighbors: int = 40
    ground_truth: Path | None = None
    device: str | None = None
    executor: ExecutorConfig | None = None  # extraction and matching on Ray
    localization: inloc.InLocConfig = inloc.InLocConfig()
    write_report: bool = True

    def __post_init__(self) -> None:
        RetrievalConfig(method=self.retrieval, num_neighbors=self.num_neighbors)  # validates

    @property
    def pairs_name(self) -> str:
        return Path(self.pairs).stem if self.pairs else f"{self.retrieval}{self.num_neighbors}"


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


def run(dataset: str | Path, outputs: str | Path, config: InLocRunConfig = InLocRunConfig()
        ) -> dict:
    """Localize the InLoc queries; the summary (per floor, timings, the report)."""
    dataset, outputs = Path(dataset), Path(outputs)
    if config.matcher is None:
        config = replace(config, matcher=default_matcher(config.features))
        logger.info("matcher %s (the default of %s)", config.matcher, config.features)
    outputs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    queries, cutouts = list_dataset(dataset)
    features = outputs / f"feats-{config.features}.h5"
    retrieval = (retrieval_from_file(Path(config.pairs)) if config.pairs
                 else retrieval_step(dataset, outputs, queries, cutouts, features, config,
                                     timings) if retrieval_needs(config.retrieval) == "images"
                 else None)   # image methods retrieve before extracting
    with_features = features_step(dataset, needed_images(retrieval, queries, cutouts),
                                  features, config, timings)
    if retrieval is None:   # methods over the local features
        retrieval = retrieval_step(dataset, outputs, [q for q in queries if q in with_features],
                                   [c for c in cutouts if c in with_features], features,
                                   config, timings)
    matches = matching_step(retrieval, with_features, features, outputs, config, timings)
    start = time.perf_counter()
    report = inloc.localize_inloc(dataset, retrieval, features, matches, config.localization)
    timings["localization"] = time.perf_counter() - start
    return results_step(report, outputs, config, timings)


def retrieval_step(dataset: Path, outputs: Path, queries: list[str], cutouts: list[str],
                   features: Path, config: InLocRunConfig,
                   timings: dict[str, float]) -> dict[str, list[str]]:
    """Query -> cut-outs by global descriptor (``outputs/pairs-query-<method><k>.txt``)."""
    start = time.perf_counter()
    pairs = retrieve(ImageSet(tuple(queries), dataset, features),
                     ImageSet(tuple(cutouts), dataset, features), outputs,
                     RetrievalConfig(method=config.retrieval,
                                     num_neighbors=config.num_neighbors),
                     device=config.device)
    write_pairs(outputs / f"pairs-query-{config.pairs_name}.txt", pairs)
    timings["retrieval"] = time.perf_counter() - start
    retrieval: dict[str, list[str]] = {}
    for query, cutout in pairs:
        retrieval.setdefault(query, []).append(cutout)
    return retrieval


def needed_images(retrieval: dict[str, list[str]] | None, queries: list[str],
                  cutouts: list[str]) -> list[str]:
    """The images that need local features: those in the pairs, else all."""
    if retrieval is None:
        return queries + cutouts
    return sorted(set(retrieval) | {c for v in retrieval.values() for c in v})


def features_step(dataset: Path, needed: list[str], output: Path, config: InLocRunConfig,
                  timings: dict[str, float]) -> set[str]:
    """Local features of the images that exist; the names that have features."""
    start = time.perf_counter()
    existing = [n for n in needed if (dataset / n).is_file()]
    for name in sorted(set(needed) - set(existing)):
        logger.warning("%s is named in the pairs but does not exist", dataset / name)
    extraction = extract_features(dataset, output, config.features, image_names=existing,
                                  overrides=config.feature_overrides, device=config.device,
                                  executor=config.executor)
    if not extraction.extracted:
        logger.info("features: already done (%s)", output)
    timings["extraction"] = time.perf_counter() - start
    return set(extraction.valid_names)


def matching_step(retrieval: dict[str, list[str]], with_features: set[str], features: Path,
                  outputs: Path, config: InLocRunConfig, timings: dict[str, float]) -> Path:
    start = time.perf_counter()
    to_match = [(q, c) for q, cs in retrieval.items() for c in cs
                if q in with_features and c in with_features]
    if not to_match:
        raise InputError("no pair has features on both sides; nothing to match")
    output = outputs / f"matches-{config.features}_{config.matcher}_{config.pairs_name}.h5"
    report = match_pairs(to_match, features, output, config.matcher,
                         overrides=config.matcher_overrides, device=config.device,
                         executor=config.executor)
    if not report.matched:
        logger.info("matching: already done (%s)", output)
    timings["matching"] = time.perf_counter() - start
    return output


def results_step(report: inloc.InLocReport, outputs: Path, config: InLocRunConfig,
                 timings: dict[str, float]) -> dict:
    """The submission file, the per-query log, the report page and the printed summary."""
    stem = f"InLoc_{config.features}+{config.matcher}_{config.pairs_name}"
    results_path = write_poses(outputs / f"{stem}.txt", report.poses)
    references = read_poses(config.ground_truth) if config.ground_truth else None
    per_floor = report.per_floor(references)
    summary = {
        "num_queries": len(report.results), "num_localized": len(report.poses),
        "per_floor": per_floor, "seconds": timings, "mat_files_read": report.mat_files_read,
        "results": str(results_path),
    }
    log_path = write_query_log(outputs / f"{stem}_log.json", report.log(), summary)
    if config.write_report:
        write_report_after_run(outputs, log=log_path)
    print(summary_text(report.results, results_path, log_path, groups=per_floor))
    summary["report"] = report
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.inloc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="InLoc root folder")
    parser.add_argument("--outputs", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, help="query-cutout pairs file (else retrieval)")
    parser.add_argument("--features", default="sift", help="local feature preset")
    add_conf_argument(parser)
    parser.add_argument("--matcher", help="matcher preset (default: the extractor's own)")
    add_conf_argument(parser, "--matcher-conf", "matcher")
    parser.add_argument("--retrieval", default="vlad",
                        help="a retrieval method: vlad (no weights), netvlad, ...")
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
        run(args.dataset, args.outputs, InLocRunConfig(
            pairs=args.pairs, features=args.features,
            feature_overrides=parse_overrides(args.conf), matcher=args.matcher,
            matcher_overrides=parse_overrides(args.matcher_conf), retrieval=args.retrieval,
            num_neighbors=args.num_neighbors, ground_truth=args.ground_truth,
            device=args.device, executor=executor_from_args(args),
            localization=inloc.InLocConfig(pose=pose), write_report=not args.no_report))

    return run_guarded("pipelines.inloc", job)


if __name__ == "__main__":
    sys.exit(main())
