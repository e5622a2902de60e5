"""Localization matches queries with the matcher the model was built with (recorded in its
matches.h5 / summary.json, else the extractor's default) unless one is given."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sfmfeat.extractors.base import Features
from sfmfeat.localization.run import recorded_matcher
from sfmfeat.store import FeatureWriter, MatchReader, MatchWriter


def _features(folder, method):
    path = folder / "features.h5"
    with FeatureWriter(path, method=method, config_hash="0" * 16, config={}) as writer:
        writer.write("a.jpg", Features(keypoints=np.zeros((1, 2)), scores=np.ones(1),
                                       descriptors=np.ones((1, 4))), (10, 10))
    return path


def test_recorded_matcher_sources(tmp_path):
    features = _features(tmp_path, "r2d2")
    matcher, overrides, origin = recorded_matcher(features, "r2d2")
    assert (matcher, overrides) == ("mnn", {}) and "default of r2d2" in origin
    assert recorded_matcher(features, "sift")[0] == "mnn-ratio"
    (tmp_path / "summary.json").write_text(json.dumps(
        {"config": {"matcher": "ratio", "matcher_options": [["ratio", 0.7]]}}))
    assert recorded_matcher(features, "r2d2")[:2] == ("ratio", {"ratio": 0.7})
    with MatchWriter(tmp_path / "matches.h5", method="nn", config_hash="1" * 16,
                     config={"matcher": "nn", "config": {"mutual": False, "ratio": None}},
                     features_config_hash="0" * 16) as writer:
        writer.write("a.jpg", "b.jpg", np.zeros((0, 2)), np.zeros(0))
    matcher, overrides, origin = recorded_matcher(features, "r2d2")
    assert matcher == "nn" and overrides == {"mutual": False, "ratio": None}
    assert "matches.h5" in origin


@pytest.mark.slow
def test_r2d2_model_is_localized_with_mnn_unless_overridden(tmp_path, weights_env, caplog):
    import cv2

    from sfmfeat import cli
    from sfmfeat.localization.queries import write_queries
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    scene = SyntheticScene(SceneConfig(num_views=6, width=480, height=360, supersample=1,
                                       camera_model="SIMPLE_RADIAL", seed=1))
    database, queries = tmp_path / "database", tmp_path / "queries"
    query_view = 3
    for view, name in enumerate(scene.names):
        folder = queries if view == query_view else database
        folder.mkdir(exist_ok=True)
        rgb, _ = scene.render(view)
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    recon = tmp_path / "recon"
    assert cli.main(["-q", "reconstruct", str(database), str(recon), "--features", "r2d2",
                     "--conf", "max_edge=480", "--conf", "max_keypoints=1500",
                     "--seed", "0"]) == 0
    with MatchReader(recon / "matches.h5") as reader:
        assert reader.method == "mnn"   # r2d2's default
    write_queries(tmp_path / "queries.txt", {scene.names[query_view]: scene.cameras})
    for given, expected in ((None, "mnn"), ("mnn-ratio", "mnn-ratio")):
        out = tmp_path / f"out-{expected}"
        argv = ["localize", str(recon), str(queries), str(out), "--query-list",
                str(tmp_path / "queries.txt"), "--seed", "0"]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sfmfeat.localization.run"):
            status = cli.main(argv + (["--matcher", given] if given else []))
        assert status == 0
        with MatchReader(out / "query_matches.h5") as reader:
            assert reader.method == expected
        said = [r.getMessage() for r in caplog.records
                if "localizing with matcher" in r.getMessage()]
        assert said and said[0].startswith(f"localizing with matcher {expected} ")
        assert ("recorded in" in said[0]) == (given is None)
