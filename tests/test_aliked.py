"""ALIKED: deformable conv, DKD rules, SDDH, strict weights, real-image regression, bad input.

Parity with the official code (run outside the repository, see the closing note of issue 6)
cannot run in CI; the regression figures below were produced by the *official*
implementation (Shiaoming/ALIKED @ 683d7c65, torchvision deform_conv2d, CPU) on one
sacre_coeur image, and our implementation must reproduce them.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfmfeat.errors import ConfigError, WeightsError
from sfmfeat.extractors import available_presets, create_extractor
from sfmfeat.extractors.aliked import (SDDH, Aliked, AlikedConfig, deform_conv3x3,
                                       dense_features, refine_peaks, select_peaks,
                                       simple_nms)
from sfmfeat.images import read_image

from conftest import require_shared

REGRESSION_IMAGE = "71295362_4051449754.jpg"  # 1012×675: no resize at max_edge 1024


# ------------------------------------------------------------------ deformable conv

def _bilinear_zero(img: np.ndarray, y: float, x: float) -> np.ndarray:
    c, h, w = img.shape
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    value = np.zeros(c)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                value += wy * wx * img[:, yy, xx]
    return value


def _deform_conv_reference(x, offset, weight):
    """Direct definition: out[o,i,j] = Σ_c,ki,kj w[o,c,ki,kj]·x_c(i+ki-1+dy, j+kj-1+dx)."""
    b, c, h, w = x.shape
    out = np.zeros((b, weight.shape[0], h, w))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for ki in range(3):
                    for kj in range(3):
                        tap = 3 * ki + kj
                        dy, dx = offset[n, 2 * tap, i, j], offset[n, 2 * tap + 1, i, j]
                        v = _bilinear_zero(x[n], i + ki - 1 + dy, j + kj - 1 + dx)
                        out[n, :, i, j] += weight[:, :, ki, kj] @ v
    return out


def test_deform_conv_matches_direct_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 6))
    offset = rng.normal(scale=2.5, size=(2, 18, 5, 6))  # many samples fall outside
    offset[0, :, 0, 0] = np.round(offset[0, :, 0, 0])   # exact pixel hits too
    weight = rng.normal(size=(4, 3, 3, 3))
    ours = deform_conv3x3(torch.from_numpy(x), torch.from_numpy(offset),
                          torch.from_numpy(weight)).numpy()
    np.testing.assert_allclose(ours, _deform_conv_reference(x, offset, weight), atol=1e-10)


def test_deform_conv_zero_offset_is_plain_conv():
    x = torch.randn(1, 5, 9, 11, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    ours = deform_conv3x3(x, torch.zeros(1, 18, 9, 11, dtype=torch.float64), weight, bias)
    torch.testing.assert_close(ours, F.conv2d(x, weight, bias, padding=1))


# ------------------------------------------------------------------ DKD rules

def test_nms_recovers_peaks_hidden_by_suppressed_neighbours():
    scores = torch.zeros(1, 1, 9, 12)
    scores[0, 0, 4, 2], scores[0, 0, 4, 4], scores[0, 0, 4, 6] = 0.9, 0.8, 0.7
    kept = simple_nms(scores, 2)[0, 0]
    # 0.8 lies within 2 px of 0.9: suppressed; 0.7 only lost to 0.8, so it comes back
    assert kept[4, 2] == pytest.approx(0.9) and kept[4, 6] == pytest.approx(0.7)
    assert kept[4, 4] == 0 and int((kept > 0).sum()) == 2


def test_select_peaks_border_threshold_limit_and_top_k():
    scores = torch.full((20, 30), 0.01)
    peaks = {(1, 10): 0.99, (5, 5): 0.9, (5, 15): 0.5, (12, 8): 0.3, (12, 20): 0.15}
    for (y, x), v in peaks.items():
        scores[y, x] = v

    def found(indices):
        return {(int(i) // 30, int(i) % 30) for i in indices}

    # (1, 10) is inside the 2-px border; 0.15 is under the threshold
    assert found(select_peaks(scores, 2, 0.2, 100, None)) == {(5, 5), (5, 15), (12, 8)}
    # the limit keeps the strongest, strongest first
    limited = select_peaks(scores, 2, 0.2, 2, None)
    assert [(int(i) // 30, int(i) % 30) for i in limited] == [(5, 5), (5, 15)]
    # nothing above the threshold: peaks above the score-map mean
    assert found(select_peaks(scores, 2, 0.995, 100, None)) == {(5, 5), (5, 15), (12, 8),
                                                                (12, 20)}
    # top-k mode ignores the threshold
    assert found(select_peaks(scores, 2, 0.2, 100, 4)) == {(5, 5), (5, 15), (12, 8), (12, 20)}
    # a top-k beyond the peaks keeps the peaks only (no suppressed or border positions,
    # whose refinement window would leave the map)
    sparse = torch.where(scores > 0.01, scores, torch.zeros_like(scores))
    assert found(select_peaks(sparse, 2, 0.2, 100, 600)) == {(5, 5), (5, 15), (12, 8),
                                                             (12, 20)}


def test_refine_peaks_is_the_soft_argmax_of_the_window():
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.uniform(size=(11, 13)))
    indices = torch.tensor([5 * 13 + 6, 3 * 13 + 9])
    xy = refine_peaks(scores, indices, 2).numpy()
    for (y, x), got in zip(((5, 6), (3, 9)), xy):
        window = scores.numpy()[y - 2:y + 3, x - 2:x + 3]
        weights = np.exp((window - window.max()) / 0.1)
        dy, dx = np.mgrid[-2:3, -2:3]
        total = weights.sum()
        expected = (x + (weights * dx).sum() / total, y + (weights * dy).sum() / total)
        np.testing.assert_allclose(got, expected, atol=1e-12)
    # a symmetric window gives the integer peak
    flat = torch.zeros(9, 9)
    flat[4, 4] = 1.0
    np.testing.assert_allclose(refine_peaks(flat, torch.tensor([40]), 2).numpy(), [[4.0, 4.0]])


def test_sddh_batched_equals_per_keypoint_definition():
    torch.manual_seed(0)
    head = SDDH(8, 4).double()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    fmap = torch.randn(8, 12, 15, dtype=torch.float64)
    kps = torch.tensor([[0.2, 0.4], [7.6, 5.5], [14.0, 11.0], [13.3, 10.9], [3.0, 2.0]],
                       dtype=torch.float64)
    with torch.no_grad():
        got = head(dense_features(fmap), 12, 15, kps)
    for kp, desc in zip(kps, got.detach()):
        cx = int(min(max(int(kp[0]) - 1, 0), 15 - 4))
        cy = int(min(max(int(kp[1]) - 1, 0), 12 - 4))
        patch = fmap[:, cy:cy + 3, cx:cx + 3][None]
        with torch.no_grad():
            offset = head.offset_conv(patch).clamp(-15 / 4, 15 / 4).view(2, 4).t()  # M×(dx, dy)
        samples = []
        for dx, dy in offset:
            samples.append(torch.from_numpy(_bilinear_zero(fmap.numpy(), float(kp[1] + dy),
                                                           float(kp[0] + dx))))
        with torch.no_grad():
            feats = F.selu(head.sf_conv.weight[:, :, 0, 0] @ torch.stack(samples, 1))  # C×M
            expected = torch.einsum("cp,pcd->d", feats, head.agg_weights)
        torch.testing.assert_close(desc, expected / expected.norm(), atol=1e-9, rtol=1e-9)


# ------------------------------------------------------------------ weights

def test_presets_registered():
    presets = available_presets()
    for name, model in (("aliked-n16", "aliked-n16"), ("aliked-n32", "aliked-n32"),
                        ("aliked-t16", "aliked-t16"), ("aliked-n16rot", "aliked-n16rot")):
        cls, config = presets[name]
        assert cls is Aliked and config.weights == f"{model}.pth"
    assert AlikedConfig().weights == "aliked-n16.pth"
    with pytest.raises(ConfigError, match="aliked-x"):
        Aliked(AlikedConfig(weights="aliked-x.pth"))


@pytest.mark.parametrize("preset, dim", [("aliked-t16", 64), ("aliked-n16", 128),
                                         ("aliked-n16rot", 128), ("aliked-n32", 128)])
def test_real_weights_load_strictly(weights_env, preset, dim):
    extractor = create_extractor(preset, device="cpu")
    assert extractor.descriptor_dim == dim
    state = torch.load(weights_env / "aliked" / f"{preset}.pth", map_location="cpu",
                       weights_only=True)
    ours = extractor.net.state_dict()
    assert sorted(ours) == sorted(state)
    assert all(torch.equal(ours[k], state[k]) for k in state)


def _weights_dir_with(tmp_path, monkeypatch, source, target="aliked-n16.pth"):
    folder = tmp_path / "weights" / "aliked"
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / target)
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path / "weights"))


def test_wrong_variant_file_is_named(weights_env, tmp_path, monkeypatch):
    _weights_dir_with(tmp_path, monkeypatch, weights_env / "aliked" / "aliked-n32.pth")
    with pytest.raises(WeightsError, match="official aliked-n32.pth, not aliked-n16"):
        create_extractor("aliked-n16")


def test_same_shape_variant_file_is_named(weights_env, tmp_path, monkeypatch):
    _weights_dir_with(tmp_path, monkeypatch, weights_env / "aliked" / "aliked-n16rot.pth")
    with pytest.raises(WeightsError, match="aliked-n16rot"):
        create_extractor("aliked-n16")


def test_modified_checkpoint_of_other_shape_fails_strict_load(weights_env, tmp_path,
                                                              monkeypatch):
    state = torch.load(weights_env / "aliked" / "aliked-n32.pth", weights_only=True)
    state["desc_head.sf_conv.weight"] = state["desc_head.sf_conv.weight"] * 1.0001
    torch.save(state, tmp_path / "n32_finetuned.pth")
    _weights_dir_with(tmp_path, monkeypatch, tmp_path / "n32_finetuned.pth")
    with pytest.raises(WeightsError, match=r"shape mismatches.*desc_head.agg_weights"):
        create_extractor("aliked-n16")


def test_a_users_file_brings_its_architecture(weights_env, tmp_path):
    """One ``weights`` field: a path needs no second key naming the variant; it follows
    from the official checksum, else from the shapes of the tensors."""
    official = create_extractor("aliked-n16", {"weights": str(weights_env / "aliked" /
                                                           "aliked-n32.pth")})
    assert official.net.variant == "aliked-n32" and official.weights_id.startswith("sha256:")
    state = torch.load(weights_env / "aliked" / "aliked-t16.pth", weights_only=True)
    state["desc_head.sf_conv.weight"] = state["desc_head.sf_conv.weight"] * 1.0001
    torch.save(state, tmp_path / "t16_finetuned.pth")
    tuned = create_extractor("aliked-n16", {"weights": str(tmp_path / "t16_finetuned.pth")})
    assert tuned.net.variant == "aliked-t16" and tuned.descriptor_dim == 64
    assert tuned.config_hash != create_extractor("aliked-t16").config_hash
    disk = require_shared("weights/disk/depth-save.pth")
    with pytest.raises(WeightsError, match=r"missing keys.*unexpected keys extractor"):
        create_extractor("aliked-n16", {"weights": str(disk)})


def test_disk_file_and_garbage_are_rejected(weights_env, tmp_path, monkeypatch):
    disk = require_shared("weights/disk/depth-save.pth")
    _weights_dir_with(tmp_path, monkeypatch, disk)
    with pytest.raises(WeightsError, match=r"missing keys.*unexpected keys extractor"):
        create_extractor("aliked-n16")
    (tmp_path / "weights" / "aliked" / "aliked-n16.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        create_extractor("aliked-n16")


# ------------------------------------------------------------------ real image

@pytest.fixture(scope="module")
def module_weights_env():
    require_shared("weights/aliked/aliked-n16.pth")
    mp = pytest.MonkeyPatch()
    mp.setenv("SFMFEAT_WEIGHTS_DIR", str(require_shared("weights")))
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def n16(module_weights_env):
    return create_extractor("aliked-n16", device="cpu")


@pytest.fixture(scope="module")
def n16_320(module_weights_env):
    """aliked-n16 resizing to 320 px: cheap resize tests."""
    return create_extractor("aliked-n16", {"max_edge": 320}, device="cpu")


@pytest.fixture(scope="module")
def regression_image():
    return read_image(require_shared("data/sacre_coeur/mapping") / REGRESSION_IMAGE)


@pytest.fixture(scope="module")
def regression_features(n16, regression_image):
    return n16.extract(regression_image)


# Produced by the official implementation (ALIKED.run, aliked-n16, scores_th 0.2,
# n_limit 5000) on REGRESSION_IMAGE: count, mean keypoint, mean score, and for the five
# strongest keypoints (x, y, score, descriptor · v) with v = cos(0..127) normalised.
OFFICIAL_COUNT = 2585
OFFICIAL_MEAN_XY = (320.39447, 624.00525)
OFFICIAL_MEAN_SCORE = 0.4924626
OFFICIAL_TOP5 = [
    (235.517, 608.991, 0.95856, 0.01685),
    (317.011, 531.081, 0.94184, -0.18949),
    (204.961, 567.656, 0.93714, 0.00036),
    (292.996, 640.526, 0.93684, 0.00239),
    (359.562, 411.589, 0.93449, 0.03385),
]


@pytest.mark.slow
def test_regression_against_official_figures(regression_features):
    f = regression_features
    assert abs(len(f) - OFFICIAL_COUNT) <= 3
    np.testing.assert_allclose(f.keypoints.mean(0), OFFICIAL_MEAN_XY, atol=0.05)
    assert f.scores.mean() == pytest.approx(OFFICIAL_MEAN_SCORE, abs=1e-3)
    v = np.cos(np.arange(128))
    v /= np.linalg.norm(v)
    top = np.argsort(-f.scores, kind="stable")[:5]
    got = np.column_stack([f.keypoints[top], f.scores[top], f.descriptors[top] @ v])
    np.testing.assert_allclose(got, np.array(OFFICIAL_TOP5), atol=2e-3)


def test_sparse_maps_equal_the_official_dense_formulation(n16, regression_image):
    image = torch.from_numpy(np.ascontiguousarray(regression_image[:200, :300]))
    image = image.permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        fmap, score_map = n16.net.dense(image)
        scores, features_at = n16.net.sparse(image)
        torch.testing.assert_close(scores, score_map[0, 0], atol=1e-5, rtol=0)
        pixels = torch.randint(0, 200 * 300, (2000,))
        torch.testing.assert_close(features_at(pixels), dense_features(fmap[0])(pixels),
                                   atol=2e-5, rtol=0)
        kps = torch.rand(100, 2) * torch.tensor([299.0, 199.0])
        a = n16.net.desc_head(features_at, 200, 300, kps)
        b = n16.net.desc_head(dense_features(fmap[0]), 200, 300, kps)
    assert (a * b).sum(1).min() > 0.99999


def test_output_shapes_norms_and_determinism(n16, regression_image, regression_features):
    f = regression_features
    h, w = regression_image.shape[:2]
    assert f.keypoints.dtype == np.float32 and f.descriptors.dtype == np.float32
    assert f.descriptors.shape == (len(f), 128) and f.scores.shape == (len(f),)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    # scores are the map interpolated at the refined position: positive, not all > 0.2
    assert (f.scores > 0).all() and (f.scores <= 1).all() and np.median(f.scores) > 0.2
    assert (f.keypoints >= 0).all() and (f.keypoints[:, 0] <= w - 1).all()
    assert (f.keypoints[:, 1] <= h - 1).all()
    crop = regression_image[200:328, 100:260]
    first, second = n16.extract(crop), n16.extract(crop.copy())
    assert len(first) > 20
    np.testing.assert_array_equal(first.keypoints, second.keypoints)
    np.testing.assert_array_equal(first.descriptors, second.descriptors)


def test_resize_maps_back_to_original_pixels(n16_320, regression_image):
    """A 2× pixel-replicated image, area-resized by 1/2, is the original exactly, so its
    keypoints must be the original ones mapped by (x + 0.5)·2 - 0.5."""
    small = np.ascontiguousarray(regression_image[300:556, 200:520])  # 256×320
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    a, b = n16_320.extract(small), n16_320.extract(big)
    assert len(a) == len(b) > 20
    np.testing.assert_allclose(b.keypoints, (a.keypoints + 0.5) * 2 - 0.5, atol=1e-3)
    np.testing.assert_allclose(b.descriptors, a.descriptors, atol=1e-5)


# ------------------------------------------------------------------ bad input

def test_tiny_images_give_no_keypoints(n16):
    for shape in ((1, 1, 3), (20, 20, 3), (31, 400, 3)):
        f = n16.extract(np.full(shape, 128, np.uint8))
        assert len(f) == 0 and f.descriptors.shape == (0, 128)


def test_huge_image_is_resized(n16_320, regression_image):
    huge = cv2.resize(regression_image, (4048, 2700), interpolation=cv2.INTER_LINEAR)
    f = n16_320.extract(huge)  # runs on 320×213
    assert 50 < len(f) <= 5000
    assert f.keypoints[:, 0].max() <= 4047 and f.keypoints[:, 1].max() <= 2699
    assert f.keypoints[:, 0].max() > 2000  # in original pixels, not the resized grid


def test_grayscale_and_16bit_files(n16, regression_image, tmp_path):
    gray = cv2.cvtColor(regression_image[100:228, 100:260], cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray.astype(np.uint16) * 257)
    rgb16 = cv2.cvtColor(regression_image[100:228, 100:260], cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16.astype(np.uint16) * 257)
    f8 = n16.extract(read_image(tmp_path / "gray.png"))
    f16 = n16.extract(read_image(tmp_path / "gray16.png"))
    assert len(f8) > 20
    np.testing.assert_array_equal(f8.keypoints, f16.keypoints)
    np.testing.assert_array_equal(n16.extract(gray).keypoints, f8.keypoints)  # H×W array
    frgb = n16.extract(read_image(tmp_path / "rgb16.png"))
    np.testing.assert_array_equal(frgb.keypoints,
                                  n16.extract(regression_image[100:228, 100:260]).keypoints)


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_reconstruct_sacre_coeur_with_aliked(sacre_coeur_dir, weights_env, tmp_path, seed_args,
                                          figures):
    from sfmfeat.cli import main

    out = tmp_path / "out"
    assert main(["reconstruct", str(sacre_coeur_dir), str(out), "--features",
                 "aliked-n16", *seed_args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 10
    figures.check("registered", summary["num_registered"], "==", 10)
    figures.check("points", summary["num_points3D"], ">", 1000)
    figures.check("reprojection_px", summary["mean_reprojection_error"], "<", 1.5)
