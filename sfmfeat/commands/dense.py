"""CLI verb ``sfmfeat dense SFM_DIR IMAGES OUT``: depth maps, fusion and Poisson mesh."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import apply_overrides, parse_overrides

if TYPE_CHECKING:
    from ..reconstruction.dense import DenseConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dense", help="dense reconstruction (MVS) of a sparse model: fused.ply, meshed-poisson.ply",
        description="Undistort, compute depth/normal maps (COLMAP PatchMatch with CUDA, "
                    "otherwise sfmfeat's CPU MVS), fuse them and mesh the cloud. Rerunning the "
                    "same command resumes from the depth maps already written.")
    p.add_argument("sfm_dir", type=Path, help="sparse COLMAP model (e.g. OUT/sfm of reconstruct)")
    p.add_argument("images", type=Path, help="folder of the images the model was built from")
    p.add_argument("output", type=Path, help="dense workspace folder")
    p.add_argument("--max-image-size", type=int, default=None,
                   help="long side of the undistorted images (default 1000; -1 keeps them)")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default=None,
                   help="depth maps: auto (CUDA when pycolmap has it), cpu or cuda")
    p.add_argument("--no-mesh", action="store_true", help="skip Poisson meshing")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="override a DenseConfig field, or a CPU MVS field as cpu.KEY=VALUE")
    p.set_defaults(func=_run_dense)


def build_config(args) -> DenseConfig:
    from ..reconstruction.dense import DenseConfig

    overrides = parse_overrides(args.conf)
    cpu_overrides = {k[4:]: v for k, v in overrides.items() if k.startswith("cpu.")}
    top = {k: v for k, v in overrides.items() if not k.startswith("cpu.")}
    if args.max_image_size is not None:
        top["max_image_size"] = args.max_image_size
    if args.backend is not None:
        top["backend"] = args.backend
    if args.no_mesh:
        top["mesh"] = False
    config = DenseConfig()
    config = dataclasses.replace(config, cpu=apply_overrides(config.cpu, cpu_overrides))
    return apply_overrides(config, top)


def _run_dense(args) -> int:
    from ..reconstruction.dense import densify

    result = densify(args.sfm_dir, args.images, args.output, build_config(args))
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    logger.info("dense (%s): %d depth maps, %d fused points -> %s%s [%s]", result.backend,
                result.num_depth_maps, result.num_fused_points, result.fused_path,
                f", mesh {result.mesh_path}" if result.mesh_path else "", stages)
    return 0
