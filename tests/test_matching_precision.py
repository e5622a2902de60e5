"""The bf16 candidate search of the nearest-neighbour matchers: the same matches as fp32.

The reduced path decides every match in fp32 after a bf16 search (see
``nearest_neighbor._match_reduced``); these tests hold it to the float64 reference on data
built to stress the certificates: near-ties, duplicated structure, negative similarities,
one-column and one-row sets, chunks of one row.
"""

import numpy as np
import pytest
import torch

from sfmfeat.errors import ConfigError
from sfmfeat.matchers import create_matcher
from sfmfeat.matchers import nearest_neighbor
from tests.test_matchers import _reference

PRESETS = ["mnn", "mnn-ratio", "ratio", "nn"]


def _unit(values: np.ndarray) -> np.ndarray:
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def _near_ties(rng, n0: int, n1: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with several columns within bf16 resolution of each other (and of the best)."""
    a = rng.normal(size=(n0, dim))
    base = rng.normal(size=(n1 // 4, dim))
    b = np.concatenate([base + 0.01 * rng.normal(size=base.shape) for _ in range(4)])
    b = np.concatenate([b, rng.normal(size=(n1 - len(b), dim))])
    a[: n0 // 2] = b[rng.integers(0, n1, n0 // 2)] + 0.05 * rng.normal(size=(n0 // 2, dim))
    return _unit(a), _unit(b)


def _sift_like(rng, n0: int, n1: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative descriptors (as RootSIFT): every similarity high, ties everywhere."""
    a = rng.gamma(0.5, size=(n0, dim))
    b = np.concatenate([a[: n1 // 2] + 0.3 * rng.gamma(0.5, size=(n1 // 2, dim)),
                        rng.gamma(0.5, size=(n1 - n1 // 2, dim))])
    return _unit(np.sqrt(a)), _unit(np.sqrt(b))


def _fp32_ties(a: np.ndarray, b: np.ndarray, ratio: float | None,
               tolerance: float = 1e-6) -> tuple[set[int], int]:
    """Rows whose decision turns on squared distances closer than fp32 resolves
    (``tolerance``): their nearest two columns, their column's nearest two rows, or their
    ratio test. Also how many rows have a second column within bf16 resolution (1e-2)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    distance = (a64 ** 2).sum(1)[:, None] + (b64 ** 2).sum(1)[None] - 2 * a64 @ b64.T
    by_row = np.sort(distance, axis=1)
    by_column = np.sort(distance, axis=0)
    nearest = distance.argmin(1)
    gaps = [by_row[:, 1] - by_row[:, 0], by_column[1, nearest] - by_column[0, nearest]]
    if ratio is not None:
        gaps.append(np.abs(by_row[:, 0] - ratio ** 2 * by_row[:, 1]))
    ties = set(np.nonzero(np.min(gaps, axis=0) < tolerance)[0].tolist())
    return ties, int(np.sum(by_row[:, 1] - by_row[:, 0] < 1e-2))


def _rows_without(matches: np.ndarray, rows: set[int]) -> list[tuple[int, int]]:
    return [tuple(m) for m in matches.tolist() if m[0] not in rows]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("make", [_near_ties, _sift_like])
@pytest.mark.parametrize("chunk", [pytest.param(1 << 14, marks=pytest.mark.slow), 1 << 21])
def test_bf16_search_gives_the_reference_matches(preset, make, chunk):
    rng = np.random.default_rng(7)
    a, b = make(rng, 700, 900, 64)
    config = {"max_chunk_elements": chunk}
    low, low_scores = create_matcher(preset, {**config, "precision": "bf16"}).match(a, b)
    exact, exact_scores = create_matcher(preset, {**config, "precision": "fp32"}).match(a, b)
    matcher = create_matcher(preset)
    expected = _reference(a, b, matcher.config.mutual, matcher.config.ratio, None)
    ties, bf16_close = _fp32_ties(a, b, matcher.config.ratio)
    assert len(ties) <= 5 and bf16_close >= 50     # hard for bf16, resolvable in fp32
    assert _rows_without(low, ties) == _rows_without(expected, ties)
    assert _rows_without(exact, ties) == _rows_without(expected, ties)
    same = [m0 == m1 for m0, m1 in zip(low.tolist(), exact.tolist())]
    if len(low) == len(exact) and all(same):
        np.testing.assert_allclose(low_scores, exact_scores, atol=1e-6)


def _at_distance(rng, a: np.ndarray, dist_sq: np.ndarray) -> np.ndarray:
    """Unit vectors at the given squared distances from the unit rows of ``a``."""
    direction = rng.normal(size=a.shape)
    direction -= (direction * a).sum(1, keepdims=True) * a
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    cosine = 1 - dist_sq[:, None] / 2
    return cosine * a + np.sqrt(1 - cosine ** 2) * direction


@pytest.mark.parametrize("preset", ["mnn-ratio", "ratio"])
def test_bf16_search_decides_the_ratio_test_in_fp32(preset):
    """Per row a nearest column and four more right at the ratio test's boundary, closer to
    it than bf16 resolves: which of them is second, and on which side of the boundary the
    true second lies, is only known in fp32. Among them the bf16 search's second pick is
    often not the true second (the boundary columns' squared distances lie within 0.2 % of
    each other, a tenth of a bf16 step)."""
    rng = np.random.default_rng(11)
    rows, dim, ratio = 400, 64, 0.8
    a = _unit(rng.normal(size=(rows, dim))).astype(np.float64)
    near = 0.16 + 0.02 * rng.random(rows)
    columns = [_at_distance(rng, a, near)]
    for _ in range(4):
        columns.append(_at_distance(rng, a, near / ratio ** 2 * (1 + rng.uniform(-1.5e-3, 6e-3,
                                                                               rows))))
    b = _unit(np.concatenate(columns + [rng.normal(size=(rows, dim))]))
    a = _unit(a)
    matcher = create_matcher(preset)
    expected = _reference(a, b, matcher.config.mutual, ratio, None)
    ties, _ = _fp32_ties(a, b, ratio)
    low, _ = create_matcher(preset, {"precision": "bf16"}).match(a, b)
    exact, _ = create_matcher(preset, {"precision": "fp32"}).match(a, b)
    assert len(ties) <= 5 and 0.2 * rows < len(expected) < 0.8 * rows   # both outcomes
    assert _rows_without(low, ties) == _rows_without(expected, ties)
    assert _rows_without(exact, ties) == _rows_without(expected, ties)


@pytest.mark.parametrize("preset", PRESETS)
def test_negative_and_degenerate_similarities(preset):
    """All similarities of some rows negative (the int16 order is reversed there), a
    distance threshold, and sets of one row or one column."""
    rng = np.random.default_rng(3)
    b = _unit(rng.normal(size=(300, 16)))
    a = _unit(np.concatenate([-b[:100] + 0.01 * rng.normal(size=(100, 16)),
                              b[100:250] + 0.2 * rng.normal(size=(150, 16))]))
    a[:5] = -b.mean(0) / np.linalg.norm(b.mean(0))      # far from everything
    for a_set, b_set in [(a, b), (a[:1], b), (a, b[:1]), (a, b[:2])]:
        overrides = {"max_distance": 1.2, "precision": "bf16"}
        matches, _ = create_matcher(preset, overrides).match(a_set, b_set)
        matcher = create_matcher(preset)
        expected = _reference(a_set, b_set, matcher.config.mutual, matcher.config.ratio, 1.2)
        np.testing.assert_array_equal(matches, expected)


def test_the_error_model_bounds_the_bf16_similarities():
    rng = np.random.default_rng(5)
    for make in (_near_ties, _sift_like):
        a, b = (torch.from_numpy(x) for x in make(rng, 400, 500, 128))
        low0, low1 = a.bfloat16(), b.bfloat16()
        model = nearest_neighbor._ErrorModel.of(b, low1, (b * b).sum(1))
        row_input = model.row_input(a, low0, (a * a).sum(1))
        approx = (low0 @ low1.T).float()
        exact = a.double() @ b.double().T
        bound = row_input[:, None].double() + model.output_slack(approx).double()
        gap = (approx.double() - exact).abs()
        assert bool((gap <= bound).all())
        # and the bound is not vacuous: within a few times the largest error seen
        assert float(bound.max()) < 8 * float(gap.max())


def test_precision_and_chunk_size_are_not_hashed():
    with pytest.raises(ConfigError, match="precision"):
        create_matcher("mnn", {"precision": "fp8"})
    for preset in PRESETS:
        assert (create_matcher(preset, {"precision": "bf16"}).config_hash
                == create_matcher(preset, {"precision": "fp32"}).config_hash
                == create_matcher(preset).config_hash)
    assert (create_matcher("mnn", {"max_chunk_elements": 1 << 14}).config_hash
            == create_matcher("mnn").config_hash)          # the chunk changes no match
    # the hashes of matches.h5 written before the precision field existed
    assert create_matcher("mnn").config_hash == "294b081305e906c5"
    assert create_matcher("mnn-ratio").config_hash == "009cac604ad9790f"


def test_auto_uses_bf16_only_for_unit_norm_descriptors(monkeypatch):
    calls = []
    original = nearest_neighbor._match_reduced
    monkeypatch.setattr(nearest_neighbor, "_match_reduced",
                        lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(nearest_neighbor, "reduced_precision_dtype", lambda device: torch.bfloat16)
    rng = np.random.default_rng(0)
    unit = _unit(rng.normal(size=(600, 32)))
    create_matcher("mnn").match(unit, unit[::-1].copy())
    assert calls == [1]
    create_matcher("mnn").match(3 * unit, unit)             # not unit-norm: fp32
    create_matcher("mnn", {"precision": "fp32"}).match(unit, unit)
    create_matcher("mnn").match(unit[:10], unit)            # too small to pay off
    assert calls == [1]


def test_reduced_precision_probe_answers_for_cpu():
    assert nearest_neighbor.reduced_precision_dtype("cpu") in (torch.bfloat16, None)
