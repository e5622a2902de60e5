"""`sfmfeat demo`: the embedded default job must register every synthetic view accurately."""

import pytest
import json

import numpy as np
import pycolmap

from sfmfeat.cli import main
from sfmfeat.evaluation import aligned_pose_errors, rotation_angle_deg


@pytest.mark.slow
def test_demo_registers_all_views_within_limits(tmp_path, capsys):
    assert main(["-q", "demo", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "rotation error" in printed
    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert report["passed"] and not report["unregistered"]
    assert report["max_rotation_deg"] < 0.5
    assert report["max_relative_position"] < 0.01
    assert pycolmap.Reconstruction(str(tmp_path / "sfm")).num_reg_images() == report["num_views"]


def _model(rotations, centres):
    model = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_name(1, "PINHOLE", 100.0, 64, 48)
    model.add_camera_with_trivial_rig(camera)
    for index, (rotation, centre) in enumerate(zip(rotations, centres), 1):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre)
        model.add_image_with_trivial_frame(
            pycolmap.Image(name=f"{index}.png", camera_id=1, image_id=index), pose)
    return model


def test_alignment_removes_a_similarity_and_measures_errors():
    rng = np.random.default_rng(0)
    rotations = [pycolmap.Rotation3d(rng.normal(size=3) * 0.3).matrix() for _ in range(5)]
    centres = rng.normal(size=(5, 3))
    reference = _model(rotations, centres)
    # the same cameras in another frame: x' = s R x + t
    frame_rotation = pycolmap.Rotation3d(np.array([0.2, -0.5, 0.9])).matrix()
    scale, shift = 3.0, np.array([1.0, -2.0, 0.5])
    moved_centres = [scale * frame_rotation @ c + shift for c in centres]
    moved_rotations = [r @ frame_rotation.T for r in rotations]
    moved_rotations[2] = pycolmap.Rotation3d(np.array([0.0, 0.0, np.radians(1.0)])).matrix() \
        @ moved_rotations[2]  # 1° error on image 3
    errors, missing = aligned_pose_errors(_model(moved_rotations, moved_centres), reference)
    assert not missing
    by_name = {e.name: e for e in errors}
    assert abs(by_name["3.png"].rotation_deg - 1.0) < 1e-6
    assert max(e.position for e in errors) < 1e-9
    assert max(e.rotation_deg for n, e in by_name.items() if n != "3.png") < 1e-4
    assert abs(rotation_angle_deg(np.eye(3), rotations[0] @ rotations[0].T)) < 1e-9
