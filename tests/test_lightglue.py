"""LightGlue: parity with the official outputs stored in ../shared/fixtures/lightglue (both
weight files, adaptive mechanisms off and at their defaults), strict loading of both key
namings, the batched path, memory-bounded chunks and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import require_shared
from sfmfeat.errors import ConfigError, InputError, WeightsError
from sfmfeat.extractors.base import Features
from sfmfeat.matchers import create_matcher
from sfmfeat.matchers.lightglue import (WEIGHTS, LightGlue, LightGlueConfig, _attention,
                                        _Scratch, load_lightglue, weights_for_features)
from sfmfeat.weights import sha256_of

FIXTURES = ["aliked_DSC_0410_DSC_0411", "aliked_sacre_coeur1_sacre_coeur2",
            "disk_DSC_0410_DSC_0411", "disk_sacre_coeur1_sacre_coeur2"]
FULL = {"depth_confidence": -1, "width_confidence": -1}


def _fixture(name: str):
    data = np.load(require_shared(f"fixtures/lightglue/{name}.npz"), allow_pickle=False)
    features = [Features(keypoints=data[f"keypoints{i}"], descriptors=data[f"descriptors{i}"],
                         scores=data[f"keypoint_scores{i}"],
                         image_size=tuple(int(v) for v in data[f"image_size{i}"]))
                for i in (0, 1)]
    return data, features


@pytest.fixture(scope="module")
def aliked_pair():
    return _fixture(FIXTURES[0])


def _assert_scores_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within 1e-4 for 99.5% of the scores (the matches' share) and within 1e-3 for all.
    The fixtures come from another CPU: the official code itself, run on an AVX-512 CPU
    with the same inputs and threads, misses one of the 2048 stored scores of
    aliked_DSC_0410_DSC_0411 by 1.13e-4, and moves its own scores by up to 7.5e-5 when the
    descriptors change by one ulp (ours, summing q·k in another order, is within 6e-5 of it)."""
    error = np.abs(actual - expected)
    assert np.mean(error <= 1e-4) >= 0.995, (np.mean(error <= 1e-4), error.max())
    assert error.max() <= 1e-3, error.max()


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("mode", ["full", "adaptive"])
def test_parity_with_the_official_outputs(lightglue_weights_env, name, mode):
    torch.set_num_threads(2)   # the fixtures were made with 2 threads
    data, (f0, f1) = _fixture(name)
    config = LightGlueConfig(weights=name.split("_")[0], **(FULL if mode == "full" else {}))
    out = LightGlue(config, device="cpu").forward(f0, f1)
    for side in ("0", "1"):
        same = np.mean(out.__dict__[f"matches{side}"] == data[f"{mode}_matches{side}"])
        assert same >= (0.995 if mode == "full" else 0.98), (side, same)
    if mode == "full":
        assert out.stop == 9
        for side in ("0", "1"):
            _assert_scores_close(out.__dict__[f"matching_scores{side}"],
                                 data[f"full_matching_scores{side}"])
    else:
        assert out.stop == int(data["adaptive_stop"])
        assert np.mean(out.prune0 == data["adaptive_prune0"]) >= 0.98
        assert np.mean(out.prune1 == data["adaptive_prune1"]) >= 0.98


def test_both_official_files_load_strictly_with_their_checksums(lightglue_weights_env):
    for name, entry in WEIGHTS.items():
        path = lightglue_weights_env / entry.relative_path
        assert sha256_of(path) == entry.sha256
        net = load_lightglue(path, name)
        # the official 11,884,625 parameters, less the 18 output projections folded into
        # their FFNs after loading
        assert sum(p.numel() for p in net.parameters()) == 11_884_625 - 18 * (256 * 256 + 256)
    raw = torch.load(lightglue_weights_env / "lightglue/disk_lightglue.pth", weights_only=True)
    assert any(k.startswith("self_attn.0.") for k in raw)   # the v0.1 names really are read


def test_batched_path_equals_one_pair_at_a_time(lightglue_weights_env, aliked_pair):
    """Pairs of different sizes through one padded, masked forward (the GPU path), on CPU."""
    _, (f0, f1) = aliked_pair
    rng = np.random.default_rng(0)
    pairs = [(f0.subset(np.sort(rng.choice(len(f0), n0, replace=False))),
              f1.subset(np.sort(rng.choice(len(f1), n1, replace=False))))
             for n0, n1 in ((150, 130), (90, 160), (120, 120))]
    for extra in (FULL, {}):
        matcher = LightGlue(LightGlueConfig(weights="aliked", batch_size=3, **extra),
                            device="cpu")
        batched = matcher.forward_batch(pairs)
        for (a, b), joint in zip(pairs, batched):
            alone = matcher.forward(a, b)
            assert joint.stop == alone.stop
            assert np.mean(joint.matches0 == alone.matches0) >= 0.99
            assert np.abs(joint.matching_scores0 - alone.matching_scores0).max() < 1e-4
        assert sum(len(m) for m, _ in matcher.match_batch(pairs)) > 20


def test_chunked_attention_and_assignment_equal_the_whole(lightglue_weights_env, aliked_pair):
    _, (f0, f1) = aliked_pair
    a, b = f0.subset(np.arange(400)), f1.subset(np.arange(350))
    whole = LightGlue(LightGlueConfig(weights="aliked", **FULL), device="cpu").forward(a, b)
    chunked = LightGlue(LightGlueConfig(weights="aliked", attention_chunk_elements=50_000,
                                        assignment_chunk_elements=4_000, **FULL),
                        device="cpu").forward(a, b)
    np.testing.assert_array_equal(whole.matches0, chunked.matches0)
    np.testing.assert_allclose(whole.matching_scores0, chunked.matching_scores0, atol=1e-5)
    assert (whole.matches0 >= 0).sum() > 50


@pytest.mark.parametrize("peak", [1.0, 30.0, 300.0])
def test_blocked_cross_attention_equals_the_plain_softmax(peak):
    # peak 30: most weights would be subnormal floats; 300: most are exactly zero
    generator = torch.Generator().manual_seed(int(peak))
    q, k = (torch.randn(1, 4, n, 64, generator=generator) * peak ** 0.5 / 8 for n in (300, 257))
    v = torch.randn(1, 4, 257, 64, generator=generator)
    mask = torch.ones(1, 1, 1, 257, dtype=torch.bool)
    mask[..., 200:] = False
    expected = (q @ k.transpose(-1, -2)).masked_fill(~mask, -torch.inf).softmax(-1) @ v
    for chunk in (1 << 25, 5_000):          # one block; 4 queries per block
        got = _attention(q, k, v, mask, chunk, _Scratch())
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_points_padded_to_a_granule_give_the_unpadded_outputs(lightglue_weights_env,
                                                               aliked_pair):
    # the bf16 CPU path pads the points (masked keys) so that kernel shapes recur; checked
    # in fp32, where the padding must change nothing beyond float rounding (all 9 layers:
    # an early exit or a pruning decision at its threshold could flip on rounding alone)
    _, (f0, f1) = aliked_pair
    a, b = f0.subset(np.arange(450)), f1.subset(np.arange(389))
    matcher = LightGlue(LightGlueConfig(weights="aliked", **FULL), device="cpu")
    plain = matcher.forward(a, b)
    matcher._granule = 128
    padded = matcher.forward(a, b)
    assert np.mean(padded.matches0 == plain.matches0) >= 0.995
    assert np.abs(padded.matching_scores0 - plain.matching_scores0).max() < 1e-4
    assert (plain.matches0 >= 0).sum() > 50


def test_bf16_agrees_with_fp32(lightglue_weights_env, aliked_pair):
    _, (f0, f1) = aliked_pair
    a, b = f0.subset(np.arange(500)), f1.subset(np.arange(500))
    fp32 = LightGlue(LightGlueConfig(weights="aliked"), device="cpu").forward(a, b)
    bf16 = LightGlue(LightGlueConfig(weights="aliked", precision="bf16"),
                     device="cpu").forward(a, b)
    matched = fp32.matches0 >= 0
    assert matched.sum() > 50
    assert np.mean(bf16.matches0[matched] == fp32.matches0[matched]) >= 0.9


def test_zero_or_one_keypoint_gives_no_matches(lightglue_weights_env, aliked_pair):
    _, (f0, f1) = aliked_pair
    matcher = create_matcher("lightglue", device="cpu", features_method="aliked-n16")
    for a, b in ((f0.subset(np.arange(0)), f1), (f0, f1.subset(np.arange(1))),
                 (f0.subset(np.arange(1)), f1.subset(np.arange(0)))):
        matches, scores = matcher.match(a, b)
        assert matches.shape == (0, 2) and matches.dtype == np.int32 and scores.shape == (0,)
    matches, scores = matcher.match(f0.subset(np.arange(300)), f1.subset(np.arange(300)))
    assert len(matches) > 20 and matches.dtype == np.int32 and np.all(scores > 0.1)


def test_preset_picks_the_weights_from_the_features(lightglue_weights_env):
    assert weights_for_features("aliked-n16rot") == "aliked"
    assert weights_for_features("disk") == "disk"
    matcher = create_matcher("lightglue", device="cpu", features_method="disk")
    assert matcher.config.weights == "disk"
    other = create_matcher("lightglue", device="cpu", features_method="aliked-n32")
    assert other.config.weights == "aliked" and other.config_hash != matcher.config_hash
    with pytest.raises(ConfigError, match="ALIKED .* DISK"):
        create_matcher("lightglue", features_method="sift")
    with pytest.raises(ConfigError, match="weights='disk'|weights 'disk'"):
        create_matcher("lightglue", {"weights": "disk"}, features_method="aliked-n16")
    with pytest.raises(ConfigError, match="depth_confidence"):
        create_matcher("lightglue", {"depth_confidence": "2"}, features_method="disk")


def test_wrong_descriptor_dimension(lightglue_weights_env):
    matcher = create_matcher("lightglue", device="cpu", features_method="aliked-t16")
    rng = np.random.default_rng(0)
    f = Features(keypoints=rng.random((10, 2)) * 100, scores=np.ones(10),
                 descriptors=rng.standard_normal((10, 64)), image_size=(100, 100))
    with pytest.raises(InputError, match="128-d descriptors, got 64-d"):
        matcher.match(f, f)


def test_truncated_unrelated_or_renamed_weight_files(lightglue_weights_env, tmp_path,
                                                     shared_weights_dir):
    good = lightglue_weights_env / "lightglue/aliked_lightglue.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1_000_000])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_lightglue(truncated, "aliked")
    with pytest.raises(WeightsError, match="missing keys"):
        load_lightglue(shared_weights_dir / "aliked/aliked-n16.pth", "aliked")
    state = torch.load(good, weights_only=True)
    state.pop("transformers.3.cross_attn.to_v.bias")
    state["transformers.3.cross_attn.extra"] = torch.zeros(1)
    damaged = tmp_path / "damaged.pth"
    torch.save(state, damaged)
    with pytest.raises(WeightsError, match="to_v.bias.*extra|extra.*to_v.bias"):
        load_lightglue(damaged, "aliked")


def _features_file(tmp_path, method: str, dim: int):
    from sfmfeat.store import FeatureWriter

    path = tmp_path / f"{method}.h5"
    rng = np.random.default_rng(1)
    with FeatureWriter(path, method=method, config_hash="0" * 16, config={}) as writer:
        for name in ("a.jpg", "b.jpg"):
            writer.write(name, Features(keypoints=rng.random((40, 2)) * 200,
                                        scores=np.ones(40),
                                        descriptors=rng.standard_normal((40, dim))),
                         (200, 200))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.jpg b.jpg\n")
    return path, pairs


@pytest.mark.parametrize("method,dim,expected", [("sift", 128, "ALIKED"),
                                                 ("aliked-t16", 64, "64-d"),
                                                 ("aliked-n16", 128, None)])
def test_cli_bad_features_are_one_line_exit_2(lightglue_weights_env, tmp_path, method, dim,
                                              expected):
    features, pairs = _features_file(tmp_path, method, dim)
    out = tmp_path / "matches.h5"
    run = subprocess.run([sys.executable, "-m", "sfmfeat", "match", "--pairs", str(pairs),
                          "--features", str(features), "-o", str(out), "--matcher",
                          "lightglue", "--device", "cpu"], capture_output=True, text=True,
                         timeout=300)
    if expected is None:
        assert run.returncode == 0, run.stderr
        from sfmfeat.store import MatchReader

        with MatchReader(out) as reader:
            assert reader.method == "lightglue" and reader.config["config"]["weights"] == "aliked"
        return
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in run.stderr
    assert not out.exists()


def test_cli_unusable_weight_file_is_one_line_exit_2(tmp_path):
    features, pairs = _features_file(tmp_path, "disk", 128)
    weights = tmp_path / "weights" / "lightglue"
    weights.mkdir(parents=True)
    (weights / "disk_lightglue.pth").write_bytes(b"not a checkpoint at all")
    env = {**__import__("os").environ, "SFMFEAT_WEIGHTS_DIR": str(tmp_path / "weights")}
    run = subprocess.run([sys.executable, "-m", "sfmfeat", "match", "--pairs", str(pairs),
                          "--features", str(features), "-o", str(tmp_path / "m.h5"),
                          "--matcher", "lightglue"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "disk_lightglue.pth" in lines[0]
