"""Image pairs from the covisibility of a reconstruction: the images sharing most 3D points.

Vectorised: the observations are read per image as arrays (from ``images.bin``, never a
Python loop over points), the image × point incidence matrix A is sparse, and the
covisibility counts are ``A·Aᵀ``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..pairs import Pair

logger = logging.getLogger(__name__)

_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<i8")])
_NO_POINT = np.iinfo(np.uint64).max


def read_observations(images_bin: str | Path) -> tuple[dict[int, str], np.ndarray, np.ndarray]:
    """(image_id -> name, image ids, point3D ids) of every observation in ``images.bin``."""
    path = Path(images_bin)
    if not path.is_file():
        raise InputError(f"{path} does not exist; expected a COLMAP binary model")
    raw = path.read_bytes()
    names: dict[int, str] = {}
    image_ids, point_ids = [], []
    try:
        (count,) = np.frombuffer(raw, "<u8", 1, 0)
        offset = 8
        for _ in range(int(count)):
            image_id = int(np.frombuffer(raw, "<u4", 1, offset)[0])
            offset += 4 + 7 * 8 + 4                       # id, qvec, tvec, camera id
            end = raw.index(b"\0", offset)
            names[image_id] = raw[offset:end].decode("utf-8")
            offset = end + 1
            num = int(np.frombuffer(raw, "<u8", 1, offset)[0])
            offset += 8
            points = np.frombuffer(raw, _POINT2D, num, offset)["point3D_id"]
            offset += num * _POINT2D.itemsize
            points = points[(points >= 0) & (points.view(np.uint64) != _NO_POINT)]
            image_ids.append(np.full(len(points), image_id, np.int64))
            point_ids.append(points.astype(np.int64))
    except (ValueError, IndexError) as err:
        raise InputError(f"{path}: truncated or malformed images.bin ({err})") from None
    if image_ids:
        return names, np.concatenate(image_ids), np.concatenate(point_ids)
    return names, np.zeros(0, np.int64), np.zeros(0, np.int64)


def _observations(reconstruction) -> tuple[dict[int, str], np.ndarray, np.ndarray]:
    if isinstance(reconstruction, (str, Path)):
        path = Path(reconstruction)
        return read_observations(path / "images.bin" if path.is_dir() else path)
    # a pycolmap.Reconstruction: COLMAP writes the binary model in C++, read it back as arrays
    with tempfile.TemporaryDirectory(prefix="sfmfeat-covis-") as tmp:
        reconstruction.write_binary(tmp)
        return read_observations(Path(tmp) / "images.bin")


def covisibility_counts(reconstruction) -> tuple[list[str], sp.csr_matrix]:
    """Image names and the sparse matrix of shared 3D points (zero diagonal).

    ``reconstruction``: a ``pycolmap.Reconstruction``, a model folder or an images.bin.
    """
    names_by_id, image_ids, point_ids = _observations(reconstruction)
    ids = np.array(sorted(names_by_id), np.int64)
    names = [names_by_id[i] for i in ids]
    rows = np.searchsorted(ids, image_ids)
    _, cols = np.unique(point_ids, return_inverse=True)
    incidence = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, cols.reshape(-1))),
                              shape=(len(ids), int(cols.max()) + 1 if len(cols) else 0))
    incidence.data[:] = 1   # a point observed twice in one image counts once
    counts = (incidence @ incidence.T).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return names, counts


def covisibility_pairs(reconstruction, num_neighbors: int,
                       image_names: list[str] | None = None) -> list[Pair]:
    """Each image paired with the ``num_neighbors`` images sharing most 3D points with it
    (ties broken by name), best first; images sharing no point are never paired.

    image_names: restrict the images to pair (default: every image of the model).
    """
    if num_neighbors < 1:
        raise InputError(f"num_neighbors must be >= 1, got {num_neighbors}")
    names, counts = covisibility_counts(reconstruction)
    if counts.nnz == 0:
        raise InputError("the model has no 3D point seen by two images: no covisibility "
                         "pairs (is it a model with 3D points?)")
    if image_names is not None:
        index = {n: i for i, n in enumerate(names)}
        absent = [n for n in image_names if n not in index]
        if absent:
            raise InputError(f"{len(absent)} image(s) are not in the model: "
                             + ", ".join(absent[:5]))
        keep = np.array([index[n] for n in image_names], np.int64)
        counts = counts[keep][:, keep].tocsr()
        names = list(image_names)
    coo = counts.tocoo()
    name_rank = np.argsort(np.argsort(np.array(names, dtype=object)))  # ties: by name
    order = np.lexsort((name_rank[coo.col], -coo.data, coo.row))
    rows, cols = coo.row[order], coo.col[order]
    starts = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - starts) < num_neighbors
    pairs = [(names[r], names[c]) for r, c in zip(rows[keep], cols[keep])]
    logger.info("%d covisibility pairs for %d images", len(pairs), len(names))
    return pairs
