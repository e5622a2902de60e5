import h5py
import numpy as np
import pytest

from sfmfeat.errors import StoreError
from sfmfeat.extractors.base import Features
from sfmfeat.store import (SCHEMA_VERSION, FeatureReader, FeatureWriter, MatchReader,
                           MatchWriter, escape_name, pair_key, unescape_name)


def _features(n, dim=8, seed=0, geometry=False):
    rng = np.random.default_rng(seed)
    return Features(rng.random((n, 2)) * 100, rng.random(n), rng.random((n, dim)),
                    scales=rng.random(n) if geometry else None,
                    orientations=rng.random(n) * 360 if geometry else None)


@pytest.mark.parametrize("name", ["a.jpg", "sub/dir/b c.png", "é%2F/x.jpg", "100%.jpg"])
def test_name_escaping_round_trips(name):
    key = escape_name(name)
    assert "/" not in key
    assert unescape_name(key) == name


def test_pair_key_is_order_invariant():
    assert pair_key("b", "a")[:2] == pair_key("a", "b")[:2] == ("a", "b")
    assert pair_key("b", "a")[2] and not pair_key("a", "b")[2]
    with pytest.raises(StoreError):
        pair_key("a", "a")


def test_features_round_trip_with_schema_and_types(tmp_path):
    path = tmp_path / "f.h5"
    stored = {"x/a b.jpg": _features(5, geometry=True), "ü.png": _features(0), "c.jpg": _features(3)}
    with FeatureWriter(path, "sift", "hash1", {"k": 1}, flush_items=1) as writer:
        for name, feats in stored.items():
            writer.write(name, feats, (640, 480))
    with h5py.File(path) as handle:
        assert handle.attrs["schema_version"] == SCHEMA_VERSION
        assert handle.attrs["config_hash"] == "hash1"
        group = handle["images"][escape_name("x/a b.jpg")]
        assert group["keypoints"].dtype == np.float32 and group["keypoints"].shape == (5, 2)
        assert group["descriptors"].shape == (5, 8)
    with FeatureReader(path) as reader:
        assert sorted(reader.names()) == sorted(stored)
        for name, feats in stored.items():
            got = reader.read(name)
            np.testing.assert_array_equal(got.keypoints, feats.keypoints)
            np.testing.assert_array_equal(got.descriptors, feats.descriptors)
            assert reader.image_size(name) == (640, 480)
        assert reader.read("x/a b.jpg").scales is not None
        assert reader.read("c.jpg").scales is None
    assert not (tmp_path / "f.h5.partial").exists()


def test_other_config_is_refused_not_mixed(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, "sift", "hash1", {}) as writer:
        writer.write("a.jpg", _features(2), (10, 10))
    with pytest.raises(StoreError, match="never mixed"):
        FeatureWriter(path, "sift", "hash2", {})
    with pytest.raises(StoreError):
        FeatureWriter(path, "disk", "hash1", {})
    with FeatureWriter(path, "sift", "hash1", {}) as writer:  # same config resumes
        assert "a.jpg" in writer and "b.jpg" not in writer


def test_unflushed_crash_keeps_flushed_shards_and_final_file(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, "m", "h", {}) as writer:
        writer.write("first.jpg", _features(2), (10, 10))
    writer = FeatureWriter(path, "m", "h", {}, flush_items=2)
    for i in range(5):
        writer.write(f"{i}.jpg", _features(3, seed=i), (10, 10))
    # simulate a crash: the writer is abandoned without close(); 4 items were flushed
    del writer
    resumed = FeatureWriter(path, "m", "h", {})
    assert {"first.jpg", "0.jpg", "1.jpg", "2.jpg", "3.jpg"} <= {k[0] for k in resumed.done}
    assert "4.jpg" not in resumed
    resumed.write("4.jpg", _features(3, seed=4), (10, 10))
    resumed.close()
    with FeatureReader(path) as reader:
        assert len(reader.names()) == 6
        np.testing.assert_array_equal(reader.read("2.jpg").descriptors,
                                      _features(3, seed=2).descriptors)


def test_truncated_file_gives_clear_error(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(StoreError, match="unreadable HDF5"):
        FeatureReader(path)
    with pytest.raises(StoreError, match="does not exist"):
        FeatureReader(tmp_path / "missing.h5")


def test_matches_are_int32_and_order_invariant(tmp_path):
    path = tmp_path / "m.h5"
    with MatchWriter(path, "mnn", "mh", {}, features_config_hash="fh") as writer:
        writer.write("z.jpg", "a/b.jpg", np.array([[0, 5], [40000, 2]]), np.array([0.9, 0.8]))
        assert ("a/b.jpg", "z.jpg") in writer
    with MatchReader(path) as reader:
        assert reader.pairs() == [("a/b.jpg", "z.jpg")]
        forward, scores = reader.read("z.jpg", "a/b.jpg")
        backward, _ = reader.read("a/b.jpg", "z.jpg")
        assert forward.dtype == np.int32
        np.testing.assert_array_equal(forward, [[0, 5], [40000, 2]])  # > int16 range
        np.testing.assert_array_equal(backward, [[5, 0], [2, 40000]])
        np.testing.assert_allclose(scores, [0.9, 0.8])
    with pytest.raises(StoreError, match="features_config_hash"):
        MatchWriter(path, "mnn", "mh", {}, features_config_hash="other")
