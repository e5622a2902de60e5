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
        # packed: one dataset per field whatever the number of images
        assert handle["rows/keypoints"].dtype == np.float32
        assert handle["rows/keypoints"].shape == (8, 2)
        assert handle["rows/descriptors"].shape == (8, 8)
        assert handle["rows/scales"].shape == (5,)          # only x/a b.jpg has them
        assert sorted(handle["records/count"][()]) == [0, 3, 5]
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
    assert all(name in resumed for name in ("first.jpg", "0.jpg", "1.jpg", "2.jpg", "3.jpg"))
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


def _write_schema2(path, records):
    """A features.h5 as sfmfeat wrote it before the packed layout (one group per image)."""
    with h5py.File(path, "w") as handle:
        for key, value in {"schema_version": 2, "kind": "features", "method": "sift",
                           "config_hash": "old", "config": "{}", "sfmfeat_version": "0.9"
                           }.items():
            handle.attrs[key] = value
        for name, feats in records.items():
            group = handle.create_group(f"images/{escape_name(name)}")
            for field in ("keypoints", "scores", "descriptors"):
                group.create_dataset(field, data=getattr(feats, field))
            group.attrs["image_size"] = np.array([64, 48])


def test_schema_2_files_are_read_but_not_extended(tmp_path):
    path = tmp_path / "old.h5"
    records = {"a/x.jpg": _features(4, seed=1), "b.jpg": _features(0)}
    _write_schema2(path, records)
    with FeatureReader(path) as reader:
        assert sorted(reader.names()) == sorted(records)
        for name, feats in records.items():
            np.testing.assert_array_equal(reader.read(name).descriptors, feats.descriptors)
            assert reader.image_size(name) == (64, 48)
    with pytest.raises(StoreError, match="extends version 3 only.*--overwrite"):
        FeatureWriter(path, "sift", "old", {})


def test_a_rewritten_record_replaces_the_earlier_one_across_shards_and_runs(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, "m", "h", {}, flush_items=2) as writer:
        for i in range(5):
            writer.write(f"{i}.jpg", _features(3, seed=i), (10, 10))
        writer.write("1.jpg", _features(7, seed=70), (20, 20))    # same run, later shard
        writer.write("1.jpg", _features(2, seed=71), (30, 30))    # twice in one buffer
    with FeatureWriter(path, "m", "h", {}) as writer:             # a later run
        writer.write("3.jpg", _features(6, seed=30), (40, 40))
    with FeatureReader(path) as reader:
        assert sorted(reader.names()) == [f"{i}.jpg" for i in range(5)]
        np.testing.assert_array_equal(reader.read("1.jpg").descriptors,
                                      _features(2, seed=71).descriptors)
        assert reader.image_size("1.jpg") == (30, 30)
        np.testing.assert_array_equal(reader.keypoints("3.jpg"),
                                      _features(6, seed=30).keypoints)
        for i in (0, 2, 4):
            np.testing.assert_array_equal(reader.read(f"{i}.jpg").scores,
                                          _features(3, seed=i).scores)


def test_killed_run_shards_are_merged_on_resume_and_stored_attributes_kept(tmp_path):
    path = tmp_path / "m.h5"
    writer = MatchWriter(path, "mnn", "mh", {}, features_config_hash="fh", flush_items=3)
    pairs = [(f"{i}.jpg", f"{j}.jpg") for i in range(4) for j in range(i + 1, 5)]
    for number, (name0, name1) in enumerate(pairs):
        writer.write(name1, name0, np.array([[number, 1]]), np.array([0.5]),
                     features_digests=(f"d{name1}", f"d{name0}"))
    del writer                           # killed: 9 of 10 pairs flushed in 3 shards
    resumed = MatchWriter(path, "mnn", "mh", {}, features_config_hash="fh")
    assert not (tmp_path / "m.h5.partial").exists() and path.is_file()
    assert sum(pair in resumed for pair in pairs) == 9
    assert resumed.stored_digests("0.jpg", "1.jpg") == ("d0.jpg", "d1.jpg")
    assert resumed.stored_digests("1.jpg", "0.jpg") == ("d1.jpg", "d0.jpg")
    resumed.write(*pairs[-1], np.array([[9, 9]]), np.array([0.1]))
    resumed.close()
    with MatchReader(path) as reader:
        assert sorted(reader.pairs()) == sorted(pairs)
        for number, pair in enumerate(pairs[:-1]):
            np.testing.assert_array_equal(reader.read(*pair)[0], [[1, number]])
        assert reader.features_digests(*pairs[-1]) is None


def test_a_corrupted_row_or_index_is_refused_not_returned(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, "m", "h", {}) as writer:
        for i in range(3):
            writer.write(f"{i}.jpg", _features(4, seed=i), (10, 10))
    with h5py.File(path, "r+") as handle:
        descriptors = handle["rows/descriptors"]
        descriptors[5, 0] += 1.0
    with FeatureReader(path) as reader:
        failures = 0
        for name in reader.names():
            try:
                reader.read(name)
            except StoreError as err:
                assert "checksum mismatch" in str(err)
                failures += 1
        assert failures == 1
    with h5py.File(path, "r+") as handle:
        handle["records/offset"][1, 0] = 1000
    with pytest.raises(StoreError, match="record index is corrupt"):
        FeatureReader(path)


def test_key_set_holds_exactly_the_added_keys_across_folds(monkeypatch):
    from sfmfeat.store import KeySet

    monkeypatch.setattr(KeySet, "_FOLD", 7)
    keys = KeySet()
    added = [(f"{i}.jpg", f"{i + 1}.jpg") for i in range(50)]
    for key in added:
        keys.add(key)
        keys.add(key)
    assert len(keys) == 50
    assert all(key in keys for key in added)
    assert not any((b, a) in keys or (a, a) in keys for a, b in added)
    assert ("0.jpg\x001.jpg",) not in keys and ("0.jpg",) not in keys


def test_key_set_tells_apart_digests_sharing_their_first_half(monkeypatch):
    from sfmfeat.store import KeySet

    # two keys whose 128-bit digests share the first 64 bits (2^-64 apart in practice)
    digests = {("a",): bytes(8) + b"\x02" * 8, ("b",): bytes(8) + b"\x01" * 8,
               ("c",): bytes(8) + b"\x03" * 8, ("d",): b"\xff" * 16}
    monkeypatch.setattr(KeySet, "_digest", staticmethod(digests.__getitem__))
    monkeypatch.setattr(KeySet, "_FOLD", 1)        # every key folded into the arrays
    keys = KeySet()
    keys.update([("a",), ("d",), ("b",)])
    assert len(keys) == 3 and not keys._recent
    assert ("a",) in keys and ("b",) in keys and ("d",) in keys and ("c",) not in keys


def test_names_are_a_sorted_lazy_sequence_equal_to_the_list(tmp_path):
    from sfmfeat.store import NameList

    path = tmp_path / "f.h5"
    names = ["é/z.jpg", "a b.jpg", "m.png", "\udcff-not-utf8.jpg"]
    with FeatureWriter(path, "m", "h", {}) as writer:
        for name in names:
            writer.write(name, _features(2), (10, 10))
    with FeatureReader(path) as reader:
        listed = reader.names()
    assert isinstance(listed, NameList) and len(listed) == 4
    expected = sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))
    assert listed == expected and list(listed) == expected and listed == tuple(expected)
    assert listed != expected[:3] and listed != expected[::-1]
    assert listed[0] == expected[0] and listed[-1] == expected[-1]
    assert listed[1:3] == expected[1:3]
    assert "m.png" in listed and "m" not in listed and 3 not in listed
    assert set(listed) == set(names) and listed.index("m.png") == expected.index("m.png")
    with pytest.raises(IndexError):
        listed[4]


def test_a_merge_that_would_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import errno
    import shutil

    path = tmp_path / "f.h5"
    with FeatureWriter(path, "m", "h", {}) as writer:
        writer.write("a.jpg", _features(3), (10, 10))
    before = path.read_bytes()
    writer = FeatureWriter(path, "m", "h", {}, flush_items=1)
    writer.write("b.jpg", _features(4), (10, 10))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(OSError) as raised:
        writer.close()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_bytes() == before                      # untouched
    assert len(list((tmp_path / "f.h5.partial").glob("shard-*.h5"))) == 1   # kept
    monkeypatch.undo()
    with FeatureWriter(path, "m", "h", {}) as resumed:       # space again: merged
        assert "b.jpg" in resumed
    with FeatureReader(path) as reader:
        assert reader.names() == ["a.jpg", "b.jpg"]
