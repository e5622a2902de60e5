import numpy as np
import pytest
import torch

from sfmfeat.errors import ConfigError, InputError
from sfmfeat.matchers import create_matcher


def _reference(a, b, mutual, ratio, max_distance):
    distances = torch.cdist(torch.as_tensor(a, dtype=torch.float64),
                            torch.as_tensor(b, dtype=torch.float64))
    k = 2 if ratio is not None and len(b) > 1 else 1
    values, indices = distances.topk(k, dim=1, largest=False)
    keep = torch.ones(len(a), dtype=torch.bool)
    if k == 2:
        keep &= values[:, 0] <= ratio * values[:, 1]
    if max_distance is not None:
        keep &= values[:, 0] <= max_distance
    if mutual:
        keep &= distances.argmin(0)[indices[:, 0]] == torch.arange(len(a))
    rows = torch.nonzero(keep).flatten()
    return np.stack([rows.numpy(), indices[rows, 0].numpy()], 1)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mnn", "mnn-ratio", "ratio", "nn"])
@pytest.mark.parametrize("chunk", [37, 1 << 25])
@pytest.mark.parametrize("normalised", [True, False])
def test_matches_equal_full_distance_matrix(preset, chunk, normalised):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 32))
    b = np.concatenate([a[:200] + 0.2 * rng.normal(size=(200, 32)), rng.normal(size=(150, 32))])
    b = b * rng.uniform(0.5, 2.0, size=(len(b), 1))
    if normalised:
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
    matcher = create_matcher(preset, {"max_chunk_elements": chunk})
    matches, scores = matcher.match(a.astype(np.float32), b.astype(np.float32))
    expected = _reference(a, b, matcher.config.mutual, matcher.config.ratio, None)
    np.testing.assert_array_equal(matches, expected)
    assert matches.dtype == np.int32
    np.testing.assert_allclose(scores, (a[matches[:, 0]] * b[matches[:, 1]]).sum(1), atol=1e-4)


def test_distance_threshold_and_combination():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(100, 16))
    b = a + rng.normal(size=(100, 16)) * np.linspace(0, 1, 100)[:, None]
    matcher = create_matcher("mnn-ratio", {"max_distance": 1.5})
    matches, _ = matcher.match(a, b)
    np.testing.assert_array_equal(matches, _reference(a, b, True, 0.8, 1.5))
    assert 0 < len(matches) < 100


def test_hand_made_ratio_and_mutual_cases():
    a = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]])
    b = np.array([[0.1, 0.0], [0.2, 0.0], [10.0, 0.1], [5.0, 5.2]])
    # a0: nearest b0 (0.1) second b1 (0.2): ratio 0.5 fails 0.4, passes 0.8
    strict, _ = create_matcher("mnn-ratio", {"ratio": 0.4}).match(a, b)
    loose, _ = create_matcher("mnn-ratio").match(a, b)
    assert [0, 0] not in strict.tolist() and [0, 0] in loose.tolist()
    # b1's nearest is a0 but a0's nearest is b0: never a mutual match
    mutual, _ = create_matcher("mnn").match(a, b)
    assert mutual.tolist() == [[0, 0], [1, 2], [2, 3]]


def test_empty_and_single_sets():
    matcher = create_matcher("mnn-ratio")
    assert matcher.match(np.zeros((0, 8)), np.ones((5, 8)))[0].shape == (0, 2)
    assert matcher.match(np.ones((5, 8)), np.zeros((0, 8)))[0].shape == (0, 2)
    rows = np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 8), np.float32)
    one, _ = matcher.match(rows, np.ones((1, 8)))  # no second neighbour: ratio test skipped
    assert one.tolist() == [[1, 0]]


def test_invalid_input_errors():
    with pytest.raises(InputError, match="dimensions differ"):
        create_matcher("mnn").match(np.ones((2, 8)), np.ones((2, 4)))
    with pytest.raises(ConfigError, match="unknown matcher"):
        create_matcher("superglue")
    with pytest.raises(ConfigError, match="unknown option"):
        create_matcher("mnn", {"ratoi": 0.5})
    with pytest.raises(InputError, match="ratio"):
        create_matcher("mnn", {"ratio": 1.5})


@pytest.mark.parametrize("columns", [5, 127, 128, 1000, 8192])
@pytest.mark.parametrize("k", [1, 2])
def test_row_top_equals_topk(columns, k):
    """The grouped top-k of the fp32 matcher against torch.topk (values and best column),
    with a short last group and rows whose two best lie in one group or in two."""
    from sfmfeat.matchers.nearest_neighbor import _row_top

    score = torch.randn(300, columns, generator=torch.Generator().manual_seed(columns))
    if columns > 70:
        score[0, 3], score[0, 5] = 50.0, 49.0          # best two in the first group
        score[1, 3], score[1, columns - 1] = 50.0, 49.0  # second in the last (short) group
    values, best = _row_top(score, k)
    expected_values, expected_index = score.topk(k, dim=1)
    assert torch.equal(values, expected_values)
    assert torch.equal(best, expected_index[:, 0])
