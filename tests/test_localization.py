"""Unit tests of the localization modules: pose, result files, query lists, NVM,
epipolar verification and 2D–3D localization (on exact synthetic data)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pycolmap
import pytest

from sfmfeat.errors import InputError
from sfmfeat.extractors.base import Features
from sfmfeat.localization.pose import PoseConfig, estimate_pose
from sfmfeat.localization.queries import read_queries, read_query_lists, write_queries
from sfmfeat.localization.results import (evaluate, pose_errors, read_poses, recall,
                                          write_poses)
from sfmfeat.localization.model_localization import (LocalizationConfig, ModelIndex, covisibility_clusters,
                                      localize, retrieval_from_pairs)
from sfmfeat.reconstruction.nvm import read_nvm, reconstruction_from_nvm, write_nvm
from sfmfeat.reconstruction.triangulation import epipolar_inliers
from sfmfeat.store import FeatureWriter, MatchWriter


def _pose(angle_deg=10.0, axis=(0, 1, 0), t=(0.1, -0.2, 3.0)):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    half = math.radians(angle_deg) / 2
    quat_xyzw = np.r_[axis * math.sin(half), math.cos(half)]
    return pycolmap.Rigid3d(pycolmap.Rotation3d(quat_xyzw), np.asarray(t, float))


def _camera(model="SIMPLE_RADIAL", w=640, h=480):
    camera = pycolmap.Camera.create_from_model_name(1, model, 500.0, w, h)
    camera.has_prior_focal_length = True
    return camera


def _project(camera, pose, points3D):
    """sfmfeat-convention pixels (COLMAP's minus 0.5)."""
    cam = points3D @ np.asarray(pose.rotation.matrix()).T + np.asarray(pose.translation)
    return camera.img_from_cam(cam) - 0.5


# ------------------------------------------------------------------------------- pose

def test_estimate_pose_recovers_pose_with_outliers_and_pixel_convention():
    rng = np.random.default_rng(0)
    camera, pose = _camera(), _pose()
    points3D = rng.uniform([-1, -1, -1], [1, 1, 1], (300, 3))
    points2D = _project(camera, pose, points3D)
    outliers = rng.choice(300, 60, replace=False)
    points2D[outliers] = rng.uniform(0, 480, (60, 2))
    result = estimate_pose(points2D, points3D, camera, PoseConfig(random_seed=0))
    assert result is not None
    dt, dr = pose_errors(result.cam_from_world, pose)
    assert dt < 1e-6 and dr < 1e-5
    assert result.num_inliers >= 240 and result.num_correspondences == 300
    assert not result.inlier_mask[outliers].any() or result.inlier_mask[outliers].sum() < 5
    # Shifting the 2D points by COLMAP's half pixel would bias the pose: the +0.5 matters.
    shifted = estimate_pose(points2D + 0.5, points3D, camera, PoseConfig(random_seed=0))
    assert pose_errors(shifted.cam_from_world, pose)[1] > 1e-3


def test_estimate_pose_never_modifies_the_callers_camera():
    rng = np.random.default_rng(1)
    camera, pose = _camera(), _pose()
    points3D = rng.uniform(-1, 1, (200, 3))
    truth = copy.copy(camera)
    truth.params = [520.0, 320.0, 240.0, 0.0]
    points2D = _project(truth, pose, points3D)
    before = np.array(camera.params)
    result = estimate_pose(points2D, points3D, camera,
                           PoseConfig(refine_focal_length=True, random_seed=0))
    assert result is not None
    np.testing.assert_array_equal(camera.params, before)
    assert abs(result.camera.params[0] - 520.0) < 0.5


def test_estimate_pose_fails_without_fallback():
    rng = np.random.default_rng(2)
    camera = _camera()
    assert estimate_pose(rng.uniform(0, 400, (5, 2)), rng.uniform(-1, 1, (5, 3)),
                         camera) is None
    noise = estimate_pose(rng.uniform(0, 400, (200, 2)), rng.uniform(-1, 1, (200, 3)),
                          camera, PoseConfig(min_num_inliers=30, random_seed=0))
    assert noise is None
    with pytest.raises(InputError, match="N×2"):
        estimate_pose(np.zeros((10, 3)), np.zeros((10, 3)), camera)
    with pytest.raises(InputError, match="max_error"):
        PoseConfig(max_error=0)


# ---------------------------------------------------------------------------- results

def test_pose_file_round_trip_basename_and_camera_name(tmp_path):
    poses = {"query/day/milestone/a.jpg": _pose(30, (1, 2, 3), (1, 2, 3)),
             "query/night/nexus5x/b.jpg": _pose(-170, (0, 0, 1), (-4, 5e-7, 1e6))}
    path = write_poses(tmp_path / "p.txt", poses)
    lines = path.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["a.jpg", "b.jpg"]
    assert all(len(line.split()) == 8 and float(line.split()[1]) >= 0 for line in lines)
    back = read_poses(path)
    for name, pose in poses.items():
        dt, dr = pose_errors(back[name.split("/")[-1]], pose)
        assert dt < 1e-3 and dr < 1e-6
    write_poses(tmp_path / "c.txt", poses, prepend_camera_name=True)
    assert (tmp_path / "c.txt").read_text().split()[0] == "milestone/a.jpg"
    with pytest.raises(InputError, match="both be written"):
        write_poses(tmp_path / "d.txt", {"x/a.jpg": _pose(), "y/a.jpg": _pose()})


def test_read_poses_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a.jpg 1 0 0 0 0 0 0\nb.jpg 1 0 0 0 0 0\n")
    with pytest.raises(InputError, match=r"bad\.txt:2"):
        read_poses(path)


def test_pose_errors_recall_and_missing_queries():
    reference = _pose(0, t=(0, 0, 0))
    moved = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0, 0, 0, 1.0])), [0.3, 0.4, 0])
    dt, dr = pose_errors(moved, reference)
    assert dt == pytest.approx(0.5) and dr == pytest.approx(0, abs=1e-9)
    dt, dr = pose_errors(_pose(3.0, t=(0, 0, 0)), reference)
    assert dt == pytest.approx(0, abs=1e-9) and dr == pytest.approx(3.0)
    assert recall([(0.1, 1), (0.4, 3), (3, 9)]) == pytest.approx([1 / 3, 2 / 3, 1])
    summary = evaluate({"a.jpg": reference}, {"q/a.jpg": reference, "q/b.jpg": reference})
    assert summary["recall"] == [0.5, 0.5, 0.5] and summary["num_localized"] == 1
    assert summary["per_query"]["q/b.jpg"]["translation_error"] is None


# ---------------------------------------------------------------------------- queries

def test_query_list_malformed_lines_name_file_and_line_and_others_survive(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text(
        "# comment\n"
        "query/day/a.jpg SIMPLE_RADIAL 1600 1200 1400 800 600 -0.01\n"
        "query/day/b.jpg SIMPLE_RADIAL 1600 1200 1400 800 600\n"        # 3 of 4 params
        "query/day/c.jpg NOT_A_MODEL 10 10 1\n"
        "query/day/d.jpg PINHOLE 640 480 500 500 320 240\n"
        "query/day/e.jpg PINHOLE 640 x 500 500 320 240\n")
    queries = read_queries(path)
    assert queries.names == ["query/day/a.jpg", "query/day/d.jpg"]
    assert set(queries.errors) == {f"{path}:3", f"{path}:4", f"{path}:6"}
    assert "takes 4 parameters, got 3" in queries.errors[f"{path}:3"]
    assert "NOT_A_MODEL" in queries.errors[f"{path}:4"]
    assert queries.cameras["query/day/d.jpg"].params.tolist() == [500, 500, 320, 240]
    with pytest.raises(InputError, match=rf"{path}:3"):
        read_queries(path, strict=True)
    round_trip = write_queries(tmp_path / "w.txt", queries.cameras)
    again = read_query_lists([round_trip])
    assert again.names == queries.names and not again.errors
    with pytest.raises(InputError, match="does not exist"):
        read_queries(tmp_path / "missing.txt")


# -------------------------------------------------------------------------------- NVM

def _synthetic_model(num_images=6, num_points=400, seed=0):
    pycolmap.set_random_seed(seed)
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=1, num_cameras_per_rig=1, num_frames_per_rig=num_images,
        num_points3D=num_points, camera_model_id=pycolmap.CameraModelId.SIMPLE_RADIAL,
        camera_width=640, camera_height=480, camera_params=[600.0, 320.0, 240.0, 0.0],
        camera_has_prior_focal_length=True)
    return pycolmap.synthesize_dataset(options)


def test_nvm_round_trip_and_errors(tmp_path):
    model = _synthetic_model()
    nvm = write_nvm(tmp_path / "m.nvm", model)
    intrinsics = write_queries(tmp_path / "intrinsics.txt",
                               {im.name: model.cameras[im.camera_id]
                                for im in model.images.values()})
    parsed = read_nvm(nvm)
    assert len(parsed.cameras) == model.num_images()
    assert len(parsed.points) == model.num_points3D()
    back = reconstruction_from_nvm(nvm, intrinsics, with_points=True)
    assert back.num_points3D() == model.num_points3D()
    for image in model.images.values():
        other = back.find_image_with_name(image.name)
        dt, dr = pose_errors(other.cam_from_world(), image.cam_from_world())
        assert dt < 1e-8 and dr < 1e-6
    lines = nvm.read_text().splitlines()
    lines[3] = lines[3].split()[0] + " 600 1 0 0"
    (tmp_path / "bad.nvm").write_text("\n".join(lines))
    with pytest.raises(InputError, match=r"bad\.nvm:4"):
        read_nvm(tmp_path / "bad.nvm")


# ------------------------------------------------------------------ epipolar verification

def test_epipolar_inliers_keep_true_matches_and_reject_wrong_ones():
    rng = np.random.default_rng(3)
    camera = _camera()
    pose0, pose1 = _pose(0, t=(0, 0, 4)), _pose(15, t=(-1, 0, 4))
    points = rng.uniform(-1, 1, (200, 3))
    kp0, kp1 = _project(camera, pose0, points), _project(camera, pose1, points)
    matches = np.c_[np.arange(200), np.arange(200)]
    wrong = np.c_[np.arange(100), rng.permutation(np.arange(100, 200))]
    mask, _ = epipolar_inliers(kp0, kp1, np.r_[matches, wrong], camera, camera, pose0, pose1,
                               max_error=2.0)
    assert mask[:200].all()
    assert mask[200:].mean() < 0.1


# ------------------------------------------------------------------------ localization

def _write_stores(tmp_path, model, query_ids, drop_query_ids=()):
    """features/matches from a model's exact observations; queries keep their keypoints
    (with a few distractors) and are matched to every other image through the tracks."""
    features, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    names = {i: im.name for i, im in model.images.items()}
    with FeatureWriter(features, "exact", "h", {}) as writer:
        for image_id, image in model.images.items():
            xy = np.array([p.xy for p in image.points2D], np.float32).reshape(-1, 2) - 0.5
            writer.write(image.name, Features(keypoints=xy, scores=np.ones(len(xy), np.float32),
                                              descriptors=np.zeros((len(xy), 2), np.float32)),
                         (640, 480))
    point_of = {i: np.array([p.point3D_id if p.has_point3D() else -1
                             for p in im.points2D], np.int64)
                for i, im in model.images.items()}
    pairs = []
    with MatchWriter(matches, "exact", "h", {}, features_config_hash="h") as writer:
        for q in query_ids:
            for d in model.images:
                if d == q or (names[d], names[q]) in pairs:
                    continue
                lookup = {pid: k for k, pid in enumerate(point_of[d]) if pid >= 0}
                m = [(k, lookup[pid]) for k, pid in enumerate(point_of[q]) if pid in lookup]
                writer.write(names[q], names[d], np.array(m, np.int32).reshape(-1, 2),
                             np.ones(len(m), np.float32))
                pairs.append((names[q], names[d]))
    return features, matches, pairs


def test_localize_recovers_poses_reports_failures_and_clusters(tmp_path):
    model = _synthetic_model(num_images=6, num_points=300)
    queries = [1, 2]
    features, matches, pairs = _write_stores(tmp_path, model, queries)
    reference = {model.images[q].name: model.images[q].cam_from_world() for q in queries}
    db_model = copy.copy(model)
    for q in queries:  # the queries must not be in the model they are localized against
        db_model.deregister_frame(db_model.images[q].frame_id)
    cameras = {model.images[q].name: model.cameras[model.images[q].camera_id]
               for q in queries}
    cameras["ghost.jpg"] = cameras[model.images[1].name]
    retrieval = retrieval_from_pairs(pairs, cameras)
    retrieval["ghost.jpg"] = [model.images[3].name]
    for clustering in (False, True):
        report = localize(db_model, cameras, retrieval, features, matches,
                          LocalizationConfig(pose=PoseConfig(random_seed=0),
                                             covisibility_clustering=clustering),
                          progress=False)
        assert set(report.poses) == set(reference)
        for name, pose in reference.items():
            dt, dr = pose_errors(report.poses[name], pose)
            assert dt < 1e-3 and dr < 1e-3
            result = report.results[name]
            assert result.num_inliers == result.num_correspondences > 50
            assert set(result.timings) == {"2d3d", "pnp"}
            assert sum(result.inliers_per_db_image.values()) == result.num_inliers
        ghost = report.results["ghost.jpg"]
        assert ghost.status == "error" and "no features" in ghost.reason
        assert ghost.cam_from_world is None
    index = ModelIndex(db_model)
    assert covisibility_clusters(index, [model.images[i].name for i in (3, 4, 5)]) == [
        [model.images[i].name for i in (3, 4, 5)]]


def test_model_without_points_is_a_clear_error():
    model = _synthetic_model()
    model.delete_all_points2D_and_points3D()
    with pytest.raises(InputError, match="no 3D points"):
        ModelIndex(model, "model /x/y")


def test_cli_model_without_points_and_empty_pairs_are_one_line_errors(tmp_path, capsys):
    from sfmfeat import cli

    model = _synthetic_model()
    model.delete_all_points2D_and_points3D()
    (tmp_path / "model").mkdir()
    model.write(tmp_path / "model")
    (tmp_path / "queries").mkdir()
    write_queries(tmp_path / "q.txt", {"a.jpg": _camera()})
    status = cli.main(["localize", str(tmp_path / "model"), str(tmp_path / "queries"),
                       str(tmp_path / "out"), "--db-features", str(tmp_path / "f.h5"),
                       "--query-list", str(tmp_path / "q.txt")])
    err = capsys.readouterr().err
    assert status == 2 and f"model {tmp_path / 'model'} has no 3D points" in err
    (tmp_path / "pairs.txt").write_text("")
    status = cli.main(["triangulate", str(tmp_path / "model"), str(tmp_path / "tri"),
                       "--features", str(tmp_path / "f.h5"), "--matches", str(tmp_path / "m.h5"),
                       "--pairs", str(tmp_path / "pairs.txt")])
    err = capsys.readouterr().err
    assert status == 2 and f"pairs file {tmp_path / 'pairs.txt'} is empty" in err


def test_query_without_focal_prior_gets_its_focal_estimated(tmp_path):
    model = _synthetic_model(num_images=5, num_points=300, seed=4)
    features, matches, pairs = _write_stores(tmp_path, model, [1])
    query = model.images[1]
    db_model = copy.copy(model)
    db_model.deregister_frame(db_model.images[1].frame_id)
    camera = copy.copy(model.cameras[query.camera_id])
    camera.params = [900.0, 320.0, 240.0, 0.0]          # EXIF-less guess, true focal 600
    camera.has_prior_focal_length = False
    retrieval = retrieval_from_pairs(pairs, [query.name])
    config = LocalizationConfig(pose=PoseConfig(random_seed=0))
    report = localize(db_model, {query.name: camera}, retrieval, features, matches, config,
                      progress=False)
    dt, dr = pose_errors(report.poses[query.name], query.cam_from_world())
    assert dt < 1e-3 and dr < 1e-3
    no_estimate = LocalizationConfig(pose=PoseConfig(random_seed=0),
                                     estimate_focal_without_prior=False)
    report = localize(db_model, {query.name: camera}, retrieval, features, matches,
                      no_estimate, progress=False)
    if query.name in report.poses:
        assert pose_errors(report.poses[query.name], query.cam_from_world())[1] > 0.1


@pytest.mark.parametrize("verification", ["poses", "poses+ransac", "ransac"])
def test_triangulation_from_known_poses_keeps_poses_and_drops_wrong_matches(tmp_path,
                                                                            verification):
    from sfmfeat.reconstruction.triangulation import TriangulationConfig, triangulate_model

    model = _synthetic_model(num_images=5, num_points=300, seed=5)
    features, _, _ = _write_stores(tmp_path, model, [])
    rng = np.random.default_rng(0)
    point_of = {im.name: np.array([p.point3D_id if p.has_point3D() else -1
                                   for p in im.points2D]) for im in model.images.values()}
    names = sorted(point_of)
    pairs, wrong_total = [], 0
    with MatchWriter(tmp_path / "all.h5", "exact", "h", {}, features_config_hash="h") as w:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                lookup = {pid: k for k, pid in enumerate(point_of[b]) if pid >= 0}
                good = [(k, lookup[p]) for k, p in enumerate(point_of[a]) if p in lookup]
                wrong = np.c_[rng.integers(0, len(point_of[a]), 40),
                              rng.integers(0, len(point_of[b]), 40)]
                wrong_total += 40
                m = np.r_[np.array(good).reshape(-1, 2), wrong].astype(np.int32)
                w.write(a, b, m, np.ones(len(m), np.float32))
                pairs.append((a, b))
    report = triangulate_model(model, tmp_path / "tri", features, tmp_path / "all.h5", pairs,
                               config=TriangulationConfig(verification=verification,
                                                          extract_colors=False,
                                                          random_seed=0))
    result = report.reconstruction
    assert report.max_pose_change == 0.0
    assert report.num_verified_pairs == len(pairs)
    assert result.num_points3D() >= 0.9 * model.num_points3D()
    # every triangulated point lies on a ground-truth point (wrong matches were dropped)
    truth = np.array([p.xyz for p in model.points3D.values()])
    xyz = np.array([p.xyz for p in result.points3D.values()])
    nearest = np.min(np.linalg.norm(xyz[:, None] - truth[None], axis=2), axis=1)
    assert np.quantile(nearest, 0.99) < 1e-3
    assert report.num_inlier_matches <= report.num_matches - 0.9 * wrong_total
