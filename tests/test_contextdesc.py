"""ContextDesc: TF weight reading, conversion, parity with the official outputs, the context
modules, patch geometry, end to end with seeded random weights, and bad input."""

from __future__ import annotations

import lzma
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import require_shared
from sfmfeat.commands.weights_convert import convert_contextdesc, state_dict_from_tf
from sfmfeat.errors import ConfigError, InputError, WeightsError
from sfmfeat.extractors.contextdesc import (
    ContextDesc, ContextDescConfig, dequantize, normalized_xy, quantize, resize_for_regional,
    sample_patches_cv2, sample_patches_torch, select_keypoints, standardize_patches,
    support_radius)
from sfmfeat.extractors.contextdesc_nets import (
    AugmentationModel, BatchNorm, ContextDescNet, RegionalResNet50, context_norm,
    context_norm_bn_relu, grid_points, interpolate_3nn, tf_variable_names)
from sfmfeat.extractors.tf_reader import read_checkpoint, read_graphdef_constants
from sfmfeat.weights import load_state_dict_strict

FIXTURES = "fixtures/contextdesc"
IMAGES = ("02928139_3448003521", "10265353_3838484249")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    """The fixture's official files, decompressed: loc.pb, aug.pb, model.ckpt-0.*."""
    src = require_shared(FIXTURES)
    out = tmp_path_factory.mktemp("contextdesc_official")
    for name in ("loc.pb", "aug.pb", "model.ckpt-0.data-00000-of-00001"):
        (out / name).write_bytes(lzma.decompress((src / f"{name}.xz").read_bytes()))
    for name in ("model.ckpt-0.index", "checkpoint"):
        shutil.copyfile(src / name, out / name)
    return out


@pytest.fixture(scope="module")
def fixture_net(official_dir) -> ContextDescNet:
    net = ContextDescNet()
    state = state_dict_from_tf(net, read_graphdef_constants(official_dir / "loc.pb")
                               | read_graphdef_constants(official_dir / "aug.pb"), "fixture")
    load_state_dict_strict(net, state, "fixture")
    net.eval().local.fold_bn()          # as the extractor runs it
    net.aug.fold_bn()
    return net


def _npz(name: str):
    return np.load(require_shared(f"{FIXTURES}/{name}.npz"))


def _random_tf_tensors(module: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Seeded random weights under the official TF names and layouts (HWIO kernels)."""
    rng = np.random.default_rng(seed)
    own = module.state_dict()
    out = {}
    for key, (tf_name, layout) in sorted(tf_variable_names(module).items()):
        shape = tuple(own[key].shape)
        if layout == "conv":
            o, i, h, w = shape
            value = rng.normal(0, np.sqrt(2.0 / (i * h * w)), (h, w, i, o))
        elif layout == "dense":
            value = rng.normal(0, 1.0, shape[::-1])
        elif tf_name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif tf_name.endswith("gamma"):
            value = rng.uniform(0.25, 0.75, shape)
        else:
            value = rng.uniform(-0.2, 0.2, shape)
        out[tf_name] = value.astype(np.float32)
    return out


def _matchable_tf_tensors(seed: int) -> dict[str, np.ndarray]:
    """Seeded random ContextDesc++ weights whose descriptors can match across views.

    Fully random weights give descriptors too weak for geometric verification, so the local
    trunk is set to a SIFT-like histogram of gradients: conv0 = rectified derivatives along
    8 directions, conv1–5 pass them on (box-filtering where they subsample), conv6 sums
    them over 4×4 cells (128 = 4·4·8). The matchability head and both context branches
    stay seeded random, the context scaled by 0.001 so that it does not drown the local part.
    """
    tensors = _random_tf_tensors(ContextDescNet(), seed)
    dx = np.array([[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]], np.float32)
    kernel = np.zeros((3, 3, 1, 32), np.float32)
    for o in range(8):
        kernel[:, :, 0, o] = np.cos(o * np.pi / 4) * dx + np.sin(o * np.pi / 4) * dx.T
    tensors["conv0/kernel"] = kernel
    for i, (cin, cout, stride) in enumerate([(32, 32, 1), (32, 64, 2), (64, 64, 1),
                                             (64, 128, 2), (128, 128, 1)], 1):
        kernel = np.zeros((3, 3, cin, cout), np.float32)
        for o in range(8):
            if stride == 2:
                kernel[:, :, o, o] = 1 / 9
            else:
                kernel[1, 1, o, o] = 1
        tensors[f"conv{i}/kernel"] = kernel
    for i in range(6):
        n = len(tensors[f"conv{i}/bn/moving_mean"])
        tensors[f"conv{i}/bn/moving_mean"] = np.zeros(n, np.float32)
        tensors[f"conv{i}/bn/moving_variance"] = np.full(n, 1 - 1e-5, np.float32)
    kernel = np.zeros((8, 8, 128, 128), np.float32)
    for o in range(8):
        for cy in range(4):
            for cx in range(4):
                kernel[2 * cy:2 * cy + 2, 2 * cx:2 * cx + 2, o, o * 16 + cy * 4 + cx] = 1
    tensors["conv6/kernel"] = kernel
    for name in ("vis_context/fuse_photo_context_2/kernel", "geo_context/context_trans/kernel",
                 "geo_context/context_trans/bias"):
        tensors[name] = tensors[name] * np.float32(0.001)
    return tensors


@pytest.fixture(scope="module")
def random_weights_dir(tmp_path_factory) -> Path:
    """A weights dir holding seeded random ContextDesc++ and retrieval weights, converted."""
    root = tmp_path_factory.mktemp("contextdesc_weights")
    (root / "contextdesc").mkdir()
    for name, module, tensors in (
            ("contextdesc++", ContextDescNet(), _matchable_tf_tensors(0)),
            ("retrieval_model", RegionalResNet50(), _random_tf_tensors(RegionalResNet50(), 1))):
        state = state_dict_from_tf(module, tensors, name)
        torch.save(state, root / "contextdesc" / f"{name}.pth")
    return root


@pytest.fixture
def random_env(monkeypatch, random_weights_dir):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(random_weights_dir))
    return random_weights_dir


# ---------------------------------------------------------------- weight formats


def test_both_official_formats_hold_the_same_69_variables(official_dir):
    graphs = read_graphdef_constants(official_dir / "loc.pb") | \
        read_graphdef_constants(official_dir / "aug.pb")
    ckpt = read_checkpoint(official_dir)
    listed = {line.split("\t")[0]: line.split("\t")[1] for line in
              require_shared(f"{FIXTURES}/model.ckpt-0.variables.txt").read_text().splitlines()
              if line.strip()}
    assert set(ckpt) == set(listed) and len(ckpt) == 69
    for name, shape in listed.items():
        assert "x".join(map(str, ckpt[name].shape)) == shape, name
        np.testing.assert_array_equal(graphs[name], ckpt[name])


@pytest.mark.parametrize("keep", [("loc.pb", "aug.pb"),
                                  ("model.ckpt-0.index", "model.ckpt-0.data-00000-of-00001",
                                   "checkpoint")])
def test_converter_reads_each_format_and_strict_loads(official_dir, tmp_path, keep):
    src = tmp_path / "contextdesc_pp"
    src.mkdir()
    for name in keep:
        shutil.copyfile(official_dir / name, src / name)
    out = convert_contextdesc(src, tmp_path / "out")
    assert out.name == "contextdesc++.pth"
    net = ContextDescNet()
    load_state_dict_strict(net, torch.load(out, weights_only=True), out)
    reference = read_checkpoint(official_dir)
    np.testing.assert_array_equal(net.local.conv3.weight.detach().numpy(),
                                  reference["conv3/kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(net.aug.vis_context.fuse_photo_context_0.weight[:, :, 0, 0].detach()
                                  .numpy(), reference["vis_context/fuse_photo_context_0/kernel"]
                                  [0, 0].T)


def test_converter_reads_a_tar_archive(official_dir, tmp_path):
    archive = tmp_path / "contextdesc_pp.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("loc.pb", "aug.pb"):
            tar.add(official_dir / name, arcname=f"contextdesc_pp/{name}")
    out = convert_contextdesc(archive, tmp_path / "out")
    load_state_dict_strict(ContextDescNet(), torch.load(out, weights_only=True), out)


def test_archive_missing_a_file_names_the_missing_variables(official_dir, tmp_path):
    src = tmp_path / "contextdesc_pp"
    src.mkdir()
    shutil.copyfile(official_dir / "loc.pb", src / "loc.pb")     # no aug.pb, no checkpoint
    with pytest.raises(WeightsError, match="missing variable.*vis_context/conv1/kernel"):
        convert_contextdesc(src, tmp_path / "out")
    archive = tmp_path / "contextdesc_p.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(official_dir / "aug.pb", arcname="aug.pb")
    with pytest.raises(WeightsError, match="missing variable.*conv0/kernel"):
        convert_contextdesc(archive, tmp_path / "out")


def test_misnamed_variable_and_missing_shard_are_reported(official_dir, tmp_path):
    tensors = read_checkpoint(official_dir)
    tensors["conv9/kernel"] = tensors.pop("conv5/kernel")
    with pytest.raises(WeightsError, match="conv5/kernel"):
        state_dict_from_tf(ContextDescNet(), tensors, "renamed")
    tensors = read_checkpoint(official_dir)
    tensors["conv6/kernel"] = tensors["conv6/kernel"][:4]
    with pytest.raises(WeightsError, match=r"wrong shape.*conv6/kernel"):
        state_dict_from_tf(ContextDescNet(), tensors, "bad shape")
    src = tmp_path / "contextdesc"
    src.mkdir()
    shutil.copyfile(official_dir / "model.ckpt-0.index", src / "model.ckpt-0.index")
    with pytest.raises(WeightsError, match="data-00000-of-00001"):
        convert_contextdesc(src, tmp_path / "out")


def test_bad_sources_and_variant_names(tmp_path):
    with pytest.raises(InputError):
        convert_contextdesc(tmp_path / "nothing.tar", tmp_path)
    junk = tmp_path / "contextdesc_pp.tar"
    junk.write_bytes(b"not an archive")
    with pytest.raises(WeightsError, match="neither a tar nor a zip"):
        convert_contextdesc(junk, tmp_path)
    empty = tmp_path / "contextdesc_pp"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no loc.pb or aug.pb"):
        convert_contextdesc(empty, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown ContextDesc variant 'contextdesc\+\+\+'"):
        convert_contextdesc(empty, tmp_path, variant="contextdesc+++")
    with pytest.raises(ConfigError, match="cannot tell the ContextDesc variant"):
        convert_contextdesc(tmp_path, tmp_path)
    (tmp_path / "loc.pb").write_bytes(b"\x0a\x05garbage")
    with pytest.raises(WeightsError, match="loc.pb"):
        read_graphdef_constants(tmp_path / "loc.pb")
    with pytest.raises(ConfigError, match="ContextDescConfig.weights=.contextdesc[+]{3}.pth.: "
                                          "must be one of contextdesc.pth"):
        ContextDesc(ContextDescConfig(weights="contextdesc+++.pth"))


def test_regional_model_strict_loads_the_official_variable_listing():
    listing = require_shared(f"{FIXTURES}/regional_resnet50.variables.txt").read_text()
    tensors = {}
    for line in listing.splitlines():
        if line.strip():
            name, shape, _ = line.split("\t")
            tensors[name] = np.zeros([int(s) for s in shape.split("x")], np.float32)
    assert len(tensors) == 266
    model = RegionalResNet50()
    state = state_dict_from_tf(model, tensors, "regional_resnet50.variables.txt")
    assert set(tensors) == {tf for tf, _ in tf_variable_names(model).values()}
    load_state_dict_strict(model, state, "regional listing")
    # output stride 32 with the official padding: 1024×751 -> 32×24, 665×1024 -> 21×32
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 95, 64))
    assert out.shape == (1, 2048, 3, 2)


# ---------------------------------------------------------------- parity with official outputs


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
def test_patches_match_the_official_crops(name):
    d = _npz(name)
    gray = cv2.cvtColor(cv2.imread(str(require_shared(f"data/sacre_coeur/mapping/{name}.jpg"))),
                        cv2.COLOR_BGR2GRAY)
    xy = np.stack([d["kpt_x"], d["kpt_y"]], 1).astype(np.float64)
    ours = sample_patches_cv2(gray, xy, d["kpt_size"], d["kpt_angle"])
    assert np.abs(ours - d["patches_raw"]).max() == 0.0      # bit-exact
    # the shared grid_sample sampler interpolates exactly; OpenCV 4 rounds positions to 1/32
    shared = sample_patches_torch(gray, xy, d["kpt_size"], d["kpt_angle"])
    err = np.abs(shared - d["patches_raw"])
    assert err.max() < 4.0 and err.mean() < 0.3
    np.testing.assert_array_equal(standardize_patches(d["patches_raw"][:16]),
                                  d["patches_fed_first16"])
    np.testing.assert_allclose(normalized_xy(xy, gray.shape), d["kpt_xy"], atol=1e-7)
    rgb = cv2.imread(str(require_shared(f"data/sacre_coeur/mapping/{name}.jpg")))[..., ::-1]
    assert resize_for_regional(rgb, 1024).shape[:2] == tuple(d["regional_input_shape"])


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
def test_local_features_and_matchability_match_official(fixture_net, name):
    d = _npz(name)
    count = 1024          # CI time; benchmarks/extract_contextdesc.py --parity runs all 2000
    fed = torch.from_numpy(standardize_patches(d["patches_raw"][:count])[:, None])
    with torch.no_grad():
        feats, mbs = zip(*(fixture_net.local(fed[i:i + 512]) for i in range(0, len(fed), 512)))
    assert np.abs(torch.cat(feats).numpy() - d["loc_feat"][:count]).max() <= 1e-4
    assert np.abs(torch.cat(mbs).numpy() - d["kpt_mb"][:count]).max() <= 1e-4


@pytest.mark.parametrize("name", IMAGES)
def test_augmented_descriptors_match_official(fixture_net, name):
    d = _npz(name)
    with torch.no_grad():
        out = fixture_net.aug(
            torch.from_numpy(d["loc_feat"])[None],
            torch.from_numpy(d["regional_feat"].astype(np.float32)).permute(2, 0, 1)[None],
            torch.from_numpy(d["kpt_mb"])[None],
            torch.from_numpy(d["kpt_xy"].astype(np.float32))[None])[0].numpy()
    ref = d["aug_feat"]
    assert (out * ref).sum(1).min() >= 0.9999
    codes = (out * 128 + 128).astype(np.uint8)          # the official quantz=True expression
    differ = codes != d["aug_feat_uint8"]
    # a code may differ only where the reference value sits on a truncation boundary
    boundary = np.abs(ref * 128 + 128 - np.round(ref * 128 + 128)) < 1e-3
    assert np.all(boundary[differ]) and differ.sum() <= 4
    np.testing.assert_array_equal(quantize(ref)[~differ], codes[~differ])


# ---------------------------------------------------------------- unit tests


def test_context_norm_standardises_each_channel_over_the_points():
    x = torch.randn(2, 50, 7) * 3 + 5
    y = context_norm(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 7), atol=1e-4, rtol=0)
    # per set: another set in the batch does not change the result
    torch.testing.assert_close(context_norm(x[:1]), y[:1])
    one = context_norm(torch.full((1, 1, 3), 4.0))
    assert torch.all(one == 0)                                # a single point: no NaN
    bn = BatchNorm(7)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    fused = context_norm_bn_relu(x, bn)
    torch.testing.assert_close(fused, torch.relu(bn.last(y)), atol=1e-5, rtol=1e-5)


def test_3nn_interpolation_weights():
    points = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    values = torch.tensor([[[1.0], [2.0], [4.0], [100.0]]])
    query = torch.tensor([[[0.25, 0.0], [0.0, 0.0]]])
    official = interpolate_3nn(query, points, values)
    torch.testing.assert_close(official, torch.full((1, 2, 1), 7 / 3))  # 1/3 each, far point out
    idw = interpolate_3nn(query, points, values, inverse_distance=True)
    d = np.sqrt(np.array([0.25 ** 2, 0.75 ** 2, 0.25 ** 2 + 1]) + 1e-6)
    w = (1 / d) / (1 / d).sum()
    assert idw[0, 0, 0].item() == pytest.approx(float(w @ [1, 2, 4]), rel=1e-5)
    d = np.sqrt(np.array([0.0, 1.0, 1.0]) + 1e-6)                  # on a point: eps only
    w = (1 / d) / (1 / d).sum()
    assert idw[0, 1, 0].item() == pytest.approx(float(w @ [1, 2, 4]), rel=1e-5)
    assert idw[0, 1, 0].item() == pytest.approx(1.0, abs=5e-3)
    grid = grid_points(2, 3)
    torch.testing.assert_close(grid, torch.tensor([[-1.0, -1], [0, -1], [1, -1],
                                                   [-1, 1], [0, 1], [1, 1]]))


@pytest.mark.parametrize("angle", [0.0, 30.0, 135.0, 250.0])
@pytest.mark.parametrize("sampler", [sample_patches_cv2, sample_patches_torch])
def test_patch_geometry_upright_and_centred(angle, sampler):
    """Blobs at the keypoint and 0.5·r along its orientation land on the patch centre
    (row 16, col 16 of the official grid) and 8 columns to its right."""
    size = 8.0
    radius = float(support_radius([size], (200, 200))[0])      # round(3·4·√2·2.5) = 42
    assert radius == 42.0
    cx, cy = 100.0, 95.0
    a = np.deg2rad(angle)
    yy, xx = np.mgrid[0:200, 0:200].astype(np.float64)
    image = np.zeros((200, 200))
    for (bx, by), amp in (((cx, cy), 250.0), ((cx + 0.5 * radius * np.cos(a),
                                                cy + 0.5 * radius * np.sin(a)), 150.0)):
        image += amp * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * 2.5 ** 2))
    patch = sampler(image.astype(np.float32), np.array([[cx, cy]]), np.array([size]),
                    np.array([angle]))[0]
    assert np.unravel_index(np.argmax(patch), patch.shape) == (16, 16)
    right = patch.copy()
    right[:, :20] = 0
    assert np.unravel_index(np.argmax(right), patch.shape) == (16, 24)


def test_upright_selection_merges_angles_and_sorts_by_size():
    kps = [cv2.KeyPoint(10, 10, 5, 30, 0.5), cv2.KeyPoint(10, 10, 5, 200, 0.4),
           cv2.KeyPoint(20, 5, 9, 0, 0.1), cv2.KeyPoint(3, 4, 2, 0, 0.9)]
    upright = select_keypoints(kps, None, upright=True)
    assert [k.size for k in upright] == [9, 5, 2]
    top = select_keypoints(kps, 2, upright=False)
    assert sorted(k.response for k in top) == pytest.approx([0.5, 0.9])
    assert [k.size for k in top] == [5, 2]
    assert select_keypoints([], 10, True) == []


def test_quantisation_round_trip_within_one_step():
    rng = np.random.default_rng(3)
    d = rng.normal(size=(100, 128)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    codes = quantize(d)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, (d * 128 + 128).astype(np.uint8))
    assert np.abs(dequantize(codes) - d).max() <= 1 / 256 + 1e-6
    assert quantize(np.array([[1.0, -1.0]]))[0].tolist() == [255, 0]   # no uint8 wrap-around


# ---------------------------------------------------------------- extractor, end to end


@pytest.mark.slow
def test_extractor_outputs_and_bad_input(random_env, sacre_coeur_dir):
    from sfmfeat.extractors import create_extractor
    from sfmfeat.images import read_image

    extractor = create_extractor("contextdesc++", {"max_keypoints": 300})
    image = read_image(sorted(sacre_coeur_dir.glob("*.jpg"))[0])[:360, :480]   # CI time
    feats = extractor.extract(image)
    assert len(feats) == 300 and feats.descriptors.shape == (300, 128)
    assert feats.scales is not None and np.all(np.diff(feats.scales) <= 0)   # by size
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    assert set(extractor.timings) == {"sift", "patches", "local", "regional", "augmentation"}
    quantized = create_extractor("contextdesc++", {"max_keypoints": 300, "quantize": True})
    q = quantized.extract(image)
    assert np.abs(q.descriptors - feats.descriptors).max() <= 1 / 256 + 1e-5
    blank = np.full((480, 640, 3), 128, np.uint8)
    assert len(extractor.extract(blank)) == 0
    tiny = np.zeros((3, 3, 3), np.uint8)
    assert len(extractor.extract(tiny)) == 0
    with pytest.raises(WeightsError, match="weights convert contextdesc"):
        create_extractor("contextdesc+")                     # weights not converted


@pytest.mark.slow
def test_reconstruct_end_to_end_with_random_weights(random_env, sacre_coeur_dir, tmp_path,
                                                    seed_args):
    from sfmfeat.store import FeatureReader

    from sfmfeat.cli import main

    out = tmp_path / "out"
    # CI time: 2048 keypoints and a 384-px regional input; mutual NN as the D2-Net e2e test
    status = main(["-q", "reconstruct", str(sacre_coeur_dir), str(out), "--features",
                   "contextdesc++", "--conf", "max_keypoints=2048", "--conf",
                   "regional_max_dim=384", "--matcher", "mnn", *seed_args])
    assert status == 0
    assert (out / "sfm" / "images.bin").is_file()
    found = sorted(out.rglob("features*.h5"))
    assert found, "no features file written"
    with FeatureReader(found[0]) as reader:
        descriptors = [reader.read(name).descriptors for name in reader.names()]
    assert descriptors
    for d in descriptors:
        d = d.astype(np.float32)
        assert d.shape[1] == 128 and 0 < len(d) <= 2048
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-3)


def test_augmentation_handles_zero_and_one_keypoint():
    model = AugmentationModel().eval()
    with torch.no_grad():
        empty = model(torch.zeros(1, 0, 128), torch.randn(1, 2048, 2, 3), torch.zeros(1, 0, 1),
                      torch.zeros(1, 0, 2))
        one = model(torch.randn(1, 1, 128), torch.randn(1, 2048, 2, 3), torch.zeros(1, 1, 1),
                    torch.zeros(1, 1, 2))
    assert empty.shape == (1, 0, 128)
    assert torch.isfinite(one).all() and one.shape == (1, 1, 128)


@pytest.mark.slow
def test_regional_model_serves_retrieval_pairs(random_env, sacre_coeur_dir, tmp_path):
    import shutil

    from sfmfeat.cli import main
    from sfmfeat.localization.retrieval import GlobalDescriptorReader

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(sacre_coeur_dir.glob("*.jpg"))[:3]:
        shutil.copy(path, images / path.name)
    pairs = tmp_path / "pairs.txt"
    assert main(["-q", "pairs", "retrieval", "--method", "contextdesc", "--images",
                 str(images), "-o", str(pairs), "--num-neighbors", "1"]) == 0
    assert len(pairs.read_text().splitlines()) >= 2
    with GlobalDescriptorReader(tmp_path / "global-contextdesc.h5") as reader:
        assert reader.method == "contextdesc-regional" and len(reader.names()) == 3
        for name in reader.names():
            descriptor = reader.read(name)
            assert descriptor.shape == (2048,)
            assert abs(np.linalg.norm(descriptor) - 1) < 1e-4
