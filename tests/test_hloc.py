"""hloc's HDF5 layout: read as our stores, written by ``sfmfeat export hloc``."""

import logging

import h5py
import numpy as np
import pycolmap
import pytest

from sfmfeat import hloc
from sfmfeat.cli import main
from sfmfeat.errors import StoreError
from sfmfeat.features import Features
from sfmfeat.localization.retrieval import GlobalDescriptorReader, GlobalDescriptorWriter
from sfmfeat.match import match_pairs
from sfmfeat.reconstruction.database import write_database, write_matches
from sfmfeat.store import FeatureReader, FeatureWriter, MatchReader, MatchWriter

NAMES = ["sub/a b.jpg", "c.jpg", "d.jpg"]


def _features(n, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return Features(rng.random((n, 2)) * 900, rng.random(n), rng.random((n, dim)))


@pytest.fixture
def ours(tmp_path):
    """Our features and matches stores (one pair stored reversed by the order-invariant key)."""
    features = {name: _features(30 + 7 * i, seed=i) for i, name in enumerate(NAMES)}
    with FeatureWriter(tmp_path / "f.h5", "sift", "fh", {}) as writer:
        for i, (name, record) in enumerate(features.items()):
            writer.write(name, record, (1000 + i, 700))
    pairs = {("sub/a b.jpg", "c.jpg"): np.array([[0, 3], [4, 1], [29, 36]]),
             ("d.jpg", "c.jpg"): np.array([[43, 0], [2, 2]]),
             ("sub/a b.jpg", "d.jpg"): np.zeros((0, 2), int)}
    with MatchWriter(tmp_path / "m.h5", "mnn", "mh", {}, "fh") as writer:
        for (name0, name1), pair_matches in pairs.items():
            writer.write(name0, name1, pair_matches, np.linspace(0.1, 0.9, len(pair_matches)))
    return tmp_path, features, pairs


def test_round_trip_through_hloc_layout_is_identical(ours):
    root, features, pairs = ours
    assert main(["export", "hloc", str(root / "f.h5"), "-o", str(root / "hf.h5")]) == 0
    assert main(["export", "hloc", str(root / "m.h5"), "--features", str(root / "f.h5"),
                 "-o", str(root / "hm.h5")]) == 0
    with h5py.File(root / "hf.h5") as handle:   # hloc's layout, float32 by default
        assert not handle.attrs
        group = handle["sub"]["a b.jpg"]
        assert group["keypoints"].dtype == np.float32 and group["keypoints"].shape == (30, 2)
        assert group["descriptors"].shape == (8, 30)
        np.testing.assert_array_equal(group["image_size"][()], [1000, 700])
    with h5py.File(root / "hm.h5") as handle:
        assert handle["c.jpg"]["sub-a b.jpg"]["matches0"].dtype == np.int32  # c < sub/...
        assert handle["c.jpg/d.jpg/matches0"].shape == (37,)
    with FeatureReader(root / "f.h5") as mine, FeatureReader(root / "hf.h5") as theirs:
        assert isinstance(theirs, hloc.HlocFeatureReader)
        assert theirs.method == "hloc" and theirs.config_hash.startswith("hloc-")
        assert sorted(theirs.names()) == sorted(NAMES)
        for name in NAMES:
            got, expected = theirs.read(name), mine.read(name)
            for field in ("keypoints", "descriptors", "scores"):
                np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
            assert got.image_size == expected.image_size
            assert theirs.keypoints_digest(name) == mine.keypoints_digest(name)
    with MatchReader(root / "m.h5") as mine, MatchReader(root / "hm.h5") as theirs:
        assert isinstance(theirs, hloc.HlocMatchReader)
        for name0, name1 in list(pairs) + [(b, a) for a, b in pairs]:
            got, got_scores = theirs.read(name0, name1)
            expected, expected_scores = mine.read(name0, name1)
            order = np.argsort(got[:, 0]), np.argsort(expected[:, 0])
            np.testing.assert_array_equal(got[order[0]], expected[order[1]])
            np.testing.assert_array_equal(got_scores[order[0]], expected_scores[order[1]])


def _write_hloc_by_hand(root):
    """Files in hloc's documented layout (not written with hloc's code): float16 keypoints,
    D×N descriptors, keypoint_scores, int16 matches0 with -1, one pair in the reversed order
    and one under the old '_' separator."""
    rng = np.random.default_rng(3)
    keypoints = {name: (rng.random((n, 2)) * [640, 480]).astype(np.float16)
                 for name, n in (("sub/a b.jpg", 12), ("c.jpg", 10), ("d.jpg", 9))}
    with h5py.File(root / "feats.h5", "w") as out:
        for name, kps in keypoints.items():
            group = out.create_group(name)
            group.create_dataset("keypoints", data=kps)
            group.create_dataset("descriptors", data=rng.random((16, len(kps))).astype(
                np.float16))
            group.create_dataset("keypoint_scores", data=np.ones(len(kps), np.float16))
            group.create_dataset("image_size", data=np.array([640, 480]))
    matches0 = {"c.jpg/sub-a b.jpg": np.array([3, -1, 0, 11, -1, -1, -1, -1, -1, 2], np.int16),
                "c.jpg_d.jpg": np.array([-1, 8, -1, -1, -1, -1, -1, -1, -1, 0], np.int16)}
    with h5py.File(root / "matches.h5", "w") as out:
        for key, value in matches0.items():
            group = out.create_group(key)
            group.create_dataset("matches0", data=value)
            group.create_dataset("matching_scores0", data=(value >= 0).astype(np.float16))
    return keypoints


def test_hand_written_hloc_files_give_the_expected_database(tmp_path, caplog):
    keypoints = _write_hloc_by_hand(tmp_path)
    pairs = [("sub/a b.jpg", "c.jpg"), ("d.jpg", "c.jpg")]
    caplog.set_level(logging.INFO, logger="sfmfeat.hloc")
    with FeatureReader(tmp_path / "feats.h5") as features:
        ids = write_database(tmp_path / "db.db", tmp_path, sorted(keypoints), features,
                             "single")
        assert features.read("c.jpg").descriptors.shape == (10, 16)
    assert "float16" in caplog.text and "widened" in caplog.text
    with MatchReader(tmp_path / "matches.h5") as matches:
        assert write_matches(tmp_path / "db.db", ids, matches, pairs) == 2
    with pycolmap.Database.open(tmp_path / "db.db") as db:
        for name, kps in keypoints.items():
            np.testing.assert_array_equal(db.read_keypoints(ids[name])[:, :2],
                                          kps.astype(np.float32) + 0.5)
        # c.jpg's keypoint i matched to matches0[i]; asked in the other order, columns swap
        np.testing.assert_array_equal(db.read_matches(ids["sub/a b.jpg"], ids["c.jpg"]),
                                      [[3, 0], [0, 2], [11, 3], [2, 9]])
        np.testing.assert_array_equal(db.read_matches(ids["d.jpg"], ids["c.jpg"]),
                                      [[8, 1], [0, 9]])


def test_float16_keypoints_past_1024_px_get_the_exact_half_pixel(tmp_path):
    """hloc's own import adds COLMAP's 0.5 in float16, whose step is 1 px from 1024 px on, so
    half of those keypoints land 0.5 px off in its database (seen on hloc's DISK files of
    sacre_coeur). Ours widens first: every keypoint gets exactly +0.5."""
    kps = np.array([[1024, 1025], [1500, 700.5], [2047, 1031], [3.25, 1999]], np.float16)
    assert not np.array_equal((kps + np.float16(0.5)).astype(np.float32),
                              kps.astype(np.float32) + 0.5)  # the case is one float16 breaks
    with h5py.File(tmp_path / "feats.h5", "w") as out:
        group = out.create_group("big.jpg")
        group.create_dataset("keypoints", data=kps)
        group.create_dataset("descriptors", data=np.eye(4, dtype=np.float16))
        group.create_dataset("image_size", data=np.array([2048, 2048]))
    with FeatureReader(tmp_path / "feats.h5") as features:
        ids = write_database(tmp_path / "db.db", tmp_path, ["big.jpg"], features, "single")
    with pycolmap.Database.open(tmp_path / "db.db") as db:
        np.testing.assert_array_equal(db.read_keypoints(ids["big.jpg"])[:, :2],
                                      kps.astype(np.float32) + 0.5)


def test_matching_hloc_features_resumes_and_follows_their_content(tmp_path):
    _write_hloc_by_hand(tmp_path)
    pairs = [("sub/a b.jpg", "c.jpg"), ("c.jpg", "d.jpg")]
    first = match_pairs(pairs, tmp_path / "feats.h5", tmp_path / "m.h5", "mnn", device="cpu")
    assert first.matched == 2
    assert match_pairs(pairs, tmp_path / "feats.h5", tmp_path / "m.h5", "mnn",
                       device="cpu").already_done == 2
    with h5py.File(tmp_path / "feats.h5", "a") as handle:   # hloc rewrote a record
        handle["d.jpg"]["keypoints"][0] += 1
    with pytest.raises(StoreError, match="never mixed"):
        match_pairs(pairs, tmp_path / "feats.h5", tmp_path / "m.h5", "mnn", device="cpu")


def test_square_descriptors_follow_the_format_and_n_by_d_is_refused(tmp_path):
    descriptors = np.arange(16, dtype=np.float32).reshape(4, 4)   # N == D == 4
    with h5py.File(tmp_path / "square.h5", "w") as out:
        group = out.create_group("a.jpg")
        group.create_dataset("keypoints", data=np.zeros((4, 2), np.float32))
        group.create_dataset("descriptors", data=descriptors)
        group.create_dataset("image_size", data=[8, 8])
        wrong = out.create_group("b.jpg")
        wrong.create_dataset("keypoints", data=np.zeros((5, 2), np.float32))
        wrong.create_dataset("descriptors", data=np.zeros((5, 3), np.float32))  # N×D
        wrong.create_dataset("image_size", data=[8, 8])
    with FeatureReader(tmp_path / "square.h5") as reader:
        np.testing.assert_array_equal(reader.read("a.jpg").descriptors, descriptors.T)
        with pytest.raises(StoreError, match=r"5×3 \(N×D\) but hloc's layout stores them D×N"):
            reader.read("b.jpg")


def test_bad_files_give_one_line_errors(tmp_path, capsys):
    with h5py.File(tmp_path / "other.h5", "w") as out:
        out.create_dataset("something/else", data=[1, 2])
    with pytest.raises(StoreError, match="neither an sfmfeat features store .* nor an "
                                         "hloc-layout file"):
        FeatureReader(tmp_path / "other.h5")
    assert main(["export", "hloc", str(tmp_path / "other.h5"), "-o",
                 str(tmp_path / "x.h5")]) == 2
    assert "neither an sfmfeat store" in capsys.readouterr().err
    _write_hloc_by_hand(tmp_path)
    with pytest.raises(StoreError, match="is an hloc matches file, not features"):
        FeatureReader(tmp_path / "matches.h5")
    data = (tmp_path / "feats.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:len(data) // 2])
    with pytest.raises(StoreError, match="unreadable HDF5") as err:
        FeatureReader(tmp_path / "cut.h5")
    assert "\n" not in str(err.value)
    with h5py.File(tmp_path / "matches.h5", "a") as handle:
        handle["c.jpg/sub-a b.jpg/matches0"][1] = -7
    with MatchReader(tmp_path / "matches.h5") as reader, \
            pytest.raises(StoreError, match="only -1 marks an unmatched keypoint"):
        reader.read("c.jpg", "sub/a b.jpg")


def test_foreign_file_is_never_appended_to(tmp_path):
    _write_hloc_by_hand(tmp_path)
    with pytest.raises(StoreError, match="never adds its records to a file another tool"):
        FeatureWriter(tmp_path / "feats.h5", "sift", "fh", {})
    with FeatureWriter(tmp_path / "feats.h5", "sift", "fh", {}, overwrite=True) as writer:
        writer.write("a.jpg", _features(3), (10, 10))
    with FeatureReader(tmp_path / "feats.h5") as reader:
        assert not isinstance(reader, hloc.HlocFeatureReader) and reader.names() == ["a.jpg"]


def test_query_matches_export_with_query_and_database_features(tmp_path):
    with FeatureWriter(tmp_path / "q.h5", "sift", "fh", {}) as writer:
        writer.write("q.jpg", _features(6), (10, 10))
    with FeatureWriter(tmp_path / "db.h5", "sift", "fh", {}) as writer:
        writer.write("a.jpg", _features(4, seed=1), (10, 10))
    with MatchWriter(tmp_path / "m.h5", "mnn", "mh", {}, "fh") as writer:
        writer.write("q.jpg", "a.jpg", np.array([[5, 0], [1, 3]]), np.ones(2))
    assert main(["export", "hloc", str(tmp_path / "m.h5"), "--features", str(tmp_path / "q.h5"),
                 "-o", str(tmp_path / "h.h5")]) == 2      # a.jpg's features are missing
    assert main(["export", "hloc", str(tmp_path / "m.h5"), "--features", str(tmp_path / "q.h5"),
                 "--features", str(tmp_path / "db.h5"), "-o", str(tmp_path / "h.h5")]) == 0
    with h5py.File(tmp_path / "h.h5") as handle:   # name_a < name_b: a.jpg's 4 keypoints
        np.testing.assert_array_equal(handle["a.jpg/q.jpg/matches0"][()], [5, -1, -1, 1])


def test_int16_export_is_guarded_against_overflow(tmp_path):
    with FeatureWriter(tmp_path / "f.h5", "sift", "fh", {}) as writer:
        writer.write("a.jpg", _features(5), (10, 10))
        writer.write("b.jpg", _features(40000), (10, 10))
    with MatchWriter(tmp_path / "m.h5", "mnn", "mh", {}, "fh") as writer:
        writer.write("a.jpg", "b.jpg", np.array([[0, 39999], [1, 7]]), np.ones(2))
    with MatchReader(tmp_path / "m.h5") as matches, FeatureReader(tmp_path / "f.h5") as feats:
        with pytest.raises(StoreError, match="keypoint index 39999 exceeds int16"):
            hloc.export_matches(matches, feats, tmp_path / "h16.h5", int16=True)
        assert not (tmp_path / "h16.h5").exists()
        hloc.export_matches(matches, feats, tmp_path / "h32.h5")
    with MatchReader(tmp_path / "h32.h5") as reader:
        np.testing.assert_array_equal(reader.read("a.jpg", "b.jpg")[0], [[0, 39999], [1, 7]])


def test_one_to_many_matches_are_written_in_the_representable_order(tmp_path):
    with FeatureWriter(tmp_path / "f.h5", "sift", "fh", {}) as writer:
        writer.write("a.jpg", _features(5), (10, 10))
        writer.write("b.jpg", _features(6), (10, 10))
    with MatchWriter(tmp_path / "m.h5", "nn", "mh", {}, "fh") as writer:
        writer.write("a.jpg", "b.jpg", np.array([[0, 1], [0, 2], [3, 4]]), np.ones(3))
    with MatchReader(tmp_path / "m.h5") as matches, FeatureReader(tmp_path / "f.h5") as feats:
        hloc.export_matches(matches, feats, tmp_path / "h.h5")
    with h5py.File(tmp_path / "h.h5") as handle:
        assert list(handle) == ["b.jpg"]     # stored as b -> a: each b keypoint matched once
    with MatchReader(tmp_path / "h.h5") as reader:
        got = reader.read("a.jpg", "b.jpg")[0]
        np.testing.assert_array_equal(got[np.argsort(got[:, 1])], [[0, 1], [0, 2], [3, 4]])


def test_global_descriptors_round_trip_and_retrieval_from_an_hloc_file(tmp_path):
    rng = np.random.default_rng(1)
    values = {"q/1.jpg": rng.random(32), "db.jpg": rng.random(32), "db2.jpg": rng.random(32),
              "db3.jpg": rng.random(32)}
    with GlobalDescriptorWriter(tmp_path / "g.h5", "netvlad", "gh", {}) as writer:
        for name, value in values.items():
            writer.write(name, value)
    assert main(["export", "hloc", str(tmp_path / "g.h5"), "-o", str(tmp_path / "hg.h5")]) == 0
    with h5py.File(tmp_path / "hg.h5") as handle:
        assert handle["q"]["1.jpg"]["global_descriptor"].shape == (32,)
    with GlobalDescriptorReader(tmp_path / "hg.h5") as reader:
        assert isinstance(reader, hloc.HlocGlobalDescriptorReader)
        np.testing.assert_array_equal(reader.read_many(["q/1.jpg", "db.jpg"]),
                                      np.stack([values["q/1.jpg"], values["db.jpg"]]).astype(
                                          np.float32))
    for source, output in (("g.h5", "ours.txt"), ("hg.h5", "theirs.txt")):
        assert main(["pairs", "retrieval", "--method", "stored", "--descriptors",
                     str(tmp_path / source), "--num-neighbors", "2", "-o",
                     str(tmp_path / output)]) == 0
    assert (tmp_path / "ours.txt").read_text() == (tmp_path / "theirs.txt").read_text()
    assert len((tmp_path / "ours.txt").read_text().splitlines()) >= 4


def test_extract_and_match_write_hloc_files_and_resume(tmp_path, caplog):
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    SyntheticScene(SceneConfig(num_views=3, width=320, height=240)).write_images(
        tmp_path / "images")
    features, matches = tmp_path / "feats.h5", tmp_path / "matches.h5"
    assert main(["extract", str(tmp_path / "images"), "-o", str(features), "--format",
                 "hloc", "--device", "cpu"]) == 0
    assert main(["pairs", "exhaustive", "--images", str(tmp_path / "images"), "-o",
                 str(tmp_path / "pairs.txt")]) == 0
    assert main(["match", "--pairs", str(tmp_path / "pairs.txt"), "--features", str(features),
                 "-o", str(matches), "--format", "hloc", "--int16", "--device", "cpu"]) == 0
    assert hloc.detect(features) == {"features"} and hloc.detect(matches) == {"matches"}
    with FeatureReader(features) as theirs, \
            FeatureReader(tmp_path / "feats.h5.sfmfeat.h5") as mine:
        assert isinstance(theirs, hloc.HlocFeatureReader) and theirs.names() == mine.names()
        for name in mine.names():
            np.testing.assert_array_equal(theirs.read(name).descriptors,
                                          mine.read(name).descriptors)
    with MatchReader(matches) as theirs, MatchReader(tmp_path / "matches.h5.sfmfeat.h5") as mine:
        for pair in mine.pairs():
            assert len(mine.read(*pair)[0]) > 20
            np.testing.assert_array_equal(np.sort(theirs.read(*pair)[0], axis=0),
                                          np.sort(mine.read(*pair)[0], axis=0))
    with h5py.File(matches) as handle:
        assert {handle[key]["matches0"].dtype for key in
                ("view_000.png/view_001.png", "view_001.png/view_002.png")} == {np.dtype("int16")}
    caplog.set_level(logging.INFO)
    assert main(["extract", str(tmp_path / "images"), "-o", str(features), "--format",
                 "hloc", "--device", "cpu"]) == 0
    assert "0 extracted, 3 already done" in caplog.text
    ours = tmp_path / "feats.h5.sfmfeat.h5"     # our own store is never replaced by an export
    assert main(["extract", str(tmp_path / "images"), "-o", str(ours), "--format", "hloc",
                 "--device", "cpu"]) == 2


def test_localize_from_query_files_in_hloc_layout(tmp_path, capsys):
    """`localize --query-features/--query-matches` on hloc-layout exports of exact synthetic
    correspondences gives the poses our own files give, and the true ones."""
    import copy

    import cv2

    from sfmfeat.localization.queries import write_queries
    from sfmfeat.localization.results import pose_errors, read_poses
    from test_localization import _synthetic_model, _write_stores

    model = _synthetic_model(num_images=6, num_points=300)
    queries = [1, 2]
    features, matches, pairs = _write_stores(tmp_path, model, queries)
    db_model = copy.copy(model)
    for q in queries:
        db_model.deregister_frame(db_model.images[q].frame_id)
    (tmp_path / "model").mkdir()
    db_model.write(tmp_path / "model")
    (tmp_path / "queries").mkdir()
    names = [model.images[q].name for q in queries]
    for name in names:
        cv2.imwrite(str(tmp_path / "queries" / name), np.zeros((480, 640, 3), np.uint8))
    write_queries(tmp_path / "q.txt", {model.images[q].name: model.cameras[
        model.images[q].camera_id] for q in queries})
    (tmp_path / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    assert main(["export", "hloc", str(features), "-o", str(tmp_path / "hf.h5")]) == 0
    assert main(["export", "hloc", str(matches), "--features", str(features), "-o",
                 str(tmp_path / "hm.h5"), "--int16"]) == 0
    poses = {}
    for label, (qf, qm) in {"ours": (features, matches),
                            "hloc": (tmp_path / "hf.h5", tmp_path / "hm.h5")}.items():
        assert main(["localize", str(tmp_path / "model"), str(tmp_path / "queries"),
                     str(tmp_path / label), "--query-list", str(tmp_path / "q.txt"),
                     "--db-features", str(features), "--pairs", str(tmp_path / "pairs.txt"),
                     "--query-features", str(qf), "--query-matches", str(qm),
                     "--seed", "0"]) == 0
        poses[label] = read_poses(tmp_path / label / "poses.txt")
    assert set(poses["hloc"]) == set(poses["ours"]) == set(names)
    for name in names:
        truth = model.images[queries[names.index(name)]].cam_from_world()
        assert max(pose_errors(poses["hloc"][name], truth)) < 1e-3
        assert max(pose_errors(poses["hloc"][name], poses["ours"][name])) < 1e-9
    assert main(["localize", str(tmp_path / "model"), str(tmp_path / "queries"),
                 str(tmp_path / "x"), "--query-matches", str(matches)]) == 2
    # query matches that were not made from the given query features are refused
    with FeatureWriter(tmp_path / "other.h5", "sift", "x", {}) as writer:
        for name in names:
            writer.write(name, _features(3), (640, 480))
    assert main(["localize", str(tmp_path / "model"), str(tmp_path / "queries"),
                 str(tmp_path / "x"), "--query-list", str(tmp_path / "q.txt"),
                 "--db-features", str(features), "--pairs", str(tmp_path / "pairs.txt"),
                 "--query-features", str(tmp_path / "other.h5"), "--query-matches",
                 str(tmp_path / "hm.h5")]) == 2
    assert "was not matched from the features in" in capsys.readouterr().err
