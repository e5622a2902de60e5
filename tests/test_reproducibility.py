"""Seeds and thread counts: a run replays bit for bit, and the knobs are validated."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pycolmap
import pytest
import torch

from sfmfeat.cli import main
from sfmfeat.errors import ConfigError
from sfmfeat.reconstruction.pipeline import ReconstructionConfig
from sfmfeat.runtime import MAX_SEED, cpu_threads, resolve_seed


def h5_contents(path) -> dict[str, object]:
    """Every dataset's array and every attribute of an HDF5 file, by path."""
    contents: dict[str, object] = {}
    with h5py.File(path, "r") as handle:
        def visit(name, node):
            for key, value in node.attrs.items():
                contents[f"{name}@{key}"] = value
            if isinstance(node, h5py.Dataset):
                contents[name] = node[()]
        handle.visititems(visit)
        for key, value in handle.attrs.items():
            contents[f"@{key}"] = value
    return contents


def assert_same_h5(path_a, path_b) -> None:
    a, b = h5_contents(path_a), h5_contents(path_b)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key


def test_resolve_seed_keeps_a_given_seed_and_draws_a_fresh_one_otherwise():
    assert resolve_seed(7) == 7 and resolve_seed(0) == 0
    drawn = {resolve_seed(-1) for _ in range(8)}
    assert all(0 <= s <= MAX_SEED for s in drawn) and len(drawn) > 1
    with pytest.raises(ConfigError, match="out of range"):
        resolve_seed(MAX_SEED + 1)


def test_cpu_threads_caps_and_restores_torch_and_opencv():
    before = torch.get_num_threads(), cv2.getNumThreads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
    with cpu_threads(-1):
        assert (torch.get_num_threads(), cv2.getNumThreads()) == before


def test_cpu_threads_loaded_only_imports_neither_library():
    code = ("import sys\nfrom sfmfeat.runtime import cpu_threads\n"
            "with cpu_threads(1, loaded_only=True):\n    pass\n"
            "print('torch' in sys.modules, 'cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"], out
    before = torch.get_num_threads(), cv2.getNumThreads()   # both loaded here: both capped
    with cpu_threads(1, loaded_only=True):
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_thread_counts_are_config_errors(threads):
    with pytest.raises(ConfigError, match="num_threads"):
        ReconstructionConfig(num_threads=threads)


def test_deterministic_mode_runs_colmap_on_one_thread():
    assert ReconstructionConfig(num_threads=2, deterministic=True).colmap_threads == 1
    assert ReconstructionConfig(num_threads=2).colmap_threads == 2


def test_cli_rejects_bad_threads_in_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    run = subprocess.run([sys.executable, "-m", "sfmfeat", "reconstruct", str(tmp_path / "images"),
                          str(tmp_path / "out"), "--threads", "0"],
                         capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "num_threads" in lines[0], run.stderr


@pytest.fixture(scope="module")
def unseeded_run(tmp_path_factory):
    from conftest import require_shared

    images = require_shared("data/sacre_coeur/mapping")
    out = tmp_path_factory.mktemp("unseeded")
    assert main(["-q", "reconstruct", str(images), str(out), "--deterministic"]) == 0
    return images, out


@pytest.mark.slow
def test_rerun_with_the_recorded_seed_is_identical(unseeded_run, tmp_path):
    images, first = unseeded_run
    seed = json.loads((first / "summary.json").read_text())["seed"]
    assert isinstance(seed, int) and 0 <= seed <= MAX_SEED
    second = tmp_path / "replay"
    assert main(["-q", "reconstruct", str(images), str(second), "--seed", str(seed),
                 "--deterministic"]) == 0
    assert_same_h5(first / "features.h5", second / "features.h5")
    assert_same_h5(first / "matches.h5", second / "matches.h5")
    model_a = pycolmap.Reconstruction(str(first / "sfm"))
    model_b = pycolmap.Reconstruction(str(second / "sfm"))
    registered_a = {im.name: im for im in model_a.images.values() if im.has_pose}
    registered_b = {im.name: im for im in model_b.images.values() if im.has_pose}
    assert sorted(registered_a) == sorted(registered_b) and len(registered_a) >= 9
    assert model_a.num_points3D() == model_b.num_points3D()
    for name, image in registered_a.items():
        np.testing.assert_allclose(image.cam_from_world().matrix(),
                                   registered_b[name].cam_from_world().matrix(),
                                   rtol=0, atol=1e-9, err_msg=name)
    xyz_a = np.array(sorted(p.xyz.tolist() for p in model_a.points3D.values()))
    xyz_b = np.array(sorted(p.xyz.tolist() for p in model_b.points3D.values()))
    np.testing.assert_allclose(xyz_a, xyz_b, rtol=0, atol=1e-9)
    summary_b = json.loads((second / "summary.json").read_text())
    assert summary_b["seed"] == seed and summary_b["config"]["deterministic"] is True
