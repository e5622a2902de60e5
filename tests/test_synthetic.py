"""The synthetic scene: determinism, exact geometry, texture richness, ground truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sfmfeat.errors import ConfigError, InputError
from sfmfeat.synthetic import SceneConfig, SyntheticScene

SMALL = SceneConfig(width=320, height=240, num_views=6, texels_per_unit=80)


@pytest.fixture(scope="module")
def small_scene() -> SyntheticScene:
    return SyntheticScene(SMALL)


def _project(scene: SyntheticScene, view: int, points: np.ndarray):
    r, t = scene.rotation_translation(view)
    cam = points @ r.T + t
    z = cam[:, 2]
    x = scene.focal * cam[:, 0] / z + scene.config.width / 2
    y = scene.focal * cam[:, 1] / z + scene.config.height / 2
    return x, y, z


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Colours at COLMAP image coordinates (x, y) (pixel centres at +0.5)."""
    x, y = x - 0.5, y - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    h, w = image.shape[:2]
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    img = image.astype(np.float64)
    return ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x0 + 1])
            + fy * ((1 - fx) * img[y0 + 1, x0] + fx * img[y0 + 1, x0 + 1]))


def test_deterministic_for_a_seed(small_scene):
    again = SyntheticScene(SMALL)
    rgb1, depth1 = small_scene.render(2)
    rgb2, depth2 = again.render(2)
    assert np.array_equal(rgb1, rgb2)
    assert np.array_equal(depth1, depth2, equal_nan=True)
    other = SyntheticScene(SceneConfig(**{**SMALL.__dict__, "seed": 1}))
    rgb3, depth3 = other.render(2)
    assert np.array_equal(depth1, depth3, equal_nan=True)     # same geometry
    assert np.abs(rgb1.astype(int) - rgb3.astype(int)).mean() > 20  # other textures


def test_render_shapes_and_background(small_scene):
    rgb, depth = small_scene.render(0)
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
    assert depth.shape == (240, 320) and depth.dtype == np.float32
    textured = np.isfinite(depth)
    assert 0.6 < textured.mean() < 0.98                       # mostly scene, some sky
    assert np.all(depth[textured] > 0)
    # Pixels well inside the background (colours are supersampled at the edges).
    sky = cv2.erode((~textured).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert sky.any() and np.all(rgb[sky] == np.array(SMALL.background, np.uint8))
    points = small_scene.render_points(0)
    assert np.array_equal(np.isfinite(points[..., 0]), textured)


def test_points_project_to_their_pixel_and_match_depth(small_scene):
    points = small_scene.render_points(1)
    depth = small_scene.render_depth(1)
    rows, cols = np.nonzero(np.isfinite(depth))
    x, y, z = _project(small_scene, 1, points[rows, cols].astype(np.float64))
    assert np.abs(x - (cols + 0.5)).max() < 1e-3
    assert np.abs(y - (rows + 0.5)).max() < 1e-3
    assert np.abs(z - depth[rows, cols]).max() < 1e-4 * np.nanmax(depth)
    # pycolmap agrees with our projection (COLMAP pixel convention).
    image = small_scene.ground_truth_reconstruction().images[2]
    pick = np.arange(0, len(rows), 997)
    for i in pick:
        xy = image.project_point(points[rows[i], cols[i]].astype(np.float64))
        assert np.allclose(xy, [cols[i] + 0.5, rows[i] + 0.5], atol=1e-3)


def test_depth_and_colour_consistent_across_views(small_scene):
    """Reproject view 0 into view 1 with its depth: same depth, same colour where visible."""
    rgb0, depth0 = small_scene.render(0)
    rgb1, depth1 = small_scene.render(1)
    points = small_scene.render_points(0)
    rows, cols = np.nonzero(np.isfinite(depth0))
    x, y, z = _project(small_scene, 1, points[rows, cols].astype(np.float64))
    c1, r1 = np.floor(x).astype(int), np.floor(y).astype(int)
    inside = (c1 >= 1) & (c1 < 319) & (r1 >= 1) & (r1 < 239)
    d1 = depth1[r1[inside], c1[inside]]
    visible = np.abs(d1 - z[inside]) < 0.02 * z[inside]
    assert visible.mean() > 0.8                               # neighbouring views overlap
    # Depth agrees up to the depth change within one pixel.
    rel = np.abs(d1[visible] - z[inside][visible]) / z[inside][visible]
    assert np.median(rel) < 2e-3
    # Colour at the reprojected position (bilinear) agrees with the source pixel.
    warped = _bilinear(rgb1, x[inside][visible], y[inside][visible])
    source = rgb0[rows[inside][visible], cols[inside][visible]].astype(np.float64)
    err = np.abs(warped - source).mean(1)
    assert np.median(err) < 3, np.median(err)           # measured 0.8 (8-bit rounding, AA)
    # ...while a wrong depth (+10%) does not.
    x2, y2, _ = _project(small_scene, 1, (points[rows, cols].astype(np.float64)
                                           - small_scene.projection_center(0)) * 1.1
                         + small_scene.projection_center(0))
    wrong = _bilinear(rgb1, x2[inside][visible], y2[inside][visible])
    assert np.median(np.abs(wrong - source).mean(1)) > 2 * np.median(err)


def test_sift_finds_many_keypoints_and_matches():
    scene = SyntheticScene(SceneConfig(num_views=12))
    sift = cv2.SIFT_create()
    gray = [cv2.cvtColor(scene.render(i)[0], cv2.COLOR_RGB2GRAY) for i in (5, 6)]
    (kp0, d0), (kp1, d1) = [sift.detectAndCompute(g, None) for g in gray]
    assert len(kp0) > 2000 and len(kp1) > 2000
    matches = cv2.BFMatcher().knnMatch(d0, d1, k=2)
    good = [m for m, n in matches if m.distance < 0.8 * n.distance]
    p0 = np.float32([kp0[m.queryIdx].pt for m in good])
    p1 = np.float32([kp1[m.trainIdx].pt for m in good])
    _, inliers = cv2.findFundamentalMat(p0, p1, cv2.FM_RANSAC, 1.0, 0.999)
    assert inliers.sum() > 1000


def test_ground_truth_reconstruction(small_scene):
    rec = small_scene.ground_truth_reconstruction()
    assert rec.num_reg_images() == 6 and rec.num_points3D() == 0
    assert [rec.images[i + 1].name for i in range(6)] == small_scene.names
    camera = rec.cameras[1]
    assert camera.model.name == "PINHOLE" and camera.width == 320
    with_points = small_scene.ground_truth_reconstruction(num_points=300, min_track_length=3)
    assert 150 < with_points.num_points3D() <= 300
    assert with_points.compute_mean_track_length() >= 3
    assert with_points.compute_mean_reprojection_error() < 1e-6


def test_extent_and_write_images(small_scene, tmp_path):
    assert 8 < small_scene.extent() < 15
    paths = SyntheticScene(SceneConfig(width=64, height=48, num_views=2)).write_images(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["view_000.png", "view_001.png"]
    assert cv2.imread(paths[1]).shape == (48, 64, 3)


def test_bad_config_and_index(small_scene):
    with pytest.raises(ConfigError):
        SceneConfig(num_views=0)
    with pytest.raises(ConfigError):
        SceneConfig(camera_model="OPENCV_FISHEYE")
    with pytest.raises(InputError):
        small_scene.render(6)
