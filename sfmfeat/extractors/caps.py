"""CAPS: Camera-Pose-Supervised descriptors (Wang, Zhou, Hariharan, Snavely, ECCV 2020).

A descriptor-only method: a ResUNet turns the whole image into a coarse (stride 16) and a
fine (stride 4) feature map; each keypoint of a detector (SIFT by default, as in the
official HPatches extractor) reads both maps by bilinear interpolation, and the two
128-d vectors are concatenated (coarse first) into a 256-d descriptor, L2-normalised for
matching (the official extractor stores it unnormalised; ``normalize=False`` gives that).

ResUNet (``CAPS/network.py``), with ``conv`` = Conv2d(bias) → BatchNorm → ELU::

    x  = ImageNet-normalised RGB (ToTensor, Normalize)
    x1 = layer1(maxpool(relu(bn1(conv1(x)))))          ResNet50, stride 4, 256 ch
    x2 = layer2(x1), x3 = layer3(x2)                    stride 8 (512), stride 16 (1024)
    coarse = conv_coarse(x3)                            1×1, 1024 → 128
    y = iconv3(cat[upconv3(x3), pad(x2)])               → 512
    y = iconv2(cat[upconv2(y), pad(x1)])                → 256
    fine = conv_fine(y)                                 1×1, 256 → 128

Official behaviour reproduced on purpose (the parity test checks it against the official
code's output):

- ``upconv`` is bilinear ×2 upsampling with ``align_corners=True``, then a 3×3 ``conv``;
- the skip connection zero-pads the *skip* tensor to the upsampled size (left/top gets
  ``diff // 2``) and concatenates ``[upsampled, skip]``; with odd map sizes the decoder
  maps grow beyond H/8, H/4 (e.g. a 1063×780 image gives a 268×196 fine map);
- keypoints (x, y), pixel centres at integers, are normalised with the *image* size as
  ``(x - (w-1)/2) / ((w-1)/2)`` but sampled with ``grid_sample(align_corners=False)`` and
  zero padding over the full extent of each map, so near the border the descriptor
  fades towards 0 and keypoints beyond the image get zero (then unnormalisable) vectors.

Bad input: zero keypoints give an empty result; keypoints at or beyond the border are
sampled as above (finite values, zero vectors stay zero after normalisation); scales and
orientations are ignored; an image smaller than the coarse stride (16 px) on a side
gives no features (``Features.empty``) rather than a crash; a longer side above
``max_edge`` is resized first (keypoints are mapped, not moved).

Weights: ``caps-pretrained.pth`` from the authors' Google Drive (README), MIT licence.
The checkpoint holds ``{'step', 'state_dict', ...}`` with ``net.``-prefixed keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ValidatedConfig, at_least, registered_or_path
from ..errors import WeightsError
from ..images import imagenet_normalized
from ..weights import WeightFile, load_state_dict_strict, load_torch_checkpoint
from .base import Describer, Features

logger = logging.getLogger(__name__)

WEIGHTS = WeightFile(
    method="caps", filename="caps-pretrained.pth",
    url="https://drive.google.com/file/d/1KfIQYyM7vlSvvQ3X7xi1YSPrietqeXYd/view?usp=sharing",
    licence="MIT", sha256=None, manual=True,
    note="a Google Drive page (README of qianqianwang68/caps), no direct link",
)
MIN_SIDE = 16                        # the coarse stride


@dataclass(frozen=True)
class CapsConfig(ValidatedConfig):
    normalize: bool = True           # L2-normalise the 256-d descriptor (official: no)
    max_edge: int | None = 1600      # resize a longer side to this (immatch's setting; the
                                     # official HPatches extractor never resizes); None = never

    weights: str = "caps-pretrained.pth"  # the registered file or a path to a checkpoint

    rules = {"max_edge": at_least(16), "weights": registered_or_path("caps-pretrained.pth")}


# ---------------------------------------------------------------- ResNet50 layers 1-3


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3×3 conv), same parameter names."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


def res_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(inplanes, planes, stride)]
    layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- ResUNet


class ConvBnElu(nn.Module):
    """The official ``conv``: Conv2d(bias=True, 'same' padding) → BatchNorm2d → ELU."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.bn(self.conv(x)))


class UpConv(nn.Module):
    """Bilinear ×2 (align_corners=True), then a 3×3 ConvBnElu."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBnElu(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


def skip_connect(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``skip`` to ``up``'s size (diff // 2 before), then ``cat[up, skip]``."""
    dy = up.shape[2] - skip.shape[2]
    dx = up.shape[3] - skip.shape[3]
    skip = F.pad(skip, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
    return torch.cat([up, skip], 1)


class ResUNet(nn.Module):
    def __init__(self, coarse_dim: int = 128, fine_dim: int = 128) -> None:
        super().__init__()
        self.firstconv = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.firstbn = nn.BatchNorm2d(64)
        self.layer1 = res_layer(64, 64, 3, 1)
        self.layer2 = res_layer(256, 128, 4, 2)
        self.layer3 = res_layer(512, 256, 6, 2)
        self.conv_coarse = ConvBnElu(1024, coarse_dim, 1)
        self.upconv3 = UpConv(1024, 512)
        self.iconv3 = ConvBnElu(512 + 512, 512, 3)
        self.upconv2 = UpConv(512, 256)
        self.iconv2 = ConvBnElu(256 + 256, 256, 3)
        self.conv_fine = ConvBnElu(256, fine_dim, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.firstbn(self.firstconv(image)))
        x1 = self.layer1(F.max_pool2d(x, 3, 2, 1))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        coarse = self.conv_coarse(x3)
        y = self.iconv3(skip_connect(x2, self.upconv3(x3)))
        y = self.iconv2(skip_connect(x1, self.upconv2(y)))
        return coarse, self.conv_fine(y)


def load_network(path: Path) -> ResUNet:
    """ResUNet with the official checkpoint's ``state_dict`` (``net.`` prefix) loaded strictly."""
    checkpoint = load_torch_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(f"{path}: not a CAPS checkpoint (no 'state_dict' entry; "
                           "expected the official caps-pretrained.pth)")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and k.startswith("net.") for k in state):
        raise WeightsError(f"{path}: CAPS state_dict keys must all start with 'net.' "
                           "(official CAPSNet layout); wrong file?")
    net = ResUNet()
    load_state_dict_strict(net, {k[len("net."):]: v for k, v in state.items()}, path)
    return net.eval()


# ---------------------------------------------------------------- the describer


def normalize_coordinates(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The official ``CAPSNet.normalize``: (xy - c) / c with c = ((w-1)/2, (h-1)/2)."""
    c = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=torch.float32,
                     device=xy.device)
    return (xy - c) / c


def sample_features(feature_map: torch.Tensor, xy_normalized: torch.Tensor) -> torch.Tensor:
    """N×C bilinear samples of a 1×C×h×w map (align_corners=False, zero padding)."""
    grid = xy_normalized.reshape(1, -1, 1, 2).to(feature_map.dtype)
    return F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0, :, :, 0].T


def preprocess(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 RGB -> 1×3×H×W float32: ToTensor (/255) then ImageNet Normalize."""
    x = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float().div(255)
    return imagenet_normalized(x[None])


def describe_from_maps(coarse: torch.Tensor, fine: torch.Tensor, xy: np.ndarray,
                       image_shape: tuple[int, int]) -> torch.Tensor:
    """N×256 unnormalised descriptors (coarse then fine) at pixel positions ``xy`` of the
    network input image of size ``image_shape`` (H, W), as the official extractor."""
    normalized = normalize_coordinates(torch.from_numpy(np.asarray(xy, np.float32)).to(
        coarse.device), *image_shape)
    return torch.cat([sample_features(coarse, normalized), sample_features(fine, normalized)], 1)


class Caps(Describer):
    name = "caps"
    config_class = CapsConfig
    presets = {"caps": CapsConfig()}
    weight_files = (WEIGHTS,)
    # keypoints of OpenCV's default SIFT detector (the papers' and the official extractors'
    # setting), the 8192 strongest by response
    default_detector = "rootsift"
    resize_backend = "cv2-area"
    descriptor_dim = 256

    def __init__(self, config: CapsConfig | None = None, device: str | None = None) -> None:
        super().__init__(config, device)
        path = self._weights()
        self.net = load_network(path).to(self.device)

    @torch.inference_mode()
    def feature_maps(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse (1×128×h/16×w/16) and fine (1×128×h/4×w/4) maps of an RGB uint8 image
        (no resizing)."""
        return self.net(preprocess(image).to(self.device))

    @torch.inference_mode()
    def _describe(self, image: np.ndarray, keypoints: Features) -> np.ndarray | None:
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            logger.warning("caps: image %dx%d is smaller than the %d px stride; no features",
                           width, height, MIN_SIDE)
            return None
        coarse, fine = self.feature_maps(image)
        desc = describe_from_maps(coarse, fine, keypoints.keypoints, image.shape[:2])
        if self.config.normalize:
            desc = F.normalize(desc, dim=1)
        return desc.float().cpu().numpy()
