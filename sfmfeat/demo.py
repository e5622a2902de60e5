"""``sfmfeat demo``: reconstruct a synthetic scene the package renders itself and score the
result against its ground-truth poses. Needs no download."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluation import PoseError, aligned_pose_errors
from .reconstruction.pipeline import ReconstructionConfig, reconstruct
from .synthetic import SceneConfig, SyntheticScene

logger = logging.getLogger(__name__)

MAX_ROTATION_ERROR_DEG = 0.5
MAX_RELATIVE_POSITION_ERROR = 0.01


@dataclass
class DemoResult:
    errors: list[PoseError]
    unregistered: list[str]
    scene_extent: float
    summary: dict = field(default_factory=dict)

    @property
    def max_rotation_deg(self) -> float:
        return max((e.rotation_deg for e in self.errors), default=float("inf"))

    @property
    def max_relative_position(self) -> float:
        return max((e.position / self.scene_extent for e in self.errors), default=float("inf"))

    @property
    def passed(self) -> bool:
        return (not self.unregistered and self.max_rotation_deg < MAX_ROTATION_ERROR_DEG
                and self.max_relative_position < MAX_RELATIVE_POSITION_ERROR)


def run_demo(output_dir: str | Path, features: str = "sift", matcher: str | None = None,
             scene_config: SceneConfig = SceneConfig(), seed: int = 0) -> DemoResult:
    output_dir = Path(output_dir)
    scene = SyntheticScene(scene_config)
    image_dir = output_dir / "images"
    if not all((image_dir / name).is_file() for name in scene.names):
        logger.info("rendering %d synthetic views into %s", len(scene.names), image_dir)
        scene.write_images(image_dir)
    result = reconstruct(image_dir, output_dir, ReconstructionConfig(
        features=features, matcher=matcher, camera_mode="single", random_seed=seed))
    errors, unregistered = aligned_pose_errors(result.reconstruction,
                                               scene.ground_truth_reconstruction())
    demo = DemoResult(errors, unregistered, scene.extent(), result.summary)
    report = {
        "passed": demo.passed,
        "scene_extent": demo.scene_extent,
        "thresholds": {"rotation_deg": MAX_ROTATION_ERROR_DEG,
                       "relative_position": MAX_RELATIVE_POSITION_ERROR},
        "num_views": len(scene.names),
        "unregistered": unregistered,
        "max_rotation_deg": demo.max_rotation_deg,
        "median_rotation_deg": float(np.median([e.rotation_deg for e in errors])),
        "max_relative_position": demo.max_relative_position,
        "median_relative_position": float(np.median([e.position for e in errors])
                                          / demo.scene_extent),
        "per_image": [{"name": e.name, "rotation_deg": e.rotation_deg,
                       "relative_position": e.position / demo.scene_extent} for e in errors],
    }
    (output_dir / "demo_report.json").write_text(json.dumps(report, indent=2))
    return demo
