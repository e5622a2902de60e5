"""LightGlue (Lindenberger, Sarlin, Pollefeys, ICCV'23): a port of the official inference
(cvg/LightGlue ``lightglue/lightglue.py``) for ALIKED and DISK features, official weights.

What it computes, per pair (the official behaviour):
- keypoints normalised as ``(xy - size/2) / (max(W, H)/2)`` (centre W/2, H/2: the official
  half-pixel choice), a learnable Fourier encoding of them (cos/sin of ``Wr·xy``), and the
  descriptors projected 128 -> 256;
- 9 layers of self-attention with rotary encoding (pairs (2t, 2t+1) rotated) for each image,
  then one cross-attention block shared by both directions; each block adds
  ``ffn(concat(x, message))`` to x;
- adaptive depth: after layers 0..7 it stops when more than ``depth_confidence`` of the
  original M + N points are confident (token confidence above the layer threshold
  ``0.8 + 0.1·exp(-4i/9)``; pruned points count as confident); adaptive width: from layer 0
  it drops the points that are confidently unmatchable (sigmoid matchability <=
  ``1 - width_confidence`` and confidence above the threshold). On CPU the official code
  prunes at any point count; so does this port, on every device;
- the log-assignment of the last layer run: double log-softmax of the scaled similarity plus
  log-sigmoid matchabilities; matches are mutual argmaxes whose exp(score) exceeds
  ``filter_threshold``.

Where it differs from the official code (results equal up to float rounding): self-attention
runs through ``scaled_dot_product_attention`` and the exact cross-attention in query blocks of
one reused buffer, each direction with its own product (bounded memory: 16k×16k keypoints fit
in 2 GiB; no transposed copy; attention weights kept above the subnormal range, see
``_attention``),
the assignment matrix is held whole only within its budget (``assignment_chunk_elements``)
and read in cache-sized row chunks (one pass for the row and column log-sum-exps, one for the
argmaxes), after loading the ``Wqkv`` rows are regrouped
(q | k | v, each rotary pair split into two contiguous halves), the cross-attention scale is
folded into ``to_qk`` and each block's output projection into its FFN, and several pairs can
go through the transformer at once (padded, masked keys; each pair keeps its own early exit
and pruning).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError, WeightsError
from ..features import Features
from ..weights import WeightFile, load_state_dict_strict, load_torch_checkpoint, resolve
from .base import Matcher, MatchResult


_RELEASE = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv"
WEIGHTS = {
    "aliked": WeightFile("lightglue", "aliked_lightglue.pth", f"{_RELEASE}/aliked_lightglue.pth",
                         "Apache-2.0",
                         "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503"),
    "disk": WeightFile("lightglue", "disk_lightglue.pth", f"{_RELEASE}/disk_lightglue.pth",
                       "Apache-2.0",
                       "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
                       note="v0.1 key names (self_attn.i / cross_attn.i)"),
}
INPUT_DIM = 128        # both official weight files take 128-d descriptors
DIM = 256
HEADS = 4
LAYERS = 9
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_BF16_GRANULE = 128


def weights_for_features(method: str) -> str:
    """The LightGlue weights that go with a feature preset (``aliked*`` -> aliked, ``disk``)."""
    if method.startswith("aliked"):
        return "aliked"
    if method == "disk":
        return "disk"
    raise ConfigError(f"LightGlue has official weights only for ALIKED (aliked-n16, aliked-n32, "
                      f"aliked-n16rot) and DISK features, not {method!r}; use a "
                      "nearest-neighbour matcher (mnn, mnn-ratio) for it")


@dataclass(frozen=True)
class LightGlueConfig:
    weights: str = "auto"             # "aliked", "disk", or "auto": from the features' method
    depth_confidence: float = 0.95    # early exit; -1 disables
    width_confidence: float = 0.99    # point pruning; -1 disables
    filter_threshold: float = 0.1     # keep a mutual match whose score exceeds this
    precision: str = "fp32"           # "fp32", or "bf16" for the transformer layers
    batch_size: int = 1               # pairs per forward (padded); >1 pays off on a GPU
    attention_chunk_elements: int = 1 << 25    # cross-attention similarities held at once
    assignment_chunk_elements: int = 1 << 22   # similarities held at once in the assignment

    def __post_init__(self) -> None:
        if self.weights not in ("auto", *WEIGHTS):
            raise ConfigError(f"lightglue: weights must be auto, {', '.join(WEIGHTS)}; "
                              f"got {self.weights!r}")
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"lightglue: precision must be one of {', '.join(_PRECISIONS)}, "
                              f"got {self.precision!r}")
        for name in ("depth_confidence", "width_confidence"):
            value = getattr(self, name)
            if value != -1 and not 0 < value <= 1:
                raise ConfigError(f"lightglue: {name} must lie in (0, 1] or be -1 (off), "
                                  f"got {value}")
        if not 0 <= self.filter_threshold < 1:
            raise ConfigError(f"lightglue: filter_threshold must lie in [0, 1), "
                              f"got {self.filter_threshold}")
        if self.batch_size < 1:
            raise ConfigError(f"lightglue: batch_size must be >= 1, got {self.batch_size}")
        for name in ("attention_chunk_elements", "assignment_chunk_elements"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lightglue: {name} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------------------ network

def _ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                         nn.Linear(2 * dim, dim))


def _qkv_order() -> torch.Tensor:
    """Official ``Wqkv`` output rows regrouped as [q | k | v], each head by head, and within a
    head of q and k the even dimensions then the odd ones: q, k and v become plain views and
    the rotary pairs (2t, 2t+1) two contiguous halves. q·k sums over the same dimensions."""
    head_dim = DIM // HEADS
    qk = [h * 3 * head_dim + 3 * (2 * t + half) + j for j in (0, 1) for h in range(HEADS)
          for half in (0, 1) for t in range(head_dim // 2)]
    v = [h * 3 * head_dim + 3 * d + 2 for h in range(HEADS) for d in range(head_dim)]
    return torch.tensor(qk + v)


def _fold_out_projection(out_proj: nn.Linear, ffn: nn.Sequential) -> None:
    """After loading: ``ffn(concat(x, out_proj(c)))`` becomes ``ffn(concat(x, c))``: the
    message columns of the FFN's first layer absorb the output projection (W·(A·c + a) =
    (W·A)·c + W·a, folded in float64), one 256×256 product per point and block fewer."""
    first = ffn[0]
    message_weight = first.weight[:, DIM:].double()
    first.bias.add_((message_weight @ out_proj.bias.double()).float())
    first.weight[:, DIM:] = (message_weight @ out_proj.weight.double()).float()


def _rotate(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary encoding of q and k (B×N×2×H×2×32: even then odd half of each head): each
    pair (even, odd) rotated by its angle, the official ``t·cos + rotate_half(t)·sin``.
    Returned as B×2×H×N×64, q and k each contiguous (the bf16 attention kernel runs 1.5x
    faster on contiguous heads)."""
    batch, n = qk.shape[:2]
    even, odd = qk[..., 0, :], qk[..., 1, :]
    cos, sin = cos[:, :, None, None], sin[:, :, None, None]
    rotated = qk.new_empty((batch, 2, HEADS, n, 2, qk.shape[-1]))
    view = rotated.permute(0, 3, 1, 2, 4, 5)   # B×N×2×H×2×32, as qk
    torch.mul(even, cos, out=view[..., 0, :]).addcmul_(odd, sin, value=-1)
    torch.mul(odd, cos, out=view[..., 1, :]).addcmul_(even, sin)
    return rotated.flatten(-2)


class _SelfBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Wqkv = nn.Linear(DIM, 3 * DIM)   # official rows h·192 + 3·d + j (j: q, k, v)
        self.out_proj = nn.Linear(DIM, DIM)
        self.ffn = _ffn(DIM)

    def regroup_(self) -> None:
        """After loading: ``Wqkv`` rows in the order of ``_qkv_order`` (what forward reads),
        ``out_proj`` folded into the FFN."""
        order = _qkv_order().to(self.Wqkv.weight.device)
        self.Wqkv.weight.copy_(self.Wqkv.weight[order])
        self.Wqkv.bias.copy_(self.Wqkv.bias[order])
        _fold_out_projection(self.out_proj, self.ffn)
        del self.out_proj

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        qkv = self.Wqkv(x)
        qk = _rotate(qkv[..., :2 * DIM].unflatten(-1, (2, HEADS, 2, -1)), cos, sin)
        q, k = qk[:, 0], qk[:, 1]                                            # B,H,N,64
        v = qkv[..., 2 * DIM:].unflatten(-1, (HEADS, -1)).transpose(1, 2).contiguous()
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return x + self.ffn(torch.cat([x, context.transpose(1, 2).flatten(-2)], -1))


class _CrossBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_qk = nn.Linear(DIM, DIM)
        self.to_v = nn.Linear(DIM, DIM)
        self.to_out = nn.Linear(DIM, DIM)
        self.ffn = _ffn(DIM)

    def regroup_(self) -> None:
        """After loading: ``to_qk`` scaled by head_dim^(-1/4), the official scaling of both
        sides' q/k before their product, and ``to_out`` folded into the FFN."""
        scale = (DIM // HEADS) ** -0.25
        self.to_qk.weight.mul_(scale)
        self.to_qk.bias.mul_(scale)
        _fold_out_projection(self.to_out, self.ffn)
        del self.to_out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, mask0: torch.Tensor | None,
                mask1: torch.Tensor | None, chunk_elements: int, exact: bool,
                scratch: "_Scratch") -> tuple[torch.Tensor, torch.Tensor]:
        # As the official CPU path: an exact softmax along each axis of the similarity; each
        # direction computes its own product (the same floats as the transposed matrix,
        # without a transposed copy of it). ``exact`` False (bf16) takes the fused attention
        # kernel, whose approximate exp would move fp32 matching scores by ~1e-4.
        def heads(t: torch.Tensor) -> torch.Tensor:   # B,N,256 -> B,H,N,64
            return t.unflatten(-1, (HEADS, -1)).transpose(1, 2).contiguous()

        qk0, qk1 = heads(self.to_qk(x0)), heads(self.to_qk(x1))
        v0, v1 = heads(self.to_v(x0)), heads(self.to_v(x1))
        if not exact:
            m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask1, scale=1.0)
            m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=mask0, scale=1.0)
        else:
            m0 = _attention(qk0, qk1, v1, mask1, chunk_elements, scratch)
            m1 = _attention(qk1, qk0, v0, mask0, chunk_elements, scratch)
        m0, m1 = m0.transpose(1, 2).flatten(-2), m1.transpose(1, 2).flatten(-2)
        return (x0 + self.ffn(torch.cat([x0, m0], -1)),
                x1 + self.ffn(torch.cat([x1, m1], -1)))


_QUERY_BLOCK_ELEMENTS = 1 << 22   # similarities per query block (16 MiB in fp32): the
#                                   fastest here, 1.7x one 64 MiB block at 2k x 2k points


_LOG_SMALLEST_WEIGHT = 75.0

_ASSIGNMENT_BLOCK_ELEMENTS = 1 << 18   # similarities per assignment chunk (1 MiB): cache-
#                                        resident, 2x faster than one 2k x 2k matrix here


class _Scratch:
    """The similarity buffer every cross-attention block of one forward reuses: a fresh
    matrix per block is fresh memory, a page fault per 4 KiB, which cost more than the
    softmax over it."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, elements: int, like: torch.Tensor) -> torch.Tensor:
        buffer = self._buffer
        if (buffer is None or buffer.numel() < elements or buffer.dtype != like.dtype
                or buffer.device != like.device):
            buffer = self._buffer = like.new_empty(elements)
        return buffer[:elements]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None, chunk_elements: int,
               scratch: _Scratch) -> torch.Tensor:
    """softmax(q·kᵀ)·v with an exact softmax, in query blocks of at most ``chunk_elements``
    similarities; ``key_mask`` (B×1×1×n, True = real point) hides padded keys."""
    batch, heads, queries, _ = q.shape
    keys = k.shape[2]
    k_t = k.transpose(-1, -2)
    per_query = batch * heads * keys
    step = max(1, min(chunk_elements, _QUERY_BLOCK_ELEMENTS) // per_query)
    buffer = scratch.take(per_query * min(step, queries), q)
    out = q.new_empty((batch, queries, heads, v.shape[-1])).transpose(1, 2)   # B,H,N,64 view
    for start in range(0, queries, step):
        stop = min(start + step, queries)
        sim = buffer[:per_query * (stop - start)].view(batch, heads, stop - start, keys)
        torch.matmul(q[:, :, start:stop], k_t, out=sim)
        if key_mask is not None:
            sim.masked_fill_(~key_mask, -torch.inf)
        # Peaked attention underflows to subnormal floats, which x86 handles some 10x
        # slower (in the softmax and in the product after it); similarities span up to
        # 400 after a few layers, on random inputs too. Raised to exp(-75) of the row
        # maximum, no weight is subnormal below 2e5 keys; each raised weight is below an
        # ulp of the sums it enters.
        sim.clamp_(min=sim.amax(-1, keepdim=True) - _LOG_SMALLEST_WEIGHT)
        if key_mask is not None:   # padded keys stay at zero weight
            sim.masked_fill_(~key_mask, -torch.inf)
        torch.softmax(sim, -1, out=sim)
        out[:, :, start:stop] = sim @ v
    return out


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _SelfBlock()
        self.cross_attn = _CrossBlock()


class _Assignment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.matchability = nn.Linear(DIM, 1)
        self.final_proj = nn.Linear(DIM, DIM)


class _TokenConfidence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(DIM, 1), nn.Sigmoid())


class _Fourier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Wr = nn.Linear(2, DIM // HEADS // 2, bias=False)


class LightGlueNet(nn.Module):
    """The official module tree (so both official files load strictly) and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.input_proj = nn.Linear(INPUT_DIM, DIM)
        self.posenc = _Fourier()
        self.transformers = nn.ModuleList(_Layer() for _ in range(LAYERS))
        self.log_assignment = nn.ModuleList(_Assignment() for _ in range(LAYERS))
        self.token_confidence = nn.ModuleList(_TokenConfidence() for _ in range(LAYERS - 1))


_OLD_NAME = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
_UNUSED_OLD = re.compile(r"^log_assignment\.\d+\.r$")


def load_lightglue(path, name: str) -> LightGlueNet:
    """The network with the official file at ``path`` loaded strictly: the current
    ``transformers.{i}.*`` names or the v0.1 ``self_attn.{i}.* / cross_attn.{i}.*`` names
    (whose nine unused ``log_assignment.{i}.r`` entries are dropped)."""
    state = load_torch_checkpoint(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a LightGlue state dict, got {type(state).__name__}")
    if any(_OLD_NAME.match(k) for k in state):
        state = {_OLD_NAME.sub(r"transformers.\2.\1.", k): v for k, v in state.items()
                 if not _UNUSED_OLD.match(k)}
    net = LightGlueNet()
    load_state_dict_strict(net, state, f"{path} (LightGlue {name})")
    net.eval().requires_grad_(False)
    for layer in net.transformers:
        layer.self_attn.regroup_()
        layer.cross_attn.regroup_()
    return net


def normalize_keypoints(keypoints: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    """(xy - size/2) / (max(size)/2); without a size, the keypoints' own extent + 1."""
    if size is None:
        size = 1 + keypoints.max(-2).values - keypoints.min(-2).values
    size = size.to(keypoints)
    return (keypoints - size[..., None, :] / 2) / (size.max(-1).values[..., None, None] / 2)


# ---------------------------------------------------------------------------- inference

@dataclass
class _Side:
    """One image of one pair while it goes through the layers."""
    desc: torch.Tensor         # 1×n×256 (compute dtype)
    cos: torch.Tensor          # 1×n×32
    sin: torch.Tensor
    index: torch.Tensor        # n: original keypoint index of each remaining point
    prune: torch.Tensor        # N: layers each original point was kept through
    total: int                 # N, the original count


@dataclass
class _PairState:
    sides: tuple[_Side, _Side]
    stop: int = 0              # layers run, set when the pair is finished


@dataclass
class LightGlueOutput:
    """The official outputs of one pair (batch dimension removed)."""
    matches0: np.ndarray        # N0 int64, -1 unmatched
    matches1: np.ndarray
    matching_scores0: np.ndarray
    matching_scores1: np.ndarray
    stop: int
    prune0: np.ndarray
    prune1: np.ndarray

    def as_matches(self) -> MatchResult:
        idx0 = np.nonzero(self.matches0 >= 0)[0]
        matches = np.stack([idx0, self.matches0[idx0]], 1).astype(np.int32)
        return matches.reshape(-1, 2), self.matching_scores0[idx0].astype(np.float32)


class LightGlue(Matcher):
    name = "lightglue"
    config_class = LightGlueConfig
    presets = {
        "lightglue": LightGlueConfig(),
        "lightglue-full": LightGlueConfig(depth_confidence=-1, width_confidence=-1),
        "lightglue-bf16": LightGlueConfig(precision="bf16"),
    }
    weight_files = tuple(WEIGHTS.values())

    def __init__(self, config: LightGlueConfig | None = None, device: str | None = None,
                 features_method: str | None = None) -> None:
        super().__init__(config, device)
        weights = self.config.weights
        if features_method is not None:
            expected = weights_for_features(features_method)
            if weights == "auto":
                weights = expected
            elif weights != expected:
                raise ConfigError(f"lightglue: weights {weights!r} are for "
                                  f"{weights} features, not {features_method!r}; "
                                  f"use weights={expected} (or weights=auto)")
        elif weights == "auto":
            raise ConfigError("lightglue: weights=auto needs the features' method; "
                              "pass features_method or weights=aliked|disk")
        self.config = LightGlueConfig(**{**vars(self.config), "weights": weights})
        self.dtype = _PRECISIONS[self.config.precision]
        net = load_lightglue(resolve(WEIGHTS[weights]), weights).to(self.device)
        self._heads_net = net   # fp32: projections, token confidence, assignment
        if self.dtype == torch.float32:
            self._layers = net.transformers
        else:
            self._layers = copy.deepcopy(net.transformers).to(self.dtype)
        # oneDNN builds a bf16 kernel per new matrix shape (4 ms per linear layer here), and
        # pruning gives every layer of every pair new point counts: on the CPU in bf16 the
        # points are padded (masked keys) to a multiple of _BF16_GRANULE, so shapes recur
        self._granule = (_BF16_GRANULE if self.dtype == torch.bfloat16
                         and torch.device(self.device).type == "cpu" else 1)
        self._thresholds = torch.tensor(
            [float(np.clip(0.8 + 0.1 * np.exp(-4.0 * i / LAYERS), 0, 1)) for i in range(LAYERS)],
            dtype=torch.float32, device=self.device)

    @property
    def pairs_per_batch(self) -> int:
        return self.config.batch_size

    # ------------------------------------------------------------------ public entry points

    def check(self, features: Features) -> None:
        if features.descriptor_dim != INPUT_DIM:
            raise InputError(f"lightglue ({self.config.weights}) expects {INPUT_DIM}-d "
                             f"descriptors, got {features.descriptor_dim}-d (wrong features "
                             "for these weights?)")

    def match(self, features0: Features, features1: Features) -> MatchResult:
        return self.match_batch([(features0, features1)])[0]

    def match_batch(self, pairs: Sequence[tuple[Features, Features]]) -> list[MatchResult]:
        return [out.as_matches() if out is not None else _no_matches()
                for out in self.forward_batch(pairs)]

    def forward(self, features0: Features, features1: Features) -> LightGlueOutput | None:
        """The official per-point outputs of one pair (None when a side has < 2 points)."""
        return self.forward_batch([(features0, features1)])[0]

    def forward_batch(self, pairs: Sequence[tuple[Features, Features]]
                      ) -> list[LightGlueOutput | None]:
        for f0, f1 in pairs:
            self.check(f0)
            self.check(f1)
        results: list[LightGlueOutput | None] = [None] * len(pairs)
        todo = [i for i, (f0, f1) in enumerate(pairs) if len(f0) >= 2 and len(f1) >= 2]
        if not todo:
            return results
        with torch.inference_mode():
            states = [self._start(*pairs[i]) for i in todo]
            for i, out in zip(todo, self._run(states)):
                results[i] = out
        return results

    # ---------------------------------------------------------------------------- internals

    def _start(self, f0: Features, f1: Features) -> _PairState:
        sides = []
        for f in (f0, f1):
            kp = torch.from_numpy(f.keypoints).to(self.device)[None]
            size = None if f.image_size is None else torch.tensor(
                f.image_size, dtype=torch.float32, device=self.device)[None]
            projected = self._heads_net.posenc.Wr(normalize_keypoints(kp, size))   # 1×n×32
            desc = torch.from_numpy(f.descriptors).to(self.device)[None]
            desc = self._heads_net.input_proj(desc).to(self.dtype)
            n = len(f)
            sides.append(_Side(desc=desc, cos=torch.cos(projected).to(self.dtype),
                               sin=torch.sin(projected).to(self.dtype),
                               index=torch.arange(n, device=self.device),
                               prune=torch.ones(n, dtype=torch.long, device=self.device),
                               total=n))
        return _PairState(sides=(sides[0], sides[1]))

    def _run(self, states: list[_PairState]) -> list[LightGlueOutput]:
        early_stop = self.config.depth_confidence > 0
        pruning = self.config.width_confidence > 0
        active = list(states)
        scratch = _Scratch()
        for layer in range(LAYERS):
            self._layer(layer, active, scratch)
            if layer == LAYERS - 1:
                for state in active:
                    state.stop = LAYERS
                break
            still = []
            for state in active:
                s0, s1 = state.sides
                tokens = [None, None]
                if early_stop:
                    tokens = [self._confidence(layer, s.desc) for s in (s0, s1)]
                    below = sum(int((t < self._thresholds[layer]).sum()) for t in tokens)
                    if 1.0 - below / (s0.total + s1.total) > self.config.depth_confidence:
                        state.stop = layer + 1
                        continue
                if pruning:
                    for side, token in zip((s0, s1), tokens):
                        self._prune(layer, side, token)
                still.append(state)
            active = still
            if not active:
                break
        return [self._assign(state) for state in states]

    def _layer(self, layer: int, states: list[_PairState], scratch: _Scratch) -> None:
        """One transformer layer over every active pair (stacked; padded when their point
        counts differ, with the padded keys masked out)."""
        block = self._layers[layer]
        sides = [[st.sides[k] for st in states] for k in (0, 1)]
        stacked = [_stack(group, self._granule) for group in sides]
        (d0, c0, s0, m0), (d1, c1, s1, m1) = stacked
        d0 = block.self_attn(d0, c0, s0, m0)
        d1 = block.self_attn(d1, c1, s1, m1)
        d0, d1 = block.cross_attn(d0, d1, m0, m1, self.config.attention_chunk_elements,
                                  self.dtype == torch.float32, scratch)
        for k, desc in ((0, d0), (1, d1)):
            for b, side in enumerate(sides[k]):
                side.desc = desc[b:b + 1, :side.desc.shape[1]]

    def _confidence(self, layer: int, desc: torch.Tensor) -> torch.Tensor:
        return self._heads_net.token_confidence[layer].token(desc.float())[0, :, 0]

    def _prune(self, layer: int, side: _Side, token: torch.Tensor | None) -> None:
        head = self._heads_net.log_assignment[layer].matchability
        matchable = torch.sigmoid(head(side.desc.float()))[0, :, 0]
        keep = matchable > (1 - self.config.width_confidence)
        if token is not None:   # low-confidence points are never pruned
            keep |= token <= self._thresholds[layer]
        kept = torch.nonzero(keep).flatten()
        side.index = side.index[kept]
        side.desc = side.desc[:, kept]
        side.cos, side.sin = side.cos[:, kept], side.sin[:, kept]
        side.prune[side.index] += 1

    def _assign(self, state: _PairState) -> LightGlueOutput:
        s0, s1 = state.sides
        head = self._heads_net.log_assignment[state.stop - 1]
        desc0, desc1 = s0.desc[0].float(), s1.desc[0].float()
        scale = DIM ** -0.25
        proj0, proj1 = head.final_proj(desc0) * scale, head.final_proj(desc1) * scale
        z0 = head.matchability(desc0)[:, 0]
        z1 = head.matchability(desc1)[:, 0]
        m0, score0, m1 = _mutual_assignment(proj0, proj1, z0, z1,
                                            self.config.assignment_chunk_elements)
        valid0 = (m1[m0] == torch.arange(len(m0), device=m0.device))
        mutual_score0 = torch.where(valid0, score0, torch.zeros_like(score0))
        valid1 = m0[m1] == torch.arange(len(m1), device=m1.device)
        mutual_score1 = torch.where(valid1, mutual_score0[m1], torch.zeros_like(score0[:1]))
        keep0 = valid0 & (mutual_score0 > self.config.filter_threshold)
        keep1 = valid1 & keep0[m1]
        full = []
        for side, other, match, keep, score in ((s0, s1, m0, keep0, mutual_score0),
                                                (s1, s0, m1, keep1, mutual_score1)):
            matches = torch.full((side.total,), -1, dtype=torch.long, device=self.device)
            matches[side.index] = torch.where(keep, other.index[match], -1)
            scores = torch.zeros(side.total, dtype=torch.float32, device=self.device)
            scores[side.index] = score
            full.append((matches.cpu().numpy(), scores.cpu().numpy()))
        stop = state.stop
        prune0, prune1 = (s.prune.cpu().numpy() for s in (s0, s1))
        if self.config.width_confidence <= 0:   # the official value when nothing is pruned
            prune0, prune1 = np.full_like(prune0, LAYERS), np.full_like(prune1, LAYERS)
        return LightGlueOutput(matches0=full[0][0], matches1=full[1][0],
                               matching_scores0=full[0][1], matching_scores1=full[1][1],
                               stop=stop, prune0=prune0, prune1=prune1)


def _stack(sides: list[_Side], granule: int = 1):
    """Batch tensors of several pairs' sides, padded to the longest rounded up to a multiple
    of ``granule``; a key mask (True = real point) only when some side is padded."""
    longest = max(s.desc.shape[1] for s in sides)
    length = -(-longest // granule) * granule
    if len(sides) == 1 and length == longest:
        s = sides[0]
        return s.desc, s.cos, s.sin, None

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = length - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t, t.new_zeros(shape)], dim)

    desc = torch.cat([pad(s.desc, 1) for s in sides])
    cos = torch.cat([pad(s.cos, 1) for s in sides])
    sin = torch.cat([pad(s.sin, 1) for s in sides])
    if all(s.desc.shape[1] == length for s in sides):
        return desc, cos, sin, None
    mask = torch.zeros(len(sides), 1, 1, length, dtype=torch.bool, device=desc.device)
    for b, s in enumerate(sides):
        mask[b, ..., :s.desc.shape[1]] = True
    return desc, cos, sin, mask


def _mutual_assignment(proj0: torch.Tensor, proj1: torch.Tensor, z0: torch.Tensor,
                       z1: torch.Tensor, chunk_elements: int):
    """Row argmax (index, exp(score)) and column argmax of the official log-assignment
    ``log_softmax_rows(S) + log_softmax_cols(S) + logsigmoid(z0) + logsigmoid(z1)ᵀ``,
    S = proj0·proj1ᵀ, in row chunks of S: one pass for the log-sum-exps, one for the maxima.
    When the whole of S fits in ``chunk_elements`` it is one product, whose row chunks both
    passes read (2x faster at 1k × 1k points than a product per chunk and pass)."""
    n0, n1 = len(proj0), len(proj1)
    rows = max(1, min(chunk_elements, _ASSIGNMENT_BLOCK_ELEMENTS) // max(n1, 1))
    proj1_t = proj1.T
    row_lse = torch.empty(n0, device=proj0.device)
    col_max = torch.full((n1,), -torch.inf, device=proj0.device)
    col_sum = torch.zeros(n1, device=proj0.device)
    whole = proj0 @ proj1_t if n0 * n1 <= chunk_elements else None

    def similarities(start: int, stop: int) -> torch.Tensor:
        return whole[start:stop] if whole is not None else proj0[start:stop] @ proj1_t

    for start in range(0, n0, rows):
        sim = similarities(start, start + rows)
        row_lse[start:start + rows] = torch.logsumexp(sim, 1)
        new_max = torch.maximum(col_max, sim.amax(0))
        col_sum = col_sum * torch.exp(col_max - new_max) + torch.exp(sim - new_max).sum(0)
        col_max = new_max
    col_lse = col_max + torch.log(col_sum)
    ls0, ls1 = F.logsigmoid(z0), F.logsigmoid(z1)
    best0 = torch.empty(n0, dtype=torch.long, device=proj0.device)
    score0 = torch.empty(n0, device=proj0.device)
    col_best = torch.full((n1,), -torch.inf, device=proj0.device)
    best1 = torch.zeros(n1, dtype=torch.long, device=proj0.device)
    for start in range(0, n0, rows):
        stop = min(start + rows, n0)
        sim = similarities(start, stop)
        # the official sum, in its order: log_softmax_rows + log_softmax_cols + logsigmoids
        total = sim - row_lse[start:stop, None]
        total += sim.sub_(col_lse)
        total += ls0[start:stop, None]
        total += ls1
        value, index = total.max(1)
        best0[start:stop] = index
        score0[start:stop] = value.exp()
        chunk_value, chunk_index = total.max(0)
        better = chunk_value > col_best
        col_best = torch.where(better, chunk_value, col_best)
        best1 = torch.where(better, chunk_index + start, best1)
    return best0, score0, best1


def _no_matches() -> MatchResult:
    return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
