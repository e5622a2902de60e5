"""A real two-node Ray cluster on this machine (issue 16): a head and a second node started
with `ray start` on loopback, one CPU each; `sfmfeat extract` and `match` submitted to it
with --ray-address give the in-process run's stores, array for array.

Each `ray start --block` runs in a session of its own; the teardown ends those sessions
(SIGTERM, then SIGKILL), whatever happened, and so stops exactly this cluster's processes
(`ray stop` would stop every Ray instance of the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_helpers import SIFT, assert_same_features, assert_same_matches, require_ray, \
    scene_images
from sfmfeat.extract import extract_features
from sfmfeat.match import match_pairs
from sfmfeat.pairs import exhaustive, write_pairs

pytestmark = pytest.mark.slow


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_ports(worker_ports: tuple[int, int]) -> list[str]:
    node, objects, agent, agent_grpc, runtime_env, metrics = _free_ports(6)
    return ["--node-manager-port", str(node), "--object-manager-port", str(objects),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
            "--min-worker-port", str(worker_ports[0]),
            "--max-worker-port", str(worker_ports[1])]


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:   # the children may outlive the `ray start` process
            time.sleep(1)


def _loopback_env() -> dict[str, str]:
    """The environment of every process of the test cluster: loopback only, so no token
    authentication (which would otherwise write a token under ~/.ray)."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _alive_nodes(address: str) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, env=_loopback_env())
    return int(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else 0


@pytest.fixture
def two_node_cluster(tmp_path):
    require_ray()
    # a short temp dir: Ray's socket paths must stay under the 107-byte limit
    temp_dir = Path(f"/tmp/sfmfeat-ray-{os.getpid()}")
    (gcs_port,) = _free_ports(1)
    base = 20000 + (os.getpid() % 2000) * 20   # worker port ranges of the two nodes
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--disable-usage-stats"]
    env = _loopback_env()
    log = open(tmp_path / "ray-start.log", "w")
    processes = []
    try:
        processes.append(subprocess.Popen(
            ["ray", "start", "--head", "--port", str(gcs_port), "--include-dashboard", "false",
             "--temp-dir", str(temp_dir),
             "--object-store-memory", str(100 << 20), *common,
             *_node_ports((base, base + 9))],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
        address = f"127.0.0.1:{gcs_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", gcs_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or processes[0].poll() is not None:
                    pytest.fail("the Ray head did not start: "
                                + (tmp_path / "ray-start.log").read_text()[-2000:])
                time.sleep(0.5)
        processes.append(subprocess.Popen(
            ["ray", "start", "--address", address, "--object-store-memory", str(100 << 20),
             *common, *_node_ports((base + 10, base + 19))],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
        while _alive_nodes(address) < 2:
            if time.monotonic() > deadline:
                pytest.fail("the second Ray node did not join: "
                            + (tmp_path / "ray-start.log").read_text()[-2000:])
            time.sleep(1)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)
        log.close()
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def test_a_run_submitted_to_a_two_node_cluster_equals_the_in_process_run(two_node_cluster,
                                                                         tmp_path):
    images = scene_images(tmp_path / "images", num_views=6)
    names = sorted(p.name for p in images.iterdir())
    pairs = exhaustive(names)
    write_pairs(tmp_path / "pairs.txt", pairs)
    extract_features(images, tmp_path / "local.h5", "sift", overrides=SIFT)
    match_pairs(pairs, tmp_path / "local.h5", tmp_path / "local-matches.h5", "mnn-ratio")

    cli = [sys.executable, "-m", "sfmfeat"]
    ray = ["--executor", "ray", "--ray-address", two_node_cluster]
    extract = subprocess.run(
        [*cli, "extract", str(images), "-o", str(tmp_path / "ray.h5"),
         "--conf", f"max_keypoints={SIFT['max_keypoints']}", *ray],
        capture_output=True, text=True, timeout=300, env=_loopback_env())
    assert extract.returncode == 0, extract.stderr
    # one worker per node: both nodes took part (each has one CPU)
    assert "extracting on 2 Ray worker(s)" in extract.stderr, extract.stderr
    match = subprocess.run(
        [*cli, "match", "--pairs", str(tmp_path / "pairs.txt"), "--features",
         str(tmp_path / "ray.h5"), "-o", str(tmp_path / "ray-matches.h5"), *ray],
        capture_output=True, text=True, timeout=300, env=_loopback_env())
    assert match.returncode == 0, match.stderr
    assert "matching on 2 Ray worker(s)" in match.stderr, match.stderr
    assert assert_same_features(tmp_path / "ray.h5", tmp_path / "local.h5") == len(names)
    assert assert_same_matches(tmp_path / "ray-matches.h5",
                               tmp_path / "local-matches.h5") == len(pairs)
