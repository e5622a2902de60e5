"""Nearest-neighbour matching on L2 distances: mutual check, Lowe's ratio test and a
distance threshold, in any combination.

The N0×N1 distance matrix is never held whole: rows are processed in chunks of at most
``max_chunk_elements`` similarities, each chunk one GEMM with the squared-norm bias fused in,
reduced to the nearest (and second nearest) neighbour per row. The mutual check runs the
same in the other direction. Memory is O(chunk × N + (N0 + N1) × D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import config_hash
from ..errors import InputError
from ..extractors.base import resolve_device


@dataclass(frozen=True)
class NearestNeighborConfig:
    mutual: bool = True
    ratio: float | None = None          # keep if d1 <= ratio * d2 (Lowe); None disables
    max_distance: float | None = None   # keep if d1 <= max_distance (L2); None disables
    max_chunk_elements: int = 1 << 25   # similarities computed at once (128 MiB in fp32)


class NearestNeighborMatcher:
    name = "nearest_neighbor"

    def __init__(self, config: NearestNeighborConfig | None = None,
                 device: str | None = None) -> None:
        self.config = config or NearestNeighborConfig()
        if self.config.ratio is not None and not 0 < self.config.ratio <= 1:
            raise InputError(f"ratio must lie in (0, 1], got {self.config.ratio}")
        self.device = resolve_device(device)

    @property
    def config_hash(self) -> str:
        return config_hash(f"{__name__}.{type(self).__qualname__}", self.config)

    def match(self, descriptors0: np.ndarray | torch.Tensor,
              descriptors1: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """K×2 int32 matches (index into set 0, index into set 1) and K float32 scores
        (the descriptors' dot product)."""
        d0 = _as_tensor(descriptors0, self.device)
        d1 = _as_tensor(descriptors1, self.device)
        if d0.shape[1] != d1.shape[1]:
            raise InputError(f"descriptor dimensions differ: {d0.shape[1]} vs {d1.shape[1]}")
        if len(d0) == 0 or len(d1) == 0:
            return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
        with torch.inference_mode():
            idx0, idx1, scores = _match(d0, d1, self.config)
        return (np.stack([idx0.cpu().numpy(), idx1.cpu().numpy()], 1).astype(np.int32),
                scores.cpu().numpy().astype(np.float32))


def _as_tensor(values: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.ndim != 2:
        raise InputError(f"descriptors must be N×D, got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.float32)


def _nearest(queries: torch.Tensor, database: torch.Tensor, database_sq: torch.Tensor,
             k: int, max_chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the ``k`` largest ``q·d - |d|²/2`` (i.e. the k nearest database
    descriptors in L2) and their indices, computed in row chunks. The ``-|d|²/2`` bias is
    fused into the GEMM (``addmm``), so no extra pass over the similarity chunk is made."""
    chunk = max(1, max_chunk_elements // len(database))
    bias = database_sq.mul(-0.5).unsqueeze(0)
    values = torch.empty(len(queries), k, device=queries.device)
    indices = torch.empty(len(queries), k, dtype=torch.long, device=queries.device)
    database_t = database.T
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        score = torch.addmm(bias, queries[start:stop], database_t)
        if k == 1:
            top_value, top_index = score.max(dim=1, keepdim=True)
        else:
            top_value, top_index = score.topk(k, dim=1)
        values[start:stop] = top_value
        indices[start:stop] = top_index
    return values, indices


def _match(d0: torch.Tensor, d1: torch.Tensor, config: NearestNeighborConfig):
    n0, n1 = len(d0), len(d1)
    sq0 = (d0 * d0).sum(1)
    sq1 = (d1 * d1).sum(1)
    k = 2 if config.ratio is not None and n1 > 1 else 1
    # forward: nearest (and second nearest) of each row of d0 in d1
    score, index = _nearest(d0, d1, sq1, k, config.max_chunk_elements)
    nn01 = index[:, 0]
    # |a - b|² = |a|² - 2 (a·b - |b|²/2)
    dist_sq = (sq0[:, None] - 2 * score).clamp_(min=0)
    keep = torch.ones(n0, dtype=torch.bool, device=d0.device)
    if k == 2:
        keep &= dist_sq[:, 0] <= (config.ratio ** 2) * dist_sq[:, 1]
    if config.max_distance is not None:
        keep &= dist_sq[:, 0] <= config.max_distance ** 2
    rows = torch.arange(n0, device=d0.device)
    if config.mutual:
        # backward pass as a second GEMM: a column reduction of the forward chunks would
        # cost more than the GEMM itself on CPU (strided reduction)
        _, back_index = _nearest(d1, d0, sq0, 1, config.max_chunk_elements)
        keep &= back_index[nn01, 0] == rows
    idx0 = rows[keep]
    idx1 = nn01[keep]
    dot = (sq0[idx0] + sq1[idx1] - dist_sq[idx0, 0]) / 2
    return idx0, idx1, dot
