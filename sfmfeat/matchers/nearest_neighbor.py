"""Nearest-neighbour matching on L2 distances: mutual check, Lowe's ratio test and a
distance threshold, in any combination.

The N0×N1 distance matrix is never held whole: rows are processed in chunks of at most
``max_chunk_elements`` similarities, each chunk one GEMM with the squared-norm bias fused in,
reduced to the nearest (and second nearest) neighbour per row and to a running maximum per
column (value only: a column max with indices is several times slower than the GEMM on CPU).
A row passes the mutual check when it attains its neighbour's column maximum; exact ties
count as mutual. Memory is O(chunk × N1 + (N0 + N1) × D).

With ``precision="auto"`` (the default) unit-norm descriptors are searched in bfloat16 where
this machine's bf16 GEMM is fast (see ``reduced_precision_dtype``) and every decision is then
certified in float32: see ``_match_reduced``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import config_hash
from ..errors import ConfigError, InputError
from ..features import Features
from .base import Matcher

_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class NearestNeighborConfig:
    mutual: bool = True
    ratio: float | None = None          # keep if d1 <= ratio * d2 (Lowe); None disables
    max_distance: float | None = None   # keep if d1 <= max_distance (L2); None disables
    max_chunk_elements: int = 1 << 23   # similarities at once: 32 MiB in fp32 (1k rows at 8k
    #                                     columns: 15 % faster than 8 MiB chunks, same matches)
    # candidate search: "fp32"; "bf16" (CPU; certified in fp32, same matches); "auto": bf16
    # where it is fast and the descriptors are unit-norm. Not hashed: the results are equal.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"nearest_neighbor: precision must be one of "
                              f"{', '.join(_PRECISIONS)}, got {self.precision!r}")
        if self.max_chunk_elements < 1:
            raise ConfigError(f"nearest_neighbor: max_chunk_elements must be >= 1, "
                              f"got {self.max_chunk_elements}")


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

    @property
    def config_hash(self) -> str:
        # precision and the chunk size only change how fast the same matches are found; the
        # chunk keeps the value hashes were first made with, so older matches.h5 stay valid
        settings = {k: v for k, v in vars(self.config).items()
                    if k not in ("precision", "max_chunk_elements")}
        return config_hash(f"{type(self).__module__}.{type(self).__qualname__}",
                           _HashedSettings(**settings))

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
            sq0, sq1 = _row_reduce(_squared_norms, d0), _row_reduce(_squared_norms, d1)
            low = self._search_dtype(d0, sq0, sq1)
            if low is None:
                idx0, idx1, scores = _match(d0, d1, sq0, sq1, self.config)
            else:
                idx0, idx1, scores = _match_reduced(d0, d1, sq0, sq1, self.config, low)
        return (np.stack([idx0.cpu().numpy(), idx1.cpu().numpy()], 1).astype(np.int32),
                scores.cpu().numpy().astype(np.float32))

    def _search_dtype(self, d0: torch.Tensor, sq0: torch.Tensor,
                      sq1: torch.Tensor) -> torch.dtype | None:
        if self.config.precision == "fp32":
            return None
        if self.config.precision == "bf16" and d0.device.type != "cpu":
            # cuBLAS may reduce bf16 products in bf16 (PyTorch allows it by default), which
            # the error bounds of _ErrorModel do not cover
            raise ConfigError(f"nearest_neighbor: precision=bf16 runs on the CPU only; on "
                              f"{d0.device.type} use precision=fp32 or auto")
        if not (_near_unit_norm(sq0) and _near_unit_norm(sq1)):
            return None
        if self.config.precision == "bf16":
            return torch.bfloat16
        if min(len(sq0), len(sq1)) < _MIN_REDUCED_SIZE:
            return None
        return reduced_precision_dtype(str(d0.device))


_HASHED_CHUNK_ELEMENTS = 1 << 21  # the default when hashes were first made


@dataclass(frozen=True)
class _HashedSettings:
    """The hashed part of NearestNeighborConfig, as hashes were first made: before the
    precision field, and with the chunk size, now fixed at its historic default so that
    older matches.h5 keep their hash."""

    mutual: bool
    ratio: float | None
    max_distance: float | None
    max_chunk_elements: int = _HASHED_CHUNK_ELEMENTS


_MIN_REDUCED_SIZE = 512            # below this the fp32 GEMM is already cheap
_UNIT_NORM_TOLERANCE = 1e-2        # |‖d‖² − 1| up to this: the bf16 search still pays off


def _near_unit_norm(squared_norms: torch.Tensor) -> bool:
    return bool(torch.all((squared_norms - 1).abs() <= _UNIT_NORM_TOLERANCE))


@functools.cache
def reduced_precision_dtype(device: str) -> torch.dtype | None:
    """bfloat16 where a bf16 GEMM on ``device`` is at least twice as fast as fp32, else None.

    Measured once per process (a 5 ms probe), not assumed from the CPU's name: CPUs without
    AVX-512 BF16 or AMX emulate bf16 and are slower than fp32. CPU only (see _search_dtype).
    """
    if device != "cpu":
        return None
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 128, generator=generator)
    b = torch.randn(128, 2048, generator=generator)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a_cast, b_cast = a.to(dtype), b.to(dtype)
        a_cast @ b_cast
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            a_cast @ b_cast
            best = min(best, time.perf_counter() - start)
        seconds[dtype] = best
    return torch.bfloat16 if seconds[torch.bfloat16] * 2 <= seconds[torch.float32] else None


def _as_tensor(values: Features | np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    if isinstance(values, Features):
        values = values.descriptors
    tensor = torch.as_tensor(values)
    if tensor.ndim != 2:
        raise InputError(f"descriptors must be N×D, got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.float32)


def _match(d0: torch.Tensor, d1: torch.Tensor, sq0: torch.Tensor, sq1: torch.Tensor,
           config: NearestNeighborConfig):
    """``sq0``, ``sq1``: the descriptors' squared norms."""
    n0, n1 = len(d0), len(d1)
    k = 2 if config.ratio is not None and n1 > 1 else 1
    chunk = max(1, config.max_chunk_elements // n1)
    # Unit-norm descriptors (the common case) need no per-row bias for the column pass.
    rows_unit_norm = bool(torch.all((sq0 - 1).abs() < 1e-5))
    column_bias = sq0.mul(-0.5)
    bias = sq1.mul(-0.5).unsqueeze(0)
    d1_t = d1.T
    top_score = torch.empty(n0, k, device=d0.device)
    nn01 = torch.empty(n0, dtype=torch.long, device=d0.device)
    column_best = torch.full((n1,), -torch.inf, device=d0.device)
    buffer = torch.empty(min(chunk, n0), n1, device=d0.device)   # no page faults per chunk
    for start in range(0, n0, chunk):
        stop = min(start + chunk, n0)
        # score = a·b - |b|²/2: largest where |a - b|² is smallest (bias fused in the GEMM)
        score = torch.addmm(bias, d0[start:stop], d1_t, out=buffer[:stop - start])
        top_score[start:stop], nn01[start:stop] = _row_top(score, k)
        if config.mutual:
            # per column, the nearest row maximises a·b - |a|²/2 = score + |b|²/2 - |a|²/2;
            # the |b|²/2 term is constant per column and is left out
            if not rows_unit_norm:
                score = score.add_(column_bias[start:stop, None])
            column_best = torch.maximum(column_best, score.amax(dim=0))
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


_GROUP = 64     # columns per group in _row_top


def _row_top(score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k`` (1 or 2) largest values, as ``topk`` gives them, and the column of
    the largest. Through the maxima of groups of ``_GROUP`` columns: one reduction pass that
    vectorises (``topk`` along rows does not, and took a quarter of the matching time), then
    the best two groups and the members of the best one. The second largest value is the
    second member of the best group or the best of another group."""
    rows, columns = score.shape
    if columns < 2 * _GROUP:
        values, indices = score.topk(k, dim=1)
        return values, indices[:, 0]
    whole = columns - columns % _GROUP
    group_max = score[:, :whole].view(rows, whole // _GROUP, _GROUP).amax(dim=2)
    if whole < columns:
        group_max = torch.cat([group_max, score[:, whole:].amax(dim=1, keepdim=True)], 1)
    group_values, group_index = group_max.topk(2, dim=1)
    members = group_index[:, :1] * _GROUP + torch.arange(_GROUP, device=score.device)
    outside = members >= columns                       # the short last group
    member_values = score.gather(1, members.clamp_(max=columns - 1))
    member_values.masked_fill_(outside, -torch.inf)
    values, within = member_values.topk(k, dim=1)
    best_column = members.gather(1, within[:, :1])[:, 0]
    if k == 2:
        values[:, 1] = torch.maximum(values[:, 1], group_values[:, 1])
    return values, best_column


_BF16_ROUNDOFF = 2.0 ** -9        # one rounding to bf16 (8 significant bits, to nearest)
_FP32_ROUNDOFF = 2.0 ** -24
_SAFETY = 1.25                    # for kernels that round differently (flushed denormals)
_OUTPUT_SLACK = _SAFETY * 2 * _BF16_ROUNDOFF   # relative, of the rounded output (|s| ≤ 2|s̃|)


@dataclass(frozen=True)
class _ErrorModel:
    """Bounds of the true a·b from a low-precision GEMM output s̃ = round(a'·b'), where a', b'
    are the rounded inputs: |a·b − a'·b'| ≤ input (per row of d0) by Cauchy–Schwarz on the
    rounding residues, fp32 accumulation adds D·u32·|a||b|, the output rounding u·|a'·b'|.
    Holds what the bound needs of d1; ``row_input`` adds a chunk of rows of d0."""

    max_norm1: float          # of d1's rows
    max_residue1: float       # of d1's rows: |b − b'|
    dimension: int

    @staticmethod
    def of(d1: torch.Tensor, low1: torch.Tensor, sq1: torch.Tensor) -> "_ErrorModel":
        """``low1``: d1 rounded; ``sq1``: its squared norms."""
        return _ErrorModel(float(sq1.max().sqrt()),
                           float(_row_reduce(_residue_norms, d1, low1).max()), d1.shape[1])

    def row_input(self, d0: torch.Tensor, low0: torch.Tensor,
                  sq0: torch.Tensor) -> torch.Tensor:
        """The input bound of each row of ``d0`` (rounded: ``low0``, squared norms ``sq0``)."""
        residue0 = _row_reduce(_residue_norms, d0, low0)
        norm0 = sq0.sqrt()
        accumulation = self.dimension * _FP32_ROUNDOFF * (norm0 * self.max_norm1)
        # the rounded norms by the triangle inequality: |a'| <= |a| + |a - a'|
        return _SAFETY * (residue0 * (self.max_norm1 + self.max_residue1)
                          + (norm0 + residue0) * self.max_residue1
                          + residue0 * self.max_residue1 + accumulation)

    @staticmethod
    def output_slack(values: torch.Tensor) -> torch.Tensor:
        return values.abs() * _OUTPUT_SLACK


_REMOVED = -(1 << 15)     # int16 minimum: below every bf16 value read as int16
_NEVER = (1 << 15) - 1    # int16 maximum: above every finite bf16 value read as int16
_BLOCK = 128              # columns per block maximum (64 or fewer reduce several times slower)


def _bounds(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper and lower fp32 bounds of a bf16 maximum taken over int16 bits. The int16 order
    is the float order for values >= 0 and puts every negative (and every removed entry)
    below them, so a negative maximum means "all negative, which one unknown": 0 bounds
    it from above and nothing (-inf) from below."""
    values = bits.view(torch.bfloat16).float()
    negative = bits < 0
    return (torch.where(negative, torch.zeros_like(values), values),
            torch.where(negative, torch.full_like(values, -torch.inf), values))


def _match_reduced(d0: torch.Tensor, d1: torch.Tensor, sq0: torch.Tensor, sq1: torch.Tensor,
                   config: NearestNeighborConfig, low: torch.dtype):
    """The matches of ``_match``, found with a low-precision GEMM and decided in fp32.

    Each low-precision similarity s̃ bounds the true a·b (``_ErrorModel``). Per row the
    search takes the top k columns by s̃ (k = 2 with the ratio test, else 1) and scores them
    in fp32; then every other column whose s̃ could still reach a score that changes the
    row's outcome (its nearest column, or its ratio decision: ``_decisive_score``; one
    compare over the chunk, no column for most rows) is scored in fp32 too, and the row's
    top k are taken from all of them. For the mutual
    check each row "claims" its top column: the column maxima (per block of rows) skip
    claimed entries, so a column's claimers are compared exactly and all other rows through
    the bound of those maxima; undecided rows re-score the blocks that could beat them.
    So every decision is the fp32 matcher's, except where two fp32 scores differ by their
    own round-off (~1e-7): scores here are dot products, not the GEMM's sums, and may
    break such a tie the other way.
    """
    n0, n1 = len(d0), len(d1)
    device = d0.device
    k = 2 if config.ratio is not None and n1 > 1 else 1
    blocks = -(-n1 // _BLOCK)
    # zero columns pad the similarities to whole blocks; they are never taken as candidates
    padded = torch.zeros(blocks * _BLOCK, d1.shape[1], dtype=low, device=device)
    padded[:n1] = d1
    error = _ErrorModel.of(d1, padded[:n1], sq1)
    low1_t = padded.T.contiguous()      # the GEMM is a fifth faster than on the transpose
    del padded
    # the same bytes per chunk as the fp32 path's similarities, in whole blocks of rows
    chunk = max(1, config.max_chunk_elements * 4 // (low1_t.element_size() * blocks * _BLOCK))
    row_block = min(_BLOCK, chunk)
    chunk -= chunk % row_block
    top_score = torch.empty(n0, k, device=device)      # a·b − |b|²/2, as in _match
    top_index = torch.empty(n0, k, dtype=torch.long, device=device)
    claimed = torch.empty(n0, dtype=torch.long, device=device)
    claimed_dot = torch.empty(n0, device=device)
    # per block of rows and column, the bf16 maximum over the rows that did not claim it
    unclaimed = torch.full((-(-n0 // row_block), n1), _REMOVED, dtype=torch.int16,
                           device=device)
    buffer = torch.empty(min(chunk, n0), blocks * _BLOCK, dtype=low, device=device)
    any_input = 0.0       # the largest row_input of any row of d0
    for start in range(0, n0, chunk):
        stop = min(start + chunk, n0)
        rows = torch.arange(start, stop, device=device)
        local_rows = rows - start
        # bf16 bits read as int16 (see _bounds); only value reductions (no indices) touch
        # the whole chunk: per block of columns its maximum, and the column maxima. One
        # buffer for every chunk: a fresh output each time costs page faults.
        low0 = d0[start:stop].to(low)   # rounded chunk by chunk: no rounded copy of d0
        row_input = error.row_input(d0[start:stop], low0, sq0[start:stop])
        any_input = max(any_input, float(row_input.max()))
        similarity = torch.mm(low0, low1_t,
                              out=buffer[:stop - start]).view(torch.int16)
        by_block = similarity.view(len(rows), blocks, _BLOCK)
        block_best = by_block.amax(dim=2)
        picks = []
        for rank in range(k):
            block = block_best.argmax(dim=1)
            segment = by_block[local_rows, block]
            within = segment.argmax(dim=1)
            segment[local_rows, within] = _REMOVED
            block_best[local_rows, block] = segment.amax(dim=1)
            column = block * _BLOCK + within
            similarity[local_rows, column] = _REMOVED
            picks.append(column)
            if rank == 0 and config.mutual:
                unclaimed[start // row_block:-(-stop // row_block)] = _row_block_maxima(
                    similarity[:, :n1], row_block)
        index = torch.stack(picks, dim=1)
        padding = index >= n1           # only when a row's similarities are all <= 0
        index = torch.where(padding, torch.zeros_like(index), index)
        dots = _pair_dots(d0, d1, slice(start, stop), index)
        claimed[start:stop], claimed_dot[start:stop] = index[:, 0], dots[:, 0]
        score, order = (dots - sq1[index] / 2).sort(dim=1, descending=True)
        index = index.gather(1, order)
        usable = ~padding.any(dim=1)
        if k < n1:
            # the columns left out whose s̃ could still reach a score that changes the row's
            # nearest neighbour or its ratio decision
            needed = score[:, 0] if k == 1 else _decisive_score(score, sq0[start:stop],
                                                                 config.ratio)
            bits, positive = _threshold_bits(needed + sq1.min() / 2, row_input)
            usable &= positive
            bits = torch.where(usable, bits, torch.full_like(bits, _NEVER))
            hit_row, hit_block = torch.nonzero(block_best >= bits[:, None], as_tuple=True)
            if len(hit_row):
                segment = by_block[hit_row, hit_block]            # hits × _BLOCK
                hit, offset = torch.nonzero(segment >= bits[hit_row, None], as_tuple=True)
                group, column = hit_row[hit], hit_block[hit] * _BLOCK + offset
                real = column < n1
                if bool(real.any()):
                    score, index = _merged_top_k(score, index, group[real], column[real],
                                                 rows, d0, d1, sq1)
        fallback = torch.nonzero(~usable).flatten()
        if len(fallback):
            score[fallback], index[fallback] = _exact_row_neighbours(
                d0[rows[fallback]], d1, sq1, k, config.max_chunk_elements)
        top_score[start:stop], top_index[start:stop] = score, index

    nn01 = top_index[:, 0]
    dist_sq = (sq0[:, None] - 2 * top_score).clamp_(min=0)
    keep = torch.ones(n0, dtype=torch.bool, device=device)
    if k == 2:
        keep &= dist_sq[:, 0] <= (config.ratio ** 2) * dist_sq[:, 1]
    if config.max_distance is not None:
        keep &= dist_sq[:, 0] <= config.max_distance ** 2
    if config.mutual:
        keep &= _mutual(d0, d1, sq0, nn01, keep, claimed, claimed_dot, unclaimed, row_block,
                        any_input, config.max_chunk_elements)
    idx0 = torch.nonzero(keep).flatten()
    idx1 = nn01[idx0]
    dot = top_score[idx0, 0] + sq1[idx1] / 2
    return idx0, idx1, dot


def _decisive_score(score: torch.Tensor, sq0: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per row, the least score (a·b − |b|²/2) that another column must reach to change
    the ratio decision taken on the row's exact top two ``score`` (or its nearest
    neighbour). A row that passes fails once a column's distance drops below d1 / ratio;
    one that fails only changes when a column beats its nearest neighbour (a nearer second
    only fails it further). Always at least the second score, so no more columns are
    re-scored than for an exact second neighbour, and far fewer: the ratio decision
    rarely sits within the bf16 error of the second neighbour."""
    dist_sq = (sq0[:, None] - 2 * score).clamp(min=0)
    passes = dist_sq[:, 0] <= (ratio ** 2) * dist_sq[:, 1]
    breaking = (sq0 - dist_sq[:, 0] / ratio ** 2) / 2
    # below the fp32 round-off of the decision's own arithmetic: never too high
    breaking = breaking - 4 * _FP32_ROUNDOFF * (sq0 + score[:, 0].abs())
    return torch.where(passes, torch.minimum(breaking, score[:, 0]), score[:, 0])


_REDUCE_ROWS_BYTES = 1 << 20


def _row_reduce(per_row: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """``per_row(*row_slices)`` over row chunks of about 1 MiB: a whole-array temporary
    (16 MiB for 8k × 512 floats) is fresh memory on every call, a page fault per 4 KiB,
    which cost more than the arithmetic. Row by row the values are the same floats."""
    rows = len(tensors[0])
    chunk = max(1, _REDUCE_ROWS_BYTES // max(1, tensors[0][:1].nbytes))
    if rows <= chunk:
        return per_row(*tensors)
    out = torch.empty(rows, device=tensors[0].device)
    for start in range(0, rows, chunk):
        out[start:start + chunk] = per_row(*(t[start:start + chunk] for t in tensors))
    return out


def _squared_norms(values: torch.Tensor) -> torch.Tensor:
    return (values * values).sum(1)


def _residue_norms(values: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    # not Tensor.norm(dim=1): ten times slower on 512-d rows
    return _squared_norms(values - rounded.float()).sqrt()


def _pair_dots(d0: torch.Tensor, d1: torch.Tensor, rows: torch.Tensor | slice,
               columns: torch.Tensor) -> torch.Tensor:
    """fp32 d0[rows]·d1[columns], elementwise over the index tensors: the one formula of
    every exact score of the reduced path, so equal pairs always get equal floats. ``rows``
    may be a slice of d0 with ``columns`` its rows × k columns (no gather of the rows).
    ``index_select`` on flat indices: several times faster than advanced indexing."""
    b = d1.index_select(0, columns.reshape(-1)).view(*columns.shape, d1.shape[1])
    if isinstance(rows, slice):
        a = d0[rows].unsqueeze(1)
    else:
        a = d0.index_select(0, rows.reshape(-1)).view(*rows.shape, d0.shape[1])
    return (a * b).sum(-1)


def _threshold_bits(dot_needed: torch.Tensor, input_error: torch.Tensor | float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """int16 bits of the least bf16 value s̃ whose true a·b can reach ``dot_needed``, and
    whether the threshold is usable (positive: the int16 order is only the float order
    there)."""
    value = (dot_needed - input_error) / (1 + _OUTPUT_SLACK)
    rounded = value.to(torch.bfloat16)
    bits = rounded.view(torch.int16)
    bits = torch.where(rounded.float() > value, bits - 1, bits)   # round down
    return bits, value > 0


def _top_k_per_group(group: torch.Tensor, score: torch.Tensor, index: torch.Tensor,
                     groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the k largest scores and their index (each group has at least k finite
    scores); among equal scores the earliest entry, as a stable descending sort orders
    them. Scatter reductions, one pass per rank: two sorts of all entries cost ten times
    more."""
    position = torch.arange(len(group), device=group.device)
    score = score.clone()
    top_score = torch.empty(groups, k, device=score.device)
    top_index = torch.empty(groups, k, dtype=torch.long, device=score.device)
    for rank in range(k):
        best = torch.full((groups,), -torch.inf, device=score.device).scatter_reduce(
            0, group, score, reduce="amax")
        at_best = score == best[group]
        first = torch.full((groups,), len(group), device=group.device).scatter_reduce(
            0, group[at_best], position[at_best], reduce="amin")
        top_score[:, rank], top_index[:, rank] = best, index[first]
        score[first] = -torch.inf
    return top_score, top_index


def _merged_top_k(score: torch.Tensor, index: torch.Tensor, group: torch.Tensor,
                  column: torch.Tensor, rows: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor,
                  sq1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's exact top-k of its candidates (``score``, ``index``: rows × k) and the
    extra columns (``group``: position in ``rows``, ``column``), scored in fp32."""
    k = score.shape[1]
    touched, local = torch.unique(group, return_inverse=True)
    extra_score = _pair_dots(d0, d1, rows[group], column) - sq1[column] / 2
    own_group = torch.arange(len(touched), device=group.device)[:, None].expand(-1, k)
    score, index = score.clone(), index.clone()
    score[touched], index[touched] = _top_k_per_group(
        torch.cat([own_group.flatten(), local]),
        torch.cat([score[touched].flatten(), extra_score]),
        torch.cat([index[touched].flatten(), column]), len(touched), k)
    return score, index


def _exact_row_neighbours(rows: torch.Tensor, d1: torch.Tensor, sq1: torch.Tensor, k: int,
                          max_chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``_match``'s fp32 top-k of score = a·b − |b|²/2, for a few rows."""
    bias = sq1.mul(-0.5).unsqueeze(0)
    chunk = max(1, max_chunk_elements // len(d1))
    scores, indices = [], []
    for start in range(0, len(rows), chunk):
        score = torch.addmm(bias, rows[start:start + chunk], d1.T)
        value, index = score.topk(k, dim=1)
        scores.append(value)
        indices.append(index)
    return torch.cat(scores), torch.cat(indices)


def _row_block_maxima(similarity: torch.Tensor, row_block: int) -> torch.Tensor:
    """Column maxima of each block of ``row_block`` rows (the last block may be shorter)."""
    rows = len(similarity)
    whole = rows - rows % row_block
    maxima = [similarity[:whole].view(-1, row_block, similarity.shape[1]).amax(dim=1)]
    if whole < rows:
        maxima.append(similarity[whole:].amax(dim=0, keepdim=True))
    return torch.cat(maxima)


def _mutual(d0: torch.Tensor, d1: torch.Tensor, sq0: torch.Tensor, nn01: torch.Tensor,
            wanted: torch.Tensor, claimed: torch.Tensor, claimed_dot: torch.Tensor,
            unclaimed: torch.Tensor, row_block: int, any_input: float,
            max_chunk_elements: int) -> torch.Tensor:
    """Whether row i is the nearest row of its column nn01[i], for the ``wanted`` rows (the
    others, already rejected, may come out either way); within a column rows compare by
    a·b − |a|²/2. ``claimed``: each row's top column in the low-precision search, scored
    in ``claimed_dot``; ``unclaimed``: per block of rows and column, the int16-read bf16
    maximum over the rows that did not claim the column; ``any_input``: the largest
    ``_ErrorModel.row_input`` of any row."""
    n0, n1 = len(d0), len(d1)
    claim_score = claimed_dot - sq0 / 2
    claimer_best = torch.full((n1,), -torch.inf, device=d0.device).scatter_reduce(
        0, claimed, claim_score, reduce="amax")
    is_claimer = claimed == nn01
    own = claim_score.clone()
    others = torch.nonzero(~is_claimer).flatten()
    own[others] = _pair_dots(d0, d1, others, nn01[others]) - sq0[others] / 2
    high, low = _bounds(unclaimed.amax(dim=0)[nn01])
    half_norm_low, half_norm_high = float(sq0.min()) / 2, float(sq0.max()) / 2
    # no unclaimed row beats others_high; some unclaimed row reaches others_low
    others_high = high + _ErrorModel.output_slack(high) + any_input - half_norm_low
    others_low = low - _ErrorModel.output_slack(low) - any_input - half_norm_high
    beaten_by_claimer = claimer_best[nn01] > own
    mutual = is_claimer & ~beaten_by_claimer & (own > others_high)
    decided = mutual | beaten_by_claimer | (is_claimer & (others_low > own))
    undecided = torch.nonzero(~decided & wanted).flatten()
    if len(undecided) == 0:
        return mutual
    # Undecided rows are not beaten by a claimer (claimer_best <= own). Every block of rows
    # whose unclaimed maximum in the row's column could reach its score is scored in fp32,
    # one GEMM per block of rows over the columns that reach it.
    bits, usable = _threshold_bits(own[undecided] + half_norm_low, any_input)
    column = nn01[undecided]
    reached = (unclaimed[:, column] >= bits[None]) & usable[None]     # blocks × undecided
    best_other = torch.full((len(undecided),), -torch.inf, device=d0.device)
    for block in torch.nonzero(reached.any(dim=1)).flatten().tolist():
        group = torch.nonzero(reached[block]).flatten()
        first, last = block * row_block, min(n0, (block + 1) * row_block)
        score = d0[first:last] @ d1[column[group]].T - sq0[first:last, None] / 2
        own_row = undecided[group] - first                # a row does not compete with itself
        inside = torch.nonzero((own_row >= 0) & (own_row < last - first)).flatten()
        score[own_row[inside], inside] = -torch.inf
        best_other[group] = torch.maximum(best_other[group], score.amax(dim=0))
    refined = own[undecided] >= best_other
    unusable = torch.nonzero(~usable).flatten()
    if len(unusable):
        refined[unusable] = _exact_column_check(d0, d1, sq0, nn01, undecided[unusable],
                                                max_chunk_elements)
    mutual[undecided] = refined
    return mutual


def _exact_column_check(d0: torch.Tensor, d1: torch.Tensor, sq0: torch.Tensor,
                        nn01: torch.Tensor, rows: torch.Tensor,
                        max_chunk_elements: int) -> torch.Tensor:
    """For each of ``rows``: does it attain the fp32 maximum of a·b − |a|²/2 in its column?"""
    columns, position = torch.unique(nn01[rows], return_inverse=True)
    column_bias = sq0.mul(-0.5).unsqueeze(1)
    chunk = max(1, max_chunk_elements // len(d0))
    result = torch.empty(len(rows), dtype=torch.bool, device=d0.device)
    for start in range(0, len(columns), chunk):
        stop = min(start + chunk, len(columns))
        score = torch.addmm(column_bias, d0, d1[columns[start:stop]].T)   # N0 × chunk
        best = score.amax(dim=0)
        inside = torch.nonzero((position >= start) & (position < stop)).flatten()
        local = position[inside] - start
        result[inside] = score[rows[inside], local] >= best[local]
    return result
