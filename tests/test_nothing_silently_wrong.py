"""Resumption by content, lineage between stores and models, locks, stale outputs and
one-line errors for every fault (issue 14). Synthetic scenes keep these fast."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from sfmfeat.cli import describe_os_error, main
from sfmfeat.errors import InputError, ReconstructionError, StoreError
from sfmfeat.extract import extract_features
from sfmfeat.match import match_pairs
from sfmfeat.pairs import exhaustive
from sfmfeat.store import FeatureReader, FeatureWriter, MatchReader, StoreLock
from sfmfeat.synthetic import SceneConfig, SyntheticScene


def _scene(folder: Path, num_views: int = 6) -> Path:
    scene = SyntheticScene(SceneConfig(num_views=num_views, width=320, height=240,
                                       arc_degrees=10 * num_views))
    scene.write_images(folder)
    return folder


def _change(path: Path) -> None:
    """Other content under the same name and size (a slight blur)."""
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), cv2.GaussianBlur(image, (5, 5), 0))


def _one_error_line(stderr: str, program: str = "sfmfeat") -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{program}") and ": error: " in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A reconstructed synthetic scene: (images, OUT)."""
    from sfmfeat.reconstruction.pipeline import ReconstructionConfig, reconstruct

    root = tmp_path_factory.mktemp("model_run")
    images = _scene(root / "images")
    out = root / "out"
    reconstruct(images, out, ReconstructionConfig(camera_mode="single", random_seed=0))
    return images, out


# ------------------------------------------------------------- resumption by content

def test_replaced_image_is_reextracted_and_logged(tmp_path, caplog):
    images = _scene(tmp_path / "images", 4)
    features = tmp_path / "features.h5"
    first = extract_features(images, features, "sift")
    with FeatureReader(features) as reader:
        before = {n: reader.keypoints(n) for n in reader.names()}
    _change(images / "view_002.png")
    os.utime(images / "view_001.png")  # touched, same content: not re-extracted
    second = extract_features(images, features, "sift")
    assert sorted(first.extracted) == sorted(before)
    assert second.changed == ["view_002.png"] and second.extracted == ["view_002.png"]
    assert "re-extracting: view_002.png" in caplog.text
    with FeatureReader(features) as reader:
        assert not np.array_equal(reader.keypoints("view_002.png"), before["view_002.png"])
        for name in ("view_000.png", "view_001.png", "view_003.png"):
            np.testing.assert_array_equal(reader.keypoints(name), before[name])


def test_same_output_on_another_folder_with_the_same_names(tmp_path):
    images = _scene(tmp_path / "images", 3)
    larger = tmp_path / "originals"
    larger.mkdir()
    for path in images.iterdir():  # "full-size originals" of the same photos
        image = cv2.imread(str(path))
        cv2.imwrite(str(larger / path.name), cv2.resize(image, (640, 480)))
    features = tmp_path / "features.h5"
    extract_features(images, features, "sift")
    report = extract_features(larger, features, "sift")
    assert sorted(report.changed) == sorted(p.name for p in images.iterdir())
    with FeatureReader(features) as reader:
        assert {reader.image_size(n) for n in reader.names()} == {(640, 480)}


def test_matches_made_from_old_keypoints_are_matched_again(tmp_path):
    images = _scene(tmp_path / "images", 4)
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    extract_features(images, features, "sift")
    pairs = exhaustive(sorted(p.name for p in images.iterdir()))
    match_pairs(pairs, features, matches, "mnn-ratio")
    features.unlink()  # as the refusal message of another config suggests
    _change(images / "view_000.png")
    extract_features(images, features, "sift")
    report = match_pairs(pairs, features, matches, "mnn-ratio")
    assert report.rematched == report.matched == 3 and report.already_done == 3
    with FeatureReader(features) as reader, MatchReader(matches) as stored:
        for name0, name1 in pairs:
            found, _ = stored.read(name0, name1)
            assert found.max(axis=0)[0] < len(reader.keypoints(name0))
            assert stored.features_digests(name0, name1) == (
                reader.keypoints_digest(name0), reader.keypoints_digest(name1))


def test_query_matches_follow_a_rebuilt_database(tmp_path):
    """`localize` into an existing output: query matches made against database features
    that have since been re-extracted are matched again."""
    images = _scene(tmp_path / "images", 4)
    names = sorted(p.name for p in images.iterdir())
    db, query = tmp_path / "db.h5", tmp_path / "query.h5"
    extract_features(images, db, "sift", image_names=names[1:])
    extract_features(images, query, "sift", image_names=names[:1])
    pairs = exhaustive(names[:1], names[1:])
    matches = tmp_path / "query_matches.h5"
    match_pairs(pairs, query, matches, reference_features=db)
    _change(images / names[2])
    extract_features(images, db, "sift", image_names=names[1:])
    report = match_pairs(pairs, query, matches, reference_features=db)
    assert report.rematched == 1 and report.already_done == 2


@pytest.mark.slow
def test_content_change_redoes_only_what_derives_from_the_image(tmp_path):
    """Acceptance: change 1 of 10 images; only it is re-extracted and only its 9 pairs
    re-matched, and the model equals a fresh run's on the changed images."""
    images = _scene(tmp_path / "images", 10)
    out = tmp_path / "out"
    args = ["-q", "reconstruct", str(images), str(out), "--seed", "0", "--camera-mode",
            "single", "--deterministic"]
    assert main(args) == 0
    _change(images / "view_004.png")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    resumption = summary["resumption"]
    assert resumption["extracted"] == resumption["reextracted_changed"] == ["view_004.png"]
    assert resumption["features_reused"] == 9
    assert (resumption["pairs_matched"], resumption["pairs_rematched"],
            resumption["pairs_reused"]) == (9, 9, 36)
    fresh = tmp_path / "fresh"
    assert main(args[:3] + [str(fresh)] + args[4:]) == 0
    expected = json.loads((fresh / "summary.json").read_text())
    assert summary["num_registered"] == expected["num_registered"] == 10
    assert abs(summary["num_points3D"] - expected["num_points3D"]) <= 0.05 * expected[
        "num_points3D"]
    with FeatureReader(out / "features.h5") as got, \
            FeatureReader(fresh / "features.h5") as ref:
        for name in ref.names():
            np.testing.assert_array_equal(got.keypoints(name), ref.keypoints(name))


# ------------------------------------------------------------------------- lineage

def test_summary_and_model_record_their_stores(model_run):
    _, out = model_run
    summary = json.loads((out / "summary.json").read_text())
    lineage = json.loads((out / "sfm" / "lineage.json").read_text())
    assert summary["run_id"] == lineage["run_id"]
    with FeatureReader(out / "features.h5") as features:
        assert summary["stores"]["features"]["config_hash"] == features.config_hash
        assert summary["stores"]["features"]["path"] == str((out / "features.h5").resolve())
        assert lineage["images"] and all(
            entry["keypoints_digest"] == features.keypoints_digest(name)
            for name, entry in lineage["images"].items())
    with MatchReader(out / "matches.h5") as matches:
        assert summary["stores"]["matches"]["config_hash"] == matches.config_hash


def _other_features(images: Path, target: Path) -> Path:
    extract_features(images, target, "sift", overrides={"max_keypoints": 300})
    return target


def test_localize_with_features_of_other_settings_is_refused(model_run, tmp_path):
    from sfmfeat.localization.queries import queries_from_exif
    from sfmfeat.localization.run import run_localization

    images, out = model_run
    other = _other_features(images, tmp_path / "other.h5")
    queries = queries_from_exif(images, ["view_002.png"])
    with pytest.raises(InputError, match="not those model .* was built from"):
        run_localization(out, other, images, queries, tmp_path / "loc")
    shutil.copytree(out / "sfm", tmp_path / "bare")
    (tmp_path / "bare" / "lineage.json").unlink()  # a model made elsewhere: count check
    with pytest.raises(InputError, match="points2D"):
        run_localization(tmp_path / "bare", other, images, queries, tmp_path / "loc2")


def test_triangulate_with_matches_of_other_features_is_refused(model_run, tmp_path, capsys):
    images, out = model_run
    other = _other_features(images, tmp_path / "other.h5")
    code = main(["triangulate", str(out / "sfm"), str(tmp_path / "tri"), "--features",
                 str(other), "--matches", str(out / "matches.h5"), "--pairs",
                 str(out / "pairs.txt")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "was not matched from the features in" in line and str(other) in line


def test_triangulate_records_the_features_spec_and_refuses_one_it_cannot_resolve(
        model_run, tmp_path, capsys):
    """The triangulated model is only reusable (localize rebuilds the extractor from the
    features' spec) if that spec resolves to the features' config hash."""
    import h5py

    _, out = model_run
    args = ["--matches", str(out / "matches.h5"), "--pairs", str(out / "pairs.txt")]
    assert main(["-q", "triangulate", str(out / "sfm"), str(tmp_path / "tri"), "--features",
                 str(out / "features.h5"), *args]) == 0
    summary = json.loads((tmp_path / "tri" / "triangulation.json").read_text())
    with FeatureReader(out / "features.h5") as reader:
        assert summary["features"] == {"preset": "sift", "overrides": {},
                                       "config_hash": reader.config_hash}
    capsys.readouterr()
    for attr, value, words in (("spec", None, "does not record the extractor"),
                               ("spec", '{"preset": "sift9", "overrides": {}}',
                                "does not resolve here (unknown feature preset 'sift9'"),
                               ("spec", '{"preset": "sift", "overrides": {"sigma": "-1"}}',
                                "does not resolve here (SiftConfig.sigma=-1.0"),
                               ("config_hash", "0" * 16, "but the same spec gives config")):
        features = tmp_path / "features.h5"
        shutil.copyfile(out / "features.h5", features)
        with h5py.File(features, "r+") as handle:
            if value is None:
                del handle.attrs[attr]
            else:
                handle.attrs[attr] = value
        target = tmp_path / f"refused_{attr}"
        assert main(["triangulate", str(out / "sfm"), str(target), "--features",
                     str(features), *args]) == 2
        assert words in _one_error_line(capsys.readouterr().err)
        assert not target.exists()


def test_triangulate_into_the_reference_is_refused(model_run, capsys):
    _, out = model_run
    before = (out / "sfm" / "points3D.bin").read_bytes()
    code = main(["triangulate", str(out / "sfm"), str(out / "sfm"), "--features",
                 str(out / "features.h5"), "--matches", str(out / "matches.h5"), "--pairs",
                 str(out / "pairs.txt")])
    assert code == 2
    assert "would overwrite it" in _one_error_line(capsys.readouterr().err)
    assert (out / "sfm" / "points3D.bin").read_bytes() == before


def test_dense_with_images_of_another_size_fails_before_the_native_call(model_run, tmp_path):
    from sfmfeat.reconstruction.dense import DenseConfig, densify

    images, out = model_run
    resized = tmp_path / "resized"
    resized.mkdir()
    for path in images.iterdir():
        cv2.imwrite(str(resized / path.name), cv2.resize(cv2.imread(str(path)), (640, 480)))
    with pytest.raises(InputError, match="640x480 px but the model"):
        densify(out / "sfm", resized, tmp_path / "dense", DenseConfig(max_image_size=320))
    changed = tmp_path / "changed"
    shutil.copytree(images, changed)
    _change(changed / "view_001.png")
    with pytest.raises(InputError, match="other content"):
        densify(out / "sfm", changed, tmp_path / "dense", DenseConfig(max_image_size=320))
    assert not (tmp_path / "dense" / "images").exists()


# -------------------------------------------------------------- query intrinsics

def test_query_intrinsics_of_another_size_are_an_error_for_that_query(model_run, tmp_path):
    from sfmfeat.localization.queries import read_queries
    from sfmfeat.localization.run import run_localization

    images, out = model_run
    model = pycolmap.Reconstruction(str(out / "sfm"))
    camera = next(iter(model.cameras.values()))
    params = " ".join(f"{v:.6f}" for v in camera.params)
    lines = tmp_path / "queries.txt"
    lines.write_text(f"view_001.png {camera.model.name} 640 480 {params}\n"
                     f"view_002.png {camera.model.name} 320 240 {params}\n")
    run = run_localization(out, out / "features.h5", images, read_queries(lines),
                           tmp_path / "loc")
    failures = run.report.failures
    assert "view_001.png" in failures and "640x480 px but the image is 320x240" in \
        failures["view_001.png"]
    assert "view_002.png" in run.report.poses


# ------------------------------------------------------------ outputs never lie

def test_failed_rerun_leaves_no_success_looking_outputs(tmp_path, monkeypatch, capsys):
    from sfmfeat.reconstruction import pipeline

    images = _scene(tmp_path / "images", 5)
    out = tmp_path / "out"
    args = ["-q", "reconstruct", str(images), str(out), "--seed", "0", "--camera-mode",
            "single"]
    assert main(args) == 0
    first = json.loads((out / "summary.json").read_text())

    def failing_mapping(*_args, **_kwargs):
        raise ReconstructionError("mapping failed (injected)")

    monkeypatch.setattr(pipeline, "run_mapping", failing_mapping)
    assert main(args) == 2
    assert not (out / "summary.json").exists() and not (out / "sfm").exists()
    _one_error_line(capsys.readouterr().err)
    previous = json.loads((out / "previous" / "summary.json").read_text())
    assert previous["run_id"] == first["run_id"]
    monkeypatch.undo()
    (out / "models-abcd1234").mkdir()  # what a kill -9 during mapping leaves
    assert main(args) == 0
    assert (out / "summary.json").is_file() and not (out / "previous").exists()
    assert not (out / "models-abcd1234").exists()


# --------------------------------------------------------------------------- locks

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from sfmfeat.store import FeatureWriter
    with FeatureWriter(sys.argv[1], "sift", "h", {}) as writer:
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_writer_fails_fast_naming_the_holder(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            FeatureWriter(path, "sift", "h", {})
    finally:
        holder.kill()
        holder.wait()
    with FeatureWriter(path, "sift", "h", {}):  # released when the holder dies
        pass


def test_reconstruct_into_a_locked_output_fails_at_once(tmp_path, capsys):
    images = _scene(tmp_path / "images", 3)
    out = tmp_path / "out"
    with StoreLock(out, inside=True):
        assert main(["reconstruct", str(images), str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"pid {os.getpid()}" in line
    assert not (out / "features.h5").exists()


# ------------------------------------------------------------ faults are one line

def _inject_enospc(monkeypatch, fail_at: int | None) -> list[str]:
    """Make the ``fail_at``-th write (store shards and merges, pairs, database, model,
    lineage, summary) raise ENOSPC; returns the log of write points reached."""
    from sfmfeat import store
    from sfmfeat.reconstruction import pipeline

    reached: list[str] = []

    def wrap(module, name):
        original = getattr(module, name)

        def write_point(*args, **kwargs):
            reached.append(name)
            if fail_at is not None and len(reached) == fail_at:
                target = str(args[0]) if args else name
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, write_point)

    wrap(store, "atomic_path")
    for name in ("write_pairs", "write_database", "run_mapping", "write_model_lineage",
                 "_write_json"):
        wrap(pipeline, name)
    return reached


def _model_signature(out: Path) -> tuple:
    with FeatureReader(out / "features.h5") as features, \
            MatchReader(out / "matches.h5") as matches:
        keypoints = {n: features.keypoints(n).tobytes() for n in features.names()}
        pairs = {p: matches.read(*p)[0].tobytes() for p in matches.pairs()}
    summary = json.loads((out / "summary.json").read_text())
    return (keypoints, pairs, summary["num_registered"], summary["num_verified_pairs"],
            summary["num_points3D"], summary["num_observations"])


@pytest.mark.slow
def test_enospc_at_random_points_is_one_line_and_the_rerun_completes(tmp_path, monkeypatch,
                                                                      capsys):
    images = _scene(tmp_path / "images", 5)

    def args(out):
        return ["-q", "reconstruct", str(images), str(out), "--seed", "0", "--camera-mode",
                "single", "--deterministic"]

    reached = _inject_enospc(monkeypatch, None)
    assert main(args(tmp_path / "reference")) == 0
    num_points = len(reached)
    reference = _model_signature(tmp_path / "reference")
    monkeypatch.undo()
    for trial, fail_at in enumerate(sorted(random.Random(14).sample(range(1, num_points + 1),
                                                                    4))):
        out = tmp_path / f"out{trial}"
        _inject_enospc(monkeypatch, fail_at)
        assert main(args(out)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "No space left on device (ENOSPC)" in line
        assert not (out / "summary.json").exists()
        monkeypatch.undo()
        assert main(args(out)) == 0
        assert _model_signature(out) == reference


def test_enospc_while_storing_features_is_one_line(tmp_path, monkeypatch, capsys):
    images = _scene(tmp_path / "images", 3)
    _inject_enospc(monkeypatch, 1)
    assert main(["extract", str(images), "-o", str(tmp_path / "f.h5")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "f.h5.partial" in line and "No space left on device (ENOSPC)" in line


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_full_tmpfs_is_one_line_and_the_rerun_with_space_completes(tmp_path):
    """The real thing where the test may mount a tmpfs (root): disk full, then freed."""
    images = _scene(tmp_path / "images", 5)
    mount = tmp_path / "tmpfs"
    if not _tmpfs(mount, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "sfmfeat", "-q", "reconstruct", str(images),
               str(mount / "out"), "--seed", "0", "--camera-mode", "single", "--deterministic"]
    try:
        full = subprocess.run(command, capture_output=True, text=True, env=env)
        assert full.returncode == 2
        assert "No space left on device (ENOSPC)" in _one_error_line(full.stderr)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        assert subprocess.run(command, env=env).returncode == 0
        shutil.copytree(mount / "out", tmp_path / "out")
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert subprocess.run(command[:6] + [str(tmp_path / "reference")] + command[7:],
                          env=env).returncode == 0
    assert _model_signature(tmp_path / "out") == _model_signature(tmp_path / "reference")


def test_read_only_output_is_one_line(tmp_path):
    images = _scene(tmp_path / "images", 3)
    mount = tmp_path / "readonly"
    if not _tmpfs(mount, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        run = subprocess.run([sys.executable, "-m", "sfmfeat", "reconstruct", str(images),
                              str(mount / "out")], capture_output=True, text=True, env=env)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert run.returncode == 2
    assert "Read-only file system (EROFS)" in _one_error_line(run.stderr)


@pytest.mark.parametrize("code, path, expected", [
    (errno.ENOSPC, "/o/features.h5", "/o/features.h5: No space left on device (ENOSPC)"),
    (errno.EACCES, "/o", "/o: Permission denied (EACCES)"),
    (errno.EROFS, "/o/pairs.txt", "/o/pairs.txt: Read-only file system (EROFS)"),
    (errno.EISDIR, "/o/summary.json", "/o/summary.json: Is a directory (EISDIR)"),
])
def test_os_errors_are_described_with_path_and_cause(code, path, expected):
    assert describe_os_error(OSError(code, os.strerror(code), path)) == expected


def test_hdf5_os_error_is_one_line_with_its_file():
    err = OSError(errno.ENOSPC, "Can't close file (file write failed: time = x\n, "
                                "filename = '/o/f.h5', errno = 28, error message = 'No space')")
    assert describe_os_error(err) == "/o/f.h5: No space left on device (ENOSPC)"


def test_output_that_is_a_file_is_one_line(tmp_path, capsys):
    images = _scene(tmp_path / "images", 3)
    (tmp_path / "out").write_text("not a folder")
    assert main(["reconstruct", str(images), str(tmp_path / "out")]) == 2
    assert "is a file" in _one_error_line(capsys.readouterr().err)
    assert main(["extract", str(images), "-o", str(tmp_path / "out" / "f.h5")]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys.readouterr().err)
    assert main(["extract", str(images), "-o", str(images)]) == 2
    assert "is a directory" in _one_error_line(capsys.readouterr().err)


def test_hdf5_corrupted_in_the_middle_is_one_line(tmp_path, capsys):
    images = _scene(tmp_path / "images", 3)
    features = tmp_path / "features.h5"
    extract_features(images, features, "sift")
    data = bytearray(features.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 65536] = os.urandom(65536)
    features.write_bytes(bytes(data))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("view_000.png view_001.png\nview_001.png view_002.png\n"
                     "view_000.png view_002.png\n")
    code = main(["match", "--pairs", str(pairs), "--features", str(features), "-o",
                 str(tmp_path / "matches.h5")])
    assert code == 2
    _one_error_line(capsys.readouterr().err)


def test_cuda_without_cuda_is_one_line_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    images = _scene(tmp_path / "images", 3)
    assert main(["reconstruct", str(images), str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "no usable CUDA" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_unknown_camera_model_is_refused_before_any_work(tmp_path, capsys):
    images = _scene(tmp_path / "images", 3)
    code = main(["reconstruct", str(images), str(tmp_path / "out"), "--camera-model",
                 "SIMPLE_RADAIL"])
    assert code == 2
    assert "camera model 'SIMPLE_RADAIL' is unknown" in _one_error_line(
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------- smaller ones

def test_empty_poisson_mesh_is_not_reported_as_written(tmp_path, caplog):
    from sfmfeat.reconstruction.dense import DenseConfig, _mesh

    rng = np.random.default_rng(0)
    points = rng.random((50, 3))
    fused = tmp_path / "fused.ply"
    header = ("ply\nformat ascii 1.0\nelement vertex 50\n"
              + "".join(f"property float {a}\n" for a in ("x", "y", "z", "nx", "ny", "nz"))
              + "end_header\n")
    fused.write_text(header + "".join(f"{x} {y} {z} 0 0 1\n" for x, y, z in points))
    assert _mesh(fused, DenseConfig(poisson_depth=5)) is None
    assert "empty mesh" in caplog.text
    assert not (tmp_path / "meshed-poisson.ply").exists()


def test_broken_symlink_in_the_image_folder_is_named(tmp_path, caplog):
    from sfmfeat.images import list_images

    images = _scene(tmp_path / "images", 2)
    (images / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    assert list_images(images) == ["view_000.png", "view_001.png"]
    assert "gone.jpg: broken symbolic link" in caplog.text


@pytest.mark.parametrize("module", ["hpatches", "benchmark_reconstruction"])
def test_unknown_feature_name_is_refused_before_the_first_method(module, tmp_path, capsys):
    import importlib

    pipeline = importlib.import_module(f"pipelines.{module}")
    images = _scene(tmp_path / "images", 2)
    source = ["--dataset", str(tmp_path)] if module == "hpatches" else ["--images",
                                                                         str(images)]
    code = pipeline.main(source + ["--features", "sift,siftt", "--outputs",
                                   str(tmp_path / "results")])
    assert code == 2
    assert "unknown feature preset 'siftt'" in _one_error_line(
        capsys.readouterr().err, f"pipelines.{module}")
    assert not any(path.suffix == ".h5" for path in tmp_path.rglob("*"))  # nothing ran


def test_messages_say_what_is_wrong(tmp_path, capsys):
    assert main(["localize", str(tmp_path / "no_model"), str(tmp_path), str(tmp_path / "o")]
                ) == 2
    assert "model folder" in _one_error_line(capsys.readouterr().err)
    weights = tmp_path / "unknown.pth"
    weights.write_bytes(b"x")
    assert main(["weights", "install", str(weights)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is not a registered weight file" in line and "--method" not in line


def test_query_list_errors_name_file_line_once(tmp_path, model_run, capsys, caplog):
    images, out = model_run
    queries = tmp_path / "q.txt"
    queries.write_text("view_001.png PINHOLE 320 240\n")
    main(["localize", str(out), str(images), str(tmp_path / "loc"), "--query-list",
          str(queries)])
    assert capsys.readouterr().out.count(f"{queries}:1") == 1
    assert [r.getMessage().count(f"{queries}:1") for r in caplog.records
            if f"{queries}:1" in r.getMessage()] == [1]


def test_quiet_silences_progress_bars(tmp_path):
    images = _scene(tmp_path / "images", 3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def stderr(*flags, output):
        return subprocess.run([sys.executable, "-m", "sfmfeat", *flags, "extract",
                               str(images), "-o", str(tmp_path / output)], env=env,
                              capture_output=True, text=True, check=True).stderr

    assert "extract sift" in stderr(output="f.h5")  # the bar
    assert stderr("-q", output="g.h5") == ""


@pytest.mark.parametrize("mapper", ["incremental", "global"])
def test_a_failed_colmap_check_in_mapping_is_one_reconstruction_error(tmp_path, monkeypatch,
                                                                      mapper):
    from sfmfeat.reconstruction import mapping

    def failing(*args, **kwargs):
        raise ValueError("Traceback-free text\n[mapper.cc:123] Check failed: num_images > 0")

    monkeypatch.setattr(mapping.pycolmap, f"{mapper}_mapping", failing)
    database = tmp_path / "database.db"
    pycolmap.Database.open(database).close()
    with pytest.raises(ReconstructionError, match=r"^\w+ mapping of .* failed: \[mapper.cc:123\] "
                                                  r"Check failed: num_images > 0$"):
        mapping.run_mapping(database, tmp_path, tmp_path / "sfm",
                            mapping.MappingConfig(mapper=mapper, attempts=1))
    assert not list(tmp_path.glob("models-*"))   # the scratch folder is removed
