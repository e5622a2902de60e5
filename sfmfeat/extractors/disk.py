"""DISK: Learning local features with policy gradient (Tyszkiewicz, Fua, Trulls, NeurIPS 2020).

The network is the official thin U-Net of cvlab-epfl/disk: five down blocks
(16, 32, 64, 64, 64 channels, 2× average pooling between them) and four up blocks
(bilinear 2× upsampling, skip concatenation), each block one
InstanceNorm → PReLU → 5×5 convolution. Its 129 output channels are a dense
128-d descriptor map and a detection heatmap (logits).

Detection follows the official ``detect.py`` ("nms" mode):
1. the image (optionally resized, see ``max_edge``) is zero-padded at the right and
   bottom to a multiple of 16, the U-Net's total stride;
2. a pixel is a keypoint when it is the maximum of its ``nms_window``×``nms_window``
   neighbourhood (first maximum in scan order on ties) and its heatmap logit is
   above ``score_threshold``;
3. top-k over the padded heatmap keeps the scores strictly above the (k+1)-th
   largest, then keypoints that fall in the padding are dropped;
4. the descriptor is the dense map at the keypoint pixel, L2-normalised; the score
   is the heatmap logit.
One deliberate difference: when there are at most k detections, ``detect.py``'s
threshold is the weakest detection itself, so it drops it; here every detection is kept.

Coordinates: DISK keypoints are integer pixels of the network input. They are mapped
to the original image with pixel centres at integers, ``(x + 0.5) / s - 0.5``
(``detect.py`` writes ``x / s``, which differs by ``0.5 (1/s - 1)`` px when resized).
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
from ..config import ValidatedConfig, at_least, odd_at_least, registered_or_path
from ..errors import WeightsError
from ..weights import WeightFile
from .base import Extractor, Features

logger = logging.getLogger(__name__)

DISK_DEPTH = WeightFile(
    method="disk",
    filename="depth-save.pth",
    url="https://raw.githubusercontent.com/cvlab-epfl/disk/"
        "8dc6d4d65b47210f629e21ad1fbfb56944b11696/depth-save.pth",
    licence="Apache-2.0",
    sha256="9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
    note="DISK 'depth' checkpoint (default of detect.py and LightGlue)",
)

STRIDE = 16          # four 2× poolings in the U-Net
DESCRIPTOR_DIM = 128


@dataclass(frozen=True)
class DiskConfig(ValidatedConfig):
    max_keypoints: int | None = 5000   # top-k by heatmap logit; None keeps every NMS maximum
    nms_window: int = 5                # detect.py --window (odd)
    score_threshold: float = 0.0       # detect.py cutoff on the heatmap logit
    max_edge: int | None = 1024        # long side, bilinear antialiased resize; None = full res
    weights: str = "depth-save.pth"    # the registered file or a path to a checkpoint

    rules = {"max_keypoints": at_least(1), "nms_window": odd_at_least(1),
             "weights": registered_or_path("depth-save.pth"),
             "max_edge": at_least(STRIDE)}


class _NormActConv(nn.Sequential):
    """InstanceNorm → PReLU → (unused dropout slot) → 5×5 conv. The U-Net's first block
    has neither norm nor activation. Indices 1 and 3 match the official keys."""

    def __init__(self, cin: int, cout: int, plain: bool = False) -> None:
        norm = nn.Identity() if plain else nn.InstanceNorm2d(cin)
        gate = nn.Identity() if plain else nn.PReLU(cin)
        super().__init__(norm, gate, nn.Identity(), nn.Conv2d(cin, cout, 5, padding=2))


class _UpBlock(nn.Module):
    def __init__(self, bottom: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv = _NormActConv(bottom + skip, cout)

    def conv_input(self, bottom: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample, concatenate the skip, norm and activate: what the 5×5 conv sees."""
        bottom = F.interpolate(bottom, scale_factor=2, mode="bilinear", align_corners=False)
        x = torch.cat([bottom, skip], dim=1)
        return self.conv[1](self.conv[0](x))

    def forward(self, bottom: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv[3](self.conv_input(bottom, skip))


class _UNet(nn.Module):
    def __init__(self, down=(16, 32, 64, 64, 64), up=(64, 64, 64, DESCRIPTOR_DIM + 1)):
        super().__init__()
        widths = (3,) + tuple(down)
        self.path_down = nn.ModuleList(
            nn.Sequential(nn.Identity() if i == 0 else nn.AvgPool2d(2),
                          _NormActConv(widths[i], widths[i + 1], plain=i == 0))
            for i in range(len(down)))
        bottoms = (down[-1],) + tuple(up[:-1])
        skips = tuple(reversed(widths[1:-1]))
        self.path_up = nn.ModuleList(_UpBlock(b, s, o) for b, s, o in zip(bottoms, skips, up))

    def last_conv_input(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the final 5×5 convolution."""
        levels = []
        for block in self.path_down:
            x = block(x)
            levels.append(x)
        skips = list(reversed(levels[:-1]))
        for block, skip in zip(self.path_up[:-1], skips[:-1]):
            x = block(x, skip)
        return self.path_up[-1].conv_input(x, skips[-1])

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.path_up[-1].conv[3]


class DiskNet(nn.Module):
    """The official DISK U-Net (state-dict keys ``unet.path_down.*``, ``unet.path_up.*``).

    The final 5×5 convolution makes 128 descriptor channels and 1 heatmap channel at
    full resolution; it costs about four fifths of the network. Only the heatmap is
    needed everywhere, so ``heatmap`` evaluates that one channel densely and
    ``describe`` the other 128 at the detected pixels only (same sums, same result).
    """

    def __init__(self) -> None:
        super().__init__()
        self.unet = _UNet()

    def trunk(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] (H, W multiples of 16) → the final conv's input B×80×H×W."""
        return self.unet.last_conv_input(image)

    def heatmap(self, trunk: torch.Tensor) -> torch.Tensor:
        """Detection logits B×H×W."""
        conv = self.unet.last_conv
        weight = conv.weight[DESCRIPTOR_DIM:]
        bias = conv.bias[DESCRIPTOR_DIM:]
        return F.conv2d(trunk, weight, bias, padding=conv.padding)[:, 0]

    def describe(self, trunk: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) N×128 descriptors of image 0 at integer pixels (x, y)."""
        conv = self.unet.last_conv
        radius = conv.kernel_size[0] // 2
        padded = F.pad(trunk[0], (radius, radius, radius, radius))
        size = 2 * radius + 1
        patches = torch.stack([padded[:, y + dy, x + dx]                # 25 × C × N
                               for dy in range(size) for dx in range(size)])
        patches = patches.permute(2, 1, 0).reshape(len(x), trunk.shape[1] * size * size)
        weight = conv.weight[:DESCRIPTOR_DIM].reshape(DESCRIPTOR_DIM, -1)
        return torch.addmm(conv.bias[:DESCRIPTOR_DIM], patches, weight.t())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense output as the official network: (descriptors B×128×H×W, heatmap B×H×W)."""
        out = self.unet.last_conv(self.trunk(image))
        return out[:, :DESCRIPTOR_DIM], out[:, DESCRIPTOR_DIM]


def nms_keypoints(heatmap: torch.Tensor, window: int, threshold: float):
    """(x, y) integer pixels of the ``window``-NMS maxima of a H×W heatmap with
    value > threshold, and their values. A pixel survives when max pooling picks
    its own index, so on ties only the first maximum (scan order) is kept."""
    if window % 2 != 1:
        raise ValueError(f"nms_window must be odd, got {window}")
    height, width = heatmap.shape
    _, argmax = F.max_pool2d(heatmap[None, None], window, stride=1, padding=window // 2,
                             return_indices=True)
    own = torch.arange(height * width, device=heatmap.device).view(height, width)
    keep = (argmax[0, 0] == own) & (heatmap > threshold)
    y, x = keep.nonzero(as_tuple=True)
    return x, y, heatmap[y, x]


def top_k_mask(scores: torch.Tensor, k: int | None) -> torch.Tensor:
    """Scores strictly above the (k+1)-th largest (all when there are at most k)."""
    if k is None or scores.numel() <= k:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.topk(scores, k + 1, sorted=True).values[-1]
    return scores > threshold


class Disk(Extractor):
    name = "disk"
    config_class = DiskConfig
    presets = {"disk": DiskConfig()}
    weight_files = (DISK_DEPTH,)
    resize_backend = "torch-antialias"   # detect.py's F.interpolate(antialias=True)
    descriptor_dim = DESCRIPTOR_DIM
    # measured against reference poses (README, "Default matchers"): the ratio test throws
    # away good learned matches; hloc matches DISK with mutual NN too
    default_matcher = "mnn"

    def __init__(self, config: DiskConfig | None = None, device: str | None = None) -> None:
        super().__init__(config, device)
        # channels-last was measured slower on CPU for this network (InstanceNorm), so
        # the default contiguous layout is kept
        path = self._weights()
        self.net = load_disk_network(path).to(self.device)

    def _forward(self, image: np.ndarray) -> Features | None:
        """``image``: the (resized, float in [0, 1]) or original (uint8) network input."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1)[None].float()
        if image.dtype == np.uint8:
            x /= 255.0
        new_h, new_w = image.shape[:2]
        pad_h, pad_w = -new_h % STRIDE, -new_w % STRIDE
        # below one stride, or a single pixel at the U-Net's bottom (InstanceNorm needs two)
        if min(new_h, new_w) < STRIDE or (new_h + pad_h) * (new_w + pad_w) <= STRIDE ** 2:
            return None
        x = F.pad(x, (0, pad_w, 0, pad_h))

        with torch.inference_mode():
            trunk = self.net.trunk(x)
            heatmap = self.net.heatmap(trunk)[0].contiguous()
            kx, ky, scores = nms_keypoints(heatmap, self.config.nms_window,
                                           self.config.score_threshold)
            keep = top_k_mask(scores, self.config.max_keypoints)
            keep &= (kx < new_w) & (ky < new_h)          # drop the padding
            kx, ky, scores = kx[keep], ky[keep], scores[keep]
            desc = F.normalize(self.net.describe(trunk, kx, ky), dim=1)
        xy = torch.stack([kx, ky], dim=1).float().cpu().numpy()
        return Features(keypoints=xy, scores=scores.float().cpu().numpy(),
                        descriptors=desc.float().cpu().numpy())


def load_disk_network(path: Path) -> DiskNet:
    """The DISK network with the weights of ``path`` loaded strictly (eval mode)."""
    checkpoint = weights_mod.load_torch_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: not a DISK checkpoint (expected a dict with an "
                           f"'extractor' state dict, got {type(checkpoint).__name__})")
    # detect.py accepts both names; released files use 'extractor'
    state = checkpoint.get("extractor", checkpoint.get("disk"))
    if state is None:
        keys = ", ".join(sorted(map(str, checkpoint))[:6])
        raise WeightsError(f"{path}: not a DISK checkpoint (no 'extractor' entry; top-level "
                           f"keys: {keys}); use the official depth-save.pth")
    net = DiskNet()
    weights_mod.load_state_dict_strict(net, state, path)
    return net.eval()
