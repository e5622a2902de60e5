"""HPatches protocol: hand-made MMA values, cache layout, the sequence generator, the pipeline
on a generated mini-HPatches and bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfmfeat.benchmarks import hpatches as hp
from sfmfeat.benchmarks.curves import draw_mma_curves
from sfmfeat.benchmarks.hpatches_synthetic import SyntheticConfig, generate_sequences
from sfmfeat.errors import InputError
from sfmfeat.extractors.base import Features
from sfmfeat.matchers import create_matcher

from conftest import require_shared

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _feats(xy, ids, dim=8) -> Features:
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    desc = np.zeros((len(xy), dim), np.float32)
    desc[np.arange(len(xy)), ids] = 1
    return Features(xy, np.ones(len(xy), np.float32), desc)


@pytest.fixture
def hand_made(tmp_path):
    """One i_ and one v_ sequence with known correct and incorrect matches."""
    root = tmp_path / "hp"
    base = [(10, 10), (20, 20), (30, 30), (40, 40)]
    off = lambda pts, d: [(x + dx, y + dy) for (x, y), (dx, dy) in zip(pts, d)]  # noqa: E731
    errs = [(0, 0), (1.5, 0), (0, 2.5), (12, 16)]        # 0, 1.5, 2.5 and 20 px
    H = np.array([[2.0, 0, 5], [0, 2, -3], [0, 0, 1]])
    vbase = [(10, 10), (20, 20)]
    vwarp = [tuple(hp.warp_points(np.array(p), H)[0]) for p in vbase]
    features = {
        "i_a/1.ppm": _feats(base, [0, 1, 2, 3]),
        "i_a/2.ppm": _feats(off(base, errs), [0, 1, 2, 3]),
        "i_a/3.ppm": Features.empty(8),                        # no keypoint
        "i_a/4.ppm": _feats(off(base, errs), [0, 1, 2, 3]),
        "i_a/5.ppm": _feats([base[0]], [0]),                   # one exact match
        "i_a/6.ppm": _feats([(13, 14)], [0]),                  # one match 5 px off
        "v_b/1.ppm": _feats(vbase, [0, 1]),
        "v_b/2.ppm": _feats(off(vwarp, [(0.5, 0), (0, 0.5)]), [0, 1]),
        "v_b/3.ppm": _feats(vwarp, [0, 1]),                    # its H_1_3 is missing
        "v_b/5.ppm": _feats(off(vwarp, [(3, 4), (0, 0.9)]), [0, 1]),   # 5 px and 0.9 px
        "v_b/6.ppm": _feats(vwarp, [0, 1]),
    }                                                          # v_b/4.ppm is missing
    for seq, homography in (("i_a", np.eye(3)), ("v_b", H)):
        (root / seq).mkdir(parents=True)
        cv2.imwrite(str(root / seq / "1.ppm"), np.zeros((60, 80, 3), np.uint8))
        for k in hp.TARGET_INDICES:
            if (seq, k) != ("v_b", 3):
                hp.write_homography(root / seq / f"H_1_{k}", homography)

    def read(name):
        if name not in features:
            raise InputError(f"{name}: file not found")
        return features[name]
    return root, read


def test_mma_hand_made_exact(hand_made):
    root, read = hand_made
    nn = create_matcher("mnn")
    outcomes = hp.evaluate_sequences(root, ["i_a", "v_b"], read, lambda a, b: nn.match(a, b)[0])
    cache = hp.build_cache(outcomes)
    i_err, v_err, (seq_type, n_feats, n_matches) = cache
    expected_i = {1: 1.5, 2: 2.0, 3: 2.5, 4: 2.5, **{t: 3.5 for t in range(5, 16)}}
    expected_v = {**{t: 2.5 for t in range(1, 5)}, **{t: 3.0 for t in range(5, 16)}}
    assert sorted(i_err) == list(range(1, 16))
    for t in range(1, 16):
        assert i_err[t] == pytest.approx(expected_i[t], abs=1e-12), t
        assert v_err[t] == pytest.approx(expected_v[t], abs=1e-12), t
    assert seq_type.tolist() == ["i"] * 5 + ["v"] * 5
    assert n_feats.tolist() == [4, 4, 0, 4, 1, 1, 2, 2, 2, 0, 2, 2]
    assert n_matches.tolist() == [4, 0, 4, 1, 1, 2, 0, 0, 2, 2]

    summary = hp.summarize_cache(cache)
    assert summary["mma"]["overall"][0] == pytest.approx(0.4)       # (1.5 + 2.5) / 10
    assert summary["mma"]["i"][2] == pytest.approx(0.5)             # 2.5 / 5
    assert summary["mma"]["v"][4] == pytest.approx(0.6)             # 3.0 / 5
    assert summary["mma"]["overall"][14] == pytest.approx(0.65)
    assert summary["num_pairs"] == {"overall": 10, "i": 5, "v": 5}
    assert summary["matches"]["overall"] == pytest.approx(1.6)
    assert summary["features"]["mean"] == pytest.approx(24 / 12)

    reasons = {(f["sequence"], f["pair"]): f["reason"] for f in hp.failures(outcomes)}
    assert "no keypoint" in reasons[("i_a", "1-3")]
    assert "homography file missing" in reasons[("v_b", "1-3")]
    assert "file not found" in reasons[("v_b", "1-4")]
    # fewer than 4 matches everywhere: every homography estimate fails
    assert hp.homography_summary(outcomes)["overall"]["failures"] == 10


def test_pair_accuracy_empty_is_inf():
    assert hp.pair_accuracy(np.zeros(0)).tolist() == [0.0] * 15
    acc = hp.pair_accuracy(np.array([0.0, 1.0, 1.0001, np.inf]), thresholds=(1, 2))
    assert acc.tolist() == [0.5, 0.75]


def test_error_auc_and_corner_error():
    aucs = hp.error_auc([2.0, np.inf, 0.5, np.inf], (1, 3))
    assert aucs == pytest.approx([0.1875, 0.375])
    assert hp.error_auc([], (1,)) == [0.0]
    shift = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1.0]])
    assert hp.corner_error(shift, np.eye(3), 100, 50) == pytest.approx(5.0)
    assert hp.corner_error(None, np.eye(3), 100, 50) == float("inf")


def test_read_homography_rejects_bad_files(tmp_path):
    bad = tmp_path / "H_1_2"
    bad.write_text("1 2 3\n")
    with pytest.raises(InputError, match="9 finite numbers"):
        hp.read_homography(bad)
    bad.write_text("a b c\n")
    with pytest.raises(InputError, match="numbers"):
        hp.read_homography(bad)
    with pytest.raises(InputError, match="missing"):
        hp.read_homography(tmp_path / "H_1_3")
    good = np.array([[0.9, 0.01, 26.0], [-0.02, 1.1, -3.5], [1e-5, 2e-6, 1]])
    hp.write_homography(bad, good)
    np.testing.assert_allclose(np.loadtxt(bad), good)     # readable as the notebook reads it
    np.testing.assert_allclose(hp.read_homography(bad), good)


def test_cache_published_layout_roundtrip(hand_made, tmp_path):
    root, read = hand_made
    nn = create_matcher("mnn")
    cache = hp.build_cache(hp.evaluate_sequences(root, ["i_a", "v_b"], read,
                                                 lambda a, b: nn.match(a, b)[0]))
    path = hp.save_cache(tmp_path / "cache" / "m.npy", cache)
    raw = np.load(path, allow_pickle=True)               # as the D2-Net notebook loads it
    assert raw.dtype == object and raw.shape == (3,)
    i_err, v_err, stats = raw
    assert all(type(k) is np.int64 for k in i_err) and len(stats) == 3
    assert stats[0].dtype == np.dtype("<U1") and stats[1].dtype == np.int64
    back = hp.load_cache(path)
    assert hp.summarize_cache(back) == hp.summarize_cache(cache)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="not a readable"):
        hp.load_cache(tmp_path / "junk.npy")
    np.save(tmp_path / "wrong.npy", np.arange(5))
    with pytest.raises(InputError, match="layout"):
        hp.load_cache(tmp_path / "wrong.npy")


def test_list_sequences_drops_high_resolution(tmp_path):
    for name in ("i_dc", "v_talent", "i_ok", "v_ok", "notes"):
        (tmp_path / name).mkdir()
    kept, dropped = hp.list_sequences(tmp_path)
    assert kept == ["i_ok", "v_ok"] and dropped == ["i_dc", "v_talent"]
    with pytest.raises(InputError, match="does not exist"):
        hp.list_sequences(tmp_path / "nope")


def _sources() -> list[Path]:
    mapping = require_shared("data/sacre_coeur/mapping")
    assets = require_shared("data/lightglue_assets")
    return sorted(mapping.glob("*.jpg"))[:4] + sorted(p for p in assets.iterdir()
                                                      if p.suffix.lower() == ".jpg")


def test_generator_layout_and_geometry(tmp_path):
    names = generate_sequences(_sources()[:2], tmp_path, 1, 1, SyntheticConfig(max_size=200))
    assert [n[:2] for n in names] == ["i_", "v_"]
    for name in names:
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == [f"{k}.ppm" for k in range(1, 7)] + [f"H_1_{k}" for k in range(2, 7)]
    i_seq, v_seq = (tmp_path / n for n in names)
    assert np.allclose(hp.read_homography(i_seq / "H_1_4"), np.eye(3))
    assert not np.array_equal(cv2.imread(str(i_seq / "1.ppm")), cv2.imread(str(i_seq / "6.ppm")))
    # the viewpoint images are the warps their homographies say
    ref = cv2.imread(str(v_seq / "1.ppm")).astype(np.float32)
    h, w = ref.shape[:2]
    for k in (2, 6):
        H = hp.read_homography(v_seq / f"H_1_{k}")
        assert not np.allclose(H, np.eye(3), atol=0.05)
        img = cv2.imread(str(v_seq / f"{k}.ppm")).astype(np.float32)
        back = cv2.warpPerspective(img, np.linalg.inv(H), (w, h), flags=cv2.INTER_LINEAR)
        inside = cv2.warpPerspective(np.ones(img.shape[:2], np.float32), np.linalg.inv(H),
                                     (w, h), flags=cv2.INTER_NEAREST) > 0.5
        inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert inside.mean() > 0.3
        diff = np.abs(back - ref).mean(2)[inside]
        assert np.median(diff) < 12, (k, np.median(diff))
        wrong = cv2.warpPerspective(img, np.linalg.inv(H) @ np.diag([1.03, 1, 1]), (w, h))
        assert np.median(np.abs(wrong - ref).mean(2)[inside]) > np.median(diff)


@pytest.fixture(scope="module")
def mini_hpatches(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_hpatches")
    names = generate_sequences(_sources(), root, 4, 4, SyntheticConfig(max_size=200))
    return root, names


@pytest.mark.slow
def test_pipeline_on_mini_hpatches(mini_hpatches, tmp_path, caplog):
    from pipelines import hpatches as pipeline

    root, names = mini_hpatches
    assert sum(n.startswith("i_") for n in names) >= 4
    assert sum(n.startswith("v_") for n in names) >= 4
    out = tmp_path / "out"
    assert pipeline.main(["--dataset", str(root), "--features", "sift,rootsift",
                          "--outputs", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for method in ("sift", "rootsift"):
        summary = results["methods"][method]
        back = hp.summarize_cache(hp.load_cache(out / "cache" / f"{method}.npy"))
        assert back["mma"] == summary["mma"]
        assert summary["num_sequences"] == {"i": 4, "v": 4}
        mma = summary["mma"]
        assert 0.6 < mma["v"][2] <= 1 and 0.8 < mma["i"][2] <= 1       # @3 px
        assert all(a <= b + 1e-12 for a, b in zip(mma["overall"], mma["overall"][1:]))
        assert summary["failures"] == []
        assert summary["homography"]["overall"]["auc"][2] > 0.5
        assert summary["features"]["mean"] > 100
    # published caches plot beside ours; the PNG is valid
    png = (out / "mma.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] > 600

    out2 = tmp_path / "out2"
    shutil.copytree(out / "features", out2 / "features")
    caplog.set_level(logging.INFO)
    assert pipeline.main(["--dataset", str(root), "--features", "sift", "--outputs", str(out2),
                          "--compare", f"ours={out / 'cache' / 'rootsift.npy'}"]) == 0
    assert "48 of 48 images already extracted" in caplog.text      # resumed
    results2 = json.loads((out2 / "results.json").read_text())
    assert results2["compared_caches"]["ours"]["mma"] == results["methods"]["rootsift"]["mma"]
    assert results2["methods"]["sift"]["mma"] == results["methods"]["sift"]["mma"]


def test_bad_input_counts_failures(mini_hpatches, tmp_path):
    src, names = mini_hpatches
    i_seq = next(n for n in names if n.startswith("i_"))
    v_seq = next(n for n in names if n.startswith("v_"))
    root = tmp_path / "hp"
    for name in (i_seq, v_seq):
        shutil.copytree(src / name, root / name)
    intact = hp.evaluate_method(src, [i_seq, v_seq], "sift", tmp_path / "intact.h5")

    h, w = cv2.imread(str(root / i_seq / "3.ppm")).shape[:2]
    cv2.imwrite(str(root / i_seq / "3.ppm"), np.full((h, w, 3), 128, np.uint8))  # 0 keypoints
    (root / v_seq / "H_1_4").unlink()
    (root / v_seq / "5.ppm").unlink()
    (root / v_seq / "H_1_6").write_text("1 0 0\n0 1\n")                             # malformed
    (root / v_seq / "2.ppm").write_bytes(b"P6 garbage")                             # corrupt
    result = hp.evaluate_method(root, [i_seq, v_seq], "sift", tmp_path / "bad.h5")
    summary = result.summary()
    reasons = {f["pair"] + f["sequence"][0]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"1-3i", "1-2v", "1-4v", "1-5v", "1-6v"}
    assert "no keypoint" in reasons["1-3i"]
    assert "homography file missing" in reasons["1-4v"]
    assert "file not found" in reasons["1-5v"]
    assert "9 finite numbers" in reasons["1-6v"]
    assert "readable" in reasons["1-2v"]
    assert set(summary["rejected_images"]) == {f"{v_seq}/2.ppm", f"{v_seq}/5.ppm"}
    # every pair still counts, the failed ones as 0
    assert summary["num_pairs"] == {"overall": 10, "i": 5, "v": 5}
    i_err, v_err, (_, n_feats, n_matches) = result.cache
    i_ok, v_ok, (_, _, ok_matches) = intact.cache
    per_pair = {p.index: hp.pair_accuracy(p.errors) for p in intact.outcomes[1].pairs}
    assert v_err[3] == pytest.approx(per_pair[3][2], abs=1e-9)       # only 1-3 survives
    assert i_err[3] < i_ok[3]
    assert n_matches.tolist()[1] == 0 and n_matches.tolist()[5:] == [0, ok_matches[6], 0, 0, 0]
    assert n_feats.tolist()[2] == 0 and n_feats.tolist()[6 + 4] == 0
    assert summary["homography"]["v"]["failures"] >= 4


def test_plot_several_curves(tmp_path):
    curves = {f"m{i}": {p: list(np.linspace(0.1 * i, 0.9, 10)) for p in ("overall", "i", "v")}
              for i in range(5)}
    path = draw_mma_curves(curves, range(1, 11), tmp_path / "p.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(InputError):
        draw_mma_curves({}, range(1, 11), tmp_path / "q.png")
