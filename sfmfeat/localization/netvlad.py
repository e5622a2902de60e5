"""NetVLAD (Arandjelović et al., CVPR 2016) global descriptors with the official weights.

Network: VGG16 conv1_1 … conv5_3 (no final ReLU or pooling), per-location L2
normalisation, the NetVLAD layer (soft assignment by a 1×1 convolution without bias,
residuals to K=64 centres, intra-normalisation, L2), then whitening PCA to 4096-D and L2.
Input: RGB in 0–255 minus the training set's mean colour, long side at most 1024 px.

Weights: the official MatConvNet models (Pitts30k / Tokyo Time Machine, VGG16, WPCA 4096)
exported to plain MATLAB structs (``net_class2struct``) and hosted by the hloc authors.
``net.layers`` holds 34 layer structs; layers 0–28 mirror VGG16's features up to conv5_3
(conv ``weights = {S×S×IN×OUT, OUT}``), layer 30 is the VLAD core
(``weights = {assignment D×K, -centres D×K}``, MATLAB stores the centres negated) and
layer 33 the whitening (``weights = {1×1×(K·D)×4096, 4096}``). ``net.meta.normalization.
averageImage`` holds the mean colour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, WeightsError
from ..images import resize_max_edge
from ..weights import WeightFile, resolve

logger = logging.getLogger(__name__)

_LICENCE = ("MIT (Relja/netvlad LICENCE; the models come from the NetVLAD project page "
            "with no separate licence; MATLAB-struct export by the hloc authors)")
WEIGHT_FILES = {
    "pitts30k": WeightFile(
        method="netvlad", filename="Pitts30K_struct.mat",
        url="https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat",
        licence=_LICENCE,
        note="official VGG16-NetVLAD-Pitts30k (+WPCA 4096) MatConvNet model as a MATLAB "
             "struct", format="mat"),
    "tokyotm": WeightFile(
        method="netvlad", filename="TokyoTM_struct.mat",
        url="https://cvg-data.inf.ethz.ch/hloc/netvlad/TokyoTM_struct.mat",
        licence=_LICENCE,
        note="official VGG16-NetVLAD-TokyoTM (+WPCA 4096) MatConvNet model as a MATLAB "
             "struct", format="mat"),
}

# VGG16 feature layers up to conv5_3: channel counts, "M" = 2×2 max pooling
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VLAD_LAYER = 30
_WHITEN_LAYER = 33


@dataclass(frozen=True)
class NetVladConfig:
    weights: str = "pitts30k"                  # key of WEIGHT_FILES
    whiten: bool = True                        # WPCA to ``whiten_dim`` (the official 4096-D)
    resize_max: int | None = 1024              # long side of the network input
    num_clusters: int = 64
    whiten_dim: int = 4096
    width_divisor: int = 1                     # >1 only for tiny test networks

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FILES:
            raise ConfigError(f"NetVladConfig.weights={self.weights!r}: choose one of "
                              + ", ".join(WEIGHT_FILES))
        if self.width_divisor < 1 or self.num_clusters < 1 or self.whiten_dim < 1:
            raise ConfigError("NetVladConfig: width_divisor, num_clusters and whiten_dim "
                              "must be >= 1")


PRESETS = {
    "netvlad": NetVladConfig(),
    "netvlad-tokyotm": NetVladConfig(weights="tokyotm"),
}


class NetVladLayer(nn.Module):
    def __init__(self, dim: int, num_clusters: int) -> None:
        super().__init__()
        self.assignment = nn.Conv1d(dim, num_clusters, kernel_size=1, bias=False)
        self.centers = nn.Parameter(torch.zeros(dim, num_clusters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:        # x: B×D×N, L2-normalised
        soft = F.softmax(self.assignment(x), dim=1)             # B×K×N
        # sum_n a_k(n) (x_n - c_k) = x a_k^T - c_k sum_n a_k(n)
        vlad = torch.einsum("bdn,bkn->bdk", x, soft) - self.centers[None] * soft.sum(2)[:, None]
        vlad = F.normalize(vlad, dim=1)                         # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)              # D-major (as MATLAB)


class NetVlad(nn.Module):
    def __init__(self, config: NetVladConfig = NetVladConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = item // config.width_divisor
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=True)]
                channels = out
        self.backbone = nn.Sequential(*layers[:-1])              # no ReLU after conv5_3
        self.vlad = NetVladLayer(channels, config.num_clusters)
        self.whitening = (nn.Linear(channels * config.num_clusters, config.whiten_dim)
                          if config.whiten else None)
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W RGB in 0–255 -> B×D unit descriptors."""
        x = self.backbone(image - self.mean.view(1, 3, 1, 1))
        x = F.normalize(x.flatten(2), dim=1)
        x = self.vlad(x)
        if self.whitening is not None:
            x = F.normalize(self.whitening(x), dim=1)
        return x


def _layer_weights(layers: Any, index: int, source: Path) -> list[np.ndarray]:
    try:
        weights = layers[index].weights
    except (IndexError, AttributeError) as err:
        raise WeightsError(f"{source}: net.layers[{index}] has no weights ({err}); not an "
                           "official NetVLAD struct file") from None
    if isinstance(weights, np.ndarray) and weights.dtype == object:
        return [np.asarray(w) for w in weights]
    return [np.asarray(weights)]


def load_matlab_weights(model: NetVlad, path: str | Path) -> None:
    """Fill ``model`` from the official MATLAB struct file; WeightsError on any mismatch."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise WeightsError(f"{path}: not a readable MATLAB v5 struct file ({err})") from err
    net = mat.get("net")
    layers = getattr(net, "layers", None)
    if layers is None:
        raise WeightsError(f"{path}: no 'net.layers' struct; expected the official NetVLAD "
                           "model exported with net_class2struct")
    layers = np.atleast_1d(layers)
    needed = _WHITEN_LAYER + 1 if model.whitening is not None else _VLAD_LAYER + 1
    if len(layers) < needed:
        raise WeightsError(f"{path}: net.layers has {len(layers)} layers, expected >= "
                           f"{needed} (VGG16 + NetVLAD{' + WPCA' if needed > 31 else ''})")

    def put(param: torch.Tensor, value: np.ndarray, what: str) -> None:
        value = torch.as_tensor(np.ascontiguousarray(value), dtype=torch.float32)
        if tuple(value.shape) != tuple(param.shape):
            raise WeightsError(f"{path}: {what} has shape {tuple(value.shape)}, the network "
                               f"expects {tuple(param.shape)} (wrong file or variant?)")
        with torch.no_grad():
            param.copy_(value)

    for index, module in enumerate(model.backbone):
        if not isinstance(module, nn.Conv2d):
            continue
        weights = _layer_weights(layers, index, path)
        if len(weights) != 2 or weights[0].ndim != 4:
            raise WeightsError(f"{path}: net.layers[{index}] is not a convolution "
                               f"(weights of shapes {[w.shape for w in weights]})")
        put(module.weight, weights[0].transpose(3, 2, 0, 1), f"net.layers[{index}] filters")
        put(module.bias, weights[1].reshape(-1), f"net.layers[{index}] biases")
    vlad = _layer_weights(layers, _VLAD_LAYER, path)
    if len(vlad) < 2:
        raise WeightsError(f"{path}: net.layers[{_VLAD_LAYER}] is not the NetVLAD layer")
    assignment, centers = vlad[0].reshape(vlad[0].shape[-2:]), vlad[1]
    put(model.vlad.assignment.weight, assignment.T[:, :, None], "NetVLAD assignment")
    put(model.vlad.centers, -centers, "NetVLAD centres")
    if model.whitening is not None:
        whiten = _layer_weights(layers, _WHITEN_LAYER, path)
        if len(whiten) != 2:
            raise WeightsError(f"{path}: net.layers[{_WHITEN_LAYER}] is not the WPCA layer")
        w = whiten[0].reshape(whiten[0].shape[-2:])
        put(model.whitening.weight, w.T, "WPCA matrix")
        put(model.whitening.bias, whiten[1].reshape(-1), "WPCA bias")
    try:
        average = np.asarray(net.meta.normalization.averageImage, np.float64)
    except AttributeError:
        raise WeightsError(f"{path}: no net.meta.normalization.averageImage") from None
    put(model.mean, average.reshape(-1, 3)[0], "averageImage")


class NetVladDescriber:
    """Image (H×W×3 uint8 RGB) -> NetVLAD global descriptor (float32, unit norm)."""

    def __init__(self, config: NetVladConfig = NetVladConfig(), device: str | None = None,
                 weights_path: str | Path | None = None) -> None:
        from ..features import resolve_device

        self.config = config
        self.device = resolve_device(device)
        path = Path(weights_path) if weights_path else resolve(WEIGHT_FILES[config.weights])
        self.model = NetVlad(config)
        load_matlab_weights(self.model, path)
        self.model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        image, _ = resize_max_edge(image, self.config.resize_max)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        return self.model(tensor.float().to(self.device))[0].cpu().numpy()


def compute_netvlad(image_dir: str | Path, output: str | Path, preset: str = "netvlad",
                    image_names: list[str] | None = None, device: str | None = None,
                    weights_path: str | Path | None = None, overwrite: bool = False) -> Path:
    """NetVLAD descriptors of every image of ``image_dir`` into a global-descriptor file."""
    from .retrieval import compute_global_descriptors

    if preset not in PRESETS:
        raise ConfigError(f"unknown NetVLAD preset {preset!r}; choose one of "
                          + ", ".join(PRESETS))
    config = PRESETS[preset]
    describer = NetVladDescriber(config, device=device, weights_path=weights_path)
    return compute_global_descriptors(image_dir, output, describer, preset, config,
                                      image_names=image_names, overwrite=overwrite)
