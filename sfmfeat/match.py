"""Match the features of image pairs into a matches.h5 store."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import config_to_dict
from .errors import InputError
from .features import Features
from .matchers import create_matcher
from .pairs import Pair, unique_pairs
from .progress import tqdm
from .store import FeatureReader, MatchWriter

if TYPE_CHECKING:
    from .executors import ExecutorConfig

logger = logging.getLogger(__name__)


@dataclass
class MatchingReport:
    output: Path
    matched: int = 0
    already_done: int = 0
    rematched: int = 0          # stored pairs whose features changed since, matched again
    num_matches: dict[Pair, int] = field(default_factory=dict)
    seconds: float = 0.0


class _FeatureCache:
    """Keeps the most recently used images' features (image size included) in memory."""

    def __init__(self, readers: list[FeatureReader], capacity: int = 64) -> None:
        self.readers = readers
        self.capacity = capacity
        self._items: OrderedDict[str, Features] = OrderedDict()

    def __call__(self, name: str) -> Features:
        if name in self._items:
            self._items.move_to_end(name)
            return self._items[name]
        for reader in self.readers:
            if name in reader:
                values = reader.read(name)
                break
        else:
            raise InputError(f"no features for image {name!r} in "
                             + ", ".join(str(r.path) for r in self.readers))
        self._items[name] = values
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return values


class _FeatureDigests:
    """name -> keypoints digest of its record in the first reader holding it (memoised)."""

    def __init__(self, readers: list[FeatureReader]) -> None:
        self.readers = readers
        self._digests: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self._digests:
            reader = next(r for r in self.readers if name in r)
            self._digests[name] = reader.keypoints_digest(name)
        return self._digests[name]


def features_identity(readers: list[FeatureReader]) -> str:
    """The config hash of the features the matches are made from (one or two files)."""
    hashes = sorted({r.config_hash for r in readers})
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("+".join(hashes).encode()).hexdigest()[:16]


def match_pairs(pairs: list[Pair], features: str | Path, output: str | Path,
                matcher: str = "mnn-ratio", overrides: dict[str, Any] | None = None,
                reference_features: str | Path | None = None, device: str | None = None,
                overwrite: bool = False, checkpoint_every: int = 64,
                executor: ExecutorConfig | None = None) -> MatchingReport:
    """Match every pair; names are looked up in ``features`` then ``reference_features``.

    Pairs already stored with the same matcher and features config, and made from the same
    feature records (``store.keypoints_digest``), are skipped; a stored pair whose features
    have changed since is matched again (``MatchingReport.rematched``). Results
    are made durable every ``checkpoint_every`` pairs (and at least every 20 s).
    ``executor``: where to match (default in this process; ``sfmfeat.executors`` for Ray).
    """
    start = time.perf_counter()
    pairs = unique_pairs(pairs)
    paths = [Path(features)] + ([Path(reference_features)] if reference_features else [])
    readers = [FeatureReader(p) for p in paths]
    report = MatchingReport(output=Path(output))
    try:
        names = set().union(*(r.names() for r in readers))
        absent = sorted({n for pair in pairs for n in pair} - names)
        if absent:
            raise InputError(f"{len(absent)} image(s) in the pairs have no features in "
                             f"{', '.join(map(str, paths))}: {', '.join(absent[:5])}"
                             + (" ..." if len(absent) > 5 else ""))
        if len({(r.method, r.config_hash) for r in readers}) > 1:
            raise InputError("query and reference features were made with different "
                             f"extractors/configs: {[(r.method, r.config_hash) for r in readers]}")
        if executor is not None and executor.kind == "ray":
            from .executors import match_on_ray

            match_on_ray(pairs, readers, output, matcher, overrides, device, overwrite,
                         executor, report)
            report.seconds = time.perf_counter() - start
            return report
        model = create_matcher(matcher, overrides, device=device,
                               features_method=readers[0].method)
        cache = _FeatureCache(readers)
        for reader in readers:   # fail before any output is written
            first = next((n for pair in pairs for n in pair if n in reader), None)
            if first is not None:
                model.check(cache(first))
        with MatchWriter(output, method=matcher, config_hash=model.config_hash,
                         config={"matcher": matcher, "config": config_to_dict(model.config)},
                         features_config_hash=features_identity(readers),
                         overwrite=overwrite, flush_items=checkpoint_every) as writer:
            digests = _FeatureDigests(readers)
            todo = pairs_to_match(pairs, writer, digests, report, paths)
            batch = max(1, model.pairs_per_batch)
            with tqdm(total=len(todo), desc=f"match {matcher}", unit="pair") as progress:
                for first in range(0, len(todo), batch):
                    chunk = todo[first:first + batch]
                    results = model.match_batch([(cache(n0), cache(n1)) for n0, n1 in chunk])
                    for (name0, name1), (matches, scores) in zip(chunk, results):
                        writer.write(name0, name1, matches, scores,
                                     features_digests=(digests(name0), digests(name1)))
                        report.num_matches[(name0, name1)] = len(matches)
                        report.matched += 1
                    progress.update(len(chunk))
    finally:
        for reader in readers:
            reader.close()
    report.seconds = time.perf_counter() - start
    return report


def pairs_to_match(pairs: list[Pair], writer: MatchWriter, digests: _FeatureDigests,
                   report: MatchingReport, paths: list[Path]) -> list[Pair]:
    """The pairs to (re-)match: new ones and stored ones made from other feature records."""
    todo = []
    for pair in pairs:
        if pair not in writer:
            todo.append(pair)
        elif writer.stored_digests(*pair) != (digests(pair[0]), digests(pair[1])):
            todo.append(pair)
            report.rematched += 1
    report.already_done = len(pairs) - len(todo)
    if report.rematched:
        logger.warning("%d stored pair(s) were matched from other features than %s "
                       "holds now; matching them again", report.rematched,
                       ", ".join(map(str, paths)))
    return todo
