"""The pieces of --executor ray that need no cluster (issue 16): its config, the shard
sink a worker writes through, and the one-line errors of the command line."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sfmfeat.cli import main
from sfmfeat.errors import ConfigError
from sfmfeat.executors import ExecutorConfig, blocks_of, import_ray
from sfmfeat.features import Features
from sfmfeat.store import FeatureReader, FeatureWriter


def test_executor_config_is_validated():
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        ExecutorConfig(kind="dask")
    with pytest.raises(ConfigError, match="--ray-address applies to --executor ray only"):
        ExecutorConfig(address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="pairs_per_task=0"):
        ExecutorConfig(kind="ray", pairs_per_task=0)
    assert blocks_of(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_a_small_job_is_cut_so_every_worker_gets_blocks():
    blocks = blocks_of(list(range(45)), 256, num_workers=2)        # 45 pairs, 2 workers
    assert [len(b) for b in blocks] == [6] * 7 + [3]
    assert sum(blocks, []) == list(range(45))                     # order and items kept
    assert len(blocks_of(list(range(10_000)), 256, num_workers=2)) == 40   # large: 256 each
    assert blocks_of([], 8, num_workers=4) == []


def _features(seed: int) -> Features:
    rng = np.random.default_rng(seed)
    return Features(keypoints=rng.random((5, 2), np.float32) * 100,
                    scores=rng.random(5, np.float32),
                    descriptors=rng.random((5, 8), np.float32), image_size=(100, 80))


def test_shards_of_worker_sinks_are_merged_by_the_driver_writer(tmp_path):
    path = tmp_path / "features.h5"
    with FeatureWriter(path, method="m", config_hash="h", config={}) as driver:
        for worker, names in enumerate((["a.jpg", "b.jpg"], ["c.jpg"])):
            sink = FeatureWriter.shard_sink(path, driver.info)   # no lock: the driver has it
            for offset, name in enumerate(names):
                sink.write(name, _features(10 * worker + offset), (100, 80))
            assert not list(path.with_name("features.h5.partial").glob("shard-*"))[2:]
            sink.close()   # a sink only flushes
        assert len(list(path.with_name("features.h5.partial").glob("shard-*.h5"))) == 2
        assert not path.exists()
    with FeatureReader(path) as reader:
        assert sorted(reader.names()) == ["a.jpg", "b.jpg", "c.jpg"]
        assert np.array_equal(reader.read("c.jpg").descriptors, _features(10).descriptors)
    # a rerun resumes from what workers flushed, as from its own shards
    with FeatureWriter(path, method="m", config_hash="h", config={}) as again:
        assert "b.jpg" in again


def test_missing_ray_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray fails
    with pytest.raises(ConfigError, match=r"pip install 'sfmfeat\[ray\]'"):
        import_ray()
    tmp_path.joinpath("images").mkdir()
    code = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "f.h5"),
                 "--executor", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "needs Ray, which is not installed: pip install 'sfmfeat[ray]'" in err[0]


def test_ray_options_without_ray_executor_are_refused(tmp_path, capsys):
    code = main(["extract", str(tmp_path), "-o", str(tmp_path / "f.h5"), "--ray-address",
                 "127.0.0.1:6379"])
    assert code == 2
    assert "apply to --executor ray only" in capsys.readouterr().err
