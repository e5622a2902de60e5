"""End-to-end reconstruction of the shared Sacre-Coeur images and bad-input behaviour."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pycolmap
import pytest

from sfmfeat.cli import main
from sfmfeat.store import FeatureReader, MatchReader

from helpers import make_bad_input_folder

SUMMARY_KEYS = {"num_images", "num_registered", "num_points3D", "mean_track_length",
                "mean_reprojection_error", "timings", "config", "config_hash", "version"}


@pytest.fixture(scope="module")
def sift_run(tmp_path_factory):
    from conftest import require_shared

    images = require_shared("data/sacre_coeur/mapping")
    out = tmp_path_factory.mktemp("sacre_coeur_sift")
    pycolmap.set_random_seed(0)
    code = main(["-q", "reconstruct", str(images), str(out), "--features", "sift",
                 "--matcher", "mnn-ratio", "--seed", "0"])
    assert code == 0
    return images, out


@pytest.mark.slow
def test_sacre_coeur_sift_meets_acceptance(sift_run):
    _, out = sift_run
    for name in ("database.db", "features.h5", "matches.h5", "pairs.txt", "summary.json",
                 "sfm/points3D.ply", "sfm/cameras.bin", "sfm/images.bin", "sfm/points3D.bin"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["num_images"] == 10 and summary["num_registered"] == 10
    assert summary["mean_reprojection_error"] <= 1.0
    assert summary["num_points3D"] >= 1500
    assert summary["mean_track_length"] >= 3.5
    assert {"extract", "match", "verify", "map"} <= set(summary["timings"])
    model = pycolmap.Reconstruction(str(out / "sfm"))
    assert model.num_reg_images() == 10
    assert model.num_points3D() == summary["num_points3D"]


@pytest.mark.slow
def test_global_mapper_registers_all(sift_run, tmp_path):
    images, out = sift_run
    for name in ("features.h5", "matches.h5"):  # reused: only mapping differs
        shutil.copy(out / name, tmp_path / name)
    assert main(["-q", "reconstruct", str(images), str(tmp_path), "--mapper", "global",
                 "--seed", "0"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_registered"] == 10
    assert summary["timings"]["extract"] < 5  # resumed from the copied store


@pytest.mark.slow
def test_bad_input_folder_completes_and_names_rejected(tmp_path, sacre_coeur_dir, capsys):
    images = tmp_path / "images"
    kinds = make_bad_input_folder(sacre_coeur_dir, images)
    out = tmp_path / "out"
    assert main(["reconstruct", str(images), str(out), "--seed", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rejected = summary["rejected_images"]
    bad = {name: reason for name, reason in kinds.items() if reason != "valid"}
    assert set(rejected) == set(bad)
    for name, reason in bad.items():
        assert reason in rejected[name]
    assert summary["num_images"] == len(kinds) - len(bad)
    assert summary["num_registered"] >= summary["num_images"] - 1
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


_EXTRACT = textwrap.dedent("""
    import sys
    from sfmfeat.extract import extract_features
    # 8192 keypoints: enough work per pair that matching can be caught mid-way
    extract_features(sys.argv[1], sys.argv[2], "sift", overrides={{"max_keypoints": 8192}},
                     checkpoint_every=1)
""")
_MATCH = textwrap.dedent("""
    import sys
    from sfmfeat.match import match_pairs
    from sfmfeat.pairs import read_pairs
    match_pairs(read_pairs(sys.argv[1]), sys.argv[2], sys.argv[3], "mnn-ratio",
                checkpoint_every=1)
""")


def _kill_after_shards(command, shard_dir, min_shards=2, timeout=300):
    process = subprocess.Popen(command)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if shard_dir.is_dir() and len(list(shard_dir.glob("shard-*.h5"))) >= min_shards:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            process.kill()
    return False


@pytest.mark.slow
def test_sigkill_during_extraction_and_matching_resumes_identically(tmp_path,
                                                                     sacre_coeur_dir):
    from sfmfeat.pairs import exhaustive, write_pairs

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(sacre_coeur_dir.glob("*.jpg"))[:5]:
        shutil.copy(path, images / path.name)
    extract = [sys.executable, "-c", _EXTRACT.format()]
    reference = tmp_path / "reference.h5"
    subprocess.run(extract + [str(images), str(reference)], check=True)
    features = tmp_path / "features.h5"
    killed = _kill_after_shards(extract + [str(images), str(features)],
                                tmp_path / "features.h5.partial")
    assert killed, "extraction finished before it could be killed"
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
    killed = _kill_after_shards(match + [str(matches)], tmp_path / "matches.h5.partial")
    assert killed, "matching finished before it could be killed"
    subprocess.run(match + [str(matches)], check=True)
    with MatchReader(tmp_path / "ref_matches.h5") as ref, MatchReader(matches) as got:
        assert sorted(ref.pairs()) == sorted(got.pairs()) and len(ref.pairs()) == 10
        for pair in ref.pairs():
            np.testing.assert_array_equal(ref.read(*pair)[0], got.read(*pair)[0])


@pytest.mark.slow
def test_reconstruct_with_dense_on_synthetic_scene(tmp_path):
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    scene = SyntheticScene(SceneConfig(num_views=5, width=320, height=240, arc_degrees=40))
    scene.write_images(tmp_path / "images")
    out = tmp_path / "out"
    assert main(["-q", "reconstruct", str(tmp_path / "images"), str(out), "--seed", "0",
                 "--camera-mode", "single", "--dense", "--dense-max-image-size", "320"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_registered"] == 5
    assert summary["num_dense_points"] > 5000
    assert (out / "dense" / "fused.ply").is_file()
    assert "dense" in summary["timings"]
