"""SIFT (the default of every pipeline): resize back-map, normalisation, the cap rule and
upright de-duplication."""

import cv2
import numpy as np
import pytest

from sfmfeat.extractors import create_extractor
from sfmfeat.extractors.sift import Sift, SiftConfig, _limit_orientations, _strongest, \
    _upright_unique
from sfmfeat.synthetic import SceneConfig, SyntheticScene


@pytest.fixture(scope="module")
def image():
    scene = SyntheticScene(SceneConfig(num_views=2, width=320, height=240, supersample=1,
                                       seed=3))
    return scene.render(0)[0]


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each row of a to its nearest row of b."""
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)


def test_keypoints_are_opencv_pixels_with_centres_at_integers(image):
    features = Sift(SiftConfig(max_keypoints=None)).extract(image)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    cv_kp = cv2.SIFT_create(contrastThreshold=0.02).detect(gray, None)
    ref = np.array([kp.pt for kp in cv_kp], np.float32)
    assert len(features) > 50
    assert _nearest(features.keypoints, ref).max() < 1e-4   # no shift at full resolution


def test_resize_back_map_to_original_pixels(image):
    """An image upsampled 2x (each pixel a 2×2 block) and resized back to the same size by
    max_edge: keypoints must come back as 2(x + 0.5) - 0.5, sizes ×2."""
    small = Sift(SiftConfig(max_keypoints=None)).extract(image)
    big_image = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    big = Sift(SiftConfig(max_keypoints=None, max_edge=image.shape[1])).extract(big_image)
    np.testing.assert_allclose(big.keypoints, 2 * (small.keypoints + 0.5) - 0.5, atol=1e-3)
    np.testing.assert_allclose(big.scales, 2 * small.scales, rtol=1e-5)
    np.testing.assert_array_equal(big.descriptors, small.descriptors)


@pytest.mark.parametrize("preset", ["sift", "rootsift", "sift-l2"])
def test_descriptors_are_unit_norm(image, preset):
    features = create_extractor(preset).extract(image)
    d = features.descriptors
    assert d.shape[1] == 128 and (d >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    if preset != "sift-l2":   # RootSIFT: the squares are an L1-normalised histogram
        np.testing.assert_allclose((d ** 2).sum(1), 1.0, atol=1e-5)
    if preset == "sift":      # same detector as sift-l2: the same histograms, renormalised
        l2 = create_extractor("sift-l2").extract(image).descriptors
        raw = l2 / l2.sum(1, keepdims=True)
        np.testing.assert_allclose(d ** 2, raw, atol=1e-4)


def test_cap_keeps_the_largest_scales_or_the_strongest(image):
    every = Sift(SiftConfig(max_keypoints=None)).extract(image)
    k = len(every) // 3
    by_scale = Sift(SiftConfig(max_keypoints=k)).extract(image)
    by_response = Sift(SiftConfig(max_keypoints=k, keep_largest_scales=False)).extract(image)
    assert len(by_scale) == len(by_response) == k
    assert by_scale.scales.min() >= np.sort(every.scales)[-k] - 1e-6
    assert by_response.scores.min() >= np.sort(every.scores)[-k] - 1e-9
    # the cap keeps detection order
    kp = [cv2.KeyPoint(float(i), 0.0, float(s), 0.0, float(r))
          for i, (s, r) in enumerate([(1, 5), (9, 1), (3, 3), (9, 2)])]
    assert [p.pt[0] for p in _strongest(kp, 2, by_size=True)] == [1.0, 3.0]
    assert [p.pt[0] for p in _strongest(kp, 2, by_size=False)] == [0.0, 2.0]
    assert len(_strongest(kp, None)) == 4


@pytest.mark.parametrize("conf", [{"max_keypoints": 10_000}, {"max_keypoints": 50},
                                  {"max_keypoints": 9000, "max_orientations": 1},
                                  {"max_octave": 0}])
def test_one_pyramid_gives_the_descriptors_of_detect_then_compute(image, conf):
    # the fast path (detectAndCompute, then the kept rows) against OpenCV's two calls
    config = SiftConfig(**conf)
    features = Sift(config).extract(image)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(contrastThreshold=0.02)
    kept = [kp for kp in sift.detect(gray, None)
            if config.max_octave is None or (kp.octave & 255) in range(config.max_octave + 1)
            or (kp.octave & 255) == 255]
    if config.max_orientations is not None:
        kept = _limit_orientations(kept, config.max_orientations)
    kept, descriptors = sift.compute(gray, _strongest(kept, config.max_keypoints, by_size=True))
    descriptors /= descriptors.sum(1, keepdims=True)
    np.testing.assert_array_equal(features.keypoints, np.array([kp.pt for kp in kept],
                                                               np.float32))
    np.testing.assert_array_equal(features.descriptors, np.sqrt(descriptors))
    assert len(features) > 40


def test_upright_merges_orientations_of_one_location(image):
    kp = [cv2.KeyPoint(10.0, 20.0, 4.0, 30.0, 0.5), cv2.KeyPoint(10.0, 20.0, 4.0, 200.0, 0.9),
          cv2.KeyPoint(11.0, 20.0, 4.0, 90.0, 0.1)]
    unique = _upright_unique(kp)
    assert len(unique) == 2 and all(p.angle == 0.0 for p in unique)
    assert {round(p.response, 3) for p in unique} == {0.9, 0.1}
    assert [p.angle for p in _limit_orientations(kp, 1)] == [30.0, 90.0]
    upright = create_extractor("sift-upright").extract(image)
    assert (upright.orientations == 0).all()
    xy_size = np.c_[upright.keypoints, upright.scales].round(3)
    assert len(np.unique(xy_size, axis=0)) == len(upright)
    oriented = create_extractor("sift").extract(image)
    assert len(upright) < len(oriented)


def test_tiny_and_flat_images_give_empty_features():
    for shape in ((1, 1, 3), (8, 8, 3), (64, 64, 3)):
        features = create_extractor("sift").extract(np.full(shape, 128, np.uint8))
        assert len(features) == 0 and features.descriptors.shape == (0, 128)
        assert features.scales is not None and features.orientations is not None


def test_large_photos_are_capped_at_3200_pixels_like_colmap(monkeypatch):
    """A 12000-px photo must not reach OpenCV whole (it took 5.8 GB and died there)."""
    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 255, (60, 1200), np.uint8), (12000, 600),
                       interpolation=cv2.INTER_NEAREST)
    seen = []
    original = Sift._forward
    monkeypatch.setattr(Sift, "_forward", lambda self, gray: seen.append(gray.shape)
                        or original(self, gray))
    features = create_extractor("sift").extract(np.dstack([photo] * 3))
    assert seen == [(160, 3200)]
    assert len(features) > 0 and features.keypoints[:, 0].max() > 3200   # original pixels
    assert SiftConfig().max_edge == 3200 and SiftConfig(max_edge=None).max_edge is None


def test_two_images_in_flight_store_what_one_at_a_time_stores(tmp_path, monkeypatch):
    """SIFT extracts two images at once from threads: same features, same order of records,
    the unreadable image rejected in its place; one at a time under one OpenCV thread and
    for extractors that do not declare it."""
    import sfmfeat.extract as extract_module
    from sfmfeat.extractors.disk import Disk
    from sfmfeat.runtime import cpu_threads
    from sfmfeat.store import FeatureReader

    images = tmp_path / "images"
    SyntheticScene(SceneConfig(num_views=5, width=320, height=240, seed=4)).write_images(images)
    (images / "view_002.png").write_bytes(b"not a png")
    sift = create_extractor("sift")
    if cv2.getNumThreads() >= 2:
        assert extract_module._images_in_flight(sift) == 2
    with cpu_threads(1):
        assert extract_module._images_in_flight(sift) == 1
    assert not Disk.concurrent_images
    calls = []
    original = extract_module._load_and_extract

    def counted(path, extractor):
        calls.append(extractor is not None)
        return original(path, extractor)

    monkeypatch.setattr(extract_module, "_load_and_extract", counted)
    monkeypatch.setattr(extract_module, "_images_in_flight", lambda extractor: 2)
    two = extract_module.extract_features(images, tmp_path / "two.h5", "sift")
    assert calls and all(calls)   # extracted in the workers
    monkeypatch.setattr(extract_module, "_images_in_flight", lambda extractor: 1)
    one = extract_module.extract_features(images, tmp_path / "one.h5", "sift")
    assert two.extracted == one.extracted == ["view_000.png", "view_001.png", "view_003.png",
                                              "view_004.png"]
    assert list(two.rejected) == list(one.rejected) == ["view_002.png"]
    with FeatureReader(tmp_path / "two.h5") as a, FeatureReader(tmp_path / "one.h5") as b:
        assert a.names() == b.names()
        for name in a.names():
            fa, fb = a.read(name), b.read(name)
            assert len(fa) > 50
            np.testing.assert_array_equal(fa.keypoints, fb.keypoints)
            np.testing.assert_array_equal(fa.descriptors, fb.descriptors)
