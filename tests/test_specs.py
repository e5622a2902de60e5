"""Reconstructible feature specs: stores record preset + overrides, the extractor is rebuilt
from a store, config hashes are stable (golden values) and old schemas are refused."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

from conftest import require_shared
from helpers import build_weights_dir, write_scene_split
from sfmfeat.errors import StoreError
from sfmfeat.extract import extract_features, extractor_from_store
from sfmfeat.extractors import create_extractor, preset_names, resolve_spec
from sfmfeat.extractors.sift import Sift
from sfmfeat.store import FeatureReader

# Golden config hashes (method name + resolved config + weights identity). A change here
# means every stored features.h5 of that preset stops resuming: make it on purpose only.
GOLDEN = {
    "sift": "4eccaf833a6876dd", "sift-l2": "1b17c5011a2fb80f", "sift-upright": "1c4278047f7280e5",
    "rootsift": "2c8679df9aeb5861", "disk": "c43ea3908b088391", "r2d2": "366a30ab375df78b",
    "aliked-n16": "09634ced424a38c9", "aliked-n32": "99070e2624341e77", "aliked-t16": "a3308fceafbf08ad",
    "aliked-n16rot": "01b0ffa92f2d2f94", "deepdesc": "fcc43c7e2968eae5", "d2net-ss": "6e64e62ab2db708a",
    "d2net-ms": "de0ca1ab9508a952", "caps": "ca54561034287a0f",
    # the identity of a registered file is its name, so the test's random ContextDesc
    # weights give the official hashes
    "contextdesc": "31ca91ef6dc1b0b3", "contextdesc+": "e34ae0b3bbdbf02f",
    "contextdesc++": "67c0da6d4f21ebd4", "contextdesc++-local": "d8a4d11962d09484",
    "contextdesc++-upright": "d27222d6de1db3d0",
}
ROUND_TRIP = [(name, {}) for name in GOLDEN] + [
    ("deepdesc+sift", {"detector.max_keypoints": "1024"}),
    ("caps+d2net-ss", {"max_edge": "256"}),
    ("sift", {"max_keypoints": "300", "upright": "true"}),
]


@pytest.fixture(scope="module")
def every_weight(tmp_path_factory):
    require_shared("fixtures/d2net/d2_tf.pth.xz")
    require_shared("fixtures/caps/caps_rand.pth.xz")
    return build_weights_dir(tmp_path_factory.mktemp("weights"), require_shared("weights").parent)


def test_golden_config_hashes(every_weight, monkeypatch):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(every_weight))
    assert set(GOLDEN) == set(preset_names())   # every preset is pinned
    found = {name: create_extractor(name, device="cpu").config_hash for name in GOLDEN}
    assert found == GOLDEN
    # the spec gives the same hash without building a network (what triangulate checks)
    assert {name: resolve_spec(name).config_hash() for name in GOLDEN} == GOLDEN
    for name, overrides in ROUND_TRIP:
        assert resolve_spec(name, overrides).config_hash() == \
            create_extractor(name, overrides, device="cpu").config_hash, name


def test_hash_ignores_the_module_path_but_not_the_name():
    class MovedSift(Sift):   # the same method, defined in another module under another name
        pass

    class OtherMethod(Sift):
        name = "sift2"

    assert MovedSift.__module__ != Sift.__module__
    assert MovedSift().config_hash == Sift().config_hash == GOLDEN["sift"]
    assert OtherMethod().config_hash != GOLDEN["sift"]


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    source = require_shared("data/sacre_coeur/mapping/02928139_3448003521.jpg")
    folder = tmp_path_factory.mktemp("one_image")
    image = cv2.imread(str(source))
    cv2.imwrite(str(folder / "a.png"), cv2.resize(image, (240, 320), interpolation=cv2.INTER_AREA))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides", ROUND_TRIP)
def test_store_rebuilds_the_extractor_and_identical_features(name, overrides, every_weight,
                                                             one_image, tmp_path, monkeypatch):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(every_weight))
    store = tmp_path / "features.h5"
    extract_features(one_image, store, name, overrides=overrides, device="cpu")
    rebuilt = extractor_from_store(store, device="cpu")
    with FeatureReader(store) as reader:
        assert reader.spec == {"preset": name, "overrides": overrides}
        stored = reader.read("a.png")
        assert rebuilt.config_hash == reader.config_hash
    again = rebuilt.extract(cv2.imread(str(one_image / "a.png"))[:, :, ::-1].copy())
    assert len(stored) > 0
    for field in ("keypoints", "scores", "descriptors", "scales", "orientations"):
        ours, theirs = getattr(again, field), getattr(stored, field)
        assert (ours is None) == (theirs is None), field
        if ours is not None:
            np.testing.assert_array_equal(ours, theirs, err_msg=field)


def test_store_of_an_older_schema_is_refused_with_how_to_rebuild(one_image, tmp_path):
    store = tmp_path / "features.h5"
    extract_features(one_image, store, "sift", overrides={"max_keypoints": "50"})
    with h5py.File(store, "r+") as handle:
        handle.attrs["schema_version"] = 1
    for action in (lambda: FeatureReader(store),
                   lambda: extract_features(one_image, store, "sift",
                                            overrides={"max_keypoints": "50"})):
        with pytest.raises(StoreError, match="schema version 1.*Rebuild it.*--overwrite"):
            action()
    extract_features(one_image, store, "sift", overrides={"max_keypoints": "50"},
                     overwrite=True)
    assert extractor_from_store(store).config.max_keypoints == 50


def test_store_without_spec_or_with_another_hash_is_refused(one_image, tmp_path):
    store = tmp_path / "features.h5"
    extract_features(one_image, store, "sift", overrides={"max_keypoints": "50"})
    with h5py.File(store, "r+") as handle:
        handle.attrs["config_hash"] = "0" * 16
    with pytest.raises(StoreError, match="re-extract it with --overwrite"):
        extractor_from_store(store)
    with h5py.File(store, "r+") as handle:
        del handle.attrs["spec"]
    with pytest.raises(StoreError, match="does not record the extractor"):
        extractor_from_store(store)


@pytest.mark.slow
def test_deepdesc_with_detector_override_localizes_with_default_flags(tmp_path, capsys,
                                                                      weights_env):
    """A model built with ``--features deepdesc --conf detector.max_keypoints=1024`` is
    localized without --features/--conf: the query extractor comes from the store's spec."""
    from pipelines import localize as localize_pipeline
    from sfmfeat import cli
    from sfmfeat.localization.queries import write_queries
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    scene = SyntheticScene(SceneConfig(num_views=8, width=480, height=360, supersample=1,
                                       camera_model="SIMPLE_RADIAL", seed=1))
    queries = (2, 5)
    database, query_dir = tmp_path / "database", tmp_path / "queries"
    write_scene_split(scene, database, query_dir, queries)
    recon = tmp_path / "recon"
    assert cli.main(["-q", "reconstruct", str(database), str(recon), "--features", "deepdesc",
                     "--conf", "detector.max_keypoints=1024", "--seed", "0"]) == 0
    write_queries(tmp_path / "queries.txt", {scene.names[v]: scene.cameras for v in queries})
    out = tmp_path / "out"
    status = localize_pipeline.main(["--model", str(recon), "--queries", str(query_dir),
                                     "--outputs", str(out), "--query-list",
                                     str(tmp_path / "queries.txt"), "--seed", "0"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    with FeatureReader(recon / "features.h5") as db, \
            FeatureReader(out / "query_features.h5") as query:
        assert query.config_hash == db.config_hash
        assert query.spec == db.spec == {"preset": "deepdesc",
                                         "overrides": {"detector.max_keypoints": "1024"}}
        assert max(len(query.keypoints(n)) for n in query.names()) <= 1024
    assert "localized" in printed.out and "localized 0 of" not in printed.out
