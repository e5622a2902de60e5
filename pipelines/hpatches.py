"""HPatches sequences: mean matching accuracy (D2-Net protocol) and homography accuracy.

    python -m pipelines.hpatches --dataset hpatches-sequences-release --features sift,rootsift
        --outputs OUT [--matcher mnn] [--conf KEY=VALUE] [--top-k K]
        [--compare d2net=D2Net.npy r2d2.npy ...] [--keep-high-resolution]

Layout (``--dataset``): one folder per sequence, ``i_*`` (illumination) and ``v_*``
(viewpoint), each with ``1.ppm .. 6.ppm`` and ``H_1_2 .. H_1_6``. The 8 high-resolution
sequences the D2-Net protocol drops are skipped when present.

Outputs (``--outputs``):
    features/<features>.h5      extracted features (a rerun resumes from them)
    cache/<method>.npy          the published cache layout [i_err, v_err, [seq_type, n_feats,
                                n_matches]], loadable by the D2-Net notebook
    results.json                MMA at 1..15 px (overall/i/v), #features, #matches,
                                homography AUC@1/3/5 px, failures, and the same figures for
                                every --compare cache
    mma.png                     MMA curves (1..10 px) of every method and cache

The algorithms live in ``sfmfeat.benchmarks``; this file is the layout and the order of steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sfmfeat.atomic import write_text_atomic
from sfmfeat.benchmarks.curves import draw_mma_curves
from sfmfeat.benchmarks.hpatches import (EXCLUDED_SEQUENCES, PLOT_THRESHOLDS, HomographyConfig,
                                         evaluate_method, list_sequences, load_cache,
                                         save_cache, summarize_cache)
from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.core import add_conf_argument
from sfmfeat.config import parse_overrides
from sfmfeat.extractors import check_feature_names

logger = logging.getLogger("pipelines.hpatches")


def method_label(features: str, matcher: str, top_k: int | None) -> str:
    label = features if matcher == "mnn" else f"{features}+{matcher}"
    return label if top_k is None else f"{label}-top{top_k}"


def parse_compare(items: list[str] | None) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the file) -> {name: path}."""
    result: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        result[name] = Path(path)
    return result


@dataclass(frozen=True)
class HPatchesConfig:
    """One HPatches run (the options of ``python -m pipelines.hpatches``)."""

    features: tuple[str, ...]
    matcher: str = "mnn"
    feature_overrides: dict = field(default_factory=dict)
    matcher_overrides: dict = field(default_factory=dict)
    top_k: int | None = None
    compare: dict = field(default_factory=dict)      # name -> published cache .npy
    homography: HomographyConfig = HomographyConfig()
    keep_high_resolution: bool = False
    device: str | None = None


def run(dataset: str | Path, outputs: str | Path, config: HPatchesConfig) -> dict:
    """Evaluate every feature of ``config`` on the sequences; the results (also in
    ``outputs/results.json``, curves in ``outputs/mma.png``)."""
    dataset, outputs = Path(dataset), Path(outputs)
    feature_names = check_feature_names(list(config.features))
    sequences, dropped = list_sequences(dataset, () if config.keep_high_resolution
                                        else EXCLUDED_SEQUENCES)
    if dropped:
        logger.info("skipping %d high-resolution sequence(s) as the protocol does: %s",
                    len(dropped), " ".join(dropped))
    logger.info("%d sequences (%d i_, %d v_)", len(sequences),
                sum(s.startswith("i_") for s in sequences),
                sum(s.startswith("v_") for s in sequences))
    outputs.mkdir(parents=True, exist_ok=True)
    results: dict = {"dataset": str(dataset), "sequences": sequences,
                     "excluded_sequences": dropped, "matcher": config.matcher,
                     "top_k": config.top_k, "methods": {}, "compared_caches": {}}
    curves = {}
    for features in feature_names:
        label = method_label(features, config.matcher, config.top_k)
        method = evaluate_method(dataset, sequences, features,
                                 outputs / "features" / f"{features}.h5", config.matcher,
                                 overrides=config.feature_overrides,
                                 matcher_overrides=config.matcher_overrides,
                                 top_k=config.top_k, homography=config.homography,
                                 device=config.device)
        cache_path = save_cache(outputs / "cache" / f"{label}.npy", method.cache)
        summary = {**summarize_cache(load_cache(cache_path)),   # figures from the file
                   **{k: v for k, v in method.summary().items()
                      if k in ("homography", "failures", "rejected_images")},
                   "cache": str(cache_path), "feature_preset": features}
        results["methods"][label] = summary
        curves[label] = summary["mma"]
        _log_summary(label, summary)
    for name, path in config.compare.items():
        summary = {**summarize_cache(load_cache(path)), "cache": str(path)}
        results["compared_caches"][name] = summary
        curves[name] = summary["mma"]
        _log_summary(name, summary)
    plot = draw_mma_curves({k: {p: v[p][:len(PLOT_THRESHOLDS)] for p in v}
                            for k, v in curves.items()}, PLOT_THRESHOLDS, outputs / "mma.png")
    results["plot"] = str(plot)
    write_text_atomic(outputs / "results.json", json.dumps(results, indent=2))
    logger.info("results in %s, plot in %s", outputs / "results.json", plot)
    return results


def _log_summary(name: str, summary: dict) -> None:
    mma = summary["mma"]
    at = {t: i for i, t in enumerate(summary["thresholds"])}
    text = " ".join(f"@{t}px {mma['overall'][at[t]]:.3f}/{mma['i'][at[t]]:.3f}/"
                    f"{mma['v'][at[t]]:.3f}" for t in (1, 3, 5, 10) if t in at)
    logger.info("%s: MMA overall/i/v %s; %.0f features, %.0f matches per pair", name, text,
                summary["features"]["mean"], summary["matches"]["overall"])
    if "homography" in summary:
        h = summary["homography"]["overall"]
        logger.info("%s: homography AUC@1/3/5 px %s, %d failed pair(s)", name,
                    "/".join(f"{a:.3f}" for a in h["auc"]), len(summary["failures"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.hpatches", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True,
                   help="the hpatches-sequences-release folder")
    p.add_argument("--features", required=True, help="feature preset(s), comma-separated")
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("--matcher", default="mnn", help="matcher preset (protocol: mnn)")
    add_conf_argument(p)
    add_conf_argument(p, "--matcher-conf", "matcher")
    p.add_argument("--top-k", type=int, help="keep the K highest-scoring features per image")
    p.add_argument("--compare", nargs="*", metavar="[NAME=]CACHE.npy",
                   help="published caches to report and plot beside ours")
    p.add_argument("--ransac-threshold", type=float, default=3.0,
                   help="px, cv2.findHomography RANSAC threshold")
    p.add_argument("--keep-high-resolution", action="store_true",
                   help="do not drop the 8 high-resolution sequences")
    p.add_argument("--device")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def job() -> None:  # run_guarded turns an OSError into one line with path and cause
        run(args.dataset, args.outputs, HPatchesConfig(
            features=tuple(f.strip() for f in args.features.split(",") if f.strip()),
            matcher=args.matcher, feature_overrides=parse_overrides(args.conf),
            matcher_overrides=parse_overrides(args.matcher_conf), top_k=args.top_k,
            compare=parse_compare(args.compare),
            homography=HomographyConfig(ransac_threshold=args.ransac_threshold),
            keep_high_resolution=args.keep_high_resolution, device=args.device))

    return run_guarded("pipelines.hpatches", job)


if __name__ == "__main__":
    sys.exit(main())
