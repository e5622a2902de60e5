"""The CPU MVS matching cost: the buffered, per-view NCC and its best-k aggregate give the
same numbers, bit for bit, as the direct formula (box-filtered moments, np.partition)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sfmfeat.reconstruction import mvs_cpu


def _direct_cost(ref: np.ndarray, warped: np.ndarray, radius: int) -> np.ndarray:
    """1 - NCC over (2r+1)^2 windows, 2 where > 20 % of the window is NaN (the definition)."""
    k = (2 * radius + 1, 2 * radius + 1)
    mu_r = cv2.blur(ref, k)
    std_r = np.sqrt(np.maximum(cv2.blur(ref * ref, k) - mu_r * mu_r, 0))
    nan = np.isnan(warped)
    warped = np.where(nan, 0.0, warped).astype(np.float32)
    invalid = cv2.blur(nan.astype(np.float32), k) > 0.2
    mu = cv2.blur(warped, k)
    var = cv2.blur(warped * warped, k) - mu * mu
    cov = cv2.blur(ref * warped, k) - mu_r * mu
    ncc = cov * (1.0 / np.maximum(std_r, 1e-4)) / np.sqrt(np.maximum(var, 1e-8))
    cost = 1.0 - np.clip(ncc, -1.0, 1.0)
    cost[invalid] = 2.0
    return cost


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
