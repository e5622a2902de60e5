"""The CPU MVS matching cost: the buffered, per-view NCC and its best-k aggregate give the
same numbers, bit for bit, as the direct formula (window-mean moments, np.partition); the
window mean is the mean over the reflected window."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sfmfeat.reconstruction import mvs_cpu


def _window_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window as two 1-D passes (what the cost uses)."""
    taps = np.full(2 * radius + 1, 1.0 / (2 * radius + 1), np.float32)
    return cv2.sepFilter2D(image, cv2.CV_32F, taps, taps, borderType=cv2.BORDER_REFLECT_101)


def _direct_cost(ref: np.ndarray, warped: np.ndarray, radius: int) -> np.ndarray:
    """1 - NCC over (2r+1)^2 windows, 2 where > 20 % of the window is NaN (the definition)."""
    k = (2 * radius + 1, 2 * radius + 1)
    mu_r = _window_mean(ref, radius)
    std_r = np.sqrt(np.maximum(_window_mean(ref * ref, radius) - mu_r * mu_r, 0))
    nan = np.isnan(warped)
    warped = np.where(nan, 0.0, warped).astype(np.float32)
    invalid = cv2.blur(nan.astype(np.float32), k) > 0.2
    mu = _window_mean(warped, radius)
    var = _window_mean(warped * warped, radius) - mu * mu
    cov = _window_mean(ref * warped, radius) - mu_r * mu
    ncc = cov * (1.0 / np.maximum(std_r, 1e-4)) / np.sqrt(np.maximum(var, 1e-8))
    cost = 1.0 - np.clip(ncc, -1.0, 1.0)
    cost[invalid] = 2.0
    return cost


@pytest.mark.parametrize("radius", [2, 3, 4])
def test_window_mean_is_the_mean_of_the_reflected_window(radius):
    rng = np.random.default_rng(radius)
    image = rng.random((23, 31), dtype=np.float32)
    ncc = mvs_cpu._Ncc(image, radius, 0.01, 1)
    got = ncc._window_mean(image)
    n = 2 * radius + 1
    padded = np.pad(image.astype(np.float64), radius, mode="reflect")   # reflect = REFLECT_101
    windows = np.lib.stride_tricks.sliding_window_view(padded, (n, n))
    np.testing.assert_allclose(got, windows.mean((-1, -2)), rtol=0, atol=3e-7)
    np.testing.assert_allclose(ncc.mu, got, rtol=0, atol=0)


@pytest.mark.parametrize("num_views,best_k", [(4, 2), (4, 1), (4, 3), (4, 4), (3, 2), (5, 2)])
@pytest.mark.parametrize("radius", [2, 3, 4])
def test_aggregated_cost_equals_the_direct_formula(num_views, best_k, radius):
    rng = np.random.default_rng(radius * 10 + num_views)
    h, w = 40, 56
    ref = rng.random((h, w), dtype=np.float32)
    views = []
    for v in range(num_views):
        # correlated with the reference, some constant patches, NaN borders of varied size
        image = (0.6 * ref + 0.4 * rng.random((h, w), dtype=np.float32)).astype(np.float32)
        image[5:12, 30:40] = 0.5
        image[:, : 3 * v] = np.nan
        image[h - 2 * v:, :] = np.nan
        views.append(image)
    ncc = mvs_cpu._Ncc(ref, radius, 0.01, num_views)

    def warp(v, dst):
        dst[...] = views[v]

    got = np.empty((h, w), np.float32)
    ncc.aggregated_cost(warp, best_k, got)
    costs = np.stack([_direct_cost(ref, image, radius) for image in views])
    k = min(best_k, num_views)
    expected = costs.mean(0) if k == num_views else np.partition(costs, k - 1, axis=0)[:k].mean(0)
    assert (costs == 2.0).any() and (costs < 1.0).any()       # both regimes are exercised
    if k in (1, 2, num_views):
        np.testing.assert_array_equal(got, expected)
    else:                             # the order of summing k > 2 values may differ by an ulp
        np.testing.assert_allclose(got, expected, rtol=1e-6)
