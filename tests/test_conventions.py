"""One convention for every preset: keypoints in original pixels, the centre of the top-left
pixel at (0, 0), whatever the resize path.

A synthetic image A (a rendered view of the procedural scene) is extracted
- cropped by a known offset (32 px, a multiple of every network stride): keypoints must
  come back shifted by exactly that offset;
- upsampled 2x by pixel replication and given ``max_edge`` = A's long side (every method has
  that one key; R2D2's pyramid applies it to its levels), so that the network sees A again
  through the method's own resize backend: keypoints must come back at 2(x + 0.5) - 0.5 (an
  ``x * s`` back-map would be 0.5 px off, a wrong crop origin or axis order far more).
Describers get the same check on their own geometry: the keypoints (and scales) of A, mapped
to the 2x image, must give A's descriptors when the describer's ``max_edge`` brings the 2x
image back to A.
The statistic is the median signed displacement over mutual nearest keypoints, robust to the
detections that differ where the resize backend blurs (PIL/torch bilinear).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from conftest import require_shared
from helpers import build_weights_dir
from sfmfeat.extractors import PRESET_MODULES, create_extractor, resolve_spec
from sfmfeat.features import Features
from sfmfeat.synthetic import SceneConfig, SyntheticScene

PRESETS = sorted(PRESET_MODULES) + ["caps+d2net-ss", "deepdesc+disk"]
OFFSET = 32


@pytest.fixture(scope="module")
def image():
    scene = SyntheticScene(SceneConfig(num_views=2, width=320, height=256, supersample=1,
                                       seed=5))
    return scene.render(0)[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    require_shared("fixtures/d2net/d2_tf.pth.xz")
    return build_weights_dir(tmp_path_factory.mktemp("weights"), require_shared("weights").parent)


def _size_options(name: str) -> list[str]:
    spec = resolve_spec(name)
    for target in filter(None, (spec, spec.detector)):
        assert "max_edge" in target.config.__dataclass_fields__, target.name
    return ["max_edge"] + (["detector.max_edge"] if spec.detector else [])


def _displacement(ours: np.ndarray, reference: np.ndarray, radius: float):
    """Median signed displacement over mutual nearest neighbours within ``radius``."""
    d_ours, i_ours = cKDTree(reference).query(ours)
    _, i_ref = cKDTree(ours).query(reference)
    mutual = (i_ref[i_ours] == np.arange(len(ours))) & (d_ours <= radius)
    return np.median(ours[mutual] - reference[i_ours[mutual]], axis=0), int(mutual.sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_keypoints_come_back_in_original_pixels(name, image, weights, monkeypatch):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(weights))
    height, width = image.shape[:2]
    overrides = {option: max(height, width) for option in _size_options(name)}
    extractor = create_extractor(name, overrides, device="cpu")
    reference = extractor.extract(image).keypoints
    assert len(reference) >= 30, len(reference)

    shifted = extractor.extract(np.ascontiguousarray(image[OFFSET:, OFFSET:])).keypoints
    median, count = _displacement(shifted + OFFSET, reference, 1.0)
    # sub-pixel refinements are not exactly shift-invariant (ALIKED: up to 0.05 px measured)
    assert count >= 0.3 * len(reference) and np.abs(median).max() < 0.1, (median, count)

    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    mapped = (extractor.extract(big).keypoints + 0.5) / 2 - 0.5
    median, count = _displacement(mapped, reference, 1.5)
    assert count >= 20 and np.abs(median).max() < 0.15, (median, count)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caps", "deepdesc"])
def test_describers_read_the_keypoints_where_they_are(name, image, weights, monkeypatch):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(weights))
    height, width = image.shape[:2]
    extractor = create_extractor(name, {"max_edge": max(height, width)}, device="cpu")
    keypoints = extractor.detector.extract(image)
    reference = extractor.describer.describe(image, keypoints).descriptors
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    mapped = Features(2 * (keypoints.keypoints + 0.5) - 0.5, keypoints.scores,
                      keypoints.descriptors, 2 * keypoints.scales, keypoints.orientations)
    again = extractor.describer.describe(big, mapped)
    np.testing.assert_array_equal(again.keypoints, mapped.keypoints)
    np.testing.assert_array_equal(again.scales, mapped.scales)
    # the 2x image comes back as A exactly (area average of equal pixels), so only float
    # rounding of the keypoint map remains; a 0.5 px slip moves descriptors far more
    scale = np.abs(reference).max()
    assert np.abs(again.descriptors - reference).max() < 1e-3 * scale
