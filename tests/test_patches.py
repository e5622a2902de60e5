"""The batched patch sampler: geometry, orientation, borders and degenerate keypoints."""

import cv2
import numpy as np
import pytest
import torch

from sfmfeat.extractors.patches import affine_for_patch, extract_patches


def _ramp(h=40, w=50, c=1):
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.uniform(0, 255, (c, h, w)).astype(np.float32))


def test_identity_crop_is_exact():
    # radius P/2 with P odd puts every sample on a pixel centre: a plain crop
    img = _ramp(c=3)
    p = extract_patches(img, [[20, 10]], [2.5], [0.0], patch_size=5)
    assert p.shape == (1, 3, 5, 5)
    torch.testing.assert_close(p[0], img[:, 8:13, 18:23], rtol=1e-5, atol=1e-3)


def test_rotation_90_follows_opencv_angle():
    # angle 90° = keypoint pointing down the image: patch +x (cols) = image +y (rows)
    img = _ramp()
    p = extract_patches(img, [[20, 10]], [2.5], [90.0], patch_size=5)[0, 0]
    for i in range(5):
        for j in range(5):
            assert p[i, j].item() == pytest.approx(img[0, 10 + (j - 2), 20 - (i - 2)].item(),
                                                   abs=1e-3)


@pytest.mark.parametrize("angle", [0.0, 33.0, 90.0, 217.5, 359.0])
@pytest.mark.parametrize("radius", [6.0, 15.0])
def test_oriented_blob_comes_out_upright_and_centred(angle, radius):
    # a big Gaussian blob at the keypoint, a small one at distance r/2 along the keypoint
    # orientation and a medium one at r/2 along the orientation + 90°: in the patch the big
    # one is centred, the small one on the +x axis and the medium one on the +y axis
    h, w, size = 120, 140, 32
    cx, cy = 70.3, 58.6
    a = np.deg2rad(angle)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    def blob(x0, y0, s):
        return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))

    def patch_of(img):
        return extract_patches(torch.from_numpy(img[None].astype(np.float32)), [[cx, cy]],
                               [radius], [angle], patch_size=size)[0, 0].numpy()

    def centroid(p):
        ii, jj = np.mgrid[0:size, 0:size]
        return (p * ii).sum() / p.sum(), (p * jj).sum() / p.sum()

    d = radius / 2
    half = (size - 1) / 2
    quarter = 0.75 * size - 0.5        # u or v = 0.5
    centre = patch_of(blob(cx, cy, radius / 6))
    along = patch_of(blob(cx + d * np.cos(a), cy + d * np.sin(a), radius / 12))
    across = patch_of(blob(cx - d * np.sin(a), cy + d * np.cos(a), radius / 12))
    assert np.allclose(centroid(centre), (half, half), atol=0.1)
    assert np.allclose(centroid(along), (half, quarter), atol=0.1)     # on the +x axis
    assert np.allclose(centroid(across), (quarter, half), atol=0.1)    # on the +y axis
    assert centre.max() > 0.7 and along.max() > 0.3 and across.max() > 0.3


def test_matches_cv2_warp_affine_inside_image():
    img = _ramp(h=80, w=90)
    centre, radius, angle = (45.2, 39.7), 11.0, 71.0
    p = extract_patches(img, [centre], [radius], [angle], patch_size=16)[0, 0].numpy()
    ref = cv2.warpAffine(img[0].numpy(), np.array(affine_for_patch(centre, radius, angle, 16)),
                         (16, 16), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    # cv2 quantises sub-pixel positions to 1/32 px
    np.testing.assert_allclose(p, ref, atol=255 / 32 * 2)
    assert np.abs(p - ref).mean() < 3


def test_zero_keypoints():
    p = extract_patches(_ramp(c=2), np.zeros((0, 2)), np.zeros(0), np.zeros(0), patch_size=8)
    assert p.shape == (0, 2, 8, 8)


def test_border_and_far_keypoints_replicate_border():
    img = _ramp()
    # centre on the top-left pixel: rows/cols outside are copies of row/col 0
    p = extract_patches(img, [[0, 0]], [2.5], [0.0], patch_size=5)[0, 0]
    rows = np.clip(np.arange(5) - 2, 0, None)
    torch.testing.assert_close(p, img[0][rows][:, rows], rtol=1e-5, atol=1e-3)
    # far outside (any distance): every sample is the nearest corner pixel
    far = extract_patches(img, [[-1e7, 1e9], [3e38, -3e38]], [4.0, 4.0], [10.0, 10.0],
                          patch_size=6)
    assert torch.isfinite(far).all()
    assert torch.all(far[0] == img[0, -1, 0]) and torch.all(far[1] == img[0, 0, -1])


def test_zero_and_huge_radius():
    img = _ramp()
    p = extract_patches(img, [[10.5, 20.0], [25, 20]], [0.0, 1e12], [0.0, 45.0], patch_size=7)
    expected = (img[0, 20, 10] + img[0, 20, 11]) / 2
    torch.testing.assert_close(p[0, 0], torch.full((7, 7), expected.item()), rtol=0, atol=1e-3)
    assert torch.isfinite(p[1]).all()
    assert p[1].min() >= img.min() and p[1].max() <= img.max()


def test_chunking_does_not_change_the_result():
    img = _ramp(c=2)
    rng = np.random.default_rng(1)
    n = 11
    centers = rng.uniform(-5, 55, (n, 2))
    radii = rng.uniform(0, 20, n)
    angles = rng.uniform(0, 360, n)
    a = extract_patches(img, centers, radii, angles, patch_size=9, chunk_size=3)
    b = extract_patches(img, centers, radii, angles, patch_size=9)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_writing_into_rows_of_out_equals_a_fresh_result():
    img = _ramp(c=2)
    rng = np.random.default_rng(2)
    centers = rng.uniform(0, 50, (5, 2))
    radii = rng.uniform(1, 10, 5)
    angles = rng.uniform(0, 360, 5)
    fresh = extract_patches(img, centers, radii, angles, patch_size=6)
    out = torch.full((8, 2, 6, 6), -1.0)
    rows = [6, 0, 3, 1, 4]
    got = extract_patches(img, centers, radii, angles, patch_size=6, out=out, rows=rows,
                          chunk_size=2)
    assert got is out
    torch.testing.assert_close(out[rows], fresh, rtol=0, atol=0)
    untouched = [2, 5, 7]
    assert (out[untouched] == -1).all()
    with pytest.raises(ValueError):
        extract_patches(img, centers, radii, angles, patch_size=6, out=torch.empty(5, 1, 6, 6))
    with pytest.raises(ValueError):
        extract_patches(img, centers, radii, angles, patch_size=6, out=out, rows=[0, 1])


@pytest.mark.parametrize("bad", [
    dict(centers=[[np.nan, 1.0]], radii=[1.0]),
    dict(centers=[[1.0, 1.0]], radii=[-1.0]),
    dict(centers=[[1.0, 1.0]], radii=[np.inf]),
    dict(centers=[[1.0, 1.0], [2, 2]], radii=[1.0]),
])
def test_invalid_geometry_raises(bad):
    with pytest.raises(ValueError):
        extract_patches(_ramp(), bad["centers"], bad["radii"], None, patch_size=4)


def test_batched_affine_equals_the_documented_geometry():
    # extract_patches composes one affine per keypoint; patch_grid spells the formula out
    from sfmfeat.extractors.patches import patch_grid

    img = _ramp(h=60, w=70)
    rng = np.random.default_rng(3)
    centers = torch.from_numpy(rng.uniform(16, 42, (7, 2)))     # every sample inside
    radii = torch.from_numpy(rng.uniform(0.5, 10, 7))
    angles = torch.from_numpy(rng.uniform(0, 360, 7))
    got = extract_patches(img, centers, radii, angles, patch_size=10)
    xy = patch_grid(centers, radii, angles, 10).numpy()              # N×P×P×2 image pixels
    # bilinear by hand at the documented positions (all inside the image here)
    x0, y0 = np.floor(xy[..., 0]).astype(int), np.floor(xy[..., 1]).astype(int)
    fx, fy = xy[..., 0] - x0, xy[..., 1] - y0
    im = img[0].numpy().astype(np.float64)
    ref = ((1 - fx) * (1 - fy) * im[y0, x0] + fx * (1 - fy) * im[y0, x0 + 1]
           + (1 - fx) * fy * im[y0 + 1, x0] + fx * fy * im[y0 + 1, x0 + 1])
    np.testing.assert_allclose(got[:, 0].numpy(), ref, atol=2e-3)
