"""Covisibility pairs from a reconstruction, against a brute-force count."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pycolmap
import pytest

from sfmfeat.errors import InputError
from sfmfeat.localization.covisibility import covisibility_counts, covisibility_pairs


def _model(num_frames=12, num_points=400, seed=0):
    pycolmap.set_random_seed(seed)
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=1, num_cameras_per_rig=1, num_frames_per_rig=num_frames,
        num_points3D=num_points)
    rec = pycolmap.synthesize_dataset(options)
    # make covisibility uneven: drop a different share of each image's observations
    rng = np.random.default_rng(seed)
    for image in rec.images.values():
        for idx in image.get_observation_point2D_idxs():
            if rng.random() < 0.08 * (image.image_id % 7):
                point_id = image.points2D[idx].point3D_id
                if rec.points3D[point_id].track.length() > 2:
                    rec.delete_observation(image.image_id, idx)
    return rec


def _brute_force(rec):
    seen = {im.name: {p.point3D_id for p in im.points2D if p.has_point3D()}
            for im in rec.images.values()}
    return {(a, b): len(seen[a] & seen[b]) for a, b in itertools.permutations(seen, 2)}


def test_counts_and_topk_match_brute_force(tmp_path):
    rec = _model()
    names, counts = covisibility_counts(rec)
    truth = _brute_force(rec)
    dense = counts.toarray()
    for (a, b), n in truth.items():
        assert dense[names.index(a), names.index(b)] == n
    assert not dense.diagonal().any()
    pairs = covisibility_pairs(rec, 3)
    for name in names:
        got = [b for a, b in pairs if a == name]
        expected = sorted((b for (a, b) in truth if a == name and truth[(a, b)] > 0),
                          key=lambda b: (-truth[(name, b)], b))[:3]
        assert got == expected
    # the same from the model folder on disk, and restricted to a subset
    rec.write_binary(tmp_path)
    assert covisibility_pairs(tmp_path, 3) == pairs
    subset = names[:4]
    sub = covisibility_pairs(tmp_path, 2, image_names=subset)
    assert {n for p in sub for n in p} <= set(subset) and len(sub) == 8


def test_errors_name_the_problem(tmp_path):
    rec = _model(num_frames=3, num_points=20)
    empty = rec
    for point_id in list(empty.point3D_ids()):
        empty.delete_point3D(point_id)
    with pytest.raises(InputError, match="no 3D point"):
        covisibility_pairs(empty, 5)
    with pytest.raises(InputError, match="images.bin"):
        covisibility_pairs(tmp_path, 5)
    with pytest.raises(InputError, match="num_neighbors"):
        covisibility_pairs(rec, 0)


def test_large_model_is_fast():
    pycolmap.set_random_seed(0)
    options = pycolmap.SyntheticDatasetOptions(num_rigs=1, num_cameras_per_rig=1,
                                               num_frames_per_rig=40, num_points3D=25000)
    rec = pycolmap.synthesize_dataset(options)      # 1M observations
    start = time.perf_counter()
    pairs = covisibility_pairs(rec, 10)
    seconds = time.perf_counter() - start
    assert len(pairs) == 400
    assert seconds < 10, f"covisibility of a 1M-observation model took {seconds:.1f} s"
