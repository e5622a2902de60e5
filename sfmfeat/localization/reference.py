"""The database side of a localization benchmark (Aachen, and any reference model with
known poses), as resumable steps: database features -> database matching ->
triangulation of the reference with its poses fixed. Each reports "already done" on a
rerun: extraction and matching resume through their stores, triangulation through the
run's ``steps.json`` (its key digests the reference, the pairs, the config and the
features and matches files)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pycolmap

from ..errors import InputError
from ..executors import ExecutorConfig
from ..extract import extract_features
from ..match import match_pairs
from ..pairs import Pair
from ..reconstruction.triangulation import TriangulationConfig, triangulate_model
from ..steps import StepRecord, file_identity, step_key

logger = logging.getLogger(__name__)


def registered_names(reference: pycolmap.Reconstruction) -> list[str]:
    return sorted(im.name for im in reference.images.values() if im.has_pose)


def database_features_step(images: Path, names: list[str], output: Path, features: str,
                           overrides: dict[str, Any], device: str | None = None,
                           strict: bool = True, executor: ExecutorConfig | None = None) -> Path:
    """Local features of the database images (``strict``: an unreadable one is an
    error, not a hole in the model)."""
    extraction = extract_features(images, output, features, image_names=names,
                                  overrides=overrides, device=device, executor=executor)
    if strict and extraction.rejected:
        raise InputError(f"{len(extraction.rejected)} database image(s) unreadable, e.g. "
                         + "; ".join(list(extraction.rejected.values())[:3]))
    if not extraction.extracted:
        logger.info("database features: already done (%s)", output)
    return output


def database_matching_step(pairs: list[Pair], features: Path, output: Path, matcher: str,
                           overrides: dict[str, Any], device: str | None = None,
                           executor: ExecutorConfig | None = None) -> Path:
    report = match_pairs(pairs, features, output, matcher, overrides=overrides,
                         device=device, executor=executor)
    if not report.matched:
        logger.info("database matching: already done (%s)", output)
    return output


def reference_digest(reference: pycolmap.Reconstruction) -> str:
    """A digest of the reference's cameras and poses (what triangulation keeps fixed)."""
    return step_key(
        cameras={i: f"{c.model.name} {c.width} {c.height} {c.params_to_string()}"
                 for i, c in reference.cameras.items()},
        images={im.name: str(im.cam_from_world()) if im.has_pose else None
                for im in reference.images.values()})


def triangulation_step(reference: pycolmap.Reconstruction, images: Path, features: Path,
                       matches: Path, pairs: list[Pair], output: Path,
                       config: TriangulationConfig, record: StepRecord) -> Path:
    """The reference's 3D points from our features and matches (poses fixed); the model
    folder ``output``."""
    key = step_key(reference=reference_digest(reference), pairs=pairs, config=config,
                   files=[file_identity(features), file_identity(matches)])

    def compute() -> Path:
        report = triangulate_model(reference, output, features, matches, pairs,
                                   image_dir=images, config=config)
        logger.info("triangulation: %s", report.summary())
        return output

    return record.run(f"triangulation {output.name}", key,
                      [output / "points3D.bin", output / "images.bin"], compute,
                      lambda: output)
