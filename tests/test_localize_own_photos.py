"""``python -m pipelines.localize``: own query photos against a model from
``sfmfeat reconstruct`` (synthetic scene: the model's gauge is aligned to the known poses
through the database camera centres, then the query poses are compared)."""

from __future__ import annotations

import pytest
import json
import logging

import numpy as np
import pycolmap
import pytest

from helpers import write_scene_split
from pipelines import localize as localize_pipeline
from sfmfeat import cli
from sfmfeat.localization.queries import write_queries
from sfmfeat.localization.results import read_poses
from sfmfeat.synthetic import SceneConfig, SyntheticScene

QUERIES = (2, 5)


@pytest.mark.slow
def test_own_photos_against_a_reconstruct_model(tmp_path, capsys, caplog, run_seed, figures):
    scene = SyntheticScene(SceneConfig(num_views=9, width=480, height=360, supersample=1,
                                       camera_model="SIMPLE_RADIAL", seed=1))
    database, queries = tmp_path / "database", tmp_path / "queries"
    write_scene_split(scene, database, queries, QUERIES)
    recon = tmp_path / "recon"
    assert cli.main(["-q", "reconstruct", str(database), str(recon), "--features", "sift",
                     "--conf", "max_keypoints=2048", "--seed", str(run_seed)]) == 0
    model = pycolmap.Reconstruction(recon / "sfm")
    figures.check("registered", model.num_reg_images(), ">=", 6)
    write_queries(tmp_path / "queries.txt",
                  {scene.names[v]: scene.cameras for v in QUERIES})
    out = tmp_path / "out"
    status = localize_pipeline.main(["--model", str(recon), "--queries", str(queries),
                                     "--outputs", str(out), "--query-list",
                                     str(tmp_path / "queries.txt"), "--seed", str(run_seed)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"localized {len(QUERIES)} of {len(QUERIES)} queries" in printed
    # align the model's arbitrary gauge to the known poses with the database cameras
    index = {n: i for i, n in enumerate(scene.names)}
    registered = [im for im in model.images.values() if im.has_pose]
    src = np.array([im.projection_center() for im in registered])
    tgt = np.array([scene.projection_center(index[im.name]) for im in registered])
    world_from_model = pycolmap.estimate_sim3d(src, tgt)
    scale = world_from_model.scale
    rotation = np.asarray(world_from_model.rotation.matrix())
    poses = read_poses(out / "poses.txt")
    for view in QUERIES:
        pose = poses[scene.names[view]]
        center = np.asarray(world_from_model * pose.inverse().translation[None])[0]
        figures.check("center_error", np.linalg.norm(center - scene.projection_center(view)),
                      "<", 0.05)
        r_world = np.asarray(pose.rotation.matrix()) @ rotation.T
        r_true, _ = scene.rotation_translation(view)
        cos = (np.trace(r_world @ r_true.T) - 1) / 2
        figures.check("rotation_error_deg", np.degrees(np.arccos(np.clip(cos, -1, 1))), "<", 1.0)
    log = json.loads((out / "poses_log.json").read_text())
    assert log["summary"]["num_localized"] == len(QUERIES)
    figures.check("min_inliers", min(q["num_inliers"] for q in log["queries"].values()), ">=", 30)
    assert scale > 0
    # retrieval by the registered VLAD method, the same poses; a rerun does no work
    retrieved = tmp_path / "retrieved"
    argv = ["--model", str(recon), "--queries", str(queries), "--outputs", str(retrieved),
            "--query-list", str(tmp_path / "queries.txt"), "--seed", str(run_seed),
            "--pairs", "retrieval:vlad:4", "--no-report"]
    assert localize_pipeline.main(argv) == 0
    pairs = (retrieved / "query_pairs.txt").read_text().splitlines()
    assert len(pairs) == 4 * len(QUERIES)
    assert set(read_poses(retrieved / "poses.txt")) == set(poses)
    steps = json.loads((retrieved / "steps.json").read_text())
    assert {"query pairs", "2D-3D + pose", "results"} <= set(steps)
    before = (retrieved / "poses_log.json").read_bytes()
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert localize_pipeline.main(argv) == 0
    assert (retrieved / "poses_log.json").read_bytes() == before
    messages = [r.getMessage() for r in caplog.records]
    for step in ("query features", "query pairs", "query matching", "2D-3D + pose",
                 "results"):
        assert any(m.startswith(f"{step}: already done") for m in messages), step
