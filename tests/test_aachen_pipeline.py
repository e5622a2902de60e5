"""End to end: miniature datasets in the exact Aachen Day-Night v1.0 and v1.1 layouts,
made from the synthetic scene (known cameras and poses), run through
``python -m pipelines.aachen`` and checked against the known query poses."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from pipelines import aachen
from sfmfeat.localization.queries import write_queries
from sfmfeat.localization.results import pose_errors, read_poses
from sfmfeat.reconstruction.nvm import write_nvm
from sfmfeat.synthetic import SceneConfig, SyntheticScene

NUM_VIEWS = 10
QUERY_VIEWS = {1: "query/day/milestone/2011-10-01_1.jpg",
               4: "query/day/nexus4/IMG_4.jpg",
               7: "query/night/nexus5x/IMG_7.jpg"}
FEATURE_CONF = ["--conf", "max_keypoints=2048"]


def _renamed_reference(scene: SyntheticScene, names: dict[int, str], num_points: int
                       ) -> pycolmap.Reconstruction:
    """The ground-truth model restricted to the database views, with Aachen names."""
    full = scene.ground_truth_reconstruction(num_points=num_points)
    reference = pycolmap.Reconstruction()
    camera_ids = {}
    for view, name in names.items():
        image = full.images[view + 1]
        camera = pycolmap.Camera(model=scene.cameras.model, width=scene.cameras.width,
                                 height=scene.cameras.height, params=scene.cameras.params,
                                 camera_id=len(camera_ids) + 1)
        camera_ids[view] = camera.camera_id
        reference.add_camera_with_trivial_rig(camera)
        keypoints = np.array([p.xy for p in image.points2D]).reshape(-1, 2)
        reference.add_image_with_trivial_frame(
            pycolmap.Image(name=name, keypoints=keypoints, camera_id=camera.camera_id,
                           image_id=view + 1), image.cam_from_world())
    for point in full.points3D.values():
        track = pycolmap.Track()
        for element in point.track.elements:
            if element.image_id - 1 in names:
                track.add_element(element.image_id, element.point2D_idx)
        if track.length() >= 2:
            reference.add_point3D(point.xyz, track, point.color)
    return reference


def make_aachen(root: Path, version: str, local: bool = False) -> dict[str, pycolmap.Rigid3d]:
    """Write a miniature Aachen dataset; returns the known query poses (by full name)."""
    scene = SyntheticScene(SceneConfig(num_views=NUM_VIEWS, width=480, height=360,
                                       camera_model="SIMPLE_RADIAL", supersample=1))
    images = root / "images/images_upright"
    db_names = {v: f"db/{1000 + v}.jpg" for v in range(NUM_VIEWS) if v not in QUERY_VIEWS}
    for view in range(NUM_VIEWS):
        rgb, _ = scene.render(view)
        name = QUERY_VIEWS.get(view) or db_names[view]
        if "night" in name:  # darker, low-contrast, gamma-shifted "night" photo
            rgb = np.clip(255 * (rgb / 255.0) ** 1.6 * 0.45 + 6, 0, 255).astype(np.uint8)
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    reference = _renamed_reference(scene, db_names, num_points=1500)
    cameras = {im.name: reference.cameras[im.camera_id] for im in reference.images.values()}
    models = root / "3D-models"
    if version == "1.0":
        write_nvm(models / "aachen_cvpr2018_db.nvm", reference)
        write_queries(models / "database_intrinsics.txt", cameras)
    else:
        (models / "aachen_v_1_1").mkdir(parents=True)
        reference.write(models / "aachen_v_1_1")
        write_nvm(models / "aachen_v_1_1/aachen_v_1_1.nvm", reference)
        write_queries(models / "aachen_v_1_1/database_intrinsics_v1_1.txt", cameras)
    camera = scene.cameras
    day = {n: camera for v, n in QUERY_VIEWS.items() if "/day/" in n}
    night = {n: camera for v, n in QUERY_VIEWS.items() if "/night/" in n}
    write_queries(root / "queries/day_time_queries_with_intrinsics.txt", day)
    write_queries(root / "queries/night_time_queries_with_intrinsics.txt", night)
    if local:
        layout = aachen.LAYOUT[version]
        with pycolmap.Database.open(root / layout["database"]) as db:
            for name in sorted(db_names.values()) + sorted(QUERY_VIEWS.values()):
                cid = db.write_camera(camera)
                db.write_image(pycolmap.Image(name=name, camera_id=cid))
        lines = [f"{a} {b}" for i, a in enumerate(sorted(db_names.values()))
                 for b in sorted(db_names.values())[i + 1:]]
        lines += [f"{n} {d}" for n in night for d in sorted(db_names.values())]
        (root / layout["pairs"]).write_text("\n".join(lines) + "\n")
    return {name: scene.poses[view] for view, name in QUERY_VIEWS.items()}


def _check(poses_path: Path, truth: dict[str, pycolmap.Rigid3d], names) -> None:
    estimates = read_poses(poses_path)
    for name in names:
        assert name.split("/")[-1] in estimates, f"{name} not localized"
        dt, dr = pose_errors(estimates[name.split("/")[-1]], truth[name])
        # the scene is ~10 units across, the cameras 6.5 units from its centre
        assert dt < 0.05 and dr < 0.5, (name, dt, dr)


@pytest.mark.slow
@pytest.mark.parametrize("version,retrieval", [("1.0", "vlad"), ("1.1", "exhaustive")])
@pytest.mark.slow
def test_aachen_full_protocol_end_to_end(tmp_path, version, retrieval, capsys, run_seed,
                                         figures):
    truth = make_aachen(tmp_path / "aachen", version)
    if version == "1.0":  # bad input: a missing image and a malformed intrinsics line
        day = tmp_path / "aachen/queries/day_time_queries_with_intrinsics.txt"
        lines = day.read_text().splitlines()
        bad_line = len(lines) + 2
        lines.append("query/day/milestone/missing.jpg SIMPLE_RADIAL 480 360 384 240 180 0")
        lines.append("query/day/milestone/broken.jpg SIMPLE_RADIAL 480 360 384 240")
        day.write_text("\n".join(lines) + "\n")
    outputs = tmp_path / "outputs"
    status = aachen.main(["--dataset", str(tmp_path / "aachen"), "--outputs", str(outputs),
                          "--version", version, "--features", "sift", *FEATURE_CONF,
                          "--matcher", "mnn-ratio", "--retrieval", retrieval,
                          "--num-loc", "4", "--num-covis", "4", "--seed", str(run_seed)])
    out = capsys.readouterr().out
    assert status == 0, out
    prefix = "Aachen_eval_" if version == "1.0" else "Aachen_v1_1_eval_"
    method = f"sift+mnn-ratio_{retrieval}{4 if retrieval == 'vlad' else ''}"
    submissions = list(outputs.glob(f"{prefix}*.txt"))
    assert [p.name for p in submissions] == [f"{prefix}{method}.txt"]
    lines = submissions[0].read_text().splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 8 for line in lines)
    assert not any("/" in line.split()[0] for line in lines)  # basenames only
    _check(submissions[0], truth, truth)
    log = json.loads((outputs / f"queries/{prefix}{method}_log.json").read_text())
    for name in truth:
        entry = log["queries"][name]
        assert entry["status"] == "localized"
        assert {"2d3d", "pnp", "matching_amortized", "retrieval_amortized"} <= set(
            entry["timings"])
    figures.check("min_inliers", min(log["queries"][n]["num_inliers"] for n in truth), ">=", 30)
    if version == "1.0":
        assert f"{day}:{bad_line}: SIMPLE_RADIAL takes 4 parameters, got 2" in out
        assert "missing.jpg does not exist" in out
        assert log["queries"][f"{day}:{bad_line}"]["status"] == "error"
        assert log["queries"]["query/day/milestone/missing.jpg"]["status"] == "error"
        assert log["summary"]["num_localized"] == 3


@pytest.mark.slow
def test_aachen_local_protocol_registers_night_queries(tmp_path, capsys, run_seed):
    truth = make_aachen(tmp_path / "aachen", "1.0", local=True)
    outputs = tmp_path / "outputs"
    status = aachen.main(["--dataset", str(tmp_path / "aachen"), "--outputs", str(outputs),
                          "--protocol", "local", *FEATURE_CONF, "--seed", str(run_seed)])
    assert status == 0, capsys.readouterr()
    submission = outputs / "Aachen_eval_sift+mnn-ratio_local.txt"
    night = [n for n in truth if "/night/" in n]
    assert len(submission.read_text().splitlines()) == len(night)
    _check(submission, truth, night)
    page = (outputs / "report.html").read_text()   # queries and the triangulated model
    assert all(f"<td>{name}</td>" in page for name in night) and "3D points" in page


def test_aachen_clear_errors_for_empty_pairs_and_missing_layout(tmp_path, capsys):
    root = tmp_path / "aachen"
    (root / "images/images_upright/db").mkdir(parents=True)
    empty = tmp_path / "empty_pairs.txt"
    empty.write_text("\n# nothing\n")
    outputs = tmp_path / "outputs"
    status = aachen.main(["--dataset", str(root), "--outputs", str(outputs),
                          "--query-pairs", str(empty)])
    assert status == 2 and f"pairs file {empty} is empty" in capsys.readouterr().err
    status = aachen.main(["--dataset", str(root), "--outputs", str(outputs)])
    err = capsys.readouterr().err
    assert status == 2 and "aachen_cvpr2018_db.nvm" in err
    status = aachen.main(["--dataset", str(tmp_path / "nowhere"), "--outputs", str(outputs)])
    assert status == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_aachen_killed_during_retrieval_resumes_and_a_rerun_does_no_work(
        tmp_path, capsys, caplog, monkeypatch, run_seed):
    """Killed while computing the database VLAD descriptors, the run resumes without
    learning the codebook again and computes only the missing descriptors; a rerun of the
    finished run does no work at all: every step says "already done"."""
    import logging

    from sfmfeat.localization import reference, retrieval, run as localization_run
    from sfmfeat.localization import model_localization
    from sfmfeat.store import FeatureWriter, MatchWriter

    truth = make_aachen(tmp_path / "aachen", "1.0")
    outputs = tmp_path / "outputs"
    argv = ["--dataset", str(tmp_path / "aachen"), "--outputs", str(outputs), *FEATURE_CONF,
            "--matcher", "mnn-ratio", "--num-loc", "4", "--num-covis", "4",
            "--seed", str(run_seed), "--no-report"]
    real_vlad, calls = retrieval.vlad, []

    def killed_at_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_vlad(*args, **kwargs)

    monkeypatch.setattr(retrieval, "vlad", killed_at_the_fourth)
    assert aachen.main(argv) == 130
    assert len(list(outputs.glob("queries/vlad-codebook-*.h5"))) == 1

    def never(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} ran again")
        return fail

    calls.clear()
    monkeypatch.setattr(retrieval, "vlad", lambda *a, **k: (calls.append(1),
                                                            real_vlad(*a, **k))[1])
    monkeypatch.setattr(retrieval, "kmeans", never("the codebook's k-means"))
    caplog.set_level(logging.INFO)
    assert aachen.main(argv) == 0, capsys.readouterr()
    assert "VLAD codebook: already done" in caplog.text
    assert len(calls) == 7 - 3 + 3      # the 4 missing database images and the 3 queries
    submission = outputs / "Aachen_eval_sift+mnn-ratio_vlad4.txt"
    _check(submission, truth, truth)
    finished = submission.read_bytes()

    caplog.clear()
    for module, name in ((retrieval, "vlad"), (model_localization, "estimate_pose"),
                         (localization_run, "localize"), (reference, "triangulate_model"),
                         (FeatureWriter, "write"), (MatchWriter, "write")):
        monkeypatch.setattr(module, name, never(f"{module.__name__}.{name}"))
    assert aachen.main(argv) == 0, capsys.readouterr()
    for step in ("database features", "database matching", "triangulation sfm_sift+mnn-ratio",
                 "query features", "query pairs", "query matching", "2D-3D + pose",
                 "results"):
        assert f"{step}: already done" in caplog.text, step
    assert submission.read_bytes() == finished
