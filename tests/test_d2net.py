"""D2-Net: checkpoint loading, each detection rule on hand-built maps, the coordinate map,
multiscale banning, bad input, and parity with the official code's outputs
(``shared/fixtures/d2net``, random weights in the official format)."""

from __future__ import annotations

import argparse
import hashlib
import lzma
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from sfmfeat.errors import ConfigError, WeightsError
from sfmfeat.extractors import create_extractor
from sfmfeat.extractors import d2net as D
from sfmfeat.images import read_image

from conftest import require_shared

# the official layout, written out independently of the module under test
OFFICIAL_SHAPES = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
    14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512),
}
FIXTURE_IMAGES = ("02928139_3448003521", "10265353_3838484249")


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_out, c_in) in OFFICIAL_SHAPES.items():
        state[f"dense_feature_extraction.model.{index}.weight"] = (
            torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.01)
        state[f"dense_feature_extraction.model.{index}.bias"] = torch.randn(c_out, generator=gen)
    return state


# ------------------------------------------------------------------------- weight loading

def test_strict_load_of_official_layout(tmp_path):
    state = official_state_dict()
    path = tmp_path / "d2_tf.pth"
    torch.save({"model": state}, path)
    network = D.D2NetNetwork()
    D.load_d2net_checkpoint(network, path)
    loaded = network.state_dict()
    assert sorted(loaded) == sorted(state)
    assert sum(v.numel() for v in loaded.values()) == 7_635_264
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_training_checkpoint_with_args_loads(tmp_path):
    path = tmp_path / "d2.10.pth"
    torch.save({"args": argparse.Namespace(lr=1e-3), "epoch_idx": 10,
                "model": official_state_dict()}, path)
    D.load_d2net_checkpoint(D.D2NetNetwork(), path)


@pytest.mark.parametrize("damage, expected", [
    (lambda s: s.pop("dense_feature_extraction.model.21.bias"),
     "missing keys dense_feature_extraction.model.21.bias"),
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected keys extra"),
    (lambda s: s.update({"dense_feature_extraction.model.0.weight": torch.zeros(64, 1, 3, 3)}),
     "shape mismatches dense_feature_extraction.model.0.weight"),
])
def test_wrong_checkpoint_names_the_keys(tmp_path, damage, expected):
    state = official_state_dict()
    damage(state)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match=expected):
        D.load_d2net_checkpoint(D.D2NetNetwork(), path)


def test_truncated_and_unrelated_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": official_state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated.pth: not a readable PyTorch checkpoint"):
        D.load_d2net_checkpoint(D.D2NetNetwork(), truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="notes.pth: not a readable"):
        D.load_d2net_checkpoint(D.D2NetNetwork(), text)
    other = tmp_path / "r2d2.pth"  # another method's layout: {'net': ..., 'state_dict': ...}
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": {"ops.0.weight": torch.zeros(1)}},
               other)
    with pytest.raises(WeightsError, match="not a D2-Net checkpoint .*found net, state_dict"):
        D.load_d2net_checkpoint(D.D2NetNetwork(), other)


def test_unrelated_pth_through_the_registry(tmp_path, monkeypatch):
    """An unrelated real weight file installed as d2_tf.pth gives a one-line WeightsError."""
    source = require_shared("weights/alike/alike-t.pth")
    (tmp_path / "d2net").mkdir()
    shutil.copyfile(source, tmp_path / "d2net" / "d2_tf.pth")
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="d2_tf.pth: not a D2-Net checkpoint"):
        create_extractor("d2net-ss")


def test_registry_entries_and_presets():
    names = {w.filename: w for w in D.D2Net.weight_files}
    assert set(names) == {"d2_ots.pth", "d2_tf.pth", "d2_tf_no_phototourism.pth"}
    for name, entry in names.items():
        assert entry.url == f"https://dusmanu.com/files/d2-net/{name}"
        assert "Clear" in entry.licence and not entry.non_commercial
    assert D.D2NetConfig().weights == "d2_tf.pth"
    assert D.D2Net.presets["d2net-ss"].scales == (1.0,)
    assert D.D2Net.presets["d2net-ms"].scales == (0.5, 1.0, 2.0)
    with pytest.raises(ConfigError, match=r"D2NetConfig.weights=.d2.pth.: must be one of d2_ots"):
        D.D2Net(D.D2NetConfig(weights="d2.pth"), network=D.D2NetNetwork())
    with pytest.raises(ConfigError, match="preprocessing"):
        D.D2Net(D.D2NetConfig(preprocessing="tf"), network=D.D2NetNetwork())


# ------------------------------------------------------------------ detection rules

def blob(h, w, ci, cj, si=1.5, sj=1.5, height=10.0):
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    return height * torch.exp(-0.5 * (((ii - ci) / si) ** 2 + ((jj - cj) / sj) ** 2))


def detections(fmap, **kwargs):
    c, i, j, _ = D.hard_detection(fmap, **kwargs)
    return {(int(a), int(b), int(d)) for a, b, d in zip(c, i, j)}


def test_corner_like_maximum_is_kept_and_edge_like_rejected():
    fmap = torch.zeros(4, 20, 20)
    fmap[0] = blob(20, 20, 6, 6)                    # isotropic: curvature ratio 1
    fmap[1] = blob(20, 20, 13, 13, si=1.0, sj=6.0)  # ridge along j: ratio ≈ 36 > 5
    assert detections(fmap) == {(0, 6, 6)}
    # the ridge's cell is a channel and local maximum: only the edge test removes it
    assert detections(fmap, edge_threshold=100.0) == {(0, 6, 6), (1, 13, 13)}


def test_non_maximum_channel_is_rejected():
    fmap = torch.zeros(3, 12, 12)
    fmap[0] = blob(12, 12, 5, 5, height=10.0)
    fmap[2] = blob(12, 12, 5, 5, height=12.0)        # beats channel 0 at the same cell
    fmap[1] = blob(12, 12, 5, 8, height=1.0)          # a peak, but channel 2 is larger there
    assert detections(fmap) == {(2, 5, 5)}


def test_local_maximum_and_flat_zero_regions():
    fmap = torch.zeros(2, 12, 12)                      # all channels tie at 0: never detected
    assert detections(fmap) == set()
    fmap[0] = blob(12, 12, 5, 5)
    fmap[0, 5, 6] = fmap[0, 5, 5] + 1.0                # the neighbour is now larger
    assert (0, 5, 5) not in detections(fmap)


def test_banned_cells_are_skipped():
    fmap = torch.zeros(1, 12, 12)
    fmap[0] = blob(12, 12, 5, 5)
    banned = torch.zeros(12, 12, dtype=torch.bool)
    banned[5, 5] = True
    assert detections(fmap) == {(0, 5, 5)}
    assert detections(fmap, banned=banned) == set()


def test_refinement_moves_to_the_subpixel_peak():
    true_i, true_j = 6.3, 5.8
    fmap = torch.zeros(1, 14, 14)
    ii, jj = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    fmap[0] = 100.0 - (ii - true_i) ** 2 - 2.0 * (jj - true_j) ** 2  # a paraboloid
    c, i, j, patch = D.hard_detection(fmap)
    assert (int(i[0]), int(j[0])) == (6, 6)
    step_i, step_j = D.soft_localization(patch)
    # the Newton step is exact on a quadratic
    assert abs(float(i[0] + step_i[0]) - true_i) < 1e-4
    assert abs(float(j[0] + step_j[0]) - true_j) < 1e-4
    # and moves toward the peak of a Gaussian
    fmap[0] = blob(14, 14, true_i, true_j, si=2.0, sj=2.0)
    c, i, j, patch = D.hard_detection(fmap)
    step_i, step_j = D.soft_localization(patch)
    before = np.hypot(float(i[0]) - true_i, float(j[0]) - true_j)
    after = np.hypot(float(i[0] + step_i[0]) - true_i, float(j[0] + step_j[0]) - true_j)
    assert after < 0.1 * before


class FixedMaps(nn.Module):
    """A stand-in trunk returning hand-built maps chosen by the level's input height."""

    def __init__(self, maps: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        return self.maps[x.shape[2]].clone()[None]


def test_newton_step_of_half_a_cell_drops_the_detection():
    # a paraboloid peaking half-way between two cells (exact in float32): both cells are
    # local maxima, each with a Newton step of exactly 0.5, and both are dropped
    ii, jj = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    fmap = (100.0 - (ii - 5.0) ** 2 - (jj - 5.5) ** 2)[None]
    c, i, j, patch = D.hard_detection(fmap)
    assert {(int(a), int(b)) for a, b in zip(i, j)} == {(5, 5), (5, 6)}
    step_i, step_j = D.soft_localization(patch)
    assert step_j.abs().tolist() == [0.5, 0.5] and step_i.tolist() == [0.0, 0.0]
    ext = D.D2Net(network=FixedMaps({48: fmap}))
    assert len(ext.extract(np.zeros((48, 48, 3), np.uint8))) == 0
    fmap = (100.0 - (ii - 5.0) ** 2 - (jj - 5.25) ** 2)[None]  # step 0.25: kept
    assert len(D.D2Net(network=FixedMaps({48: fmap})).extract(np.zeros((48, 48, 3),
                                                                       np.uint8))) == 1


def test_feature_map_positions_map_to_image_pixels():
    # official (default): upscale_positions 4p + 1.5, then pure ratios level -> input -> image
    assert D.fmap_to_image(np.array([0.0, 10.0]), 50, 50, 50).tolist() == [1.5, 41.5]
    # input resized 2x smaller than the original: the half-pixel map 2(v + .5) - .5
    assert D.fmap_to_image(np.array([0.0]), 50, 50, 100).tolist() == [3.5]
    assert D.fmap_to_image(np.array([2.0]), 25, 50, 50).tolist() == [19.0]
    rf = "receptive-field"
    # the alternative: cell r's receptive field is centred on pixel 4r + 3.5
    assert D.fmap_to_image(np.array([0.0, 10.0]), 50, 50, 50, rf).tolist() == [3.5, 43.5]
    # input resized 2x smaller than the original: half-pixel map x = 2(u + .5) - .5
    assert D.fmap_to_image(np.array([0.0]), 50, 50, 100, rf).tolist() == [7.5]
    # a pyramid level made with align_corners=True: u * (in - 1) / (level - 1)
    assert D.fmap_to_image(np.array([0.0]), 25, 50, 50, rf) == pytest.approx(3.5 * 49 / 24)


def identity_trunk() -> D.D2NetNetwork:
    """A network whose channel 0 carries R+G+B through every layer unchanged (centre taps)."""
    network = D.D2NetNetwork()
    with torch.no_grad():
        for module in network.dense_feature_extraction.model:
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                module.bias.zero_()
                centre = module.weight.shape[2] // 2
                if module.in_channels == 3:
                    module.weight[0, :, centre, centre] = 1.0
                    module.bias[0] = float(D.CAFFE_MEAN_BGR.sum())
                else:
                    module.weight[0, 0, centre, centre] = 1.0
    return network


def test_keypoint_lands_on_the_blob_centre_in_image_pixels():
    """End to end through the real trunk layout: a blob centred at pixel (4r+3.5) in x and
    y peaks at cell r; the receptive-field convention puts the keypoint on the blob, the
    official default (4p + 1.5, what the network was trained with) 2 px up and left."""
    height, width = 64, 72
    x0, y0 = 4 * 9 + 3.5, 4 * 7 + 3.5
    yy, xx = np.mgrid[:height, :width]
    image = 200.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 5.0**2))
    image = np.repeat(np.round(image).astype(np.uint8)[:, :, None], 3, axis=2)
    official = D.D2Net(network=identity_trunk()).extract(image).top_k(1)
    assert np.abs(official.keypoints[0] - [x0 - 2, y0 - 2]).max() < 1e-3
    features = D.D2Net(D.D2NetConfig(positions="receptive-field"),
                       network=identity_trunk()).extract(image).top_k(1)
    assert np.abs(features.keypoints[0] - [x0, y0]).max() < 1e-3
    assert features.scales[0] == 4.0
    assert np.linalg.norm(features.descriptors[0]) == pytest.approx(1.0)


def test_multiscale_bans_positions_taken_at_a_coarser_scale():
    # level images: scale .5 -> 40 px, scale 1 -> 80 px; maps of (h/4 - 1) cells: 9 and 19.
    # The banned mask is resized with nearest (floor(dst * 9/19)): coarse cell 3 covers
    # fine cells 7 and 8. Official positions: coarse cell 3 -> 13.5 * 80/40 = 27 px, fine 14
    # -> 57.5 px.
    coarse = torch.zeros(2, 9, 9)
    coarse[0] = blob(9, 9, 3, 3, si=0.8, sj=0.8)
    fine = torch.zeros(2, 19, 19)
    fine[1] = blob(19, 19, 7, 7, height=50.0)    # where the coarse level already detected
    fine[1] += blob(19, 19, 14, 14, height=50.0)  # a new place
    trunk = FixedMaps({40: coarse, 80: fine})
    ext = D.D2Net(D.D2NetConfig(scales=(0.5, 1.0)), network=trunk)
    features = ext.extract(np.zeros((80, 80, 3), np.uint8))
    assert trunk.seen == [(40, 40), (80, 80)]
    assert features.scales.tolist() == [8.0, 4.0]  # one coarse and one fine keypoint
    np.testing.assert_allclose(features.keypoints[0], 13.5 * 80 / 40, atol=1e-3)
    np.testing.assert_allclose(features.keypoints[1], 4 * 14 + 1.5, atol=1e-3)
    # score = activation of the accumulated map / (level index + 1)
    assert features.scores.tolist() == pytest.approx([float(coarse[0, 3, 3]),
                                                      float(fine[1, 14, 14]) / 2], rel=1e-4)
    # without the coarse level, the (7, 7) cell is detected at scale 1
    alone = D.D2Net(network=FixedMaps({80: fine})).extract(np.zeros((80, 80, 3), np.uint8))
    assert len(alone) == 2


# ------------------------------------------------------------------- bad input, resizing

def test_official_resize_rules():
    assert D.network_input_size(1063, 780, 1600, 2800) == (1063, 780)
    assert D.network_input_size(6000, 8000, 1600, 2800) == (1200, 1600)
    assert D.network_input_size(1600, 1600, 1600, 2800) == (1400, 1400)
    assert D.network_input_size(3000, 1000, 1600, 2800) == (1600, 533)
    assert D.network_input_size(3000, 1000, None, None) == (3000, 1000)


def test_images_smaller_than_the_stride_give_no_keypoints():
    single = D.D2Net(network=D.D2NetNetwork())
    multi = D.D2Net(D.D2NetConfig(scales=(0.5, 1.0, 2.0)), network=D.D2NetNetwork())
    for ext, shape in ((single, (7, 7, 3)), (single, (1, 1, 3)), (multi, (3, 3, 3)),
                       (multi, (2, 9, 3))):
        features = ext.extract(np.full(shape, 128, np.uint8))
        assert len(features) == 0 and features.descriptors.shape == (0, 512)


def test_huge_image_follows_the_resize_rules():
    """8000×6000 -> a 1600×1200 network input (the trunk is a stand-in to keep this fast;
    benchmarks/extract_d2net.py measures the real trunk's memory at 1600×1200)."""
    fmap = torch.zeros(1, 299, 399)
    fmap[0] = blob(299, 399, 150, 200, si=2.0, sj=2.0)
    trunk = FixedMaps({1200: fmap})
    image = np.zeros((6000, 8000, 3), np.uint8)
    features = D.D2Net(network=trunk).extract(image)
    assert trunk.seen == [(1200, 1600)]
    # upscale_positions (4p + 1.5), then the half-pixel map of the 5x PIL resize
    x = ((4 * 200 + 1.5) + 0.5) * 5 - 0.5
    y = ((4 * 150 + 1.5) + 0.5) * 5 - 0.5
    assert len(features) == 1 and np.abs(features.keypoints[0] - [x, y]).max() < 1e-2
    assert features.scales[0] == pytest.approx(20.0)


# ------------------------------------------------------------------------------ parity

@pytest.fixture(scope="module")
def fixture_weights(tmp_path_factory):
    source = require_shared("fixtures/d2net/d2_tf.pth.xz")
    root = tmp_path_factory.mktemp("d2net_weights")
    (root / "d2net").mkdir()
    target = root / "d2net" / "d2_tf.pth"
    with lzma.open(source) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return root


def compare_with_official(features, reference, prefix, height, width, max_px):
    from scipy.spatial import cKDTree

    ref_kp = reference[f"{prefix}_keypoints"]
    expected = ref_kp[:, :2].astype(np.float64)   # the official raw output, no conversion
    level_ref = np.round(np.log2(ref_kp[:, 2])).astype(int)
    level_ours = np.round(np.log2(features.scales / 4.0)).astype(int)
    # match rows by (position, level); levels are kept apart by a large offset
    tree = cKDTree(np.c_[features.keypoints, 1e5 * level_ours])
    dist, index = tree.query(np.c_[expected, 1e5 * level_ref])
    matched = dist <= max_px
    n_ref, n_ours = len(ref_kp), len(features)
    report = {"n_ref": n_ref, "n_ours": n_ours, "matched": int(matched.sum()),
              "max_px": float(dist[matched].max())}
    index = index[matched]
    scores = reference[f"{prefix}_scores"][matched]
    report["score_rel"] = float(np.abs(features.scores[index] - scores).max() / scores.max())
    ref_desc = reference[f"{prefix}_descriptors"][matched].astype(np.float32)
    ours = features.descriptors[index]
    cos = (ref_desc * ours).sum(1) / np.linalg.norm(ref_desc, axis=1)
    report["cos_min"] = float(cos.min())
    first = matched[:64]
    exact = reference[f"{prefix}_descriptors_f32_first64"][first]
    report["cos_min_first64"] = float((exact * features.descriptors[index[:first.sum()]]).sum(1)
                                      .min())
    return report


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURE_IMAGES)
def test_parity_single_scale(name, fixture_weights, monkeypatch):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(fixture_weights))
    reference = np.load(require_shared(f"fixtures/d2net/{name}.npz"))
    image = read_image(require_shared(f"data/sacre_coeur/mapping/{name}.jpg"))
    assert hashlib.sha256(image.tobytes()).hexdigest() == str(reference["image_rgb_sha256"])
    ext = create_extractor("d2net-ss")
    dense = ext.dense_features(ext.network_input(image))
    assert list(dense.shape) == reference["ss_dense_shape"].tolist()
    np.testing.assert_allclose(dense[0, :, :24, :24].numpy(), reference["ss_dense_crop"],
                               atol=1e-3, rtol=0)
    height, width = image.shape[:2]
    report = compare_with_official(ext.extract(image), reference, "ss", height, width, 0.01)
    # The official keypoints are found within 0.01 px, with as many rows. The fixture comes
    # from an Intel CPU (AVX-512); on an AMD EPYC (AVX2) the convolutions sum in another
    # order and 1 of the 2262 keypoints of 02928139 moves to another local maximum (scores
    # 110 and 107: a near tie of the channel maxima), so at most 0.1 % of rows may differ.
    n = report["n_ref"]
    assert report["n_ours"] == n and report["matched"] >= n - max(1, 0.001 * n), report
    assert report["score_rel"] < 1e-5, report
    assert report["cos_min"] >= 0.9999 and report["cos_min_first64"] >= 0.9999, report


@pytest.mark.slow
def test_parity_multiscale(fixture_weights, monkeypatch):
    """Tolerance: the fixture README measured the official code against itself (1 vs 2
    threads) at 1.5e-3 px on multiscale keypoints (the bilinear pyramid resizes round with
    the thread count, and the Newton step amplifies it), 5e-7 relative on scores, same rows.
    We allow 0.01 px (about 7x that) on positions, 1e-5 relative on scores, and up to 0.5%
    of rows gained or lost at the exact detection thresholds."""
    name = FIXTURE_IMAGES[1]
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(fixture_weights))
    reference = np.load(require_shared(f"fixtures/d2net/{name}.npz"))
    image = read_image(require_shared(f"data/sacre_coeur/mapping/{name}.jpg"))
    features = create_extractor("d2net-ms").extract(image)
    height, width = image.shape[:2]
    report = compare_with_official(features, reference, "ms", height, width, 0.01)
    n = report["n_ref"]
    assert report["matched"] >= 0.995 * n and abs(report["n_ours"] - n) <= 0.005 * n, report
    assert report["score_rel"] < 1e-5, report
    assert report["cos_min"] >= 0.9999 and report["cos_min_first64"] >= 0.9999, report


# -------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_reconstruct_cli_with_d2net(fixture_weights, monkeypatch, sacre_coeur_dir, tmp_path,
                                    seed_args):
    """``sfmfeat reconstruct --features d2net-ss`` on the Sacre-Coeur images with the random
    fixture checkpoint. The network input is capped at 480 px (``--conf max_edge=480``) to fit
    the CI budget; matching is D2-Net's own protocol, mutual nearest neighbours without a
    ratio test (``--matcher mnn``). Random weights: this checks that the pipeline runs and
    writes its outputs, not how many images register."""
    from sfmfeat.store import FeatureReader

    from sfmfeat.cli import main

    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(fixture_weights))
    out = tmp_path / "out"
    code = main(["-q", "reconstruct", str(sacre_coeur_dir), str(out), "--features", "d2net-ss",
                 "--conf", "max_edge=480", "--matcher", "mnn", *seed_args])
    assert code == 0
    for name in ("features.h5", "matches.h5", "pairs.txt", "database.db", "summary.json",
                 "sfm/images.bin", "sfm/points3D.bin"):
        assert (out / name).is_file(), name
    with FeatureReader(out / "features.h5") as reader:
        descriptors = [reader.read(name).descriptors for name in reader.names()]
    assert len(descriptors) == 10
    assert all(d.shape[1] == 512 and d.shape[0] > 0 for d in descriptors)
