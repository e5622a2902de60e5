"""Reconstruct the same images with several features and compare the CVPR'17 statistics.

    python -m pipelines.benchmark_reconstruction --images DIR --features sift,rootsift,disk
        --outputs OUT [--conf KEY=VALUE] [--matcher mnn-ratio] [--matcher-conf KEY=VALUE]
        [--dense] [--image-list FILE] [--seed 0] [--rerun]

Outputs (``--outputs``):
    <features>/         one reconstruction per feature (features.h5, matches.h5, database.db,
                        sfm/, summary.json; dense/ with --dense)
    statistics.md       the table (Schönberger et al. CVPR'17 columns)
    statistics.json     the same figures, read from each run's summary.json / dense/dense.json

Protocol defaults follow the CVPR'17 scripts: mutual nearest neighbours with ratio 0.8
(``mnn-ratio``), at least 15 inlier matches per verified pair, exhaustive pairs.
The algorithms live in ``sfmfeat``; this file is the layout and the order of the steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from sfmfeat.atomic import write_text_atomic
from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.commands.core import add_conf_argument
from sfmfeat.config import parse_overrides
from sfmfeat.benchmarks.reconstruction import benchmark, markdown_table, to_json
from sfmfeat.extractors import check_feature_names
from sfmfeat.images import read_image_list
from sfmfeat.reconstruction.pipeline import ReconstructionConfig

logger = logging.getLogger("pipelines.benchmark_reconstruction")


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark run (the options of ``python -m pipelines.benchmark_reconstruction``)."""

    features: tuple[str, ...]
    reconstruction: ReconstructionConfig = ReconstructionConfig(matcher="mnn-ratio",
                                                                random_seed=0)
    image_list: Path | None = None
    dense: bool = False
    dense_max_image_size: int = 1000
    rerun: bool = False
    device: str | None = None


def run(images: str | Path, outputs: str | Path, config: BenchmarkConfig) -> dict:
    """Reconstruct ``images`` with every feature; the statistics (also written to
    ``outputs/statistics.{md,json}``)."""
    images, outputs = Path(images), Path(outputs)
    features = check_feature_names(list(config.features))
    names = read_image_list(config.image_list) if config.image_list else None
    dense_config = None
    if config.dense:
        from sfmfeat.reconstruction.dense import DenseConfig

        dense_config = DenseConfig(max_image_size=config.dense_max_image_size, mesh=False)
    outputs.mkdir(parents=True, exist_ok=True)
    result = benchmark(images, outputs, features, config.reconstruction, dense=config.dense,
                       dense_config=dense_config, image_names=names, device=config.device,
                       rerun=config.rerun)
    table = markdown_table(result)
    rec = config.reconstruction
    data = {"images": str(images), "config": {"matcher": rec.matcher, "pairs": rec.pairs,
                                              "seed": rec.random_seed,
                                              "min_num_inliers": rec.min_num_inliers,
                                              "dense": config.dense},
            **to_json(result, outputs)}
    write_text_atomic(outputs / "statistics.md", table)
    write_text_atomic(outputs / "statistics.json", json.dumps(data, indent=2))
    print(table)
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.benchmark_reconstruction",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--features", required=True, help="feature presets, comma-separated")
    p.add_argument("--outputs", type=Path, required=True)
    add_conf_argument(p)
    p.add_argument("--matcher", default="mnn-ratio")
    add_conf_argument(p, "--matcher-conf", "matcher")
    p.add_argument("--pairs", default="exhaustive",
                   help="exhaustive, sequential or a pairs file")
    p.add_argument("--min-num-inliers", type=int, default=15)
    p.add_argument("--image-list", type=Path, help="reconstruct only these images")
    p.add_argument("--dense", action="store_true", help="also densify and count dense points")
    p.add_argument("--dense-max-image-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="RANSAC/mapping seed (-1: random)")
    p.add_argument("--rerun", action="store_true", help="redo finished reconstructions")
    p.add_argument("--device")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def job() -> int:
        features = tuple(f.strip() for f in args.features.split(",") if f.strip())
        config = BenchmarkConfig(
            features=features, reconstruction=ReconstructionConfig(
                matcher=args.matcher, pairs=args.pairs, random_seed=args.seed,
                min_num_inliers=args.min_num_inliers,
                feature_options=tuple(parse_overrides(args.conf).items()),
                matcher_options=tuple(parse_overrides(args.matcher_conf).items())),
            image_list=args.image_list, dense=args.dense,
            dense_max_image_size=args.dense_max_image_size, rerun=args.rerun,
            device=args.device)
        return 1 if run(args.images, args.outputs, config)["failures"] else 0

    return run_guarded("pipelines.benchmark_reconstruction", job)


if __name__ == "__main__":
    sys.exit(main())
