"""--executor ray (issue 16): identical results to the in-process run, a killed worker
retried, a killed driver resumed, bad images reported the same way, one-line errors.

One small local Ray instance (2 CPUs, 100 MB object store) serves the module; synthetic
320×240 images and 200 SIFT keypoints keep it fast."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ray_helpers import SIFT, assert_same_features, assert_same_matches, require_ray, \
    scene_images
from sfmfeat.cli import main
from sfmfeat import executors
from sfmfeat import extract as extract_module
from sfmfeat.errors import ExecutorError, ImageReadError, SfmfeatError
from sfmfeat.executors import ExecutorConfig
from sfmfeat.extract import extract_features
from sfmfeat.match import match_pairs
from sfmfeat.pairs import exhaustive
from sfmfeat.runtime import cpu_threads

pytestmark = pytest.mark.slow

RAY = ExecutorConfig(kind="ray", images_per_task=1, pairs_per_task=4)
# every image on the actors: the driver's own share while Ray starts left out
ACTORS_ONLY = ExecutorConfig(kind="ray", images_per_task=1, pairs_per_task=4, head_start=False)


@pytest.fixture(scope="module")
def local_ray():
    ray = require_ray()
    ray.init(address="local", num_cpus=2, object_store_memory=100 << 20,
             include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Images, and the in-process features and matches of them (SIFT and DISK)."""
    root = tmp_path_factory.mktemp("ray_reference")
    images = scene_images(root / "images", num_views=8)
    names = sorted(p.name for p in images.iterdir())
    pairs = exhaustive(names)
    extract_features(images, root / "sift.h5", "sift", overrides=SIFT)
    match_pairs(pairs, root / "sift.h5", root / "sift-matches.h5", "mnn-ratio")
    return images, names, pairs, root


@pytest.mark.parametrize("executor", [RAY, ACTORS_ONLY], ids=["head-start", "actors-only"])
def test_ray_run_is_array_equal_to_the_in_process_run(local_ray, reference, tmp_path,
                                                       weights_env, executor, caplog,
                                                       monkeypatch):
    images, names, pairs, root = reference
    if executor.head_start:
        # the driver asks for its second block only once the actors are up (the head start
        # lives in the driver only; the worker class itself is shipped to the actors):
        # exactly one image from the driver, seven from the actors
        next_block, close = executors._HeadStart._next_block, executors._HeadStart.close
        closed, handed = threading.Event(), []

        def close_and_tell(self):
            left = close(self)
            closed.set()
            return left

        def next_block_after_the_first_once_closed(self):
            if handed:
                closed.wait(120)
            handed.append(True)
            return next_block(self)

        monkeypatch.setattr(executors._HeadStart, "close", close_and_tell)
        monkeypatch.setattr(executors._HeadStart, "_next_block",
                            next_block_after_the_first_once_closed)
    with caplog.at_level(logging.INFO, logger="sfmfeat.executors"):
        report = extract_features(images, tmp_path / "sift.h5", "sift", overrides=SIFT,
                                  executor=executor)
    shares = [re.match(r"the driver took (\d+) of (\d+) images while Ray started",
                       r.getMessage()) for r in caplog.records]
    shares = [(int(m[1]), int(m[2])) for m in shares if m]
    if executor.head_start:    # the driver takes its first block before Ray is even asked
        assert len(shares) == 1 and 0 < shares[0][0] < shares[0][1] == len(names), shares
        assert shares[0][0] == 1, shares
    else:
        assert not shares
    assert report.extracted == names and not report.rejected
    assert assert_same_features(tmp_path / "sift.h5", root / "sift.h5") == len(names)
    matching = match_pairs(pairs, tmp_path / "sift.h5", tmp_path / "m.h5", "mnn-ratio",
                           executor=executor)
    assert matching.matched == len(pairs) and matching.num_matches
    assert assert_same_matches(tmp_path / "m.h5", root / "sift-matches.h5") == len(pairs)
    assert not (tmp_path / "m.h5.partial").exists()   # merged, shards removed
    # a learned extractor (torch on the workers) too, on two images; in process at the one
    # thread an actor runs: oneDNN's convolutions round differently at other thread counts
    # on some CPUs (2e-7 of DISK's descriptors at 2 threads on an AMX Xeon)
    disk = {"max_keypoints": 128, "max_edge": 256}
    with cpu_threads(1):
        extract_features(images, tmp_path / "disk.h5", "disk", overrides=disk,
                         image_names=names[:2])
    extract_features(images, tmp_path / "disk-ray.h5", "disk", overrides=disk,
                     image_names=names[:2], executor=executor)
    assert_same_features(tmp_path / "disk-ray.h5", tmp_path / "disk.h5")


def test_lightglue_through_ray_is_array_equal_to_the_in_process_run(
        local_ray, reference, tmp_path, lightglue_weights_env):
    """A matcher that needs whole features (keypoints, scores, image size) and its own
    weights on the workers: DISK + LightGlue on three images, Ray against in-process."""
    images, names, _, _ = reference
    extract_features(images, tmp_path / "disk.h5", "disk",
                     overrides={"max_keypoints": 128, "max_edge": 256}, image_names=names[:3])
    pairs = exhaustive(names[:3])
    with cpu_threads(1):               # an actor runs one thread: the same summation order
        match_pairs(pairs, tmp_path / "disk.h5", tmp_path / "lg.h5", "lightglue")
    report = match_pairs(pairs, tmp_path / "disk.h5", tmp_path / "lg-ray.h5", "lightglue",
                         executor=RAY)
    assert report.matched == len(pairs) and report.num_matches
    assert assert_same_matches(tmp_path / "lg-ray.h5", tmp_path / "lg.h5") == len(pairs)


def _worker_pids(title: str) -> list[int]:
    """This user's Ray actor processes of the class ``title`` (Ray sets the process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(f"ray::{title}".encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_a_worker_once_shards_appear(shard_dir: Path, title: str, killed: list[int],
                                      stop: threading.Event) -> None:
    while not stop.is_set():
        if shard_dir.is_dir() and any(shard_dir.glob("shard-*.h5")):
            for pid in _worker_pids(title)[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.005)


@pytest.mark.parametrize("stage", ["extract", "match"])
def test_a_killed_worker_is_retried_and_the_output_is_identical(local_ray, reference,
                                                                tmp_path, stage):
    images, names, pairs, root = reference
    output = tmp_path / f"{stage}.h5"
    killed: list[int] = []
    stop = threading.Event()
    title = "_ExtractionWorker" if stage == "extract" else "_MatchingWorker"
    killer = threading.Thread(target=_kill_a_worker_once_shards_appear,
                              args=(output.with_name(output.name + ".partial"), title,
                                    killed, stop))
    killer.start()
    try:
        if stage == "extract":
            report = extract_features(images, output, "sift", overrides=SIFT,
                                      executor=ACTORS_ONLY)
            assert report.extracted == names
        else:
            report = match_pairs(pairs, root / "sift.h5", output, "mnn-ratio",
                                 executor=ExecutorConfig(kind="ray", pairs_per_task=1))
            assert report.matched == len(pairs)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-run: the test did not test anything"
    if stage == "extract":
        assert_same_features(output, root / "sift.h5")
    else:
        assert_same_matches(output, root / "sift-matches.h5")


def test_a_killed_driver_resumes_on_rerun(local_ray, reference, tmp_path):
    images, names, _, root = reference
    output = tmp_path / "features.h5"
    shard_dir = output.with_name(output.name + ".partial")
    # the driver starts its own local Ray instance, in a session of its own so that the
    # cleanup below reaches whatever it leaves behind
    driver = subprocess.Popen(
        [sys.executable, "-m", "sfmfeat", "-q", "extract", str(images), "-o", str(output),
         "--conf", f"max_keypoints={SIFT['max_keypoints']}", "--executor", "ray",
         "--workers", "1"], start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(shard_dir.glob("shard-*.h5")):
            if driver.poll() is not None:
                pytest.fail(f"driver ended before it was killed: {driver.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no shard written within 120 s")
            time.sleep(0.01)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait(30)
    assert not output.exists()          # the final file is written only at the end
    report = extract_features(images, output, "sift", overrides=SIFT, executor=RAY)
    assert report.already_done, "the rerun redid everything"
    assert sorted(report.already_done + report.extracted) == names
    assert_same_features(output, root / "sift.h5")


@pytest.fixture
def images_with_a_bad_one(reference, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(reference[0], images)
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    return images


def test_a_bad_image_is_named_and_skipped_like_in_process(local_ray, images_with_a_bad_one,
                                                          tmp_path):
    images = images_with_a_bad_one
    local = extract_features(images, tmp_path / "local.h5", "sift", overrides=SIFT)
    remote = extract_features(images, tmp_path / "ray.h5", "sift", overrides=SIFT,
                              executor=RAY)
    assert list(remote.rejected) == ["broken.jpg"]
    assert remote.rejected == local.rejected
    assert remote.extracted == local.extracted
    assert_same_features(tmp_path / "ray.h5", tmp_path / "local.h5")


def test_strict_fails_on_a_bad_image_like_in_process(local_ray, images_with_a_bad_one,
                                                     tmp_path, capsys):
    images = images_with_a_bad_one
    with pytest.raises(ImageReadError) as local:
        extract_features(images, tmp_path / "local.h5", "sift", overrides=SIFT, strict=True)
    with pytest.raises(ImageReadError) as remote:
        extract_features(images, tmp_path / "ray.h5", "sift", overrides=SIFT, strict=True,
                         executor=RAY)
    assert str(remote.value) == str(local.value) and "broken.jpg" in str(remote.value)
    code = main(["-q", "extract", str(images), "-o", str(tmp_path / "cli.h5"), "--strict",
                 "--executor", "ray"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1 and "broken.jpg" in lines[0], lines


def test_a_failed_start_stops_the_drivers_share_after_the_image_in_hand(reference, tmp_path,
                                                                        monkeypatch):
    """Ray failing to start (or Ctrl-C) while the driver extracts its share: the driver
    stops after the image in hand, not at the end of its block, and keeps what it did."""
    images, names, _, _ = reference
    load, enter = extract_module._load, executors._HeadStart.__enter__
    head_starts = []

    def enter_and_keep(self):
        head_starts.append(self)
        return enter(self)

    def load_until_aborted(path):
        # the first image stays in hand until the driver's share is told to stop (or 10 s:
        # a share that is never told goes on to the next image, and the test fails)
        head_starts[0]._abort.wait(10)
        return load(path)

    @contextmanager
    def failing_start(executor):
        raise ExecutorError("cannot connect to a local Ray instance: refused in a test")
        yield

    monkeypatch.setattr(executors._HeadStart, "__enter__", enter_and_keep)
    monkeypatch.setattr(extract_module, "_load", load_until_aborted)
    monkeypatch.setattr(executors, "ray_session", failing_start)
    output = tmp_path / "f.h5"
    one_worker = ExecutorConfig(kind="ray", num_workers=1)   # blocks of 2 of the 8 images
    with pytest.raises(ExecutorError, match="refused in a test"):
        extract_features(images, output, "sift", overrides=SIFT, executor=one_worker)
    monkeypatch.setattr(extract_module, "_load", load)
    report = extract_features(images, output, "sift", overrides=SIFT)   # in process: resume
    assert report.already_done == names[:1]


_SESSION_SCRIPT = """
import json, sys
import ray
from sfmfeat.executors import ExecutorConfig, session
from sfmfeat.extract import extract_features
from sfmfeat.match import match_pairs
from sfmfeat.pairs import exhaustive
images, out, sift = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
executor = ExecutorConfig(kind="ray", images_per_task=1, pairs_per_task=4)
with session(executor):
    states = [ray.is_initialized()]
    report = extract_features(images, out + "/f.h5", "sift", overrides=sift, executor=executor)
    states.append(ray.is_initialized())
    match_pairs(exhaustive(report.valid_names), out + "/f.h5", out + "/m.h5", "mnn-ratio",
                executor=executor)
    states.append(ray.is_initialized())
states.append(ray.is_initialized())
print(json.dumps(states))
"""


def test_a_session_opens_ray_at_its_first_stage_and_closes_it_at_its_end(reference, tmp_path):
    """`reconstruct`'s session: no connection before extraction (whose head start overlaps
    the local instance's start), the same one through matching, none after."""
    images, names, pairs, root = reference
    run = subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, str(images), str(tmp_path),
                          json.dumps(SIFT)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [False, True, True, False]
    assert_same_features(tmp_path / "f.h5", root / "sift.h5")
    assert_same_matches(tmp_path / "m.h5", root / "sift-matches.h5")


def test_a_finished_store_is_not_extracted_again_and_starts_no_cluster(reference, tmp_path,
                                                                       monkeypatch):
    images, names, _, root = reference
    output = tmp_path / "f.h5"
    shutil.copy(root / "sift.h5", output)

    @contextmanager
    def no_cluster(executor):
        raise AssertionError("Ray started for a store with nothing left to extract")
        yield

    monkeypatch.setattr(executors, "ray_session", no_cluster)
    report = extract_features(images, output, "sift", overrides=SIFT, executor=RAY)
    assert report.already_done == names and not report.extracted


def test_the_workers_take_the_drivers_sfmfeat_settings(local_ray, reference, tmp_path,
                                                        monkeypatch):
    """SFMFEAT_WEIGHTS_DIR set after the Ray instance started reaches the actors: pointed at
    an empty folder, DISK fails on the workers as in process (with the value the instance
    started with, they would find the weights and succeed)."""
    images, names, _, _ = reference
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    with pytest.raises(SfmfeatError) as local:
        extract_features(images, tmp_path / "local.h5", "disk", image_names=names[:1])
    with pytest.raises(SfmfeatError) as remote:
        extract_features(images, tmp_path / "ray.h5", "disk", image_names=names[:1],
                         executor=ACTORS_ONLY)
    assert str(remote.value) == str(local.value) and "no-weights" in str(remote.value)


def test_cuda_on_a_cluster_without_gpus_is_one_line(local_ray, reference, tmp_path, capsys):
    if local_ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU")
    images = reference[0]
    code = main(["extract", str(images), "-o", str(tmp_path / "f.h5"), "--executor", "ray",
                 "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("has no GPU (2 CPUs); pass --device cpu or add "
                                          "GPU nodes"), err
    assert not (tmp_path / "f.h5").exists()


def test_an_unreachable_address_is_one_line(tmp_path, reference):
    require_ray()
    images = reference[0]
    args = ["extract", str(images), "-o", str(tmp_path / "f.h5"), "--executor", "ray"]
    with socket_on_a_free_port() as port:   # nothing accepts on it
        run = subprocess.run([sys.executable, "-m", "sfmfeat", *args, "--ray-address",
                              f"127.0.0.1:{port}"], capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"sfmfeat extract: error: cannot reach the Ray cluster at 127.0.0.1:{port}")


class socket_on_a_free_port:
    """A port nobody listens on: bound (so no one else takes it) but not listening."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
