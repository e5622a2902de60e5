"""ALIKED: a lighter keypoint and descriptor extraction network via deformable
transformation (Zhao, Wu, Xu, Chen, Liu; IEEE TIM 2023), with the official weights.

Network (four variants, official names): an encoder of four blocks at strides 1, 2, 8 and
32 (blocks 3 and 4 use 3×3 *deformable* convolutions), 1×1 aggregation of every level into
a full-resolution feature map, a small score head, and the sparse deformable descriptor
head (SDDH): at each keypoint a 3×3 patch predicts M sample offsets, the features sampled
there are mixed by a 1×1 conv and aggregated by M learned D×D matrices into one
L2-normalised descriptor.

Detection (DKD, as the official ``nets/soft_detect.py``): non-maximum suppression on the
score map (radius 2, with the official two suppression rounds), a border of 2 pixels
removed, then either the ``top_k`` strongest peaks or every peak above
``detection_threshold`` (the score-map mean when none passes), capped at the
``max_keypoints`` strongest. When ``top_k`` exceeds the number of peaks, only the peaks are
kept (the official code pads the result with suppressed, zero-score positions, border ones
included). Each peak is refined by a soft-argmax (temperature 0.1) over
its 5×5 neighbourhood and scored by bilinear interpolation of the score map there.

Preprocessing follows hloc's ``aliked-n16`` configuration: RGB scaled to [0, 1], the long
side reduced to ``max_edge`` (1024) with area interpolation, keypoints mapped back by
``(x + 0.5) · s - 0.5`` per axis. The network pads the image to a multiple of 32 by
border replication, as the official code does. Detection defaults (threshold 0.2, at most
5000 keypoints) are those of the official ``ALIKED`` class and demo (hloc, through
LightGlue, caps at 20000 instead; ``max_keypoints`` sets it).

Coordinates: the official code returns keypoints in [-1, 1] with -1/+1 at the centres of
the first/last pixel (``align_corners=True``), i.e. ``x_pix = (x_n + 1) / 2 · (W - 1)``.
That is sfmfeat's convention (pixel centre at integer coordinates) once converted. The
conversion to and from [-1, 1] is kept in the official float order, because the SDDH patch
position is the *truncated* pixel coordinate and must land on the same pixel.

Deformable convolution is written with ``grid_sample`` (torchvision's ``deform_conv2d`` is
not needed): bilinear sampling with zeros outside the map, exactly its semantics. The SDDH
3×3 patch follows the official CPU path (the ``get_patches`` fallback LightGlue and hloc
use): the patch starts one pixel up-left of the truncated keypoint and is clamped to lie
inside the map. Its samples are bilinear between pixel centres, zero outside the map.

Speed: the official code builds the full-resolution D-channel feature map; here the score
head's first 1×1 conv runs on each level before upsampling (the two commute) and the
feature map is evaluated only at the pixels the descriptor head reads
(``AlikedNet.sparse``; ``AlikedNet.dense`` is the official formulation, kept for tests).

Weights: the ``weights`` field alone chooses the release (``aliked-n16.pth``, ...) or a
path; the architecture follows from it: a registered file's variant, or for a user's file
the official file its checksum names, else the architecture its tensors fit. The four
official files are told apart by checksum, so a registered name holding another variant's
file (even n16rot for n16, which has the same shapes) gives a WeightsError naming it; any
other file must still match the network strictly.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ValidatedConfig, at_least, registered_or_path
from ..errors import WeightsError
from ..weights import WeightFile, load_state_dict_strict, load_torch_checkpoint
from .base import Extractor, Features

logger = logging.getLogger(__name__)

STRIDE = 32  # the encoder's coarsest level; smaller images give no keypoints
SOFTMAX_TEMPERATURE = 0.1

# variant -> (c1, c2, c3, c4, descriptor dim D, SDDH sample points M)
VARIANTS = {
    "aliked-t16": (8, 16, 32, 64, 64, 16),
    "aliked-n16": (16, 32, 64, 128, 128, 16),
    "aliked-n16rot": (16, 32, 64, 128, 128, 16),
    "aliked-n32": (16, 32, 64, 128, 128, 32),
}

_URL = "https://github.com/Shiaoming/ALIKED/raw/main/models/{}.pth"
_SHA256 = {
    "aliked-t16": "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
    "aliked-n16": "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
    "aliked-n16rot": "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
    "aliked-n32": "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
}
WEIGHT_FILES = {
    name: WeightFile(method="aliked", filename=f"{name}.pth", url=_URL.format(name),
                     licence="BSD-3-Clause", sha256=_SHA256[name],
                     note="Shiaoming/ALIKED @ 683d7c65")
    for name in VARIANTS
}


@dataclass(frozen=True)
class AlikedConfig(ValidatedConfig):
    weights: str = "aliked-n16.pth"      # aliked-{t16,n16,n16rot,n32}.pth or a path
    detection_threshold: float = 0.2     # keep peaks scoring above it; <= 0: above the map mean
    max_keypoints: int = 5000            # the strongest peaks kept in threshold mode
    top_k: int | None = None             # fixed count of peaks instead of the threshold
    nms_radius: int = 2                  # NMS, border and soft-argmax radius
    max_edge: int | None = 1024          # long side before extraction; None = full resolution

    rules = {"nms_radius": at_least(1),
             "max_keypoints": at_least(1), "top_k": at_least(1), "max_edge": at_least(STRIDE),
             "weights": registered_or_path(*(f"{v}.pth" for v in VARIANTS))}


# ---------------------------------------------------------------- deformable convolution

def deform_conv3x3(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)`` for 3×3 kernels.

    offset is B×18×H×W: for each tap k = 3·i + j (row i, column j of the kernel) the pair
    (dy, dx) at channels 2k, 2k+1. Tap k of output pixel (y, x) reads the input bilinearly
    at (y + i - 1 + dy, x + j - 1 + dx), zero outside the map.
    """
    b, c, h, w = x.shape
    taps = weight.shape[-1] * weight.shape[-2]
    offset = offset.view(b, taps, 2, h, w)
    ky, kx = torch.meshgrid(torch.arange(-1, 2, dtype=x.dtype, device=x.device),
                            torch.arange(-1, 2, dtype=x.dtype, device=x.device), indexing="ij")
    ys = torch.arange(h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
    py = ys + ky.reshape(1, taps, 1, 1) + offset[:, :, 0]
    px = xs + kx.reshape(1, taps, 1, 1) + offset[:, :, 1]
    # pixel -> grid_sample coordinates (align_corners=False: pixel centre i at (2i+1)/n - 1)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
    columns = F.grid_sample(x, grid.view(b, taps * h, w, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # B×C×(9H)×W
    out = weight.reshape(weight.shape[0], c * taps) @ columns.view(b, c * taps, h * w)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, -1, h, w)


class DeformConv3x3(nn.Module):
    """The official DeformableConv2d (3×3, stride 1, no mask, no bias): offsets from a plain
    3×3 conv, clamped to a quarter of the map's longer side."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.offset_conv = nn.Conv2d(cin, 18, 3, padding=1, bias=True)
        self.regular_conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_offset = max(x.shape[-2:]) / 4.0
        offset = self.offset_conv(x).clamp(-max_offset, max_offset)
        return deform_conv3x3(x, offset, self.regular_conv.weight)


# ---------------------------------------------------------------- network

def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.selu(self.bn1(self.conv1(x)))
        return F.selu(self.bn2(self.conv2(x)))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, deformable: bool) -> None:
        super().__init__()
        conv = DeformConv3x3 if deformable else _conv3x3
        self.conv1, self.bn1 = conv(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.selu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.selu(out + self.downsample(x))


class SDDH(nn.Module):
    """Sparse deformable descriptor head, batched over keypoints.

    The feature map enters as ``features_at(flat) -> K×C``: the L2-normalised features at
    row-major pixel indices of the H×W map, so that only the pixels used are computed.
    """

    def __init__(self, dim: int, n_pos: int) -> None:
        super().__init__()
        self.n_pos = n_pos
        self.offset_conv = nn.Sequential(nn.Conv2d(dim, 2 * n_pos, 3), nn.SELU(),
                                         nn.Conv2d(2 * n_pos, 2 * n_pos, 1))
        self.sf_conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.agg_weights = nn.Parameter(torch.zeros(n_pos, dim, dim))

    def forward(self, features_at, h: int, w: int, kp_wh: torch.Tensor) -> torch.Tensor:
        """kp_wh: N×2 float (x, y) pixels -> N×D L2-normalised descriptors."""
        n, c = len(kp_wh), self.sf_conv.weight.shape[0]
        # 3×3 patch whose top-left corner is one pixel up-left of the truncated keypoint,
        # clamped inside the map (the official CPU path)
        corner = (kp_wh.long() - 1).clamp(min=0)
        cx = corner[:, 0].clamp(max=w - 4)
        cy = corner[:, 1].clamp(max=h - 4)
        steps = torch.arange(3, device=kp_wh.device)
        flat = (cy[:, None, None] + steps[None, :, None]) * w + cx[:, None, None] + steps
        patch = features_at(flat.reshape(-1)).view(n, 9, c).transpose(1, 2)  # N×C×9
        conv0, conv1 = self.offset_conv[0], self.offset_conv[2]
        hidden = F.selu(F.linear(patch.reshape(n, c * 9), conv0.weight.view(-1, c * 9),
                                 conv0.bias))
        max_offset = max(h, w) / 4.0
        offset = F.linear(hidden, conv1.weight.flatten(1), conv1.bias)
        offset = offset.clamp(-max_offset, max_offset).view(n, 2, self.n_pos).transpose(1, 2)
        # features at keypoint + offset: bilinear between pixel centres, zero outside
        pos = (kp_wh[:, None, :] + offset).reshape(-1, 2)  # (N·M)×2
        base = pos.floor()
        frac = (pos - base)[None]  # 1×(N·M)×2
        step = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=pos.device)[:, None]
        corners = base.long()[None] + step  # 4×(N·M)×2: the four neighbouring pixels
        weights = torch.where(step == 1, frac, 1 - frac).prod(dim=-1)
        inside = ((corners >= 0) & (corners < torch.tensor([w, h], device=pos.device))).all(-1)
        index = corners[..., 1].clamp(0, h - 1) * w + corners[..., 0].clamp(0, w - 1)
        samples = features_at(index.reshape(-1)).view(4, n * self.n_pos, c)
        samples = (samples * (weights * inside)[..., None]).sum(dim=0)
        samples = F.selu(samples @ self.sf_conv.weight.view(c, c).t())  # (N·M)×C
        descriptors = samples.view(n, self.n_pos * c) @ self.agg_weights.reshape(self.n_pos * c, -1)
        return F.normalize(descriptors, p=2.0, dim=1)


def dense_features(fmap: torch.Tensor):
    """``features_at`` over a dense C×H×W feature map."""
    flat_map = fmap.reshape(fmap.shape[0], -1)
    return lambda flat: flat_map[:, flat].t()


class AlikedNet(nn.Module):
    """The official ALIKED network; parameter names match the official checkpoints."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        c1, c2, c3, c4, dim, n_pos = VARIANTS[variant]
        self.block1 = ConvBlock(3, c1)
        self.block2 = ResBlock(c1, c2, deformable=False)
        self.block3 = ResBlock(c2, c3, deformable=True)
        self.block4 = ResBlock(c3, c4, deformable=True)
        self.conv1 = nn.Conv2d(c1, dim // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(c2, dim // 4, 1, bias=False)
        self.conv3 = nn.Conv2d(c3, dim // 4, 1, bias=False)
        self.conv4 = nn.Conv2d(dim, dim // 4, 1, bias=False)
        self.score_head = nn.Sequential(
            nn.Conv2d(dim, 8, 1, bias=False), nn.SELU(), _conv3x3(8, 4), nn.SELU(),
            _conv3x3(4, 4), nn.SELU(), _conv3x3(4, 1))
        self.desc_head = SDDH(dim, n_pos)

    def encode(self, image: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """image 1×3×H×W in [0, 1], padded to a multiple of 32 by border replication ->
        the four aggregated levels (1×D/4 at strides 1, 2, 8, 32) and the (top, left) pad."""
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(image, (left, pad_w - left, top, pad_h - top), mode="replicate")
        x1 = self.block1(x)
        x2 = self.block2(F.avg_pool2d(x1, 2))
        x3 = self.block3(F.avg_pool2d(x2, 4))
        x4 = self.block4(F.avg_pool2d(x3, 4))
        levels = [F.selu(conv(level)) for conv, level in
                  ((self.conv1, x1), (self.conv2, x2), (self.conv3, x3), (self.conv4, x4))]
        return levels, (top, left)

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official formulation: (feature map 1×D×H×W, score map 1×1×H×W), both made
        at full resolution from the upsampled, concatenated levels."""
        h, w = image.shape[-2:]
        levels, (top, left) = self.encode(image)
        size = levels[0].shape[-2:]
        features = torch.cat([levels[0]] + [
            F.interpolate(level, size=size, mode="bilinear", align_corners=True)
            for level in levels[1:]], dim=1)
        scores = torch.sigmoid(self.score_head(features))
        features = F.normalize(features, p=2, dim=1)
        crop = (..., slice(top, top + h), slice(left, left + w))
        return features[crop], scores[crop]

    def sparse(self, image: torch.Tensor):
        """The same maps, computed faster: (score map H×W, ``features_at``).

        Upsampling and 1×1 convolution commute, so the score head's first layer runs on
        each level at its own resolution and only 8 channels are upsampled; the feature
        map is evaluated only at the pixels the descriptor head reads.
        """
        h, w = image.shape[-2:]
        levels, (top, left) = self.encode(image)
        size = levels[0].shape[-2:]
        first = self.score_head[0].weight.flatten(1).split(levels[0].shape[1], dim=1)
        hidden = F.conv2d(levels[0], first[0][:, :, None, None])
        for level, weight in zip(levels[1:], first[1:]):
            hidden = hidden + F.interpolate(F.conv2d(level, weight[:, :, None, None]),
                                            size=size, mode="bilinear", align_corners=True)
        scores = torch.sigmoid(self.score_head[1:](hidden))[0, 0, top:top + h, left:left + w]

        padded_h, padded_w = size

        def features_at(flat: torch.Tensor) -> torch.Tensor:
            y, x = flat // w + top, flat % w + left
            parts = [levels[0][0][:, y, x]]
            grid = torch.stack((2 * x / (padded_w - 1) - 1, 2 * y / (padded_h - 1) - 1), -1)
            for level in levels[1:]:  # align_corners=True upsampling at those pixels
                parts.append(F.grid_sample(level, grid.view(1, 1, -1, 2).to(level.dtype),
                                           mode="bilinear", align_corners=True)[0, :, 0])
            return F.normalize(torch.cat(parts), p=2, dim=0).t()

        return scores, features_at


# ---------------------------------------------------------------- detection (DKD)

def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Scores kept at local maxima of a (2r+1)² window, zero elsewhere; two extra rounds
    recover maxima hidden only by suppressed neighbours (the official rule)."""
    def max_pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    max_mask = scores == max_pool(scores)
    for _ in range(2):
        suppressed = max_pool(max_mask.float()) > 0
        supp_scores = torch.where(suppressed, zeros, scores)
        new_max = supp_scores == max_pool(supp_scores)
        max_mask = max_mask | (new_max & ~suppressed)
    return torch.where(max_mask, scores, zeros)


def select_peaks(scores: torch.Tensor, radius: int, threshold: float, limit: int,
                 top_k: int | None) -> torch.Tensor:
    """Flat indices (row-major) of the detected peaks of an H×W score map."""
    h, w = scores.shape
    nms = simple_nms(scores[None, None], radius)[0, 0]
    nms[:radius], nms[:, :radius] = 0, 0
    nms[h - radius:], nms[:, w - radius:] = 0, 0
    nms = nms.reshape(-1)
    if top_k is not None and top_k > 0:
        indices = torch.topk(nms, min(top_k, nms.numel())).indices
        return indices[nms[indices] > 0]
    mask = nms > threshold if threshold > 0 else nms > scores.mean()
    if threshold > 0 and not mask.any():
        mask = nms > scores.mean()
    indices = mask.nonzero()[:, 0]
    if len(indices) > limit:
        order = scores.reshape(-1)[indices].sort(descending=True)[1]
        indices = indices[order[:limit]]
    return indices


def refine_peaks(scores: torch.Tensor, indices: torch.Tensor,
                 radius: int) -> torch.Tensor:
    """Soft-argmax over the (2r+1)² window of each peak -> N×2 (x, y) pixel positions.
    Peaks are at least ``radius`` from the border, so the window is inside the map."""
    h, w = scores.shape
    steps = torch.arange(-radius, radius + 1, device=scores.device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    window = scores.reshape(-1)[indices[:, None] + (dy * w + dx).reshape(1, -1)]
    weights = ((window - window.max(dim=1, keepdim=True).values) / SOFTMAX_TEMPERATURE).exp()
    grid = torch.stack((dx, dy), dim=-1).reshape(-1, 2).to(scores.dtype)
    residual = weights @ grid / weights.sum(dim=1, keepdim=True)
    peaks = torch.stack((indices % w, torch.div(indices, w, rounding_mode="trunc")), dim=1)
    return peaks + residual


# ---------------------------------------------------------------- extractor

class Aliked(Extractor):
    name = "aliked"
    config_class = AlikedConfig
    presets = {
        "aliked-n16": AlikedConfig(),
        "aliked-n32": AlikedConfig(weights="aliked-n32.pth"),
        "aliked-t16": AlikedConfig(weights="aliked-t16.pth"),
        "aliked-n16rot": AlikedConfig(weights="aliked-n16rot.pth"),
    }
    default_matcher = "mnn"   # measured against reference poses (README, "Default matchers")
    weight_files = tuple(WEIGHT_FILES.values())
    resize_backend = "cv2-area"

    def __init__(self, config: AlikedConfig | None = None, device: str | None = None) -> None:
        super().__init__(config, device)
        cfg = self.config
        registered = cfg.weights.removesuffix(".pth") if cfg.weights in (
            w.filename for w in self.weight_files) else None
        self.net = load_network(self._weights(), registered).to(self.device)
        self.descriptor_dim = VARIANTS[self.net.variant][4]

    def _forward(self, image: np.ndarray) -> Features | None:
        if min(image.shape[:2]) < STRIDE:
            return None
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        tensor = tensor.permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            keypoints, scores, descriptors = self._network_forward(tensor)
        return Features(keypoints=keypoints.cpu().numpy(), scores=scores.cpu().numpy(),
                        descriptors=descriptors.cpu().numpy())

    def _network_forward(self, image: torch.Tensor):
        cfg = self.config
        score_map, features_at = self.net.sparse(image)
        h, w = score_map.shape
        indices = select_peaks(score_map, cfg.nms_radius, cfg.detection_threshold,
                               cfg.max_keypoints, cfg.top_k)
        if len(indices) == 0:
            empty = score_map.new_zeros((0, 2))
            return empty, score_map.new_zeros(0), score_map.new_zeros((0, self.descriptor_dim))
        xy = refine_peaks(score_map, indices, cfg.nms_radius)
        # the official float path: pixels -> [-1, 1] -> pixels (see the module docstring)
        wh = torch.tensor([w - 1, h - 1], device=xy.device)
        normalized = xy / wh * 2 - 1
        scores = F.grid_sample(score_map[None, None], normalized.view(1, 1, -1, 2),
                               mode="bilinear", align_corners=True)[0, 0, 0]
        descriptors = self.net.desc_head(features_at, h, w, (normalized / 2 + 0.5) * wh)
        keypoints = wh * (normalized + 1) / 2
        return keypoints, scores, descriptors


def load_network(path: Path, registered: str | None = None) -> AlikedNet:
    """An AlikedNet in eval mode with the checkpoint at ``path`` loaded strictly.

    ``registered``: the variant whose registered file ``path`` is (another official file
    there is an error); None for a user's file, whose variant is the official one of its
    checksum, else the architecture its tensors fit."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ALIKED weight file {path} not found")
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    official = next((name for name, digest in _SHA256.items() if digest == checksum), None)
    state = load_torch_checkpoint(path)
    if registered is None:
        variant = official or _fitting_variant(state)
    elif official not in (None, registered):
        raise WeightsError(f"{path} is the official {official}.pth, not {registered}.pth; "
                           f"put the {registered} weights there or choose "
                           f"weights={official}.pth")
    else:
        if official is None:
            logger.warning("%s: sha256 differs from the official %s.pth; loading it anyway",
                           path, registered)
        variant = registered
    net = AlikedNet(variant)
    load_state_dict_strict(net, state, path)
    return net.eval()


def _fitting_variant(state: object) -> str:
    """The variant whose tensors have the shapes of ``state`` (n16 when none does, so that
    the strict load names what differs)."""
    if isinstance(state, dict):
        shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
        for variant in VARIANTS:
            own = AlikedNet(variant).state_dict()
            if shapes == {k: tuple(v.shape) for k, v in own.items()}:
                return variant
    return "aliked-n16"
