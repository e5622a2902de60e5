"""Leave-one-out on the real Sacre-Coeur images: a reference model is computed in the test
with COLMAP's own SIFT (independent of the features under test); each image is localized
against a model triangulated with sfmfeat SIFT from the other nine. Also runs the
``sfmfeat localize`` CLI with ``--ground-truth`` on one held-out image."""

from __future__ import annotations

import copy
import json

import pycolmap
import pytest

from sfmfeat import cli
from sfmfeat.extract import extract_features
from sfmfeat.localization.leave_one_out import colmap_sift_model, leave_one_out
from sfmfeat.localization.pose import PoseConfig
from sfmfeat.localization.queries import write_queries
from sfmfeat.localization.model_localization import LocalizationConfig
from sfmfeat.match import match_pairs
from sfmfeat.pairs import exhaustive, write_pairs


def _write(model, path):
    path.mkdir(parents=True, exist_ok=True)
    model.write(path)
    return path


def _write_pairs(path, pairs):
    write_pairs(path, pairs)
    return path


@pytest.fixture(scope="module")
def sacre_coeur_setup(tmp_path_factory):
    from conftest import require_shared, test_seed

    images = require_shared("data/sacre_coeur/mapping")
    work = tmp_path_factory.mktemp("sacre_coeur_loo")
    pycolmap.logging.minloglevel = 2
    reference = colmap_sift_model(images, work, max_num_features=4096, num_threads=2,
                                  seed=test_seed())
    extraction = extract_features(images, work / "features.h5", "sift",
                                  overrides={"max_keypoints": 2048})
    pairs = exhaustive(extraction.valid_names)
    match_pairs(pairs, work / "features.h5", work / "matches.h5", "mnn")
    return images, work, reference, pairs


@pytest.mark.slow
def test_leave_one_out_sacre_coeur(sacre_coeur_setup, run_seed, figures):
    images, work, reference, pairs = sacre_coeur_setup
    figures.check("reference_registered", reference.num_reg_images(), "==", 10)
    results = leave_one_out(reference, work / "features.h5", work / "matches.h5", pairs,
                            work / "loo", localization=LocalizationConfig(
                                pose=PoseConfig(random_seed=run_seed)))
    assert len(results) == 10
    good = [r for r in results
            if r.localized and r.rotation_error_deg < 2 and r.relative_translation_error < 0.05]
    figures.check("good_queries", len(good), ">=", 8)  # 9-10 of 10 over seeds and threads
    figures.check("min_points3D", min(r.num_points3D for r in good), ">", 200)
    assert all({"2d3d", "pnp"} <= set(r.timings) for r in good)


@pytest.mark.slow
def test_localize_cli_with_ground_truth(sacre_coeur_setup, capsys, run_seed, figures):
    images, work, reference, pairs = sacre_coeur_setup
    query = sorted(im.name for im in reference.images.values())[3]
    image = reference.find_image_with_name(query)
    others = copy.copy(reference)
    others.deregister_frame(others.images[image.image_id].frame_id)
    model_dir = work / "without_query"
    status = cli.main(["triangulate", str(_write(others, work / "others")), str(model_dir),
                       "--features", str(work / "features.h5"),
                       "--matches", str(work / "matches.h5"),
                       "--pairs", str(_write_pairs(work / "db_pairs.txt",
                                                   [p for p in pairs if query not in p]))])
    assert status == 0 and (model_dir / "points3D.bin").exists()
    _write(reference, work / "reference")
    write_queries(work / "queries.txt", {query: reference.cameras[image.camera_id],
                                         "absent.jpg": reference.cameras[image.camera_id]})
    out = work / "cli"
    status = cli.main(["localize", str(model_dir), str(images), str(out),
                       "--db-features", str(work / "features.h5"),
                       "--query-list", str(work / "queries.txt"), "--matcher", "mnn",
                       "--ground-truth", str(work / "reference"), "--seed", str(run_seed)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "localized 1 of 2 queries" in printed and "absent.jpg" in printed
    assert "recall (0.25m,2°)/(0.5m,5°)/(5m,10°)" in printed
    evaluation = json.loads((out / "poses_eval.json").read_text())
    assert evaluation["num_queries"] == 1 and evaluation["num_localized"] == 1  # GT: 1
    figures.check("rotation_error_deg", evaluation["per_query"][query]["rotation_error_deg"],
                  "<", 2)
    log = json.loads((out / "poses_log.json").read_text())
    assert log["queries"]["absent.jpg"]["status"] == "error"
    assert set(log["queries"][query]["timings"]) >= {"2d3d", "pnp", "matching_amortized",
                                                     "features_amortized"}
