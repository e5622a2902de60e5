"""What the Ray tests share: Ray itself (a failure in CI when it is not installed, since
the test extra installs it), a synthetic image set, and array-equal store comparisons."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sfmfeat.store import FeatureReader, MatchReader
from sfmfeat.synthetic import SceneConfig, SyntheticScene

SIFT = {"max_keypoints": 200}


def require_ray():
    try:
        import ray
    except ImportError:
        message = "ray is not installed (pip install 'sfmfeat[ray]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return ray


def scene_images(folder: Path, num_views: int = 8) -> Path:
    scene = SyntheticScene(SceneConfig(num_views=num_views, width=320, height=240,
                                       arc_degrees=8 * num_views))
    scene.write_images(folder)
    return folder


def assert_same_features(path_a: Path, path_b: Path) -> int:
    with FeatureReader(path_a) as a, FeatureReader(path_b) as b:
        assert (a.method, a.config_hash) == (b.method, b.config_hash)
        assert sorted(a.names()) == sorted(b.names())
        for name in a.names():
            fa, fb = a.read(name), b.read(name)
            assert fa.image_size == fb.image_size
            for field in ("keypoints", "scores", "descriptors", "scales", "orientations"):
                va, vb = getattr(fa, field), getattr(fb, field)
                assert (va is None) == (vb is None), (name, field)
                assert va is None or np.array_equal(va, vb), (name, field)
            assert a.keypoints_digest(name) == b.keypoints_digest(name)
        return len(a.names())


def assert_same_matches(path_a: Path, path_b: Path) -> int:
    with MatchReader(path_a) as a, MatchReader(path_b) as b:
        assert (a.config_hash, a.features_config_hash) == (b.config_hash,
                                                           b.features_config_hash)
        assert sorted(a.pairs()) == sorted(b.pairs())
        for pair in a.pairs():
            (ma, sa), (mb, sb) = a.read(*pair), b.read(*pair)
            assert np.array_equal(ma, mb) and np.array_equal(sa, sb), pair
            assert a.features_digests(*pair) == b.features_digests(*pair)
        return len(a.pairs())
