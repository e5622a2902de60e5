"""End-to-end reconstruction of the shared Sacre-Coeur images and bad-input behaviour."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pycolmap
import pytest

from sfmfeat.cli import main
from sfmfeat.store import FeatureReader, MatchReader

from helpers import make_bad_input_folder

SUMMARY_KEYS = {"num_images", "num_registered", "num_points3D", "mean_track_length",
                "mean_reprojection_error", "timings", "config", "config_hash", "version"}


@pytest.mark.slow
def test_sacre_coeur_sift_meets_acceptance(sift_run, figures):
    _, out = sift_run
    for name in ("database.db", "features.h5", "matches.h5", "pairs.txt", "summary.json",
                 "sfm/points3D.ply", "sfm/cameras.bin", "sfm/images.bin", "sfm/points3D.bin"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["num_images"] == 10
    figures.check("registered", summary["num_registered"], "==", 10)
    figures.check("reprojection_px", summary["mean_reprojection_error"], "<=", 1.0)
    figures.check("points", summary["num_points3D"], ">=", 1400)  # 1534-1575 over 10 runs
    figures.check("track", summary["mean_track_length"], ">=", 3.5)
    assert {"extract", "match", "verify", "map"} <= set(summary["timings"])
    model = pycolmap.Reconstruction(str(out / "sfm"))
    assert model.num_reg_images() == 10
    assert model.num_points3D() == summary["num_points3D"]


@pytest.mark.slow
def test_global_mapper_registers_all(sift_run, tmp_path, seed_args, figures):
    images, out = sift_run
    for name in ("features.h5", "matches.h5"):  # reused: only mapping differs
        shutil.copy(out / name, tmp_path / name)
    stores_before = {name: (tmp_path / name).stat().st_mtime_ns
                     for name in ("features.h5", "matches.h5")}
    assert main(["-q", "reconstruct", str(images), str(tmp_path), "--mapper", "global",
                 *seed_args]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    figures.check("registered", summary["num_registered"], "==", 10)
    # resumed from the copied stores: neither was rewritten
    assert stores_before == {name: (tmp_path / name).stat().st_mtime_ns
                             for name in ("features.h5", "matches.h5")}


@pytest.mark.slow
def test_bad_input_folder_completes_and_names_rejected(tmp_path, sacre_coeur_dir, capsys,
                                                       seed_args, figures):
    images = tmp_path / "images"
    kinds = make_bad_input_folder(sacre_coeur_dir, images)
    out = tmp_path / "out"
    assert main(["reconstruct", str(images), str(out), *seed_args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rejected = summary["rejected_images"]
    bad = {name: reason for name, reason in kinds.items() if reason != "valid"}
    assert set(rejected) == set(bad)
    for name, reason in bad.items():
        assert reason in rejected[name]
    assert summary["num_images"] == len(kinds) - len(bad)
    figures.check("unregistered", summary["num_images"] - summary["num_registered"], "<=", 1)
    with FeatureReader(out / "features.h5") as features:
        assert "Sacré-Cœur façade.jpg" in features.names()
        assert "sub dir/with space.jpg" in features.names()

    strict_out = tmp_path / "strict"
    assert main(["reconstruct", str(images), str(strict_out), "--strict"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["reconstruct", "{missing}", "{out}"],
                                  ["reconstruct", "{empty}", "{out}"],
                                  ["extract", "{empty}", "-o", "{out}/f.h5"]])
def test_empty_or_missing_folder_is_one_line_error(tmp_path, args):
    (tmp_path / "empty").mkdir()
    values = {"missing": tmp_path / "missing", "empty": tmp_path / "empty",
              "out": tmp_path / "out"}
    argv = [a.format(**values) for a in args]
    run = subprocess.run([sys.executable, "-m", "sfmfeat", *argv], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sfmfeat") and "Traceback" not in run.stderr


# The child kills itself with SIGKILL right after its second shard is durable: a kill at a
# fixed point of the work, not a race between a poller and a fast machine.
_KILL_AFTER_SHARDS = textwrap.dedent("""
    import os, signal, sys
    from sfmfeat import store
    kill_after = int(os.environ.get("KILL_AFTER_SHARDS", "0"))
    flushes = []
    original_flush = store.RecordWriter.flush
    def flush(self):
        original_flush(self)
        flushes.append(1)
        if kill_after and len(flushes) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    store.RecordWriter.flush = flush
""")
_EXTRACT = _KILL_AFTER_SHARDS + textwrap.dedent("""
    from sfmfeat.extract import extract_features
    extract_features(sys.argv[1], sys.argv[2], "sift", overrides={"max_keypoints": 2048},
                     checkpoint_every=1)
""")
_MATCH = _KILL_AFTER_SHARDS + textwrap.dedent("""
    from sfmfeat.match import match_pairs
    from sfmfeat.pairs import read_pairs
    match_pairs(read_pairs(sys.argv[1]), sys.argv[2], sys.argv[3], "mnn-ratio",
                checkpoint_every=1)
""")


def _run_killed(command, shard_dir, kill_after=2):
    """Run ``command`` until it kills itself after ``kill_after`` shards; True if it did."""
    env = {**os.environ, "KILL_AFTER_SHARDS": str(kill_after)}
    run = subprocess.run(command, env=env, timeout=600)
    return run.returncode == -signal.SIGKILL and len(list(shard_dir.glob("shard-*.h5"))) >= 2


@pytest.mark.slow
def test_sigkill_during_extraction_and_matching_resumes_identically(tmp_path,
                                                                     sacre_coeur_dir):
    from sfmfeat.pairs import exhaustive, write_pairs

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(sacre_coeur_dir.glob("*.jpg"))[:5]:
        shutil.copy(path, images / path.name)
    extract = [sys.executable, "-c", _EXTRACT]
    reference = tmp_path / "reference.h5"
    subprocess.run(extract + [str(images), str(reference)], check=True)
    features = tmp_path / "features.h5"
    killed = _run_killed(extract + [str(images), str(features)],
                         tmp_path / "features.h5.partial")
    assert killed, "extraction was not killed after its second shard"
    assert not features.exists()  # the final file is only ever replaced whole
    subprocess.run(extract + [str(images), str(features)], check=True)
    with FeatureReader(reference) as ref, FeatureReader(features) as got:
        assert sorted(ref.names()) == sorted(got.names())
        for name in ref.names():
            np.testing.assert_array_equal(ref.read(name).keypoints, got.read(name).keypoints)
            np.testing.assert_array_equal(ref.read(name).descriptors,
                                          got.read(name).descriptors)

    pairs = tmp_path / "pairs.txt"
    with FeatureReader(features) as got:
        write_pairs(pairs, exhaustive(sorted(got.names())))
    match = [sys.executable, "-c", _MATCH, str(pairs), str(features)]
    subprocess.run(match + [str(tmp_path / "ref_matches.h5")], check=True)
    matches = tmp_path / "matches.h5"
    killed = _run_killed(match + [str(matches)], tmp_path / "matches.h5.partial")
    assert killed, "matching was not killed after its second shard"
    subprocess.run(match + [str(matches)], check=True)
    with MatchReader(tmp_path / "ref_matches.h5") as ref, MatchReader(matches) as got:
        assert sorted(ref.pairs()) == sorted(got.pairs()) and len(ref.pairs()) == 10
        for pair in ref.pairs():
            np.testing.assert_array_equal(ref.read(*pair)[0], got.read(*pair)[0])


@pytest.mark.slow
def test_reconstruct_with_dense_on_synthetic_scene(tmp_path, seed_args, figures):
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    scene = SyntheticScene(SceneConfig(num_views=5, width=320, height=240, arc_degrees=40))
    scene.write_images(tmp_path / "images")
    out = tmp_path / "out"
    assert main(["-q", "reconstruct", str(tmp_path / "images"), str(out), *seed_args,
                 "--camera-mode", "single", "--dense", "--dense-max-image-size", "320"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    figures.check("registered", summary["num_registered"], "==", 5)
    figures.check("dense_points", summary["num_dense_points"], ">", 5000)
    assert (out / "dense" / "fused.ply").is_file()
    assert "dense" in summary["timings"]


@pytest.mark.slow
def test_reconstruct_from_hloc_exports_of_its_stores(sift_run, tmp_path, seed_args, figures):
    """Our stores -> hloc's layout (its float16/int16 defaults) -> reconstruct from those
    files: the same database (keypoints within float16's rounding, identical matches) and
    the same model within 1%."""
    images, out = sift_run
    hfeatures, hmatches = tmp_path / "hloc-features.h5", tmp_path / "hloc-matches.h5"
    assert main(["export", "hloc", str(out / "features.h5"), "-o", str(hfeatures),
                 "--half"]) == 0
    assert main(["export", "hloc", str(out / "matches.h5"), "--features",
                 str(out / "features.h5"), "-o", str(hmatches), "--int16"]) == 0
    again = tmp_path / "again"
    assert main(["-q", "reconstruct", str(images), str(again), "--features-file",
                 str(hfeatures), "--matches-file", str(hmatches), *seed_args]) == 0
    with pycolmap.Database.open(out / "database.db") as first, \
            pycolmap.Database.open(again / "database.db") as second:
        ids = {image.name: image.image_id for image in second.read_all_images()}
        for image in first.read_all_images():
            ours = first.read_keypoints(image.image_id)[:, :2]
            theirs = second.read_keypoints(ids[image.name])[:, :2]
            step = np.spacing(np.float16(np.abs(ours).max()))
            assert np.abs(ours - theirs).max() <= step / 2 + 1e-6
        for image0 in first.read_all_images():
            for image1 in first.read_all_images():
                if image0.image_id < image1.image_id:
                    np.testing.assert_array_equal(
                        first.read_matches(image0.image_id, image1.image_id),
                        second.read_matches(ids[image0.name], ids[image1.name]))
    summary = json.loads((out / "summary.json").read_text())
    summary_again = json.loads((again / "summary.json").read_text())
    assert summary_again["store_config_hashes"]["features"].startswith("hloc-")
    figures.check("registered", summary_again["num_registered"], "==", 10)
    # seeds 0-4: 0.2-1.0% (the rounded keypoints and thread timing); points alone span
    # 2.6% over seeds
    figures.check("points_relative_difference",
                  abs(summary_again["num_points3D"] / summary["num_points3D"] - 1), "<=", 0.03)


@pytest.mark.parametrize("field, value", [("ransac_confidence", 1.0), ("ransac_confidence", 0.0),
                                          ("ransac_confidence", float("nan")),
                                          ("ransac_max_num_trials", 0)])
def test_ransac_options_are_validated(field, value):
    from sfmfeat.errors import ConfigError
    from sfmfeat.reconstruction.pipeline import ReconstructionConfig

    with pytest.raises(ConfigError, match=field):
        ReconstructionConfig(**{field: value})


def test_ransac_confidence_and_trials_reach_colmaps_verification(tmp_path, monkeypatch):
    import sfmfeat.reconstruction.database as database

    seen = {}

    def capture(path, verifier_options, two_view_geometry_options):
        seen["ransac"] = two_view_geometry_options.ransac

    monkeypatch.setattr(database.pycolmap, "geometric_verification", capture)
    with pycolmap.Database.open(tmp_path / "database.db"):
        pass
    assert database.verify_matches(tmp_path / "database.db", confidence=0.9999,
                                   max_num_trials=1234) == 0
    assert seen["ransac"].confidence == pytest.approx(0.9999)
    assert seen["ransac"].max_num_trials == 1234
    database.verify_matches(tmp_path / "database.db")
    assert (seen["ransac"].confidence, seen["ransac"].max_num_trials) == (0.999, 20000)
