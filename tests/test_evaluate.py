"""`sfmfeat evaluate`: pose errors against reference poses, on the synthetic scene's exact
poses, in every reference format, with outliers, missing images and bad files."""

import csv
import json
import math

import h5py
import numpy as np
import pycolmap
import pytest

from sfmfeat.cli import main
from sfmfeat.errors import ConfigError, InputError, ReconstructionError
from sfmfeat.evaluation import (EvaluationConfig, evaluate_poses, pose_auc,
                                relative_pose_errors, umeyama)
from sfmfeat.localization.results import write_poses
from sfmfeat.posefiles import match_names, read_camera_poses
from sfmfeat.reconstruction.nvm import write_nvm
from sfmfeat.synthetic import SyntheticScene


@pytest.fixture(scope="module")
def scene_model():
    return SyntheticScene().ground_truth_reconstruction()


@pytest.fixture(scope="module")
def exact(scene_model):
    return {im.name: im.cam_from_world() for im in scene_model.images.values()}


def _centre(pose):
    return np.asarray(pose.inverse().translation)


def _transformed(poses, scale, rotation, translation):
    """The same cameras in a world x' = scale * rotation @ x + translation."""
    out = {}
    for name, pose in poses.items():
        r = np.asarray(pose.rotation.matrix()) @ rotation.T
        centre = scale * rotation @ _centre(pose) + translation
        out[name] = pycolmap.Rigid3d(pycolmap.Rotation3d(r), -r @ centre)
    return out


def _rotation(axis_angle):
    return np.asarray(pycolmap.Rotation3d(np.asarray(axis_angle, np.float64)).matrix())


def _write_formats(model, poses, folder):
    """The scene's poses in every supported reference format."""
    files = {}
    (folder / "bin").mkdir()
    model.write(str(folder / "bin"))
    (folder / "txt").mkdir()
    model.write_text(str(folder / "txt"))
    files["colmap bin"] = folder / "bin"
    files["colmap txt"] = folder / "txt"
    files["images.txt"] = folder / "txt" / "images.txt"
    files["pose lines"] = write_poses(folder / "poses.txt", poses)
    files["nvm"] = write_nvm(folder / "model.nvm", model, write_points=False)
    (folder / "calibration").mkdir()
    for name, pose in poses.items():
        with h5py.File(folder / "calibration" / f"calibration_{name}.h5", "w") as handle:
            handle["K"] = np.eye(3)
            handle["R"] = np.asarray(pose.rotation.matrix())
            handle["T"] = np.asarray(pose.translation).reshape(3, 1)
    files["imc 2020 h5"] = folder
    for year, (name_column, separator) in {"2022": ("image_id", " "),
                                           "2023": ("image_path", ";")}.items():
        path = folder / f"imc{year}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([name_column, "rotation_matrix", "translation_vector"])
            for name, pose in poses.items():
                stored = name.rsplit(".", 1)[0] if year == "2022" else f"scene/images/{name}"
                writer.writerow([stored,
                                 separator.join(f"{v:.17g}" for v in
                                                np.asarray(pose.rotation.matrix()).ravel()),
                                 separator.join(f"{v:.17g}" for v in pose.translation)])
        files[f"imc {year} csv"] = path
    frames = []
    for name, pose in poses.items():
        world_from_camera = np.eye(4)
        world_from_camera[:3, :3] = np.asarray(pose.rotation.matrix()).T @ np.diag([1, -1, -1])
        world_from_camera[:3, 3] = _centre(pose)
        frames.append({"file_path": f"./images/{name}",
                       "transform_matrix": world_from_camera.tolist()})
    (folder / "transforms.json").write_text(json.dumps({"frames": frames}))
    files["nerf transforms.json"] = folder / "transforms.json"
    (folder / "strecha").mkdir()
    for name, pose in poses.items():
        world_from_camera = np.asarray(pose.rotation.matrix()).T
        rows = [[1000, 0, 320], [0, 1000, 240], [0, 0, 1], [0, 0, 0],
                *world_from_camera.tolist(), _centre(pose).tolist(), [640, 480]]
        (folder / "strecha" / f"{name}.camera").write_text(
            "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in rows))
    files["strecha .camera folder"] = folder / "strecha"
    return files


def test_every_reference_format_reads_the_exact_poses(scene_model, exact, tmp_path):
    files = _write_formats(scene_model, exact, tmp_path)
    assert len(files) == 10
    for kind, path in files.items():
        estimate, reference = match_names(exact, read_camera_poses(path))
        assert len(reference) == len(exact) == len(set(estimate) & set(reference)), kind
        evaluation = evaluate_poses(estimate, reference)
        assert evaluation.max_rotation_deg < 1e-5, kind
        assert evaluation.max_position < 1e-7 * evaluation.reference_scale, kind
        assert not evaluation.missing and not evaluation.outliers, kind
        assert all(v > 1 - 1e-6 for v in evaluation.auc.values()), kind


STRECHA_CAMERA = """\
1000 0 500
0 1000 400
0 0 1
0 0 0
0 0 1
-1 0 0
0 -1 0
1 2 3
3072 2048
"""


def test_strecha_camera_is_camera_to_world_rotation_and_centre(tmp_path):
    """A camera at (1, 2, 3) looking along world +x, image right = world -y, image down =
    world -z: the world point (11, 1, 2.5) is 10 ahead, 1 right and 0.5 down, so it projects to
    pixel (600, 450) with the file's K. Reading R as world-to-camera or the last vector as a
    translation puts it elsewhere."""
    path = tmp_path / "0007.jpg.camera"
    path.write_text(STRECHA_CAMERA)
    poses = read_camera_poses(path)
    assert list(poses) == ["0007.jpg"]
    pose = poses["0007.jpg"]
    assert np.allclose(_centre(pose), [1, 2, 3], atol=1e-12)
    in_camera = np.asarray(pose * np.array([11.0, 1.0, 2.5]))
    assert np.allclose(in_camera, [1, 0.5, 10], atol=1e-12)
    pixel = np.array([[1000, 0, 500], [0, 1000, 400], [0, 0, 1]]) @ in_camera
    assert np.allclose(pixel[:2] / pixel[2], [600, 450])
    (tmp_path / "0008.jpg.camera").write_text(STRECHA_CAMERA.replace("1 2 3", "4 5 6"))
    both = read_camera_poses(tmp_path)
    assert sorted(both) == ["0007.jpg", "0008.jpg"]
    assert np.allclose(_centre(both["0008.jpg"]), [4, 5, 6], atol=1e-12)


@pytest.mark.parametrize("text, message", [
    (STRECHA_CAMERA.replace("3072 2048\n", ""), "got 24 numbers"),
    (STRECHA_CAMERA.replace("0 -1 0", "0 -1 x"), "non-numeric"),
    (STRECHA_CAMERA.replace("0 -1 0", "0 1 0"), "not a rotation"),
], ids=["short", "non-numeric", "reflection"])
def test_bad_strecha_camera_is_an_input_error(tmp_path, text, message):
    path = tmp_path / "a.jpg.camera"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_camera_poses(path)


def test_a_similarity_of_the_whole_reference_is_recovered(exact):
    rotation = _rotation([0.4, -1.1, 0.7])
    reference = _transformed(exact, 3.7, rotation, np.array([10.0, -4.0, 2.5]))
    evaluation = evaluate_poses(exact, reference)
    assert evaluation.alignment.scale == pytest.approx(3.7, rel=1e-9)
    assert np.allclose(evaluation.alignment.rotation, rotation, atol=1e-9)
    assert np.allclose(evaluation.alignment.translation, [10.0, -4.0, 2.5], atol=1e-8)
    assert evaluation.max_rotation_deg < 1e-5
    assert evaluation.max_position < 1e-8 * evaluation.reference_scale
    assert all(v > 1 - 1e-6 for v in evaluation.auc.values())
    assert all(share == 1.0 for share in evaluation.share_within.values())


def test_one_perturbed_camera_is_the_outlier_with_its_error(exact):
    reference = _transformed(exact, 0.5, _rotation([0.0, 0.3, 0.0]), np.array([1.0, 2, 3]))
    estimate = dict(exact)
    name = sorted(exact)[4]
    pose = exact[name]
    tilt = _rotation([0.0, 0.0, math.radians(7.0)])
    moved_centre = _centre(pose) + np.array([0.8, -0.5, 0.3])   # in estimate units
    rotation = tilt @ np.asarray(pose.rotation.matrix())
    estimate[name] = pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ moved_centre)
    evaluation = evaluate_poses(estimate, reference)
    assert evaluation.outliers == (name,)
    by_name = {e.name: e for e in evaluation.errors}
    assert by_name[name].rotation_deg == pytest.approx(7.0, abs=1e-6)
    assert by_name[name].position == pytest.approx(0.5 * np.linalg.norm([0.8, -0.5, 0.3]),
                                                   rel=1e-6)
    others = [e for e in evaluation.errors if e.name != name]
    assert max(e.rotation_deg for e in others) < 1e-5
    assert max(e.position for e in others) < 1e-8
    assert evaluation.max_rotation_deg == pytest.approx(7.0, abs=1e-6)
    assert evaluation.median_rotation_deg < 1e-5
    # the 11 pairs with the perturbed camera have errors of at least 7 degrees
    pairs = len(exact) * (len(exact) - 1) // 2
    assert evaluation.auc[5.0] == pytest.approx((pairs - 11) / pairs, abs=1e-6)
    assert evaluation.auc[20.0] < 1.0


def test_a_least_squares_fit_would_spread_the_outlier(exact):
    """Without RANSAC the perturbed camera would move every other camera's error."""
    name = sorted(exact)[0]
    estimate = dict(exact)
    pose = exact[name]
    estimate[name] = pycolmap.Rigid3d(pose.rotation, np.asarray(pose.translation) + [3.0, 0, 0])
    names = sorted(exact)
    plain = umeyama(np.array([_centre(estimate[n]) for n in names]),
                    np.array([_centre(exact[n]) for n in names]))
    spread = np.linalg.norm(plain.apply(_centre(exact[names[1]])) - _centre(exact[names[1]]))
    assert spread > 1e-3
    robust = evaluate_poses(estimate, exact)
    assert robust.outliers == (name,)
    assert max(e.position for e in robust.errors if e.name != name) < 1e-8


def test_a_missing_image_is_reported_and_counted(exact):
    name = sorted(exact)[7]
    estimate = {n: p for n, p in exact.items() if n != name}
    evaluation = evaluate_poses(estimate, exact)
    assert evaluation.missing == (name,)
    assert evaluation.num_reference == len(exact) and len(evaluation.errors) == len(exact) - 1
    assert all(share == pytest.approx((len(exact) - 1) / len(exact))
               for share in evaluation.share_within.values())
    pairs = len(exact) * (len(exact) - 1) // 2
    assert evaluation.num_pairs == pairs
    assert evaluation.auc[10.0] == pytest.approx((pairs - (len(exact) - 1)) / pairs, abs=1e-6)


def test_an_extra_estimated_image_is_listed_not_scored(exact):
    estimate = dict(exact)
    estimate["unknown.png"] = next(iter(exact.values()))
    evaluation = evaluate_poses(estimate, exact)
    assert evaluation.extra == ("unknown.png",)
    assert len(evaluation.errors) == len(exact)


def test_relative_pose_error_keeps_the_sign_of_the_baseline(exact):
    """A camera moved to the opposite side of its neighbour is wrong by ~180 degrees,
    not folded back to 0 as two-view essential-matrix evaluations do."""
    names = sorted(exact)[:3]
    reference = {n: exact[n] for n in names}
    estimate = dict(reference)
    pose = exact[names[1]]
    c0, c1 = _centre(exact[names[0]]), _centre(pose)
    mirrored = 2 * c0 - c1
    r = np.asarray(pose.rotation.matrix())
    estimate[names[1]] = pycolmap.Rigid3d(pose.rotation, -r @ mirrored)
    errors = relative_pose_errors(estimate, reference)
    assert max(errors) > 170


def test_pose_auc_matches_the_hand_computed_area():
    assert pose_auc([2.5], [5.0]) == [pytest.approx(0.75)]
    assert pose_auc([0.0, 0.0], [5.0, 10.0]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert pose_auc([math.inf, 0.0], [5.0]) == [pytest.approx(0.5)]
    assert pose_auc([30.0], [5.0, 10.0, 20.0]) == [0.0, 0.0, 0.0]


def test_fewer_than_three_common_images_is_an_error(exact):
    names = sorted(exact)[:2]
    with pytest.raises(ReconstructionError, match="only 2 images in common"):
        evaluate_poses({n: exact[n] for n in names}, exact)


@pytest.mark.parametrize("field, value", [("inlier_threshold", 0.0),
                                          ("inlier_threshold", math.nan),
                                          ("max_trials", 0), ("seed", -1),
                                          ("auc_thresholds_deg", ()),
                                          ("share_thresholds", ((1.0, -0.1),))])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        EvaluationConfig(**{field: value})


def test_cli_prints_errors_and_writes_json(scene_model, exact, tmp_path, capsys):
    model_dir = tmp_path / "out" / "sfm"
    model_dir.mkdir(parents=True)
    scene_model.write(str(model_dir))
    name = sorted(exact)[3]
    reference = _transformed(exact, 2.0, _rotation([0.1, 0.2, 0.3]), np.zeros(3))
    reference["not_reconstructed.png"] = next(iter(exact.values()))
    write_poses(tmp_path / "reference.txt", reference)
    assert main(["-q", "evaluate", str(tmp_path / "out"), str(tmp_path / "reference.txt"),
                 "--json", str(tmp_path / "eval.json")]) == 0
    printed = capsys.readouterr().out
    assert name in printed and "not_reconstructed.png" in printed and "missing" in printed
    assert "AUC@5/10/20" in printed
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_reference"] == len(exact) + 1 and report["num_registered"] == len(exact)
    assert report["missing"] == ["not_reconstructed.png"]
    assert report["max_rotation_deg"] < 1e-4
    assert len(report["per_image"]) == len(exact)
    assert main(["-q", "evaluate", str(model_dir), str(tmp_path / "reference.txt"),
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["missing"] == ["not_reconstructed.png"]
    images = tmp_path / "images"
    images.mkdir()
    for image_name in exact:
        (images / image_name).write_bytes(b"")
    assert main(["-q", "evaluate", str(model_dir), str(tmp_path / "reference.txt"),
                 "--images", str(images), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["missing"] == []


def _bad_reference(kind, exact, tmp_path):
    path = tmp_path / "reference.txt"
    if kind == "empty":
        path.write_text("\n\n")
    elif kind == "unparsable line":
        lines = [f"{n} 1 0 0 0 0 0 0" for n in sorted(exact)]
        lines[2] = f"{sorted(exact)[2]} 1 0 zero 0 0 0 0"
        path.write_text("\n".join(lines) + "\n")
    elif kind == "wrong field count":
        path.write_text("view_000.png 1 0 0 0 0 0\n")
    elif kind == "unknown format":
        path = tmp_path / "reference.ply"
        path.write_text("ply\nformat ascii 1.0\n")
    elif kind == "unknown folder":
        path = tmp_path / "nothing_here"
        path.mkdir()
        (path / "readme.md").write_text("no poses\n")
    elif kind == "missing file":
        path = tmp_path / "absent.txt"
    elif kind == "bad csv header":
        path = tmp_path / "calibration.csv"
        path.write_text("image,R,T\na.png,1,2\n")
    elif kind == "not a rotation":
        path = tmp_path / "calibration.csv"
        path.write_text("image_id,rotation_matrix,translation_vector\n"
                        "a,2 0 0 0 1 0 0 0 1,0 0 0\n")
    elif kind == "bad json":
        path = tmp_path / "transforms.json"
        path.write_text("{frames: [")
    elif kind == "short strecha camera":
        path = tmp_path / "gt_dense_cameras"
        path.mkdir()
        (path / "view_000.png.camera").write_text("1 0 0\n0 1 0\n0 0 1\n0 0 0\n1 0 0\n")
    elif kind == "two common images":
        write_poses(path, {n: exact[n] for n in sorted(exact)[:2]})
    return path


BAD_REFERENCES = {
    "empty": "is empty",
    "unparsable line": r"reference\.txt:3: non-numeric",
    "wrong field count": r"reference\.txt:1: expected 'name qw",
    "unknown format": "unknown pose file format '.ply'",
    "unknown folder": "no poses in a known layout",
    "missing file": "does not exist",
    "bad csv header": "expected a csv header",
    "not a rotation": r"calibration\.csv:2: the rotation matrix is not a rotation",
    "bad json": "not valid JSON",
    "short strecha camera": r"view_000\.png\.camera: a Strecha camera file holds .* got 15",
    "two common images": "only 2 images in common",
}


@pytest.mark.parametrize("kind", sorted(BAD_REFERENCES))
def test_bad_reference_is_one_line_and_exit_2(kind, scene_model, exact, tmp_path, capsys):
    import re

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    scene_model.write(str(model_dir))
    path = _bad_reference(kind, exact, tmp_path)
    assert main(["-q", "evaluate", str(model_dir), str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfmfeat evaluate: error: "), captured.err
    assert re.search(BAD_REFERENCES[kind], lines[0]), lines[0]
    assert not captured.out


def test_reader_errors_are_input_errors(tmp_path):
    path = tmp_path / "images.txt"
    path.write_text("# comment\n1 1 0 0 0 0 0 0 1\n\n")
    with pytest.raises(InputError, match=r"images\.txt:2: expected 'IMAGE_ID"):
        read_camera_poses(path)


def test_sampled_ransac_is_deterministic_with_its_seed(exact):
    """With fewer trials than 3-subsets the samples are drawn at random: the seed fixes them."""
    estimate = dict(exact)
    for name in sorted(exact)[:2]:
        pose = exact[name]
        estimate[name] = pycolmap.Rigid3d(pose.rotation,
                                          np.asarray(pose.translation) + [2.0, -1.0, 0.5])
    config = EvaluationConfig(max_trials=40, seed=3)
    first, second = evaluate_poses(estimate, exact, config), evaluate_poses(estimate, exact,
                                                                            config)
    assert first.outliers == second.outliers == tuple(sorted(exact)[:2])
    assert np.array_equal(first.alignment.rotation, second.alignment.rotation)
    assert first.alignment.scale == second.alignment.scale
