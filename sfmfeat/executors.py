"""Extraction and matching on a Ray cluster (``--executor ray``).

The driver (the process the user started) splits the images, or the pairs, into tasks and
hands them to Ray actors, each of which builds the extractor or matcher once and keeps it.
An actor writes each task's results as one shard into the output's ``.partial/`` folder (the
store's crash-safe format, ``store.RecordWriter.shard_sink``) and returns only names and
counts, so the driver holds at most ``max_in_flight`` small results. The driver's writer
holds the store's lock and merges the shards when every task is done; a killed driver leaves
the finished tasks' shards, which the rerun picks up as the in-process run would.

Pairs are cut into blocks of ``pairs_per_task`` in the order given (retrieval pairs come
grouped by query): a worker reads each image's features once per block, not once per pair.
A job too small to give every worker four full blocks is cut into smaller ones.

A local instance (no ``--ray-address``) takes seconds to start: meanwhile the driver
extracts blocks itself, at one thread as an actor does (``_HeadStart``), and hands the rest
to the actors once they are up.

Assumptions: the image folder and the output folder are on a file system every node sees
at the same path (NFS, a cluster file system, or one machine), and sfmfeat is importable
on every node. A worker process that dies is restarted and its task retried by Ray
(``max_retries``); the shard of a task is written atomically, so a retried task leaves no
half-written record.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ExecutorError, ImageReadError, SfmfeatError
from .progress import tqdm
from .runtime import cpu_threads

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'sfmfeat[ray]' (or pip install ray)"
# the driver passes only names and counts through Ray's object store
_LOCAL_OBJECT_STORE_BYTES = 256 << 20


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"               # "local" (this process) or "ray"
    address: str | None = None        # a running cluster ("host:port", "auto"); None: start one
    num_workers: int = 0              # 0: one per CPU (one per GPU on cuda) of the cluster
    images_per_task: int = 8
    pairs_per_task: int = 256
    # one: a block queued on a busy worker cannot move to an idle one at the end of a job
    tasks_in_flight_per_worker: int = 1
    max_retries: int = 3              # restarts of a dead worker, retries of its task
    head_start: bool = True           # the driver extracts on CPU while a local instance starts

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.kind!r}; choose one of {EXECUTORS}")
        if self.kind != "ray" and self.address is not None:
            raise ConfigError("--ray-address applies to --executor ray only")
        for name in ("images_per_task", "pairs_per_task", "tasks_in_flight_per_worker"):
            if getattr(self, name) < 1:
                raise ConfigError(f"executor {name}={getattr(self, name)}: must be >= 1")
        if self.num_workers < 0 or self.max_retries < 0:
            raise ConfigError("executor num_workers and max_retries must be >= 0")


def uses_ray(executor: ExecutorConfig | None) -> bool:
    return executor is not None and executor.kind == "ray"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: "
                          f"{INSTALL_HINT}") from None
    return ray


# Set inside ``session``: the Ray connection the first stage opens outlives that stage.
_KEEP_CONNECTION: ContextVar[bool] = ContextVar("sfmfeat_keep_ray_connection", default=False)


@contextmanager
def session(executor: ExecutorConfig | None) -> Iterator[None]:
    """Keeps one Ray connection for several stages (e.g. extract then match of a
    reconstruction), opened by the first stage that needs it (so that extraction's head
    start overlaps a local instance's start-up) and closed here; nothing for the local
    executor."""
    if not uses_ray(executor):
        yield
        return
    ray = import_ray()
    connected_before = ray.is_initialized()
    token = _KEEP_CONNECTION.set(True)
    try:
        yield
    finally:
        _KEEP_CONNECTION.reset(token)
        if not connected_before and ray.is_initialized():
            _disconnect(ray, executor)


@contextmanager
def ray_session(executor: ExecutorConfig) -> Iterator[Any]:
    """``ray`` connected to the cluster at ``executor.address`` (or to a new local
    instance); an already initialised Ray (an outer session, a user's script) is reused
    and left as it is. The workers' own output stays in Ray's session logs: their errors
    reach the driver as exceptions, reported in one line."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = executor.address
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            # "local": a new instance even where `ray start` runs a cluster on this machine
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, executor.num_workers),
                     object_store_memory=_LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - Ray raises bare Exceptions (startup timeouts)
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = "" if address else (" (on a busy machine, start one with `ray start --head` "
                                   "and pass --ray-address)")
        raise ExecutorError(f"cannot connect to {where}: {_one_line(err)}{hint}") from None
    try:
        yield ray
    finally:
        if not _KEEP_CONNECTION.get():
            _disconnect(ray, executor)


def _disconnect(ray: Any, executor: ExecutorConfig) -> None:
    if not executor.address:
        _kill_local_monitor(ray)
    ray.shutdown()


def _kill_local_monitor(ray: Any) -> None:
    """Ray's shutdown stops the GCS before the autoscaler monitor, whose SIGTERM handler
    then reports to the stopped GCS until Ray's one-second grace period runs out. The
    monitor of an instance this process started has nothing to save: killed first, the
    shutdown takes 0.3 s instead of 1.3 s. Ray's node handle is not public API: where a Ray
    version lacks it, the shutdown just takes its second."""
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    kill_monitor = getattr(node, "kill_monitor", None)
    if kill_monitor is None:
        logger.debug("no Ray node handle to stop the autoscaler monitor early")
        return
    kill_monitor(check_alive=False)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error at once for a cluster address nothing listens on (Ray itself
    retries for a minute, then raises a multi-line error)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT (e.g. "
                          "127.0.0.1:6379, the address `ray start --head` prints) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ExecutorError(f"cannot reach the Ray cluster at {address} ({err.strerror or err}"
                            "): start it with `ray start --head` or fix --ray-address") \
            from None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


@dataclass(frozen=True)
class _Placement:
    device: str
    num_workers: int
    options: dict[str, Any]


def _placement(ray: Any, executor: ExecutorConfig, device: str | None) -> _Placement:
    """Where the actors go: one per GPU with cuda (asked, or by default when the cluster has
    GPUs), else one per CPU; ``executor.num_workers`` caps the count."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    wants_cuda = device is not None and device.startswith("cuda")
    if wants_cuda and gpus < 1:
        raise ExecutorError(f"--device {device}: the Ray cluster has no GPU ({cpus} CPUs); "
                            "pass --device cpu or add GPU nodes")
    if device is None:
        device = "cuda" if gpus >= 1 else "cpu"
    if device.startswith("cuda"):   # Ray gives each actor its own GPU as cuda:0
        device, slots, options = "cuda", gpus, {"num_gpus": 1, "num_cpus": 1}
    else:
        slots, options = cpus, {"num_cpus": 1}
    if slots < 1:
        raise ExecutorError(f"the Ray cluster has no free {device.upper()} to place a worker")
    count = executor.num_workers or slots
    if count > slots:
        logger.warning("%d workers asked, the cluster has room for %d", count, slots)
        count = slots
    return _Placement(device, count, options)


def _start_actors(ray: Any, cls: type, executor: ExecutorConfig, placement: _Placement,
                  *args: Any) -> list[Any]:
    # The driver's SFMFEAT_* settings (weights folder, ...) hold on the workers too. Passed
    # to the constructor rather than as a Ray runtime environment: any runtime environment
    # makes Ray start fresh worker processes instead of its idle ones (0.8 s vs 0.2 s).
    environment = {k: v for k, v in os.environ.items() if k.startswith("SFMFEAT_")}
    remote = ray.remote(cls).options(max_restarts=executor.max_retries,
                                     max_task_retries=executor.max_retries,
                                     **placement.options)
    return [remote.remote(*args, environment=environment)
            for _ in range(placement.num_workers)]


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get``: a worker's SfmfeatError re-raised as itself (one line in the CLI), any
    other failure as one ExecutorError line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, SfmfeatError):
            raise cause from None
        raise ExecutorError(f"a Ray worker failed: {_one_line(cause or err)}") from None
    except ray.exceptions.RayActorError as err:
        cause = getattr(err, "cause", None)   # set when the actor's constructor raised
        if isinstance(cause, ray.exceptions.RayTaskError):
            cause = getattr(cause, "cause", cause)
        if isinstance(cause, SfmfeatError):
            raise cause from None
        raise ExecutorError(
            f"a Ray worker died and could not be restarted ({_one_line(err)}); rerun the "
            "same command to resume: the finished tasks are kept") from None


def _dispatch(ray: Any, actors: list[Any], method: str, blocks: Sequence[list],
              args: tuple, executor: ExecutorConfig, on_result: Callable[[list, Any], None],
              desc: str, unit: str) -> None:
    """Runs every block on the actors, at most ``tasks_in_flight_per_worker`` per actor,
    and hands each result to ``on_result`` as it comes (in completion order)."""
    queue = iter(blocks)
    pending: dict[Any, tuple[int, list]] = {}

    def submit(index: int) -> None:
        block = next(queue, None)
        if block is not None:
            pending[getattr(actors[index], method).remote(block, *args)] = (index, block)

    for _ in range(executor.tasks_in_flight_per_worker):
        for index in range(len(actors)):
            submit(index)
    with tqdm(total=sum(len(b) for b in blocks), desc=desc, unit=unit) as progress:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index, block = pending.pop(ref)
            on_result(block, _get(ray, ref))
            progress.update(len(block))
            submit(index)


def _kill(ray: Any, actors: list[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as err:  # noqa: BLE001 - best effort: the actor may be gone already
            logger.debug("could not kill a Ray actor: %s", err)


def blocks_of(items: Sequence, size: int, num_workers: int = 1) -> list[list]:
    """Consecutive blocks of at most ``size`` items; smaller when there are too few items to
    give every worker four blocks: 45 pairs in one block of 256 would run on one worker, and
    the last blocks decide when a job ends (on 50 images, blocks of 8 left one worker
    extracting a whole block alone at the end)."""
    size = max(1, min(size, -(-len(items) // (4 * num_workers))))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _check_identities(ray: Any, actors: list[Any], *args: Any, expected: Any = None) -> Any:
    """The (config hash, config, ...) the workers built; refused unless all agree, and agree
    with ``expected`` (the driver's own) when given (a node with other weights or another
    sfmfeat would make other features)."""
    identities = [_get(ray, actor.identity.remote(*args)) for actor in actors]
    if expected is not None:
        identities.insert(0, expected)
    for identity in identities[1:]:
        if identity[:2] != identities[0][:2]:
            raise ExecutorError(
                f"Ray workers built different configs ({identity[2]} on {identity[3]}: "
                f"{identity[0]}; {identities[0][2]} on {identities[0][3]}: "
                f"{identities[0][0]}): install the same sfmfeat and weights on every node")
    return identities[0]


# --------------------------------------------------------------------------- extraction

class _Worker:
    """What both actors share: the driver's SFMFEAT_* settings taken before building, and a
    failure to build (weights missing on a node, an invisible folder) kept and raised by the
    first call: raised by the constructor, Ray restarts the actor and then reports only
    that it died, without the error."""

    def __init__(self, *args: Any, environment: dict[str, str] | None = None) -> None:
        if environment:   # the actor owns its process: nothing else sees the change
            os.environ.update(environment)
        self._failure: SfmfeatError | None = None
        try:
            self._build(*args)
        except SfmfeatError as err:
            self._failure = err

    def _build(self, *args: Any) -> None:
        raise NotImplementedError

    def _ready(self) -> None:
        if self._failure is not None:
            raise self._failure


class _ExtractionWorker(_Worker):
    """A Ray actor: one extractor, built once, extracting blocks of images into shards."""

    def _build(self, features: str, overrides: dict[str, Any] | None, device: str,
               image_dir: str) -> None:
        from .extractors import create_extractor

        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise ExecutorError(f"image folder {image_dir} is not visible on Ray node "
                                f"{socket.gethostname()}: the workers read the images and "
                                "write the stores on a file system all nodes share")
        self.extractor = create_extractor(features, overrides, device=device)

    def identity(self) -> tuple[str, dict[str, Any], str, str]:
        self._ready()
        extractor = self.extractor
        return (extractor.config_hash, extractor.describe_config(), extractor.spec,
                socket.gethostname())

    def run(self, names: list[str], output: str, info: Any,
            abort: threading.Event | None = None) -> tuple[list[str], dict[str, str]]:
        """``abort`` (the driver's own share only): set, the block ends after the image in
        hand, its shard holding the images done."""
        from .extract import _check_features, _load
        from .store import FeatureWriter

        self._ready()
        sink = FeatureWriter.shard_sink(output, info)
        extracted, rejected = [], {}
        for name in names:
            if abort is not None and abort.is_set():
                break
            image, error, fingerprint = _load(self.image_dir / name)
            if error is not None:
                rejected[name] = str(error)
                continue
            result = self.extractor.extract(image)
            _check_features(result, name)
            sink.write(name, result, (image.shape[1], image.shape[0]), fingerprint)
            extracted.append(name)
        sink.flush()   # one shard per task: the task's records appear whole or not at all
        return extracted, rejected


def extract_on_ray(image_dir: Path, names: list[str], features: str,
                   overrides: dict[str, Any] | None, device: str | None, strict: bool,
                   overwrite: bool, executor: ExecutorConfig, report: Any) -> None:
    """``extract_features`` on Ray actors; fills ``report`` (an ExtractionReport) as the
    in-process run does (same order of names, same rejection reasons)."""
    from .extract import _images_to_extract
    from .extractors import resolve_spec
    from .store import FeatureWriter

    resolve_spec(features, overrides)   # unknown preset, bad overrides: before any cluster
    image_root, output = str(Path(image_dir).resolve()), str(Path(report.output).resolve())
    driver_worker = _driver_worker(executor, features, overrides, device, image_root)
    done: set[str] = set()
    rejected: dict[str, str] = {}

    def on_result(block: list[str], result: tuple) -> None:
        extracted, refused = result
        if refused and strict:
            raise ImageReadError(next(iter(refused.values())))
        for name, reason in refused.items():
            logger.warning("skipping %s", reason)
        done.update(extracted)
        rejected.update(refused)

    actors: list[Any] = []
    with ExitStack() as stack:
        if driver_worker is None:
            ray = stack.enter_context(ray_session(executor))
            placement = _placement(ray, executor, device)
            actors = _start_actors(ray, _ExtractionWorker, executor, placement, features,
                                   overrides, placement.device, image_root)
            stack.callback(_kill, ray, actors)
            identity = _check_identities(ray, actors)
            num_workers = len(actors)
        else:
            identity = driver_worker.identity()
            num_workers = executor.num_workers or os.cpu_count() or 1
        config_hash, config, spec, _ = identity
        writer = stack.enter_context(FeatureWriter(
            report.output, method=features, config_hash=config_hash, config=config,
            overwrite=overwrite, spec=spec))
        todo = _images_to_extract(image_dir, names, writer, report)
        blocks = blocks_of(todo, executor.images_per_task, num_workers)
        task_args = (output, writer.info)
        head_start = None
        if driver_worker is not None and blocks:   # nothing to do: no cluster started
            head_start = stack.enter_context(_HeadStart(driver_worker, blocks, task_args))
            ray = stack.enter_context(ray_session(executor))
            placement = _placement(ray, executor, "cpu")
            actors = _start_actors(ray, _ExtractionWorker, executor, placement, features,
                                   overrides, placement.device, image_root)
            stack.callback(_kill, ray, actors)
            _check_identities(ray, actors, expected=identity)
            blocks = head_start.close()
            logger.info("the driver took %d of %d images while Ray started",
                        len(todo) - sum(len(block) for block in blocks), len(todo))
            for block, result in head_start.finished():   # a bad image with --strict: now
                on_result(block, result)
        if actors:
            logger.info("extracting on %d Ray worker(s) (%s)", len(actors), placement.device)
            _dispatch(ray, actors, "run", blocks, task_args, executor, on_result,
                      f"extract {features} (ray)", "img")
        if head_start is not None:
            for block, result in head_start.join():
                on_result(block, result)
    report.extracted.extend(name for name in todo if name in done)
    report.rejected.update((name, rejected[name]) for name in todo if name in rejected)


def _driver_worker(executor: ExecutorConfig, features: str, overrides: dict[str, Any] | None,
                   device: str | None, image_root: str) -> _ExtractionWorker | None:
    """The extractor the driver runs while a local Ray instance starts (``head_start``), or
    None: a cluster given by address is up already, and a GPU is left to the actors (the
    driver's share would hold a second model on it)."""
    if executor.address or not executor.head_start or device not in (None, "cpu"):
        return None
    worker = _ExtractionWorker(features, overrides, device, image_root)
    worker._ready()   # no weights, no image folder: the driver's error, before any cluster
    if worker.extractor.device != "cpu":
        return None
    return worker


class _HeadStart:
    """The driver extracting blocks itself, in a thread, while the local Ray instance starts
    (2-3 s of a one-off run) and its actors load. It runs one torch thread, as an actor
    does, so its features are the actors' bit for bit, and takes no new block once the
    actors are up (``close``); ``join`` waits for the block in hand and returns the results."""

    def __init__(self, worker: _ExtractionWorker, blocks: list[list[str]], args: tuple) -> None:
        self._worker, self._args = worker, args
        self._blocks = deque(blocks)
        self._lock = threading.Lock()
        self._results: list[tuple[list[str], Any]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sfmfeat-head-start")
        self._abort = threading.Event()   # the run failed or was interrupted: stop soon
        self._threads = cpu_threads(1, loaded_only=True)   # torch: loaded by the extractor

    def __enter__(self) -> _HeadStart:
        self._threads.__enter__()
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close()
        if exc_type is not None:   # Ctrl-C, a failed start: not the rest of a long block
            self._abort.set()
        self._thread.join()
        self._threads.__exit__(None, None, None)

    def _next_block(self) -> list[str] | None:
        with self._lock:
            return self._blocks.popleft() if self._blocks else None

    def _run(self) -> None:
        try:
            while (block := self._next_block()) is not None:
                result = self._worker.run(block, *self._args, abort=self._abort)
                with self._lock:
                    self._results.append((block, result))
        except BaseException as err:  # noqa: BLE001 - re-raised in the driver's thread
            self._error = err

    def close(self) -> list[list[str]]:
        """The blocks not taken yet, for the actors."""
        with self._lock:
            left = list(self._blocks)
            self._blocks.clear()
        return left

    def finished(self) -> list[tuple[list[str], Any]]:
        """The (block, result) pairs done since the last call; the driver's error, if any,
        raised in the caller's thread."""
        with self._lock:
            if self._error is not None:
                raise self._error
            done, self._results = self._results, []
        return done

    def join(self) -> list[tuple[list[str], Any]]:
        """Waits for the block in hand; the results not handed out yet."""
        self.close()
        self._thread.join()
        return self.finished()


# ----------------------------------------------------------------------------- matching

class _MatchingWorker(_Worker):
    """A Ray actor: one matcher, built once, and the feature stores kept open."""

    def _build(self, matcher: str, overrides: dict[str, Any] | None, device: str,
               features_method: str, feature_paths: list[str]) -> None:
        from .matchers import create_matcher
        from .store import FeatureReader

        for path in feature_paths:
            if not Path(path).is_file():
                raise ExecutorError(f"features file {path} is not visible on Ray node "
                                    f"{socket.gethostname()}: the workers read the stores "
                                    "on a file system all nodes share")
        self.model = create_matcher(matcher, overrides, device=device,
                                    features_method=features_method)
        self.readers = [FeatureReader(p) for p in feature_paths]

    def identity(self, first_names: list[str | None]) -> tuple[str, dict[str, Any], str, str]:
        from .config import config_to_dict

        self._ready()
        for reader, name in zip(self.readers, first_names):
            if name is not None:
                self.model.check(reader.read(name))
        return (self.model.config_hash, config_to_dict(self.model.config), "matcher",
                socket.gethostname())

    def run(self, block: list[tuple[str, str]], output: str, info: Any) -> list[int]:
        from .match import _FeatureCache, _FeatureDigests
        from .store import MatchWriter

        self._ready()
        # each image of the block is read once (a block has at most 2 images per pair)
        cache = _FeatureCache(self.readers, capacity=2 * len(block))
        digests = _FeatureDigests(self.readers)
        sink = MatchWriter.shard_sink(output, info)
        counts = []
        batch = max(1, self.model.pairs_per_batch)
        for first in range(0, len(block), batch):
            chunk = block[first:first + batch]
            results = self.model.match_batch([(cache(n0), cache(n1)) for n0, n1 in chunk])
            for (name0, name1), (matches, scores) in zip(chunk, results):
                sink.write(name0, name1, matches, scores,
                           features_digests=(digests(name0), digests(name1)))
                counts.append(len(matches))
        sink.flush()
        return counts


def match_on_ray(pairs: list[tuple[str, str]], readers: list[Any], output: str | Path,
                 matcher: str, overrides: dict[str, Any] | None, device: str | None,
                 overwrite: bool, executor: ExecutorConfig, report: Any) -> None:
    """``match_pairs`` on Ray actors; fills ``report`` (a MatchingReport)."""
    from .config import apply_overrides
    from .match import _FeatureDigests, features_identity, pairs_to_match
    from .matchers import MATCHER_PRESETS
    from .store import MatchWriter

    if matcher not in MATCHER_PRESETS:
        raise ConfigError(f"unknown matcher {matcher!r}; choose one of: "
                          + ", ".join(sorted(MATCHER_PRESETS)))
    apply_overrides(MATCHER_PRESETS[matcher][1], overrides or {})   # before any cluster
    paths = [str(Path(r.path).resolve()) for r in readers]
    first_names = [next((n for pair in pairs for n in pair if n in r), None) for r in readers]
    with ray_session(executor) as ray:
        placement = _placement(ray, executor, device)
        actors = _start_actors(ray, _MatchingWorker, executor, placement, matcher, overrides,
                               placement.device, readers[0].method, paths)
        try:
            config_hash, config, _, _ = _check_identities(ray, actors, first_names)
            logger.info("matching on %d Ray worker(s) (%s)", len(actors), placement.device)
            with MatchWriter(output, method=matcher, config_hash=config_hash,
                             config={"matcher": matcher, "config": config},
                             features_config_hash=features_identity(readers),
                             overwrite=overwrite) as writer:
                todo = pairs_to_match(pairs, writer, _FeatureDigests(readers), report,
                                      [Path(p) for p in paths])
                counts: dict[tuple[str, str], int] = {}

                def on_result(block: list[tuple[str, str]], result: list[int]) -> None:
                    counts.update(zip(block, result))

                blocks = blocks_of(todo, executor.pairs_per_task, len(actors))
                _dispatch(ray, actors, "run", blocks,
                          (str(Path(output).resolve()), writer.info), executor, on_result,
                          f"match {matcher} (ray)", "pair")
        finally:
            _kill(ray, actors)
    for pair in todo:
        report.num_matches[pair] = counts[pair]
    report.matched += len(todo)
