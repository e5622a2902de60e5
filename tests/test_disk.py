"""DISK: strict loading, detection rules, the sparse descriptor head, bad input, and a
regression on a real image against figures of the official implementation.

Parity with the official code itself is measured by benchmarks/parity_disk_r2d2.py
(the official code cannot run in CI).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import require_shared
from sfmfeat.errors import WeightsError
from sfmfeat.extractors import available_presets, create_extractor
from sfmfeat.extractors.disk import (DISK_DEPTH, Disk, DiskConfig, load_disk_network,
                                     nms_keypoints, top_k_mask)
from sfmfeat.images import read_image
from sfmfeat.weights import sha256_of

REAL_IMAGE = "data/sacre_coeur/mapping/93341989_396310999.jpg"

# Official DISK (cvlab-epfl/disk @ 8dc6d4d, model.features(kind="nms", window_size=5,
# cutoff=0, n=1024)) on REAL_IMAGE resized to a 512 px long side (bilinear, antialiased),
# keypoints converted to pixel centres at integers: the five strongest detections as
# (x, y, heatmap logit, first four descriptor values); 1024 keypoints, mean logit 59.3727.
OFFICIAL_N = 1024
OFFICIAL_MEAN_SCORE = 59.3727
OFFICIAL_TOP5 = [
    (655.926, 500.535, 141.87213, (-0.0621, 0.1179, 0.0541, 0.0190)),
    (540.379, 408.895, 135.03078, (-0.1828, 0.0035, 0.0162, 0.0353)),
    (420.848, 576.238, 134.74911, (-0.0697, 0.0258, -0.0641, 0.0781)),
    (671.863, 500.535, 133.47861, (-0.0793, 0.0030, -0.0204, 0.0579)),
    (273.426, 584.207, 131.17628, (-0.1854, -0.0092, 0.0829, 0.0102)),
]


@pytest.fixture(scope="module")
def disk_weights():
    return require_shared("weights/disk/depth-save.pth")


@pytest.fixture(scope="module")
def net(disk_weights):
    return load_disk_network(disk_weights)


@pytest.fixture(scope="module")
def small_disk(disk_weights):
    return Disk(DiskConfig(max_edge=512, max_keypoints=1024, weights=str(disk_weights)))


# --- weights -------------------------------------------------------------------------

def test_registry_entry_matches_shared_file(disk_weights):
    assert sha256_of(disk_weights) == DISK_DEPTH.sha256
    assert DISK_DEPTH.licence == "Apache-2.0" and not DISK_DEPTH.non_commercial
    assert DISK_DEPTH.url.endswith("/depth-save.pth")
    assert Disk.weight_files == (DISK_DEPTH,)


def test_strict_load_of_the_official_file(disk_weights, net):
    state = torch.load(disk_weights, map_location="cpu", weights_only=True)["extractor"]
    assert set(net.state_dict()) == set(state) and len(state) == 26
    for key, value in state.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert not net.training


def test_preset_is_registered(weights_env):
    cls, config = available_presets()["disk"]
    assert cls is Disk and config == DiskConfig()
    assert isinstance(create_extractor("disk"), Disk)


@pytest.mark.parametrize("other", ["aliked/aliked-n16.pth", "r2d2/r2d2_WASF_N16.pt"])
def test_other_methods_weights_give_a_weights_error(other):
    path = require_shared(f"weights/{other}")
    with pytest.raises(WeightsError, match="not a DISK checkpoint"):
        Disk(DiskConfig(weights=str(path)))


def test_wrong_variant_names_the_keys(tmp_path, disk_weights):
    state = torch.load(disk_weights, map_location="cpu", weights_only=True)["extractor"]
    state = dict(state)
    state.pop("unet.path_up.3.conv.3.bias")
    state["unet.extra.weight"] = torch.zeros(1)
    path = tmp_path / "variant.pth"
    torch.save({"extractor": state}, path)
    with pytest.raises(WeightsError, match=r"missing keys unet\.path_up\.3\.conv\.3\.bias"
                                           r".*unexpected keys unet\.extra\.weight"):
        Disk(DiskConfig(weights=str(path)))
    state = dict(torch.load(disk_weights, map_location="cpu", weights_only=True)["extractor"])
    state["unet.path_up.3.conv.3.weight"] = torch.zeros(65, 80, 5, 5)   # a 64-d DISK
    torch.save({"extractor": state}, path)
    with pytest.raises(WeightsError, match="shape mismatches"):
        Disk(DiskConfig(weights=str(path)))


def test_corrupt_or_missing_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        Disk(DiskConfig(weights=str(bad)))
    with pytest.raises(WeightsError, match="not found"):
        Disk(DiskConfig(weights=str(tmp_path / "absent.pth")))


# --- network and detection rules ------------------------------------------------------

def test_sparse_descriptor_head_equals_dense_output(net):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 80)
    with torch.inference_mode():
        dense_desc, dense_heat = net(image)
        trunk = net.trunk(image)
        heat = net.heatmap(trunk)
        x = torch.tensor([0, 79, 5, 40, 79, 0])
        y = torch.tensor([0, 63, 7, 33, 0, 63])   # corners exercise the zero padding
        desc = net.describe(trunk, x, y)
    torch.testing.assert_close(heat, dense_heat)
    none = torch.zeros(0, dtype=torch.long)
    assert net.describe(trunk, none, none).shape == (0, 128)
    torch.testing.assert_close(desc, dense_desc[0][:, y, x].t(), atol=2e-5, rtol=1e-5)


def test_nms_keeps_window_maxima_above_threshold():
    heat = torch.zeros(12, 12)
    heat[2, 2] = 5.0
    heat[2, 4] = 4.0      # within the 5×5 window of (2, 2): suppressed
    heat[2, 5] = 3.0      # 3 px from (2, 2) but within the window of (2, 4)=4 only: kept
    heat[9, 9] = 0.0      # not above the threshold 0
    heat[9, 2] = -1.0
    x, y, s = nms_keypoints(heat, 5, 0.0)
    got = sorted(zip(x.tolist(), y.tolist(), s.tolist()))
    # (5, 2) is not the maximum of its own window because (4, 2) = 4 is in it
    assert got == [(2, 2, 5.0)]
    heat[2, 4] = 0.0
    x, y, _ = nms_keypoints(heat, 5, 0.0)
    assert sorted(zip(x.tolist(), y.tolist())) == [(2, 2), (5, 2)]
    x, y, _ = nms_keypoints(heat, 5, 4.0)   # strictly above the cutoff
    assert list(zip(x.tolist(), y.tolist())) == [(2, 2)]
    x, y, _ = nms_keypoints(heat, 7, 0.0)   # a larger window suppresses (5, 2)
    assert list(zip(x.tolist(), y.tolist())) == [(2, 2)]


def test_nms_ties_keep_the_first_pixel_in_scan_order():
    heat = torch.zeros(8, 8)
    heat[3, 3] = heat[3, 4] = 2.0
    x, y, _ = nms_keypoints(heat, 3, 0.0)
    assert list(zip(x.tolist(), y.tolist())) == [(3, 3)]
    with pytest.raises(ValueError):
        nms_keypoints(heat, 4, 0.0)


def test_top_k_rule():
    scores = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    assert top_k_mask(scores, 2).tolist() == [False, True, False, True, False]
    assert top_k_mask(scores, None).all() and top_k_mask(scores, 5).all()
    assert top_k_mask(scores, 7).all()                  # fewer than k: all kept
    tied = torch.tensor([3.0, 2.0, 2.0, 1.0])
    assert top_k_mask(tied, 2).tolist() == [True, False, False, False]  # ties at the cut


# --- extraction ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_image():
    return read_image(require_shared(REAL_IMAGE))


@pytest.fixture(scope="module")
def real_features(small_disk, real_image):
    return small_disk.extract(real_image)


def test_regression_against_official_figures(real_features):
    f = real_features
    assert abs(len(f) - OFFICIAL_N) <= 2
    assert f.scores.mean() == pytest.approx(OFFICIAL_MEAN_SCORE, abs=0.05)
    for x, y, score, head in OFFICIAL_TOP5:
        dist = np.hypot(f.keypoints[:, 0] - x, f.keypoints[:, 1] - y)
        i = int(np.argmin(dist))
        assert dist[i] < 0.01, (x, y)
        assert f.scores[i] == pytest.approx(score, abs=1e-2)
        np.testing.assert_allclose(f.descriptors[i, :4], head, atol=2e-4)


def test_shapes_norms_bounds_and_determinism(small_disk, real_image, real_features):
    f = real_features
    h, w = real_image.shape[:2]
    assert f.descriptors.shape == (len(f), 128) and f.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert (f.keypoints >= -0.5).all()
    assert (f.keypoints[:, 0] <= w - 0.5).all() and (f.keypoints[:, 1] <= h - 0.5).all()
    assert (f.scores > 0).all()
    # resized by 512/1020: keypoints sit on the network's pixel grid, (i + 0.5)/s - 0.5
    s = 512 / 1020
    grid = (f.keypoints[:, 0] + 0.5) * (round(w * s) / w) - 0.5
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)
    crop = np.ascontiguousarray(real_image[300:492, 300:556])
    first, again = small_disk.extract(crop), small_disk.extract(crop)
    assert len(first) > 0
    np.testing.assert_array_equal(again.keypoints, first.keypoints)
    np.testing.assert_array_equal(again.descriptors, first.descriptors)


def test_no_resize_when_small_enough(disk_weights, real_image):
    crop = np.ascontiguousarray(real_image[100:260, 300:500])   # 160×200, pads to 160×208
    f = Disk(DiskConfig(weights=str(disk_weights), max_keypoints=None)).extract(crop)
    assert len(f) > 20
    np.testing.assert_array_equal(f.keypoints, np.round(f.keypoints))  # integer pixels
    assert f.keypoints[:, 0].max() <= 199 and f.keypoints[:, 1].max() <= 159


def test_tiny_image_gives_no_keypoints(small_disk):
    f = small_disk.extract(np.full((10, 40, 3), 128, np.uint8))
    assert len(f) == 0 and f.descriptors.shape == (0, 128)
    f = Disk(DiskConfig(weights=small_disk.config.weights, score_threshold=1e9)).extract(
        np.full((64, 64, 3), 128, np.uint8))                      # no detection at all
    assert len(f) == 0 and f.descriptors.shape == (0, 128)
    f = small_disk.extract(np.full((16, 16, 3), 128, np.uint8))   # 1×1 at the bottom
    assert len(f) == 0 and f.descriptors.shape == (0, 128)
    f = small_disk.extract(np.random.default_rng(0).integers(0, 255, (16, 32, 3), np.uint8))
    assert f.descriptors.shape[1] == 128                 # 1×2 at the bottom: runs


def test_huge_image_follows_max_edge(disk_weights):
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 255, (60, 80, 3), np.uint8), (4000, 3000),
                       interpolation=cv2.INTER_LINEAR)
    f = Disk(DiskConfig(weights=str(disk_weights), max_edge=128)).extract(image)
    assert len(f) > 0
    assert f.keypoints[:, 0].max() <= 3999.5 and f.keypoints[:, 1].max() <= 2999.5
    assert f.keypoints[:, 0].max() > 2000           # mapped back to original pixels


def test_grayscale_and_16bit_files(tmp_path, small_disk, real_image):
    crop = np.ascontiguousarray(real_image[300:492, 300:556])
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray.astype(np.uint16) * 257)
    f8 = small_disk.extract(read_image(tmp_path / "gray.png"))
    f16 = small_disk.extract(read_image(tmp_path / "gray16.png"))
    assert len(f8) > 0
    np.testing.assert_array_equal(f8.keypoints, f16.keypoints)
    np.testing.assert_array_equal(f8.descriptors, f16.descriptors)


# --- end to end --------------------------------------------------------------------------

@pytest.mark.slow
def test_reconstruct_sacre_coeur_with_disk(sacre_coeur_dir, weights_env, tmp_path):
    import json

    from sfmfeat.cli import main

    out = tmp_path / "out"
    assert main(["-q", "reconstruct", str(sacre_coeur_dir), str(out), "--features", "disk",
                 "--seed", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # measured: 10/10, 3161 points, track length 4.40, reprojection error 0.517 px
    assert summary["num_registered"] == summary["num_images"] == 10
    assert summary["num_points3D"] > 2000
    assert summary["mean_track_length"] > 3.5
    assert summary["mean_reprojection_error"] < 1.0
