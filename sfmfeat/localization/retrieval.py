"""Image retrieval: global descriptors, their store, and nearest-neighbour pairs.

Global descriptors live in an HDF5 file of kind ``global_descriptors`` written through the
store's crash-safe sharded writer (same schema version, config hash and resumption rules
as features.h5; the packed layout of ``sfmfeat.store``): field ``global_descriptor``, one
row of D float32 per image.

Retrieval (:func:`retrieval_topk`, :func:`retrieval_pairs`) never builds the full
query × database similarity matrix: queries are taken in blocks, the database is streamed
in chunks, and each chunk's top-k is merged into a running top-k. Memory is bounded by
``memory_mb`` whatever the number of database images, and the database may be any
sliceable source (a NumPy array, a memory map, an h5py dataset or
:class:`StoredDescriptors`, which reads a chunk of images from the store on demand).

Methods that make global descriptors: NetVLAD with its official weights
(``sfmfeat.localization.netvlad``) and VLAD over the extractor's own local descriptors
with a k-means codebook learned on the database images (:class:`VladConfig`), which needs
no downloaded weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import h5py
import numpy as np

from ..atomic import atomic_path
from ..config import config_hash, config_to_dict
from ..errors import ConfigError, ImageReadError, InputError, StoreError
from ..pairs import Pair, unique_pairs
from ..progress import tqdm
from ..store import (SCHEMA_VERSION, FeatureReader, ImageRecordReader, RecordWriter, StoreInfo,
                     open_h5)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

KIND = "global_descriptors"
DATASET = "global_descriptor"


# ------------------------------------------------------------------------------ store

class GlobalDescriptorWriter(RecordWriter):
    """Writes one global descriptor per image; ``name in writer`` tells what is done."""

    def __init__(self, path: str | Path, method: str, config_hash: str,
                 config: dict[str, Any], overwrite: bool = False, **kwargs: Any) -> None:
        super().__init__(path, StoreInfo(KIND, method, config_hash, config),
                         overwrite=overwrite, **kwargs)

    def __contains__(self, name: str) -> bool:
        return (name,) in self.done

    def write(self, name: str, descriptor: np.ndarray) -> None:
        descriptor = np.asarray(descriptor, dtype=np.float32).reshape(1, -1)
        if not np.isfinite(descriptor).all():
            raise StoreError(f"{self.path}: non-finite global descriptor for {name!r}")
        self.add((name,), {DATASET: descriptor}, {})


class GlobalDescriptorReader(ImageRecordReader):
    """Read access to a finished global-descriptor file."""

    kind = KIND
    missing_hint = "run `sfmfeat retrieval` first"

    def _record(self, name: str) -> Any:
        record = self._index.find((name,))
        if record is None:
            raise StoreError(f"{self.path} has no global descriptor for image {name!r}")
        return record

    def read(self, name: str) -> np.ndarray:
        return self._index.read(self._record(name), DATASET, repr(name)).reshape(-1)

    def read_many(self, names: Sequence[str]) -> np.ndarray:
        """len(names)×D float32, read by runs of adjacent records."""
        if not len(names):
            return np.zeros((0, self.dim), np.float32)
        rows = self._index.read_rows([self._record(name) for name in names], DATASET)
        if rows.shape[1] != self.dim:
            raise StoreError(f"{self.path}: descriptors of {rows.shape[1]} dimensions, "
                             f"the others {self.dim}")
        return rows.astype(np.float32, copy=False)

    @property
    def dim(self) -> int:
        if getattr(self, "_dim", None) is None:
            for key in self._index.keys():
                self._dim = len(self.read(key[0]))
                break
            else:
                raise StoreError(f"{self.path} holds no descriptor")
        return self._dim

    def source(self, names: Sequence[str]) -> "StoredDescriptors":
        """A lazy, sliceable view of the descriptors of ``names`` (read chunk by chunk)."""
        known = set(self.names())          # one listing instead of a lookup per name
        absent = [n for n in names if n not in known]
        if absent:
            raise InputError(f"{len(absent)} image(s) have no global descriptor in "
                             f"{self.path}: {', '.join(absent[:5])}"
                             + (" ..." if len(absent) > 5 else ""))
        return StoredDescriptors(self, list(names))



class DescriptorSource(Protocol):
    """Anything with ``shape == (N, D)`` that returns an array for ``source[a:b]``."""

    shape: tuple[int, ...]

    def __getitem__(self, index: slice) -> np.ndarray: ...


class StoredDescriptors:
    """The descriptors of ``names`` in a store, read from disk only when sliced."""

    def __init__(self, reader: GlobalDescriptorReader, names: list[str]) -> None:
        self.reader = reader
        self.names = names
        self.shape = (len(names), reader.dim if names else 0)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("StoredDescriptors supports slices only")
        return self.reader.read_many(self.names[index])


# -------------------------------------------------------------------------- retrieval

@dataclass(frozen=True)
class RetrievalResult:
    indices: np.ndarray      # Q×k int64 database indices, best first; -1 = no neighbour
    scores: np.ndarray       # Q×k float32 similarities (-inf where indices == -1)


def _blocks(total: int, size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _merge_topk(best_s: torch.Tensor, best_i: torch.Tensor, new_s: torch.Tensor,
                new_i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    scores = torch.cat([best_s, new_s], dim=1)
    indices = torch.cat([best_i, new_i], dim=1)
    if scores.shape[1] > k:
        scores, keep = torch.topk(scores, k, dim=1, sorted=False)
        indices = torch.gather(indices, 1, keep)
    return scores, indices


def retrieval_topk(queries: DescriptorSource, database: DescriptorSource, k: int,
                   exclude: np.ndarray | None = None, min_score: float | None = None,
                   memory_mb: float = 512.0, progress: bool = False) -> RetrievalResult:
    """The ``k`` most similar database rows (inner product) of every query row.

    exclude: optional Q int array; ``exclude[q]`` is a database index never returned for
        query ``q`` (itself, in self-retrieval), -1 for none.
    min_score: neighbours scoring below it are dropped (index -1).
    memory_mb: bound on the working arrays (query block, database chunk, similarities).
    Equal scores are listed by increasing database index.
    """
    num_q, dim = int(queries.shape[0]), int(queries.shape[1]) if len(queries.shape) > 1 else 0
    num_db = int(database.shape[0])
    if num_q and num_db and int(database.shape[1]) != dim:
        raise InputError(f"query descriptors have dimension {dim}, database descriptors "
                         f"{database.shape[1]}; they must come from the same method")
    if k < 1:
        raise InputError(f"number of neighbours must be >= 1, got {k}")
    k_eff = min(k, num_db)
    best_s = np.full((num_q, k_eff), -np.inf, np.float32)
    best_i = np.full((num_q, k_eff), -1, np.int64)
    if num_q == 0 or num_db == 0:
        return _finish(best_s, best_i, k)
    budget = max(memory_mb, 1.0) * 2**20
    row_bytes = 4 * max(dim, 1)
    # a third of the budget each for the query block, the database chunk and similarities
    query_block = int(max(256, budget / 3 // row_bytes))
    db_chunk = int(max(256, min(budget / 3 // row_bytes, 65536)))
    sim_rows = int(max(16, budget / 3 // (4 * db_chunk)))
    if exclude is not None:
        exclude = np.asarray(exclude, np.int64).reshape(-1)
        if len(exclude) != num_q:
            raise InputError(f"exclude has {len(exclude)} entries for {num_q} queries")
    import torch  # matrix products and top-k (much faster than numpy's argpartition)

    best_s_t, best_i_t = torch.from_numpy(best_s), torch.from_numpy(best_i)
    blocks = list(_blocks(num_q, query_block))
    bar = tqdm(total=len(blocks) * -(-num_db // db_chunk), desc="retrieval", unit="chunk",
               disable=not progress)
    for q0, q1 in blocks:
        qblock = torch.from_numpy(np.ascontiguousarray(queries[q0:q1], dtype=np.float32))
        for d0, d1 in _blocks(num_db, db_chunk):
            dchunk = torch.from_numpy(np.ascontiguousarray(database[d0:d1], dtype=np.float32))
            kk = min(k_eff, d1 - d0)
            for r0, r1 in _blocks(q1 - q0, sim_rows):
                sim = qblock[r0:r1] @ dchunk.T
                if exclude is not None:
                    cols = torch.from_numpy(exclude[q0 + r0:q0 + r1] - d0)
                    inside = (cols >= 0) & (cols < d1 - d0)
                    sim[torch.nonzero(inside)[:, 0], cols[inside]] = -np.inf
                scores, part = torch.topk(sim, kk, dim=1, sorted=False)
                rows = slice(q0 + r0, q0 + r1)
                best_s_t[rows], best_i_t[rows] = _merge_topk(
                    best_s_t[rows], best_i_t[rows], scores, part.to(torch.int64) + d0, k_eff)
                del sim
            bar.update(1)
            del dchunk
    bar.close()
    best_s, best_i = best_s_t.numpy(), best_i_t.numpy()
    if min_score is not None:
        best_s[best_s < min_score] = -np.inf
    return _finish(best_s, best_i, k)


def _finish(best_s: np.ndarray, best_i: np.ndarray, k: int) -> RetrievalResult:
    best_i = np.where(np.isfinite(best_s), best_i, -1)
    # order: score descending, then database index ascending; invalid entries last
    sort_index = np.where(best_i < 0, np.iinfo(np.int64).max, best_i)
    order = np.lexsort((sort_index, -best_s.astype(np.float64)), axis=1)
    best_s = np.take_along_axis(best_s, order, 1)
    best_i = np.take_along_axis(best_i, order, 1)
    if best_s.shape[1] < k:  # fewer database images than neighbours asked for
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return RetrievalResult(indices=best_i, scores=best_s.astype(np.float32))


def retrieval_pairs(query_descriptors: DescriptorSource, db_descriptors: DescriptorSource,
                    query_names: Sequence[str], db_names: Sequence[str],
                    num_neighbors: int, min_score: float | None = None,
                    exclude_self: bool = True, deduplicate: bool = False,
                    memory_mb: float = 512.0, progress: bool = False) -> list[Pair]:
    """(query, database image) pairs: each query with its ``num_neighbors`` most similar
    database images, best first, computed in bounded memory (see :func:`retrieval_topk`).

    exclude_self: an image is never paired with itself (same name on both sides).
    deduplicate: drop reversed duplicates (for self-retrieval among one image set).
    """
    if len(query_names) != query_descriptors.shape[0]:
        raise InputError(f"{len(query_names)} query names for "
                         f"{query_descriptors.shape[0]} query descriptors")
    if len(db_names) != db_descriptors.shape[0]:
        raise InputError(f"{len(db_names)} database names for "
                         f"{db_descriptors.shape[0]} database descriptors")
    if not len(db_names):
        raise InputError("no database images to retrieve from")
    exclude = None
    if exclude_self:
        position = {name: i for i, name in enumerate(db_names)}
        exclude = np.array([position.get(n, -1) for n in query_names], np.int64)
        if (exclude < 0).all():
            exclude = None
    result = retrieval_topk(query_descriptors, db_descriptors, num_neighbors,
                            exclude=exclude, min_score=min_score, memory_mb=memory_mb,
                            progress=progress)
    pairs = [(query_names[q], db_names[j]) for q, row in enumerate(result.indices)
             for j in row if j >= 0]
    return unique_pairs(pairs) if deduplicate else pairs


def pairs_from_store(descriptors: str | Path, num_neighbors: int,
                     query_names: Sequence[str] | None = None,
                     db_names: Sequence[str] | None = None,
                     db_descriptors: str | Path | None = None, **kwargs: Any) -> list[Pair]:
    """Retrieval pairs from global-descriptor files (query and database may differ).

    Without ``query_names`` every image of ``descriptors`` is a query; without
    ``db_names`` every image of ``db_descriptors`` (default: ``descriptors``). When both
    sets are the same images, reversed duplicates are dropped.
    """
    with GlobalDescriptorReader(descriptors) as qreader:
        dreader = GlobalDescriptorReader(db_descriptors) if db_descriptors else qreader
        try:
            if (dreader.method, dreader.config_hash) != (qreader.method, qreader.config_hash):
                raise InputError(
                    f"{qreader.path} ({qreader.method}, {qreader.config_hash}) and "
                    f"{dreader.path} ({dreader.method}, {dreader.config_hash}) were made "
                    "with different methods/configs; their descriptors are not comparable")
            query_names = list(query_names) if query_names is not None else qreader.names()
            db_names = list(db_names) if db_names is not None else dreader.names()
            if not query_names:
                raise InputError(f"no query images (descriptors: {descriptors})")
            if not db_names:
                raise InputError(f"no database images (descriptors: {dreader.path})")
            queries = qreader.source(query_names)
            if len(query_names) * queries.shape[1] * 4 <= 2**30:
                queries = queries[:]  # small enough to hold once
            kwargs.setdefault("deduplicate", set(query_names) == set(db_names))
            return retrieval_pairs(queries, dreader.source(db_names), query_names,
                                   db_names, num_neighbors, **kwargs)
        finally:
            if dreader is not qreader:
                dreader.close()


# -------------------------------------------------------------------------------- VLAD

@dataclass(frozen=True)
class VladConfig:
    """VLAD (Jégou et al. 2010) over local descriptors, with the improvements of
    Arandjelović & Zisserman 2013 (intra-normalisation) and signed square-rooting."""

    num_clusters: int = 64
    kmeans_iterations: int = 25
    max_descriptors_per_image: int = 2000    # codebook training sample per image
    max_training_descriptors: int = 200_000
    power: float = 0.5                       # signed power normalisation (1 = off)
    intra_normalization: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise ConfigError(f"VladConfig.num_clusters={self.num_clusters}: must be >= 1")
        if self.kmeans_iterations < 1 or self.max_descriptors_per_image < 1:
            raise ConfigError("VladConfig.kmeans_iterations and max_descriptors_per_image "
                              "must be >= 1")
        if not 0 < self.power <= 1:
            raise ConfigError(f"VladConfig.power={self.power}: must lie in (0, 1]")


@dataclass(frozen=True)
class Codebook:
    centroids: np.ndarray                    # K×D float32
    features_method: str
    features_config_hash: str
    config: VladConfig
    training_digest: str = ""                # the database images it was learned on

    @property
    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.centroids, np.float32).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
            handle.create_dataset("centroids", data=self.centroids.astype(np.float32))
            handle.attrs["schema_version"] = SCHEMA_VERSION
            handle.attrs["kind"] = "vlad_codebook"
            handle.attrs["features_method"] = self.features_method
            handle.attrs["features_config_hash"] = self.features_config_hash
            handle.attrs["config"] = json.dumps(config_to_dict(self.config), sort_keys=True)
            handle.attrs["training_digest"] = self.training_digest
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Codebook":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"VLAD codebook {path} does not exist")
        with open_h5(path) as handle:
            if handle.attrs.get("kind") != "vlad_codebook" or "centroids" not in handle:
                raise StoreError(f"{path} is not a VLAD codebook file")
            config = VladConfig(**json.loads(handle.attrs["config"]))
            return cls(centroids=handle["centroids"][()],
                       features_method=str(handle.attrs["features_method"]),
                       features_config_hash=str(handle.attrs["features_config_hash"]),
                       config=config,
                       training_digest=str(handle.attrs.get("training_digest", "")))


def kmeans(data: np.ndarray, num_clusters: int, iterations: int = 25, seed: int = 0,
           chunk: int = 65536) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (on a subsample); K×D float32 centroids.

    Empty clusters are re-seeded with the points farthest from their centroid.
    """
    data = np.ascontiguousarray(data, np.float32)
    n = len(data)
    if n < num_clusters:
        raise InputError(f"k-means needs at least {num_clusters} descriptors, got {n}; use "
                         "fewer clusters or more database images")
    rng = np.random.default_rng(seed)
    # k-means++ on a subsample (enough for a good start, cheap for large n)
    sample = data[rng.choice(n, size=min(n, max(20 * num_clusters, 10000)), replace=False)]
    centroids = np.empty((num_clusters, data.shape[1]), np.float32)
    centroids[0] = sample[rng.integers(len(sample))]
    closest = ((sample - centroids[0]) ** 2).sum(1)
    for c in range(1, num_clusters):
        total = closest.sum()
        pick = (rng.choice(len(sample), p=closest / total) if total > 0
                else rng.integers(len(sample)))
        centroids[c] = sample[pick]
        closest = np.minimum(closest, ((sample - centroids[c]) ** 2).sum(1))
    for _ in range(iterations):
        sums = np.zeros_like(centroids, dtype=np.float64)
        counts = np.zeros(num_clusters, np.int64)
        distances = np.empty(n, np.float32)
        for a, b in _blocks(n, chunk):
            assign, dist = _assign(data[a:b], centroids)
            np.add.at(sums, assign, data[a:b])
            counts += np.bincount(assign, minlength=num_clusters)
            distances[a:b] = dist
        new = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        empty = np.nonzero(counts == 0)[0]
        if len(empty):
            far = np.argsort(-distances, kind="stable")[:len(empty)]
            new[empty] = data[far]
        shift = float(np.abs(new - centroids).max())
        centroids = new
        if shift < 1e-6:
            break
    return centroids


def _assign(descriptors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of each descriptor, and the squared distance."""
    d2 = ((descriptors ** 2).sum(1)[:, None] - 2 * descriptors @ centroids.T
          + (centroids ** 2).sum(1)[None])
    assign = np.argmin(d2, axis=1)
    return assign, np.maximum(d2[np.arange(len(assign)), assign], 0)


def vlad(descriptors: np.ndarray, centroids: np.ndarray,
         config: VladConfig = VladConfig()) -> np.ndarray:
    """The K·D VLAD vector of one image's N×D local descriptors (L2-normalised)."""
    k, dim = centroids.shape
    out = np.zeros((k, dim), np.float64)
    descriptors = np.asarray(descriptors, np.float32).reshape(-1, dim)
    if len(descriptors):
        assign, _ = _assign(descriptors, centroids)
        np.add.at(out, assign, descriptors)
        out -= np.bincount(assign, minlength=k)[:, None] * centroids
    if config.intra_normalization:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    out = out.reshape(-1)
    if config.power != 1:
        out = np.sign(out) * np.abs(out) ** config.power
    norm = np.linalg.norm(out)
    return (out / norm if norm > 0 else out).astype(np.float32)


def train_vlad_codebook(features: str | Path, db_names: Sequence[str],
                        config: VladConfig = VladConfig()) -> Codebook:
    """Learn the VLAD codebook with k-means on (a sample of) the database images'
    local descriptors from ``features`` (a features.h5)."""
    if not db_names:
        raise InputError("VLAD codebook: no database images to learn it from")
    rng = np.random.default_rng(config.seed)
    per_image = min(config.max_descriptors_per_image,
                    max(1, config.max_training_descriptors // len(db_names)))
    parts = []
    with FeatureReader(features) as reader:
        for name in db_names:
            desc = reader.read(name).descriptors
            if len(desc) > per_image:
                desc = desc[np.sort(rng.choice(len(desc), per_image, replace=False))]
            parts.append(desc)
        method, fhash = reader.method, reader.config_hash
    data = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    start = time.perf_counter()
    centroids = kmeans(data, config.num_clusters, config.kmeans_iterations, config.seed)
    logger.info("VLAD codebook: %d clusters from %d descriptors of %d images in %.1f s",
                config.num_clusters, len(data), len(db_names), time.perf_counter() - start)
    return Codebook(centroids=centroids, features_method=method, features_config_hash=fhash,
                    config=config, training_digest=names_digest(db_names))


def names_digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def vlad_identity(codebook: Codebook, features_method: str) -> tuple[str, dict[str, Any]]:
    """(config hash, config) of the VLAD descriptors made with ``codebook``."""
    config = {"method": "vlad", "vlad": config_to_dict(codebook.config),
              "codebook": codebook.digest, "features": features_method,
              "features_config_hash": codebook.features_config_hash}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16], config


def compute_vlad(features: str | Path, output: str | Path, codebook: Codebook,
                 names: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Write the VLAD global descriptor of every image of ``features`` into ``output``."""
    with FeatureReader(features) as reader:
        if reader.config_hash != codebook.features_config_hash:
            raise InputError(
                f"the VLAD codebook was learned on {codebook.features_method} features "
                f"(config {codebook.features_config_hash}) but {features} holds "
                f"{reader.method} (config {reader.config_hash}); learn a new codebook")
        names = list(names) if names is not None else reader.names()
        chash, config = vlad_identity(codebook, reader.method)
        with GlobalDescriptorWriter(output, "vlad", chash, config,
                                    overwrite=overwrite) as writer:
            for name in tqdm([n for n in names if n not in writer], desc="vlad", unit="img"):
                writer.write(name, vlad(reader.read(name).descriptors, codebook.centroids,
                                        codebook.config))
    return Path(output)


# ------------------------------------------------------------------------ image methods

def compute_global_descriptors(image_dir: str | Path, output: str | Path,
                               describe: Callable[[np.ndarray], np.ndarray], method: str,
                               config: Any, image_names: Sequence[str] | None = None,
                               overwrite: bool = False) -> Path:
    """Run an image → global descriptor function over a folder (resumable)."""
    from ..images import list_images, read_image

    image_dir = Path(image_dir)
    names = list(image_names) if image_names is not None else list_images(image_dir)
    chash = config_hash(method, config)
    with GlobalDescriptorWriter(output, method, chash,
                                {"method": method, "config": config_to_dict(config)},
                                overwrite=overwrite) as writer:
        for name in tqdm([n for n in names if n not in writer], desc=method, unit="img"):
            try:
                image = read_image(image_dir / name)
            except ImageReadError as err:   # reported; the other images still run
                logger.warning("no global descriptor for %s: %s", name, err)
                continue
            writer.write(name, describe(image))
    return Path(output)


# ---------------------------------------------------------------- methods and the policy

@dataclass(frozen=True)
class RetrievalConfig:
    """How query images find their database images by global descriptor."""

    method: str = "vlad"                     # a name of RETRIEVAL_METHODS
    num_neighbors: int = 20
    min_score: float | None = None
    memory_mb: float = 512.0
    vlad: VladConfig = VladConfig()          # the "vlad" method's codebook and encoding

    def __post_init__(self) -> None:
        if self.method not in RETRIEVAL_METHODS:
            raise ConfigError(f"unknown retrieval method {self.method!r}; choose one of "
                              + ", ".join(RETRIEVAL_METHODS))
        if self.num_neighbors < 1:
            raise ConfigError(f"RetrievalConfig.num_neighbors={self.num_neighbors}: must "
                              "be >= 1")


@dataclass(frozen=True)
class ImageSet:
    """One side of a retrieval: image names and where their input lives (the image
    folder, the local features or a descriptor file, as the method needs)."""

    names: tuple[str, ...]
    images: Path | None = None
    features: Path | None = None
    descriptors: Path | None = None


class RetrievalMethod(Protocol):
    """A registered way of making global descriptors (see ``RETRIEVAL_METHODS``)."""

    name: str
    needs: str        # the ImageSet field it reads: "images", "features" or "descriptors"

    def prepare(self, database: ImageSet, work_dir: Path) -> None:
        """Whatever the method learns from the database (e.g. VLAD's codebook)."""

    def identity(self, images: ImageSet) -> tuple[str, dict[str, Any]]:
        """(config hash, config) of the descriptors it makes of ``images``."""

    def compute(self, images: ImageSet, output: Path, overwrite: bool) -> None:
        """Write the missing descriptors of ``images`` into ``output`` (resumable)."""


class VladMethod:
    """VLAD over the local features; the codebook is learned on the database images once
    and kept in the work folder, keyed on the features' and VLAD's config hashes."""

    name = "vlad"
    needs = "features"

    def __init__(self, config: RetrievalConfig, device: str | None = None,
                 codebook_path: Path | None = None) -> None:
        self.config = config.vlad
        self.codebook_path = codebook_path   # a user's file: must fit, never retrained
        self.codebook: Codebook | None = None

    def prepare(self, database: ImageSet, work_dir: Path) -> None:
        with FeatureReader(_source(database, "features", self.name)) as reader:
            features_hash = reader.config_hash
        training = names_digest(database.names)
        path = self.codebook_path or work_dir / (
            f"vlad-codebook-{features_hash}-{config_hash('vlad', self.config)}.h5")
        if path.is_file():
            codebook = Codebook.load(path)
            fits = (codebook.features_config_hash == features_hash
                    and codebook.config == self.config
                    and codebook.training_digest in ("", training))
            if fits:
                logger.info("VLAD codebook: already done (%s)", path)
                self.codebook = codebook
                return
            if self.codebook_path is not None:
                raise InputError(f"codebook {path} was learned on other features, database "
                                 "images or VLAD settings; remove --codebook to learn one")
        self.codebook = train_vlad_codebook(database.features, list(database.names),
                                            self.config)
        self.codebook.save(path)
        logger.info("VLAD codebook -> %s", path)

    def identity(self, images: ImageSet) -> tuple[str, dict[str, Any]]:
        if self.codebook is None:
            raise StoreError("VladMethod.prepare must run before its descriptors")
        with FeatureReader(_source(images, "features", self.name)) as reader:
            return vlad_identity(self.codebook, reader.method)

    def compute(self, images: ImageSet, output: Path, overwrite: bool) -> None:
        compute_vlad(images.features, output, self.codebook, list(images.names),
                     overwrite=overwrite)


class ImageMethod:
    """A network that maps an image to its global descriptor (NetVLAD, ContextDesc's
    regional map); the network is built only when a descriptor is missing."""

    needs = "images"

    def __init__(self, name: str, config: Any, build: Callable[[], Callable[[np.ndarray],
                                                                          np.ndarray]]):
        self.name, self.config, self.build = name, config, build

    def prepare(self, database: ImageSet, work_dir: Path) -> None:
        return None

    def identity(self, images: ImageSet) -> tuple[str, dict[str, Any]]:
        return config_hash(self.name, self.config), {"method": self.name,
                                                     "config": config_to_dict(self.config)}

    def compute(self, images: ImageSet, output: Path, overwrite: bool) -> None:
        compute_global_descriptors(_source(images, "images", self.name), output,
                                   self.build(), self.name, self.config,
                                   image_names=list(images.names), overwrite=overwrite)


class StoredMethod:
    """Descriptors made elsewhere (ours or hloc's ``global-feats-*.h5``), used as they are."""

    name = "stored"
    needs = "descriptors"

    def prepare(self, database: ImageSet, work_dir: Path) -> None:
        return None

    def identity(self, images: ImageSet) -> tuple[str, dict[str, Any]]:
        with GlobalDescriptorReader(_source(images, "descriptors", self.name)) as reader:
            return reader.config_hash, reader.config

    def compute(self, images: ImageSet, output: Path, overwrite: bool) -> None:
        with GlobalDescriptorReader(output) as reader:
            absent = [n for n in images.names if n not in reader]
        raise InputError(f"{len(absent)} image(s) have no descriptor in {output} (method "
                         f"stored computes none): {', '.join(absent[:5])}")


def _netvlad(preset: str) -> Callable[..., RetrievalMethod]:
    def create(config: RetrievalConfig, device: str | None = None, **_: Any) -> ImageMethod:
        from . import netvlad

        weights = netvlad.PRESETS[preset]
        return ImageMethod(preset, weights, lambda: netvlad.NetVladDescriber(weights,
                                                                             device=device))
    return create


def _contextdesc(config: RetrievalConfig, device: str | None = None,
                 **_: Any) -> ImageMethod:
    from ..extractors import resolve_spec

    spec = resolve_spec("contextdesc++")
    return ImageMethod("contextdesc-regional", spec.config,
                       lambda: spec.build(device).global_descriptor)


# name -> factory(config, device, **options); register more with register_retrieval_method
RETRIEVAL_METHODS: dict[str, Callable[..., RetrievalMethod]] = {
    "vlad": VladMethod,
    "netvlad": _netvlad("netvlad"),
    "netvlad-tokyotm": _netvlad("netvlad-tokyotm"),
    "contextdesc": _contextdesc,
    "stored": lambda config, device=None, **_: StoredMethod(),
}


def retrieval_needs(method: str) -> str:
    """What a registered method reads: "images", "features" or "descriptors"."""
    config = RetrievalConfig(method=method)
    return RETRIEVAL_METHODS[method](config).needs


def register_retrieval_method(name: str, factory: Callable[..., RetrievalMethod]) -> None:
    RETRIEVAL_METHODS[name] = factory


def _source(images: ImageSet, field: str, method: str) -> Path:
    value = getattr(images, field)
    if value is None:
        what = {"images": "the folder of the images", "features": "their local features",
                "descriptors": "a global-descriptor file"}[field]
        example = f" (e.g. {images.names[0]})" if images.names else ""
        raise InputError(f"retrieval method {method} reads {what}, which was not given for "
                         f"{len(images.names)} image(s){example}")
    return Path(value)


def available_names(method: RetrievalMethod, images: ImageSet) -> list[str]:
    """Every image the method could describe from ``images``' source."""
    source = _source(images, method.needs, method.name)
    if method.needs == "features":
        with FeatureReader(source) as reader:
            return list(reader.names())
    if method.needs == "descriptors":
        with GlobalDescriptorReader(source) as reader:
            return list(reader.names())
    from ..images import list_images

    return list_images(source)


def describe(method: RetrievalMethod, images: ImageSet, output: Path) -> list[str]:
    """Make sure ``output`` holds ``images``' descriptors of the method's current config
    (resumed when partial, recomputed when made otherwise); the names it holds."""
    chash, _ = method.identity(images)
    if output.is_file() and not output.with_name(output.name + ".partial").exists():
        with GlobalDescriptorReader(output) as reader:
            same = reader.config_hash == chash
            stored = set(reader.names()) if same else set()
        if same and stored.issuperset(images.names):
            logger.info("%s descriptors: already done (%s)", method.name, output)
            return list(images.names)
        if not same:
            logger.info("%s was made with another config: recomputing it", output)
    else:
        same = True
    method.compute(images, output, overwrite=not same)
    with GlobalDescriptorReader(output) as reader:
        stored = set(reader.names())
    dropped = [n for n in images.names if n not in stored]
    if dropped:   # unreadable images: reported by the method, left out of retrieval
        logger.warning("%d image(s) without a global descriptor, left out: %s", len(dropped),
                       ", ".join(dropped[:5]))
    return [n for n in images.names if n in stored]


def retrieve(queries: ImageSet, database: ImageSet, work_dir: str | Path,
             config: RetrievalConfig = RetrievalConfig(), device: str | None = None,
             descriptors: tuple[Path | None, Path | None] = (None, None),
             codebook: Path | None = None) -> list[Pair]:
    """(query, database image) pairs by global descriptor: the one retrieval policy.

    Resumable step by step: the method's database model (VLAD's codebook), then the
    database's and the queries' descriptors, each kept in ``work_dir`` under a name keyed
    on the inputs' and the method's config hashes, reused when complete ("already done"),
    resumed when partial. ``descriptors``: (query, database) files instead of those
    names (one file when both sides read the same source); ``codebook``: a given VLAD
    codebook file (must fit). When both sides are the same images, reversed duplicates are
    dropped."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    method = RETRIEVAL_METHODS[config.method](config, device=device, codebook_path=codebook)
    method.prepare(database, work_dir)
    shared = getattr(queries, method.needs) == getattr(database, method.needs)
    if shared:
        both = ImageSet(tuple(dict.fromkeys(queries.names + database.names)),
                        queries.images, queries.features, queries.descriptors)
        path = descriptors[0] or descriptors[1] or _keyed(work_dir, method, both, "global")
        kept = set(describe(method, both, path))
        query_path = db_path = path
    else:
        query_path = descriptors[0] or _keyed(work_dir, method, queries, "query")
        db_path = descriptors[1] or _keyed(work_dir, method, database, "db")
        kept = set(describe(method, database, db_path)) | set(
            describe(method, queries, query_path))
    query_names = [n for n in queries.names if n in kept]
    db_names = [n for n in database.names if n in kept]
    return pairs_from_store(query_path, config.num_neighbors, query_names=query_names,
                            db_names=db_names, db_descriptors=db_path,
                            min_score=config.min_score, memory_mb=config.memory_mb)


def _keyed(work_dir: Path, method: RetrievalMethod, images: ImageSet, side: str) -> Path:
    if method.needs == "descriptors":
        return Path(images.descriptors)
    chash, _ = method.identity(images)
    return work_dir / f"{side}-{method.name}-{chash}.h5"
