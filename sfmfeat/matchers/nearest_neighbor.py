"""Nearest-neighbour matching on L2 distances: mutual check, Lowe's ratio test and a
distance threshold, in any combination.

The N0×N1 distance matrix is never held whole: rows are processed in chunks of at most
``max_chunk_elements`` similarities, each chunk one GEMM with the squared-norm bias fused in,
reduced to the nearest (and second nearest) neighbour per row and to a running maximum per
column (value only: a column max with indices is several times slower than the GEMM on CPU).
A row passes the mutual check when it attains its neighbour's column maximum; exact ties
count as mutual. Memory is O(chunk × N1 + (N0 + N1) × D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..features import Features, resolve_device
from .base import Matcher


@dataclass(frozen=True)
class NearestNeighborConfig:
    mutual: bool = True
    ratio: float | None = None          # keep if d1 <= ratio * d2 (Lowe); None disables
    max_distance: float | None = None   # keep if d1 <= max_distance (L2); None disables
    max_chunk_elements: int = 1 << 21   # similarities at once: 8 MiB in fp32, cache-sized


class NearestNeighborMatcher(Matcher):
    """Reads only the descriptors; ``match`` also takes bare N×D arrays or tensors."""

    name = "nearest_neighbor"
    config_class = NearestNeighborConfig
    presets = {
        "mnn": NearestNeighborConfig(mutual=True),
        "mnn-ratio": NearestNeighborConfig(mutual=True, ratio=0.8),
        "ratio": NearestNeighborConfig(mutual=False, ratio=0.8),
        "nn": NearestNeighborConfig(mutual=False),
    }

    def __init__(self, config: NearestNeighborConfig | None = None,
                 device: str | None = None) -> None:
        super().__init__(config, device)
        if self.config.ratio is not None and not 0 < self.config.ratio <= 1:
            raise InputError(f"ratio must lie in (0, 1], got {self.config.ratio}")

    def match(self, features0: Features | np.ndarray | torch.Tensor,
              features1: Features | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """K×2 int32 matches (index into set 0, index into set 1) and K float32 scores
        (the descriptors' dot product)."""
        d0 = _as_tensor(features0, self.device)
        d1 = _as_tensor(features1, self.device)
        if d0.shape[1] != d1.shape[1]:
            raise InputError(f"descriptor dimensions differ: {d0.shape[1]} vs {d1.shape[1]}")
        if len(d0) == 0 or len(d1) == 0:
            return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
        with torch.inference_mode():
            idx0, idx1, scores = _match(d0, d1, self.config)
        return (np.stack([idx0.cpu().numpy(), idx1.cpu().numpy()], 1).astype(np.int32),
                scores.cpu().numpy().astype(np.float32))


def _as_tensor(values: Features | np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    if isinstance(values, Features):
        values = values.descriptors
    tensor = torch.as_tensor(values)
    if tensor.ndim != 2:
        raise InputError(f"descriptors must be N×D, got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.float32)


def _match(d0: torch.Tensor, d1: torch.Tensor, config: NearestNeighborConfig):
    n0, n1 = len(d0), len(d1)
    sq0 = (d0 * d0).sum(1)
    sq1 = (d1 * d1).sum(1)
    k = 2 if config.ratio is not None and n1 > 1 else 1
    chunk = max(1, config.max_chunk_elements // n1)
    # Unit-norm descriptors (the common case) need no per-row bias for the column pass.
    rows_unit_norm = bool(torch.all((sq0 - 1).abs() < 1e-5))
    column_bias = sq0.mul(-0.5)
    bias = sq1.mul(-0.5).unsqueeze(0)
    d1_t = d1.T
    top_score = torch.empty(n0, k, device=d0.device)
    top_index = torch.empty(n0, k, dtype=torch.long, device=d0.device)
    column_best = torch.full((n1,), -torch.inf, device=d0.device)
    for start in range(0, n0, chunk):
        stop = min(start + chunk, n0)
        # score = a·b - |b|²/2: largest where |a - b|² is smallest (bias fused in the GEMM)
        score = torch.addmm(bias, d0[start:stop], d1_t)
        if k == 1:
            chunk_score, chunk_index = score.max(dim=1, keepdim=True)
        else:
            chunk_score, chunk_index = score.topk(k, dim=1)
        top_score[start:stop] = chunk_score
        top_index[start:stop] = chunk_index
        if config.mutual:
            # per column, the nearest row maximises a·b - |a|²/2 = score + |b|²/2 - |a|²/2;
            # the |b|²/2 term is constant per column and is left out
            if not rows_unit_norm:
                score = score.add_(column_bias[start:stop, None])
            column_best = torch.maximum(column_best, score.amax(dim=0))
    nn01 = top_index[:, 0]
    # |a - b|² = |a|² - 2 (a·b - |b|²/2)
    dist_sq = (sq0[:, None] - 2 * top_score).clamp_(min=0)
    keep = torch.ones(n0, dtype=torch.bool, device=d0.device)
    if k == 2:
        keep &= dist_sq[:, 0] <= (config.ratio ** 2) * dist_sq[:, 1]
    if config.max_distance is not None:
        keep &= dist_sq[:, 0] <= config.max_distance ** 2
    if config.mutual:
        # row i is the nearest row of its column j iff it attains that column's maximum;
        # the values compared are the very same floats, so equality is exact
        own = top_score[:, 0] if rows_unit_norm else top_score[:, 0] + column_bias
        keep &= own >= column_best[nn01]
    idx0 = torch.nonzero(keep).flatten()
    idx1 = nn01[idx0]
    dot = (sq0[idx0] + sq1[idx1] - dist_sq[idx0, 0]) / 2
    return idx0, idx1, dot
