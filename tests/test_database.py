"""COLMAP database import: camera modes, the +0.5 pixel convention, matches."""

import numpy as np
import pycolmap
import pytest

from sfmfeat.errors import InputError
from sfmfeat.extractors.base import Features
from sfmfeat.reconstruction.database import (from_colmap_keypoints, write_database,
                                             write_matches)
from sfmfeat.store import FeatureReader, FeatureWriter, MatchReader, MatchWriter

NAMES = ["a/1.jpg", "a/2.jpg", "b/3.jpg"]


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    with FeatureWriter(tmp_path / "f.h5", "t", "h", {}) as writer:
        for name in NAMES:
            writer.write(name, Features(rng.random((20, 2)) * 50, rng.random(20),
                                        rng.random((20, 4))), (64, 48))
    with MatchWriter(tmp_path / "m.h5", "mnn", "mh", {}, "h") as writer:
        writer.write("a/2.jpg", "a/1.jpg", np.array([[0, 1], [5, 7]]), np.ones(2))
    return tmp_path


@pytest.mark.parametrize("mode, expected_cameras", [("single", 1), ("per-folder", 2),
                                                    ("per-image", 3), ("auto", 3)])
def test_camera_modes(stores, mode, expected_cameras):
    database = stores / f"{mode}.db"
    with FeatureReader(stores / "f.h5") as features:
        ids = write_database(database, stores, NAMES, features, mode)
    with pycolmap.Database.open(database) as db:
        assert db.num_cameras() == expected_cameras
        assert db.num_images() == 3
        camera = db.read_all_cameras()[0]
        assert (camera.width, camera.height) == (64, 48)
        assert abs(camera.mean_focal_length() - 1.2 * 64) < 1e-6  # no EXIF: COLMAP's rule
        assert not camera.has_prior_focal_length
    assert set(ids) == set(NAMES)


def test_keypoints_get_half_pixel_offset_and_matches_keep_order(stores):
    database = stores / "db.db"
    with FeatureReader(stores / "f.h5") as features:
        ids = write_database(database, stores, NAMES, features, "single")
        original = features.keypoints("a/2.jpg")
    with MatchReader(stores / "m.h5") as matches:
        assert write_matches(database, ids, matches, [("a/2.jpg", "a/1.jpg"),
                                                      ("a/1.jpg", "gone.jpg")]) == 1
    with pycolmap.Database.open(database) as db:
        stored = db.read_keypoints(ids["a/2.jpg"])
        np.testing.assert_allclose(stored[:, :2], original + 0.5, atol=1e-5)
        np.testing.assert_allclose(from_colmap_keypoints(stored), original, atol=1e-5)
        pair_matches = db.read_matches(ids["a/2.jpg"], ids["a/1.jpg"])
        np.testing.assert_array_equal(pair_matches, [[0, 1], [5, 7]])


def test_single_camera_with_different_sizes_is_refused(stores, tmp_path):
    rng = np.random.default_rng(1)
    with FeatureWriter(tmp_path / "g.h5", "t", "h", {}) as writer:
        writer.write("x.jpg", Features(rng.random((3, 2)), rng.random(3), rng.random((3, 4))),
                     (64, 48))
        writer.write("y.jpg", Features(rng.random((3, 2)), rng.random(3), rng.random((3, 4))),
                     (48, 64))
    with FeatureReader(tmp_path / "g.h5") as features:
        with pytest.raises(InputError, match="per-image"):
            write_database(tmp_path / "s.db", tmp_path, ["x.jpg", "y.jpg"], features, "single")
