"""DeepDesc (Simo-Serra, Trulls, Ferraz, Kokkinos, Fua, Moreno-Noguer, ICCV 2015).

A descriptor-only method: 64×64 grayscale patches around a detector's keypoints (SIFT by
default), cut at the keypoint's scale and orientation, go through the Siamese-trained
CNN3 network and give 128-d descriptors compared with the L2 distance (not normalised,
as released).

CNN3, a port of the released Torch7 ``nn.Sequential`` (layer by layer)::

    x = (patch - mean) / std                            per-pixel 64×64 maps from the .t7
    conv 7×7 1→32, tanh, LP-pool (p=2, 2×2/2), subtractive norm   -> 32×29×29
    conv 6×6 32→64, tanh, LP-pool (p=2, 3×3/3), subtractive norm  -> 64×8×8
    conv 5×5 64→128, tanh, LP-pool (p=2, 4×4/4)                   -> 128

Torch's ``SpatialLPPooling`` with p=2 is Square → SpatialAveragePooling → MulConstant(k²)
→ Sqrt, i.e. the L2 norm of each window. ``SpatialSubtractiveNormalization`` subtracts a
local mean shared by all channels: the zero-padded correlation of every channel with the
5×5 Gaussian kernel (stored divided by sum·nInputPlane), summed over channels, divided by
the same filter applied to an all-ones input (the border ``coef`` map, 1 inside, < 1 within
two pixels of the border).

Patches (see ``patches.py`` for the exact geometry): the square support region has side
``support_factor × size`` (``size`` = OpenCV keypoint diameter) and is turned so that the
keypoint orientation points right, like the MVS/Brown patches the models were trained on.
The default factor 16 (i.e. 32σ of the DoG scale σ = size/2) was chosen by validation:
RANSAC-verified mutual-NN matches on sacre_coeur pairs (1024 SIFT keypoints, 3 pairs) grow
with the factor, 5: 355, 8: 457, 11: 483, 16: 520 (SIFT: 492), and flatten out at 16–22
(2 pairs: 16: 393, 22: 391, 30: 383; the 5× of alphagamma's wrapper loses 32%).
Adding 90/180/270° to the orientation changes little (f11: 479–490), so the angle
convention is not critical for these weights; upright patches do better on these upright
photos (f11: 569) but are off by default, as in training. Patches are read from an image
pyramid (``antialias``) so that large support regions do not alias (f16: 393 vs 388
without). Reproduce with ``benchmarks/deepdesc_matching.py --sweep``.

Bad input: zero keypoints give zero descriptors (Features with N=0); keypoints at or
beyond the border use replicated border pixels; keypoints without scale use
``fallback_size``; a scale of 0 gives a constant patch (a valid but uninformative
descriptor); huge scales give a shrunken, border-replicated image. Non-finite keypoint
geometry raises an InputError.

Weights: the four ``models/CNN3_p8_n8_split*.t7`` of etrulls/deepdesc-release,
CC BY-NC-SA 4.0 (non-commercial), chosen by the ``weights`` field (a file name or a path;
the four share one architecture). ``split4`` (a subset of Liberty, Yosemite and Notre
Dame) is the README's default.

Template: ``Describer.describe`` checks the image, resizes it when ``max_edge`` is set
(official: never) and hands ``_describe`` the keypoints and scales in its pixels; the
grayscale is ``images.to_grayscale(rounded=False)``, Torch7's unrounded ``rgb2y``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ValidatedConfig, at_least, greater_than, registered_or_path
from ..errors import InputError, WeightsError
from ..images import to_grayscale
from ..weights import WeightFile
from .base import Describer, Features
from .patches import extract_patches

logger = logging.getLogger(__name__)

_REPO = "https://github.com/etrulls/deepdesc-release/raw/master/models/"
_LICENCE = "CC BY-NC-SA 4.0"
_SPLITS = {
    "split1": ("CNN3_p8_n8_split1_072000.t7",
               "e2e7d1b9b274510e4cd86ab0ce70228703c002f2142b26939c7d6335a2876267",
               "trained on Liberty and Yosemite"),
    "split2": ("CNN3_p8_n8_split2_104000.t7",
               "bdf83f8d6bc05455eceb0d64036da8e9727826deb3fd2e444513e7d9e9f84017",
               "trained on Liberty and Notre Dame"),
    "split3": ("CNN3_p8_n8_split3_067000.t7",
               "e34f186da5bb29563b11372b4eccf48d0d25595b45641a5e7a5fc9f39a245fd3",
               "trained on Yosemite and Notre Dame"),
    "split4": ("CNN3_p8_n8_split4_073000.t7",
               "e89b84c2fe5c86e342684a0e67653f2dfafac00b92182ede4ef86e9279dfd36b",
               "trained on a subset of Liberty, Yosemite and Notre Dame (README default)"),
}
WEIGHT_FILES = {
    split: WeightFile(method="deepdesc", filename=filename, url=_REPO + filename,
                      licence=_LICENCE, sha256=sha, non_commercial=True, note=note,
                      format="t7")
    for split, (filename, sha, note) in _SPLITS.items()
}
PATCH_SIZE = 64


@dataclass(frozen=True)
class DeepDescConfig(ValidatedConfig):
    weights: str = _SPLITS["split4"][0]  # a registered .t7 (split1..split4) or a path
    support_factor: float = 16.0     # side of the support square / OpenCV keypoint size
    oriented: bool = True            # turn patches to the keypoint orientation
    antialias: bool = True           # Gaussian pre-smoothing per keypoint scale
    fallback_size: float = 12.0      # keypoint size (px) when the detector gives none
    # patches per network forward; None: 32 on CPU, where it keeps the 32×58×58 first-layer
    # maps in cache (2.4× the throughput of 2048, benchmarks/extract_patches.py), 2048 on GPU
    batch_size: int | None = None
    normalize: bool = False          # L2-normalise (the release does not)
    max_edge: int | None = None      # long side of the image patches are cut from; None = full

    rules = {"support_factor": greater_than(0),
             "weights": registered_or_path(*(w.filename for w in WEIGHT_FILES.values())),
             "fallback_size": greater_than(0), "batch_size": at_least(1),
             "max_edge": at_least(16)}


# ---------------------------------------------------------------- Torch7 layers


def lp_pool(x: torch.Tensor, kernel: int, overwrite: bool = False) -> torch.Tensor:
    """Torch ``SpatialLPPooling(p=2, k, k, k, k)``: sqrt(k² · avgpool(x²)), no padding,
    i.e. the L2 norm of each window (summed directly: one pass fewer). ``overwrite``
    squares ``x`` in place."""
    squares = x.square_() if overwrite else x.square()
    return F.avg_pool2d(squares, kernel, kernel, divisor_override=1).sqrt_()


def subtractive_normalization(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Torch ``SpatialSubtractiveNormalization`` with a 2-D ``kernel`` already divided by
    (its sum × number of channels), as stored in the model file.

    mean = Σ_c (x_c ⋆ kernel) with zero padding, divided by the same sum over an all-ones
    input (``coef``: exactly 1 away from the border), and subtracted from every channel.
    The correlation is linear, so Σ_c (x_c ⋆ k) is computed as (Σ_c x_c) ⋆ k.
    """
    channels = x.shape[1]
    kh, kw = kernel.shape
    pad = (kw // 2, kw // 2, kh // 2, kh // 2)
    weight = kernel.to(x.dtype)[None, None]
    local_sum = F.conv2d(F.pad(x.sum(1, keepdim=True), pad), weight)
    ones = torch.full((1, 1) + x.shape[2:], float(channels), dtype=x.dtype, device=x.device)
    coef = F.conv2d(F.pad(ones, pad), weight)
    return x - local_sum / coef


class CNN3(nn.Module):
    """The released DeepDesc network (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 7)
        self.conv2 = nn.Conv2d(32, 64, 6)
        self.conv3 = nn.Conv2d(64, 128, 5)
        self.register_buffer("ssn1", torch.zeros(5, 5))
        self.register_buffer("ssn2", torch.zeros(5, 5))
        self.register_buffer("mean", torch.zeros(1, PATCH_SIZE, PATCH_SIZE))
        self.register_buffer("std", torch.ones(1, PATCH_SIZE, PATCH_SIZE))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """N×1×64×64 patches in 0..255 -> N×128 descriptors."""
        x = (patches - self.mean) / self.std
        # each convolution output is a fresh tensor, so tanh and (without autograd, which
        # needs the tanh output) the squares of the LP pooling overwrite it: fewer large
        # temporaries, which glibc would otherwise hand back to the system after every
        # batch (page faults cost ~40% on CPU)
        overwrite = not torch.is_grad_enabled()
        x = subtractive_normalization(lp_pool(torch.tanh_(self.conv1(x)), 2, overwrite),
                                      self.ssn1)
        x = subtractive_normalization(lp_pool(torch.tanh_(self.conv2(x)), 3, overwrite),
                                      self.ssn2)
        x = lp_pool(torch.tanh_(self.conv3(x)), 4, overwrite)
        return x.flatten(1)


# ---------------------------------------------------------------- .t7 loading

_LAYOUT = (
    "nn.SpatialConvolution", "nn.Tanh", "nn.SpatialLPPooling",
    "nn.SpatialSubtractiveNormalization", "nn.SpatialConvolution", "nn.Tanh",
    "nn.SpatialLPPooling", "nn.SpatialSubtractiveNormalization", "nn.SpatialConvolution",
    "nn.Tanh", "nn.SpatialLPPooling", "nn.Reshape",
)


def _field(obj, name: str):
    import torchfile

    key = name.encode()
    table = obj._obj if isinstance(obj, torchfile.TorchObject) else obj
    if not isinstance(table, dict) or key not in table:
        raise KeyError(name)
    return table[key]


def load_t7(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``CNN3`` read from a released .t7 file (``torchfile``), with the
    layout checked; anything else raises a WeightsError naming the file."""
    import torchfile

    try:
        data = torchfile.load(str(path))
    except Exception as err:  # torchfile raises many types on foreign bytes
        raise WeightsError(f"{path}: not a readable Torch7 file ({type(err).__name__}: "
                           f"{err}); expected a DeepDesc CNN3_*.t7 model") from err
    try:
        desc = _field(data, "desc")
        modules = _field(desc, "modules")
        names = tuple(m.torch_typename().decode() for m in modules)
        if names != _LAYOUT:
            raise WeightsError(f"{path}: layer sequence {names} is not DeepDesc CNN3 "
                               f"{_LAYOUT}; wrong file?")
        for index, kernel in ((2, 2), (6, 3), (10, 4)):
            m = modules[index]
            if (_field(m, "kW"), _field(m, "kH"), _field(m, "dW"), _field(m, "dH")) != (
                    kernel,) * 4:
                raise WeightsError(f"{path}: LP pooling {index} is not {kernel}×{kernel}/"
                                   f"{kernel}; wrong file?")
            subs = [s.torch_typename().decode() for s in _field(m, "modules")]
            if subs != ["nn.Square", "nn.SpatialAveragePooling", "nn.MulConstant", "nn.Sqrt"]:
                raise WeightsError(f"{path}: LP pooling {index} is {subs}, not p=2; wrong file?")
        state = {
            "conv1.weight": _field(modules[0], "weight"), "conv1.bias": _field(modules[0], "bias"),
            "conv2.weight": _field(modules[4], "weight"), "conv2.bias": _field(modules[4], "bias"),
            "conv3.weight": _field(modules[8], "weight"), "conv3.bias": _field(modules[8], "bias"),
            "ssn1": _field(modules[3], "kernel"), "ssn2": _field(modules[7], "kernel"),
            "mean": _field(data, "mean"), "std": _field(data, "std"),
        }
    except (KeyError, AttributeError, TypeError, IndexError) as err:
        raise WeightsError(f"{path}: missing field {err} of a DeepDesc CNN3 model; "
                           "wrong file?") from err
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            for k, v in state.items()}


def load_network(path: Path) -> CNN3:
    from ..weights import load_state_dict_strict

    net = CNN3()
    load_state_dict_strict(net, load_t7(path), path)
    if not torch.all(net.std > 0):
        raise WeightsError(f"{path}: std map has non-positive entries; corrupt file?")
    return net.eval()


# ---------------------------------------------------------------- the describer


class DeepDesc(Describer):
    name = "deepdesc"
    config_class = DeepDescConfig
    presets = {"deepdesc": DeepDescConfig()}
    weight_files = tuple(WEIGHT_FILES.values())
    # keypoints of OpenCV's default SIFT detector (the papers' and the official extractors'
    # setting), the 8192 strongest by response
    default_detector = "rootsift"
    descriptor_dim = 128
    default_matcher = "mnn"   # measured against reference poses (README, "Default matchers")

    def __init__(self, config: DeepDescConfig | None = None, device: str | None = None) -> None:
        super().__init__(config, device)
        self.batch_size = self.config.batch_size or (
            32 if torch.device(self.device).type == "cpu" else 2048)
        # channels-last runs the 32→64 6×6 convolution ~25% faster on CPU (same values)
        path = self._weights()
        self.net = load_network(path).to(
            self.device, memory_format=torch.channels_last)

    def patches(self, image: np.ndarray, keypoints: Features) -> torch.Tensor:
        """The N×1×64×64 network input (0..255) for ``keypoints`` of ``image`` (an RGB image
        and keypoints in its pixels)."""
        n = len(keypoints)
        sizes = (keypoints.scales if keypoints.scales is not None
                 else np.full(n, self.config.fallback_size, np.float32))
        angles = (keypoints.orientations if keypoints.orientations is not None
                  and self.config.oriented else np.zeros(n, np.float32))
        geometry = np.concatenate([keypoints.keypoints.reshape(-1, 2), sizes[:, None],
                                   angles[:, None]], 1)
        if not np.isfinite(geometry).all():
            raise InputError("deepdesc: keypoints with non-finite position, scale or angle")
        radii = np.abs(sizes.astype(np.float64)) * self.config.support_factor / 2
        gray = torch.from_numpy(to_grayscale(image, rounded=False)).to(self.device)
        if not self.config.antialias:
            return extract_patches(gray[None], keypoints.keypoints, radii, angles, PATCH_SIZE)
        return antialiased_patches(gray, keypoints.keypoints, radii, angles, PATCH_SIZE)

    @torch.inference_mode()
    def describe_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """N×128 descriptors of N×1×64×64 patches (0..255), ``batch_size`` at a time."""
        out = [self.net(patches[i:i + self.batch_size].contiguous(
                   memory_format=torch.channels_last))
               for i in range(0, len(patches), self.batch_size)]
        desc = torch.cat(out)
        return F.normalize(desc, dim=1) if self.config.normalize else desc

    @torch.inference_mode()
    def _describe(self, image: np.ndarray, keypoints: Features) -> np.ndarray:
        return self.describe_patches(self.patches(image, keypoints)).cpu().numpy()


def antialiased_patches(gray: torch.Tensor, centers, radii, angles, patch_size: int
                        ) -> torch.Tensor:
    """Patches sampled from a pyramid: each keypoint reads the octave in which one patch
    pixel spans 1 to 2 octave pixels (octave 0 when it spans less), so bilinear sampling
    does not alias. Octave k is the image blurred and halved k times (``cv2.pyrDown``,
    whose pixel i is centred on pixel 2i of the finer octave, so x_k = x / 2^k); the
    coarsest octave is at least 1 px. One batched ``extract_patches`` call per octave used."""
    import cv2

    ratio = 2 * np.asarray(radii, np.float64) / patch_size          # image px per patch px
    levels = np.clip(np.floor(np.log2(np.maximum(ratio, 1e-12))), 0, None).astype(int)
    image = gray.cpu().numpy()
    max_level = int(min(levels.max(), np.floor(np.log2(min(image.shape)))))
    levels = np.minimum(levels, max_level)
    out = gray.new_empty((len(ratio), 1, patch_size, patch_size))
    centers = np.asarray(centers, np.float64).reshape(-1, 2)
    for level in range(max_level + 1):
        if level:
            image = cv2.pyrDown(image)
        sel = np.flatnonzero(levels == level)
        if len(sel) == 0:
            continue
        f = 2.0 ** level
        extract_patches(torch.from_numpy(image).to(gray.device)[None], centers[sel] / f,
                        np.asarray(radii)[sel] / f, np.asarray(angles)[sel], patch_size,
                        out=out, rows=sel)
    return out
