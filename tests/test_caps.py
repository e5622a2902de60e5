"""CAPS: parity with the official code (random-weight fixtures), official quirks, bad input."""

import copy
import dataclasses
import lzma
import shutil

import numpy as np
import pytest
import torch

from conftest import require_shared
from sfmfeat.errors import WeightsError
from sfmfeat.extractors import create_extractor
from sfmfeat.extractors.base import Features
from sfmfeat.extractors.caps import (Caps, CapsConfig, describe_from_maps, load_network,
                                     normalize_coordinates, sample_features, skip_connect)
from sfmfeat.images import read_image

FIXTURE_IMAGES = ["02928139_3448003521", "10265353_3838484249"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """A 20M-parameter network on a shared 2-core machine: one thread is several times faster
    than two oversubscribed ones (the fixtures' README: 1-thread differences <= 4.2e-5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def caps_weights_dir(tmp_path_factory):
    """A weights dir holding the fixture checkpoint as caps/caps-pretrained.pth."""
    source = require_shared("fixtures/caps/caps_rand.pth.xz")
    root = tmp_path_factory.mktemp("caps_weights")
    (root / "caps").mkdir()
    with lzma.open(source) as src, open(root / "caps" / "caps-pretrained.pth", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return root


@pytest.fixture
def caps_env(monkeypatch, caps_weights_dir):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(caps_weights_dir))
    return caps_weights_dir


@pytest.fixture(scope="module")
def caps_model(caps_weights_dir):
    """One network for the module (loading costs seconds); tests swap ``config`` on copies."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFMFEAT_WEIGHTS_DIR", str(caps_weights_dir))
        return Caps(CapsConfig())


def with_config(caps, **changes):
    clone = copy.copy(caps)
    clone.config = dataclasses.replace(caps.config, **changes)
    return clone


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURE_IMAGES)
def test_parity_with_official_code(caps_model, name):
    fixture = np.load(require_shared(f"fixtures/caps/{name}.npz"))
    image = read_image(require_shared(f"data/sacre_coeur/mapping/{name}.jpg"))
    xy = fixture["kpt_xy"]
    # one forward pass (the describer's), then the describer's sampling of the stored keypoints
    coarse, fine = caps_model.feature_maps(image)
    assert list(coarse.shape) == fixture["coarse_shape"].tolist()
    assert list(fine.shape) == fixture["fine_shape"].tolist()      # padding quirk: 268×196
    np.testing.assert_allclose(coarse[0, :, :8, :8].numpy(), fixture["coarse_crop"], atol=1e-4)
    np.testing.assert_allclose(fine[0, :, :16, :16].numpy(), fixture["fine_crop"], atol=1e-4)
    desc = describe_from_maps(coarse, fine, xy, image.shape[:2]).numpy()

    reference = fixture["descriptors"].astype(np.float32)
    assert desc.shape == reference.shape == (len(xy), 256)
    err32 = np.abs(desc[:256] - fixture["descriptors_f32_first256"]).max()
    err16 = np.abs(desc - reference).max()
    cosine = (desc * reference).sum(1) / (np.linalg.norm(desc, axis=1)
                                          * np.linalg.norm(reference, axis=1))
    print(f"{name}: N={len(xy)} max|Δ| float32 rows {err32:.2e}, all rows vs float16 "
          f"{err16:.2e}, min cosine {cosine.min():.7f}")
    assert err32 < 1e-4
    assert err16 < 1e-2
    assert cosine.min() >= 0.9999


def test_describe_is_the_maps_sampled_at_keypoints(caps_model, monkeypatch):
    # describe() = feature_maps + describe_from_maps (+ normalisation), same keypoint order
    rng = np.random.default_rng(2)
    image = (rng.uniform(0, 255, (70, 90, 3))).astype(np.uint8)
    xy = np.array([[10.3, 12.7], [45, 33], [89, 69], [0, 0]], np.float32)
    coarse, fine = caps_model.feature_maps(image)
    raw = describe_from_maps(coarse, fine, xy, image.shape[:2]).numpy()
    kps = Features(xy, np.ones(4), np.zeros((4, 0)))
    got = with_config(caps_model, normalize=False).describe(image, kps).descriptors
    np.testing.assert_allclose(got, raw, atol=1e-5)
    got = caps_model.describe(image, kps).descriptors
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_registry_builds_caps_on_a_detector(caps_env):
    extractor = create_extractor("caps+sift-upright")
    assert type(extractor.describer) is Caps and extractor.detector.config.upright
    assert type(create_extractor("caps").describer) is Caps      # SIFT by default
    rng = np.random.default_rng(0)
    feats = extractor.extract((rng.uniform(0, 255, (64, 64, 3))).astype(np.uint8))
    assert feats.descriptor_dim == 256


def test_bad_keypoints_and_images(caps_model):
    caps = caps_model
    rng = np.random.default_rng(1)
    image = (rng.uniform(0, 255, (64, 80, 3))).astype(np.uint8)
    # zero keypoints
    empty = caps.describe(image, Features.empty(128, with_geometry=True))
    assert empty.descriptors.shape == (0, 256)
    # at and far beyond the border: finite; far outside reads only zero padding
    kps = Features([[0, 0], [79, 63], [-0.5, 70], [1e6, -1e6]], np.ones(4), np.zeros((4, 0)),
                   scales=[0.0, 1e9, 3.0, 2.0], orientations=[0, 0, 0, 0])
    out = caps.describe(image, kps)
    assert np.isfinite(out.descriptors).all()
    assert np.all(out.descriptors[3] == 0)
    np.testing.assert_allclose(np.linalg.norm(out.descriptors[:3], axis=1), 1, atol=1e-5)
    # an image smaller than the coarse stride: no features, no crash
    tiny = caps.describe(image[:10, :12], Features([[3, 3]], [1.0], np.zeros((1, 0))))
    assert len(tiny) == 0 and tiny.descriptor_dim == 256


def test_large_image_is_resized_and_keypoints_mapped(caps_model):
    rng = np.random.default_rng(3)
    small = (rng.uniform(0, 255, (50, 64, 3))).astype(np.uint8)
    large = np.repeat(np.repeat(small, 2, 0), 2, 1)          # 100×128, INTER_AREA gives back small
    caps = with_config(caps_model, max_edge=64)
    xy = np.array([[127, 99], [10.5, 20.5], [60, 3]], np.float32)   # large-image pixels
    got = caps.describe(large, Features(xy, np.ones(3), np.zeros((3, 0))))
    np.testing.assert_array_equal(got.keypoints, xy)           # keypoints are not moved
    expected = caps_model.describe(small, Features((xy + 0.5) / 2 - 0.5, np.ones(3),
                                                   np.zeros((3, 0))))
    np.testing.assert_allclose(got.descriptors, expected.descriptors, atol=1e-5)


def test_skip_connection_pads_skip_and_puts_upsampled_first():
    up = torch.ones(1, 1, 6, 5)
    skip = torch.full((1, 1, 3, 2), 2.0)
    out = skip_connect(skip, up)
    assert out.shape == (1, 2, 6, 5)
    assert torch.all(out[0, 0] == 1)
    expected = torch.zeros(6, 5)
    expected[1:4, 1:3] = 2                  # diff 3 -> 1 before, 2 after
    assert torch.equal(out[0, 1], expected)


def test_coordinate_quirk_image_normalisation_with_align_corners_false():
    # a map whose value is its column index: the sampled value is the map position
    h, w = 40, 64                                      # image size
    fmap = torch.arange(1.0, 17.0).repeat(1, 1, 10, 1)  # 1×1×10×16 (stride 4), col k = k+1
    xy = torch.tensor([[0.0, 20.0], [31.5, 20.0], [63.0, 20.0]])
    got = sample_features(fmap, normalize_coordinates(xy, h, w))[:, 0]
    # x=0 -> n=-1 -> column -0.5 (half zero padding); x=w/2 -> column 7.5;
    # x=w-1 -> n=1 -> column 15.5 (half zero padding)
    np.testing.assert_allclose(got.numpy(), [0.5, 8.5, 8.0], atol=1e-5)


def test_wrong_checkpoints_raise_weights_error(tmp_path, caps_weights_dir):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        load_network(garbage)
    state = torch.load(caps_weights_dir / "caps" / "caps-pretrained.pth", weights_only=True)
    no_prefix = tmp_path / "no_prefix.pth"
    torch.save({"state_dict": {k[4:]: v for k, v in state["state_dict"].items()}}, no_prefix)
    with pytest.raises(WeightsError, match="net."):
        load_network(no_prefix)
    missing = tmp_path / "missing.pth"
    sd = dict(state["state_dict"])
    sd.pop("net.conv_fine.conv.weight")
    torch.save({"state_dict": sd}, missing)
    with pytest.raises(WeightsError, match="conv_fine.conv.weight"):
        load_network(missing)
    bare = tmp_path / "bare.pth"
    torch.save(state["state_dict"], bare)
    with pytest.raises(WeightsError, match="state_dict"):
        load_network(bare)


@pytest.mark.slow
def test_reconstruct_end_to_end_with_fixture_checkpoint(caps_env, tmp_path, seed_args, figures):
    """``sfmfeat reconstruct --features caps`` with the official-format checkpoint in a
    temporary SFMFEAT_WEIGHTS_DIR. The weights are random, so real photos do not verify;
    the views of the synthetic scene (small baseline, rich texture) do, with plain mutual NN."""
    import json

    from sfmfeat.store import FeatureReader

    from sfmfeat.cli import main
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    images = tmp_path / "images"
    SyntheticScene(SceneConfig(width=320, height=240, num_views=3, arc_degrees=20,
                               texels_per_unit=80)).write_images(images)
    out = tmp_path / "out"
    status = main(["-q", "reconstruct", str(images), str(out), "--features", "caps",
                   "--matcher", "mnn", "--conf", "detector.max_keypoints=2048", *seed_args])
    assert status == 0
    with FeatureReader(out / "features.h5") as reader:
        found = [reader.read(name).descriptors for name in reader.names()]
    assert len(found) == 3
    for d in found:
        d = d.astype(np.float32)
        assert d.shape[1] == 256 and 0 < len(d) <= 2048
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    figures.check("registered", summary["num_registered"], "==", 3)
