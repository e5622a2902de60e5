"""R2D2: Reliable and Repeatable Detector and Descriptor (Revaud et al., NeurIPS 2019).

Network: the official ``Quad_L2Net_ConfCFS`` of naver/r2d2, an L2-Net whose strides are
replaced by dilations so that every map keeps the input resolution: six 3×3 convs
(32, 32, 64, 64, 128, 128 channels; dilation 1, 1, 1, 2, 2, 4) with BatchNorm
(``affine=False``) and ReLU, then three 2×2 convs (dilation 4, 8, 16; the first two with
BatchNorm, no ReLU) giving a 128-d descriptor map ``x``. From ``x²``, two 1×1 convs give
the *reliability* (2-class softmax) and the *repeatability* (``softplus / (1 + softplus)``).

Detection (official ``extract.py``): a pixel is a keypoint when its repeatability is the
maximum of its 3×3 neighbourhood and both repeatability and reliability are ≥ 0.7; its
score is reliability × repeatability and its descriptor the L2-normalised map there.
This runs on an image pyramid: starting at scale 1 and dividing by ``scale_factor``
(2^¼) each step, every level whose long side is at most ``max_edge`` (extract.py's
``--max-size``; and scale at most ``max_scale``) is processed, down to ``min_size`` (or ``min_scale``); each level is the
previous one resized bilinearly. Keypoints of all levels are pooled and the
``max_keypoints`` best kept. The keypoint scale (``Features.scales``) is the official
patch diameter ``32 / s`` in original pixels.

Template: the pyramid starts from the full-resolution image, as extract.py, so the base
template does not resize (``resize_backend = "pyramid"``) and ``_forward`` maps each level
back with ``images.rescale_pixels``. Coordinates: the official code maps a level pixel
``x`` to ``x · W / w``; the pixel centre convention used by sfmfeat gives
``(x + 0.5) · W / w - 0.5`` (up to 0.5 px apart at half resolution).

Licence: code and weights are CC BY-NC-SA 3.0, non-commercial use only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as weights_mod
from ..config import ValidatedConfig, at_least, between, not_above, registered_or_path
from ..errors import WeightsError
from ..images import imagenet_normalized, rescale_pixels
from ..weights import WeightFile
from .base import Extractor, Features

logger = logging.getLogger(__name__)

R2D2_WASF_N16 = WeightFile(
    method="r2d2",
    filename="r2d2_WASF_N16.pt",
    url="https://raw.githubusercontent.com/naver/r2d2/"
        "0ff8f6afcbea91f19613d0cb7d93143a977830f5/models/r2d2_WASF_N16.pt",
    licence="CC BY-NC-SA 3.0",
    sha256="9ae90e02a9a133d100ca7aeaa32f4d4d7736a6dd222a530a25c8f7da5e508528",
    non_commercial=True,
    note="R2D2 WASF N16 (the README's default model); non-commercial use only",
)

DESCRIPTOR_DIM = 128
PATCH_SIZE = 32          # official keypoint scale = PATCH_SIZE / level scale
NETWORK_NAME = "Quad_L2Net_ConfCFS()"


@dataclass(frozen=True)
class R2D2Config(ValidatedConfig):
    max_keypoints: int | None = 5000      # extract.py --top-k, by reliability × repeatability
    reliability_threshold: float = 0.7    # extract.py --reliability-thr
    repeatability_threshold: float = 0.7  # extract.py --repeatability-thr
    scale_factor: float = 2 ** 0.25       # extract.py --scale-f
    min_size: int = 256                   # smallest pyramid level (long side, px)
    max_edge: int = 1024                  # largest pyramid level (long side, px; --max-size)
    min_scale: float = 0.0
    max_scale: float = 1.0
    weights: str = "r2d2_WASF_N16.pt"     # the registered file or a path to a checkpoint
    channels_last: bool = True            # memory layout for the convolutions (speed only)

    # scale_factor >= 1.05 bounds the number of levels built (one per factor step down to
    # min_size: 178 for a 6000 px image with min_size=1)
    rules = {"max_keypoints": at_least(1), "scale_factor": at_least(1.05),
             "min_size": at_least(1), "max_edge": at_least(1), "min_scale": at_least(0),
             "max_scale": between(0, 1),   # max_scale <= 1: no upsampling
             "weights": registered_or_path("r2d2_WASF_N16.pt")}
    # otherwise no level is ever processed: every image would give no keypoints
    relations = (not_above("min_size", "max_edge"), not_above("min_scale", "max_scale"))


# (in, out, kernel, dilation, batch norm, relu) of each conv, in the official order
_LAYERS = (
    (3, 32, 3, 1, True, True), (32, 32, 3, 1, True, True),
    (32, 64, 3, 1, True, True), (64, 64, 3, 2, True, True),
    (64, 128, 3, 2, True, True), (128, 128, 3, 4, True, True),
    (128, 128, 2, 4, True, False), (128, 128, 2, 8, True, False),
    (128, DESCRIPTOR_DIM, 2, 16, False, False),
)


class R2D2Net(nn.Module):
    """``Quad_L2Net_ConfCFS`` with the official module indices (``ops.0`` … ``ops.22``,
    ``clf``, ``sal``) so that the released state dict loads strictly."""

    def __init__(self) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        for cin, cout, k, d, bn, relu in _LAYERS:
            ops.append(nn.Conv2d(cin, cout, k, padding=(k - 1) * d // 2, dilation=d))
            if bn:
                ops.append(nn.BatchNorm2d(cout, affine=False))
            if relu:
                ops.append(nn.ReLU(inplace=True))
        self.ops = nn.ModuleList(ops)
        self.clf = nn.Conv2d(DESCRIPTOR_DIM, 2, 1)   # reliability
        self.sal = nn.Conv2d(DESCRIPTOR_DIM, 1, 1)   # repeatability

    def fused(self) -> "_FusedR2D2":
        """An inference copy with every BatchNorm folded into the conv before it."""
        return _FusedR2D2(self)

    def forward(self, image: torch.Tensor):
        for op in self.ops:
            image = op(image)
        return _heads(image, self.clf, self.sal)


class _FusedR2D2(nn.Module):
    def __init__(self, net: R2D2Net) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ops = list(net.ops)
        for i, op in enumerate(ops):
            if isinstance(op, nn.Conv2d):
                conv = nn.Conv2d(op.in_channels, op.out_channels, op.kernel_size,
                                 padding=op.padding, dilation=op.dilation)
                weight, bias = op.weight.detach(), op.bias.detach()
                if i + 1 < len(ops) and isinstance(ops[i + 1], nn.BatchNorm2d):
                    bn = ops[i + 1]
                    inv_std = torch.rsqrt(bn.running_var + bn.eps)
                    weight = weight * inv_std[:, None, None, None]
                    bias = (bias - bn.running_mean) * inv_std
                conv.weight.data.copy_(weight)
                conv.bias.data.copy_(bias)
                layers.append(conv)
            elif isinstance(op, nn.ReLU):
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.clf, self.sal = net.clf, net.sal

    def forward(self, image: torch.Tensor):
        return _heads(self.body(image), self.clf, self.sal)


def _heads(x: torch.Tensor, clf: nn.Conv2d, sal: nn.Conv2d):
    """(raw descriptors B×128×h×w, reliability B×h×w, repeatability B×h×w)."""
    energy = x * x
    reliability = F.softmax(clf(energy), dim=1)[:, 1]
    repeatability = F.softplus(sal(energy))[:, 0]
    return x, reliability, repeatability / (1 + repeatability)


def detect(reliability: torch.Tensor, repeatability: torch.Tensor,
           reliability_threshold: float, repeatability_threshold: float):
    """(x, y) of the 3×3 local maxima of the repeatability (h×w maps) whose
    repeatability and reliability reach their thresholds."""
    peaks = F.max_pool2d(repeatability[None, None], 3, stride=1, padding=1)[0, 0]
    keep = ((repeatability == peaks) & (repeatability >= repeatability_threshold)
            & (reliability >= reliability_threshold))
    y, x = keep.nonzero(as_tuple=True)
    return x, y


def pyramid_scales(height: int, width: int, config: R2D2Config) -> list[tuple[float, bool]]:
    """The official scale sequence: (scale, processed?) for every level that is built."""
    long_side = max(height, width)
    lowest = max(config.min_scale, config.min_size / long_side)
    highest = min(config.max_scale, config.max_edge / long_side)
    levels, s = [], 1.0
    while s + 0.001 >= lowest:
        levels.append((s, s - 0.001 <= highest))
        s /= config.scale_factor
    return levels


class R2D2(Extractor):
    name = "r2d2"
    config_class = R2D2Config
    presets = {"r2d2": R2D2Config()}
    weight_files = (R2D2_WASF_N16,)
    default_matcher = "mnn"  # the official matching: mutual NN, no ratio test
    resize_backend = "pyramid"   # max_edge selects the pyramid levels (see the docstring)
    descriptor_dim = DESCRIPTOR_DIM
    with_geometry = True

    def __init__(self, config: R2D2Config | None = None, device: str | None = None) -> None:
        super().__init__(config, device)
        net = load_r2d2_network(self._weights())
        self.net = net.fused().eval().to(self.device)
        if self.config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def _forward(self, image: np.ndarray) -> Features | None:
        c = self.config
        height, width = image.shape[:2]
        levels = pyramid_scales(height, width, c)
        if not any(used for _, used in levels):
            return None
        level = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        level = imagenet_normalized(level.permute(2, 0, 1)[None].float() / 255.0)
        xy, sizes, scores, descriptors = [], [], [], []
        with torch.inference_mode():
            for i, (s, used) in enumerate(levels):
                if i > 0:  # each level is the previous one resized, as extract.py does
                    level = F.interpolate(level, (round(height * s), round(width * s)),
                                          mode="bilinear", align_corners=False)
                if not used:
                    continue
                h, w = level.shape[2:]
                net_in = level.contiguous(memory_format=torch.channels_last) \
                    if c.channels_last else level
                raw, reliability, repeatability = self.net(net_in)
                x, y = detect(reliability[0], repeatability[0], c.reliability_threshold,
                              c.repeatability_threshold)
                scores.append(reliability[0, y, x] * repeatability[0, y, x])
                descriptors.append(F.normalize(raw[0][:, y, x].t(), dim=1))
                xy.append(rescale_pixels(torch.stack([x, y], 1).cpu().numpy(),
                                         (width / w, height / h)))
                sizes.append(np.full(len(x), PATCH_SIZE / s))
        count = sum(len(v) for v in sizes)
        if count == 0:
            return None
        features = Features(
            keypoints=np.concatenate(xy),
            scores=torch.cat(scores).float().cpu().numpy(),
            descriptors=torch.cat(descriptors).float().cpu().numpy(),
            scales=np.concatenate(sizes),
            orientations=np.zeros(count, np.float32),
        )
        return features.top_k(c.max_keypoints)


def load_r2d2_network(path: Path) -> R2D2Net:
    """``Quad_L2Net_ConfCFS`` with the weights of ``path`` loaded strictly (eval mode)."""
    checkpoint = weights_mod.load_torch_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = (", ".join(sorted(map(str, checkpoint))[:6]) if isinstance(checkpoint, dict)
                 else type(checkpoint).__name__)
        raise WeightsError(f"{path}: not an R2D2 checkpoint (expected 'net' and 'state_dict' "
                           f"entries, found {found}); use r2d2_WASF_N16.pt")
    arch = checkpoint.get("net")
    if arch is not None and str(arch).replace(" ", "") != NETWORK_NAME:
        raise WeightsError(f"{path}: R2D2 variant {arch!r} is not supported; sfmfeat's r2d2 "
                           f"is {NETWORK_NAME} (r2d2_WASF_N16.pt)")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}   # DataParallel prefix
    net = R2D2Net()
    weights_mod.load_state_dict_strict(net, state, path)
    return net.eval()
