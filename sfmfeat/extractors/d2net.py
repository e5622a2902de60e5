"""D2-Net (Dusmanu et al., "D2-Net: A Trainable CNN for Joint Description and Detection
of Local Features", CVPR 2019): one CNN whose feature map both describes and detects.

A port of the official inference code (mihaidusmanu/d2-net @ 0a3356c, Clear BSD licence):
``lib/model_test.py`` (network, hard detection, handcrafted localisation), ``lib/pyramid.py``
(single- and multi-scale extraction) and ``extract_features.py`` (resizing, preprocessing).
It reads the official checkpoints and reproduces the official keypoints (positions included,
see "Coordinates" below), scores and descriptors (up to convolution rounding).

Speed: the official code runs eight depth-wise 3×3 convolutions and a max-pool over the whole
512-channel map to evaluate the detection and localisation rules everywhere. A position can
only be detected where it is the channel-wise maximum (one position in 512), so here the
rules are evaluated on the 3×3 neighbourhoods of those candidates only, with the same
arithmetic (same operands, same order), which gives the same decisions for a fraction of the
cost. The trunk runs channels-last under ``torch.inference_mode``; ``precision="bf16"``
runs it in bfloat16 (AMX/AVX-512 BF16 on CPU) and does everything after it in float32.

Coordinates. The official code maps a (refined) feature-map position p to the network
input with ``upscale_positions``: ``p*2 + 0.5`` twice, i.e. ``4p + 1.5``, then scales it by
``h_init / h_level`` (pyramid level -> network input). That is the default here
(``positions="official"``), because the
official training (``lib/loss.py``) supervises correspondences through the same
``upscale_positions``/``downscale_positions``: the network learned that cell p *is* pixel
``4p + 1.5`` (pixel centres at integers), and one mapping for every level keeps multiscale
keypoints consistent with each other. The parity test compares with the official raw output,
no conversion applied. From the network input to the original image (when the official
resize rules shrink it) the base template's exact half-pixel map of the PIL resize is used,
``x = (v + 0.5) * H / H_in - 0.5``; the official ``v * fact`` differs from it by
``0.5 (fact - 1)`` px, a geometric slip of the official code unrelated to training.

``positions="receptive-field"`` keeps an alternative, documented for comparison only (it
moves keypoints 2 px right/down at scale 1 and by level-dependent amounts elsewhere, away
from where the network was trained to put them): ``2q + 0.5`` is the
exact pixel-centre map of a 2×2/stride-2 pooling in the convention where pixel centres sit
at integers (cell q covers pixels 2q and 2q+1), which is sfmfeat's convention; but the
``AvgPool2d(2, stride=1)`` after conv3_3 shifts the grid by another half cell of the
stride-4 grid (cell r averages cells r and r+1), and conv4's dilated 3×3 convolutions with
padding 2 are centred. The receptive-field centre of cell p is therefore
``u = 4p + 3.5`` in level-image pixels, 2 px right of/below the official value.
The official code then scales by ``h_init / h_level`` (pyramid level -> network input) and by
``fact = H / H_resized`` (network input -> original image): pure ratios. The pyramid levels
are made with ``F.interpolate(..., align_corners=True)``, whose exact pixel-centre map is
``v = u * (H_in - 1) / (H_level - 1)``; the network input is made from the original by a
PIL bilinear resize (pixel areas, half-pixel centres), whose exact map is
``x = (v + 0.5) * H / H_in - 0.5``. We return ``x`` (per axis, in float64 then float32).
So with ``k = official value / fact * H_level / H_in`` (= 4p + 1.5), the alternative is
``((k + 2) * (H_in - 1) / (H_level - 1) + 0.5) * fact - 0.5`` (the ratio is 1 at scale 1);
without resizing and at scale 1 this is simply ``official + 2``.

Keypoint scale: the official third column is ``1 / level scale``; ``Features.scales`` holds
the diameter of one feature-map cell in original pixels, ``4 / level scale * fact``
(``fact`` averaged over the two axes).

Deviations, all on inputs where the official code cannot run: (1) when both resize rules
apply, the official code resizes twice, the second time through ``scipy.misc.imresize`` on a
float array (which rescales intensities to 0..255); we resize once, straight to the size the
two rules give. (2) A pyramid level smaller than 8 px on a side (where the official network
raises) yields no keypoints instead of an error. (3) A level after one that yielded no
keypoint: the official code does not carry the empty level's map forward (and raises from the
third level on); we do not carry it forward either and go on.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Rule, ValidatedConfig, at_least, greater_than, one_of, registered_or_path
from ..errors import ConfigError, WeightsError
from ..images import IMAGENET_MEAN, IMAGENET_STD, resize_image
from ..weights import WeightFile, load_state_dict_strict, load_torch_checkpoint
from .base import Extractor, Features

logger = logging.getLogger(__name__)

DESCRIPTOR_DIM = 512
STRIDE = 4
MIN_LEVEL_SIDE = 8  # two 2×2 max-pools then a 2×2 average pool: one output cell needs 8 px
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])  # float64, as in lib/utils.py
TORCH_MEAN_RGB = np.array(IMAGENET_MEAN)   # float64, as lib/utils.py
TORCH_STD_RGB = np.array(IMAGENET_STD)

_LICENCE = "BSD-3-Clause-Clear (Clear BSD, mihaidusmanu/d2-net LICENSE)"
WEIGHT_FILES = {
    name: WeightFile("d2net", name, f"https://dusmanu.com/files/d2-net/{name}", _LICENCE,
                     note=note)
    for name, note in (
        ("d2_ots.pth", "VGG16 ImageNet weights, off the shelf"),
        ("d2_tf.pth", "fine-tuned on MegaDepth (the official default)"),
        ("d2_tf_no_phototourism.pth", "fine-tuned on MegaDepth without PhotoTourism scenes"),
    )
}


@dataclass(frozen=True)
class D2NetConfig(ValidatedConfig):
    weights: str = "d2_tf.pth"          # d2_tf.pth | d2_ots.pth | d2_tf_no_phototourism.pth
    scales: tuple[float, ...] = (1.0,)  # image pyramid; the official multiscale is (.5, 1, 2)
    preprocessing: str = "caffe"        # caffe | torch
    max_edge: int | None = 1600         # network input: longest side at most this
    max_sum_edges: int | None = 2800    # ... and height + width at most this
    use_relu: bool = True               # final ReLU (official --no-relu turns it off)
    edge_threshold: float = 5.0         # ratio of principal curvatures (Lowe's r)
    max_keypoints: int | None = None    # keep the top-k by score; None keeps all
    precision: str = "fp32"             # fp32 | bf16 (CPU with BF16, or GPU) | fp16 (GPU)
    positions: str = "official"         # official (4p + 1.5, as trained) | receptive-field
    channels_last: bool = False         # fp32 trunk in NHWC: faster, but no longer bit-equal
    #                                     to the official (NCHW) dense map; bf16/fp16 use it always

    # a level above 4× the network input only costs memory and time
    rules = {"weights": registered_or_path(*WEIGHT_FILES),
             "scales": Rule("> 0 and at most 4", lambda v: 0 < v <= 4),
             "preprocessing": one_of("caffe", "torch"), "max_edge": at_least(STRIDE),
             "max_sum_edges": at_least(2 * STRIDE), "edge_threshold": greater_than(0),
             "max_keypoints": at_least(1), "precision": one_of("fp32", "bf16", "fp16"),
             "positions": one_of("official", "receptive-field")}


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class D2NetNetwork(nn.Module):
    """VGG16 up to conv4_3 with pool3 replaced by a stride-1 average pool and conv4 dilated;
    512 channels at stride 4. Parameter names match the official checkpoints:
    ``dense_feature_extraction.model.{0,2,5,7,10,12,14,17,19,21}.{weight,bias}``."""

    def __init__(self, use_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []

        def conv(c_in: int, c_out: int, dilation: int = 1) -> None:
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation))
            layers.append(nn.ReLU(inplace=True))

        conv(3, 64), conv(64, 64), layers.append(nn.MaxPool2d(2, stride=2))        # conv1
        conv(64, 128), conv(128, 128), layers.append(nn.MaxPool2d(2, stride=2))    # conv2
        conv(128, 256), conv(256, 256), conv(256, 256)                             # conv3
        layers.append(nn.AvgPool2d(2, stride=1))                                   # pool3
        conv(256, 512, 2), conv(512, 512, 2), conv(512, 512, 2)                    # conv4
        layers.pop()  # conv4_3 has no ReLU inside the Sequential; see forward
        self.dense_feature_extraction = nn.Module()
        self.dense_feature_extraction.model = nn.Sequential(*layers)
        self.use_relu = use_relu

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.dense_feature_extraction.model(image)
        return F.relu(features, inplace=True) if self.use_relu else features


def load_d2net_checkpoint(network: nn.Module, path) -> None:
    """Load an official checkpoint ``{'model': state_dict, ...}`` strictly into ``network``."""
    # Training checkpoints of the official train.py also hold an argparse.Namespace.
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = load_torch_checkpoint(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = (", ".join(map(str, list(checkpoint)[:6])) if isinstance(checkpoint, dict)
                 else type(checkpoint).__name__)
        raise WeightsError(
            f"{path}: not a D2-Net checkpoint (expected a dict with a 'model' state dict, "
            f"found {found or 'an empty dict'}); use d2_tf.pth, d2_ots.pth or "
            "d2_tf_no_phototourism.pth from https://dusmanu.com/files/d2-net/")
    state = checkpoint["model"]
    if isinstance(state, dict):
        state = {k: v for k, v in state.items()}
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise WeightsError(f"{path}: 'model' entries {', '.join(bad[:6])} are not tensors")
    load_state_dict_strict(network, state, path)


def network_input_size(height: int, width: int, max_edge: int | None,
                       max_sum_edges: int | None) -> tuple[int, int]:
    """The official resize rules (extract_features.py), applied in turn, with the
    ``scipy.misc.imresize`` size arithmetic (float64 product, truncated)."""
    h, w = height, width
    if max_edge and max(h, w) > max_edge:
        factor = max_edge / max(h, w)
        h, w = int(h * factor), int(w * factor)
    if max_sum_edges and h + w > max_sum_edges:
        factor = max_sum_edges / (h + w)
        h, w = int(h * factor), int(w * factor)
    return max(h, 1), max(w, 1)


def preprocess(image: np.ndarray, preprocessing: str) -> np.ndarray:
    """H×W×3 RGB (uint8 or float) -> H×W×3 float32 network input, channel order as
    ``lib/utils.py:preprocess_image`` (BGR for caffe), arithmetic in float64 like the original."""
    image = image.astype(np.float32)
    if preprocessing == "caffe":
        out = image[:, :, ::-1] - CAFFE_MEAN_BGR
    elif preprocessing == "torch":
        image /= 255.0
        out = (image - TORCH_MEAN_RGB) / TORCH_STD_RGB
    else:
        raise ConfigError(f"unknown D2-Net preprocessing {preprocessing!r}; use caffe or torch")
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------- detection rules (sparse)

def _neighbourhood(fmap: torch.Tensor, c: torch.Tensor, i: torch.Tensor, j: torch.Tensor):
    """3×3 neighbourhoods of channel c around (i, j) in a C×h×w map (any strides): values
    (clamped to the border outside the map) and an in-map mask, each N×3×3."""
    _, h, w = fmap.shape
    offsets = torch.arange(-1, 2, device=fmap.device)
    ii = i[:, None, None] + offsets[None, :, None]
    jj = j[:, None, None] + offsets[None, None, :]
    inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
    return fmap[c[:, None, None], ii.clamp(0, h - 1), jj.clamp(0, w - 1)], inside


def _derivatives(p: torch.Tensor):
    """Finite differences of the official filters at the patch centres, summed in the
    order of the filter taps (row-major), as the official conv2d sums them."""
    dii = p[:, 0, 1] + -2.0 * p[:, 1, 1] + p[:, 2, 1]
    djj = p[:, 1, 0] + -2.0 * p[:, 1, 1] + p[:, 1, 2]
    dij = (0.25 * p[:, 0, 0] + -0.25 * p[:, 0, 2]) + -0.25 * p[:, 2, 0] + 0.25 * p[:, 2, 2]
    di = -0.5 * p[:, 0, 1] + 0.5 * p[:, 2, 1]
    dj = -0.5 * p[:, 1, 0] + 0.5 * p[:, 1, 2]
    return dii, djj, dij, di, dj


def hard_detection(fmap: torch.Tensor, edge_threshold: float = 5.0,
                   banned: torch.Tensor | None = None):
    """Detections of a C×h×w map as (c, i, j, 3×3 patches), in the official order
    (``torch.nonzero`` over channel, row, column). A cell of channel c is detected when it
    is the maximum over channels, the maximum of its 3×3 neighbourhood in channel c, and not
    edge-like: det(H) > 0 and tr(H)²/det(H) <= (t+1)²/t. ``banned`` (h×w bool) removes cells.

    The official code evaluates the three rules densely; a cell can only pass the first one
    in one channel (barring ties), so the other two are evaluated on those candidates only."""
    candidates = fmap == fmap.amax(dim=0, keepdim=True)
    if banned is not None:
        candidates &= ~banned
    c, i, j = candidates.nonzero(as_tuple=True)
    del candidates
    # local maximum first (it removes most candidates), with -inf outside the map as in
    # max_pool2d's padding; then the edge test on the survivors, with zero padding as conv2d
    values, inside = _neighbourhood(fmap, c, i, j)
    padded = torch.where(inside, values, torch.full((), -math.inf, dtype=fmap.dtype))
    keep = values[:, 1, 1] == padded.flatten(1).amax(dim=1)
    c, i, j = c[keep], i[keep], j[keep]
    patch = torch.where(inside[keep], values[keep], torch.zeros((), dtype=fmap.dtype))
    dii, djj, dij, _, _ = _derivatives(patch)
    det = dii * djj - dij * dij
    tr = dii + djj
    threshold = (edge_threshold + 1) ** 2 / edge_threshold
    keep = (tr * tr / det <= threshold) & (det > 0)
    return c[keep], i[keep], j[keep], patch[keep]


def soft_localization(patch: torch.Tensor):
    """The Newton step -H⁻¹∇ at each patch centre, as (step_i, step_j)."""
    dii, djj, dij, di, dj = _derivatives(patch)
    det = dii * djj - dij * dij
    inv_hess_00 = djj / det
    inv_hess_01 = -dij / det
    inv_hess_11 = dii / det
    step_i = -(inv_hess_00 * di + inv_hess_01 * dj)
    step_j = -(inv_hess_01 * di + inv_hess_11 * dj)
    return step_i, step_j


def sample_descriptors(fmap: torch.Tensor, pos_i: torch.Tensor, pos_j: torch.Tensor):
    """Bilinear samples of a C×h×w map at float positions, as (descriptors N×C, valid ids);
    positions whose four neighbours are not all inside the map are dropped (official rule)."""
    _, h, w = fmap.shape
    i0, j0 = torch.floor(pos_i).long(), torch.floor(pos_j).long()
    i1, j1 = torch.ceil(pos_i).long(), torch.ceil(pos_j).long()
    ids = torch.nonzero((i0 >= 0) & (j0 >= 0) & (i1 < h) & (j1 < w)).flatten()
    i0, j0, i1, j1 = i0[ids], j0[ids], i1[ids], j1[ids]
    di = (pos_i[ids] - i0.float())[:, None]
    dj = (pos_j[ids] - j0.float())[:, None]
    hwc = fmap.permute(1, 2, 0)  # rows of C values (contiguous for a channels-last map)
    descriptors = ((1 - di) * (1 - dj) * hwc[i0, j0] + (1 - di) * dj * hwc[i0, j1]
                   + di * (1 - dj) * hwc[i1, j0] + di * dj * hwc[i1, j1])
    return descriptors, ids


def fmap_to_image(pos: np.ndarray, level_size: int, input_size: int,
                  original_size: int, positions: str = "official") -> np.ndarray:
    """Feature-map coordinates (one axis) -> original-image pixels, pixel centres at integers;
    see the module docstring for both conventions."""
    pos = np.asarray(pos, np.float64)
    if positions == "official":   # upscale_positions, then the official level ratio
        v = (pos * STRIDE + 1.5) * (input_size / level_size)
        return (v + 0.5) * (original_size / input_size) - 0.5
    u = pos * STRIDE + 3.5  # receptive-field centre
    if level_size != input_size:
        u = u * (input_size - 1) / max(level_size - 1, 1)
    return (u + 0.5) * (original_size / input_size) - 0.5


# ---------------------------------------------------------------------------- extractor

class D2Net(Extractor):
    name = "d2net"
    config_class = D2NetConfig
    presets = {
        "d2net-ss": D2NetConfig(),
        "d2net-ms": D2NetConfig(scales=(0.5, 1.0, 2.0)),
    }
    weight_files = tuple(WEIGHT_FILES.values())
    default_matcher = "mnn"  # the paper's and hloc's D2-Net matching: mutual NN, no ratio
    resize_backend = "pil-bilinear"   # the official scipy.misc.imresize (PIL bilinear)
    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self, config: D2NetConfig | None = None, device: str | None = None,
                 network: D2NetNetwork | None = None) -> None:
        super().__init__(config, device)
        conf = self.config
        if conf.precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("precision=fp16 needs a GPU; on CPU use bf16")
        if network is None:
            network = D2NetNetwork(conf.use_relu)
            load_d2net_checkpoint(network, self._weights())
        network.use_relu = conf.use_relu
        self.dtype = _DTYPES[conf.precision]
        self.memory_format = (torch.channels_last if conf.channels_last or conf.precision != "fp32"
                              else torch.contiguous_format)
        self.network = network.eval().to(self.device, self.dtype,
                                         memory_format=self.memory_format)
        for p in self.network.parameters():
            p.requires_grad_(False)

    # -- steps -------------------------------------------------------------------------

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return network_input_size(height, width, self.config.max_edge,
                                  self.config.max_sum_edges)

    def network_input(self, image: np.ndarray) -> torch.Tensor:
        """Resize (official rules, PIL bilinear) and preprocess: 1×3×h×w float32 on the
        device (a channels-last view of the H×W×3 buffer)."""
        size = self.network_size(*image.shape[:2])
        if size != image.shape[:2]:
            image = resize_image(image, size, self.resize_backend)
        return self._preprocessed(image)

    def _preprocessed(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(preprocess(image, self.config.preprocessing))
        return x.permute(2, 0, 1)[None].to(self.device)  # an HWC buffer is channels-last

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk: 1×3×h×w -> 1×512×(h/4-1)×(w/4-1) float32, C×h×w contiguous (the
        sparse detection gathers along rows of one channel)."""
        with torch.inference_mode():
            x = x.to(self.dtype).contiguous(memory_format=self.memory_format)
            return self.network(x).to(torch.float32, memory_format=torch.contiguous_format)

    def detect_level(self, dense: torch.Tensor, banned: torch.Tensor | None):
        """Hard detection, refinement and sampling on one level's (accumulated) map.
        Returns (fmap positions N×2 (i, j), scores N, descriptors N×C, detected cells h×w)."""
        fmap = dense[0].contiguous()  # C×h×w
        c, i, j, patch = hard_detection(fmap, self.config.edge_threshold, banned)
        detected = torch.zeros(fmap.shape[1:], dtype=torch.bool, device=fmap.device)
        detected[i, j] = True
        step_i, step_j = soft_localization(patch)
        keep = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
        c, i, j = c[keep], i[keep], j[keep]
        pos_i, pos_j = i.float() + step_i[keep], j.float() + step_j[keep]
        descriptors, ids = sample_descriptors(fmap, pos_i, pos_j)
        descriptors = F.normalize(descriptors, dim=1)
        scores = fmap[c[ids], i[ids], j[ids]]
        positions = torch.stack([pos_i[ids], pos_j[ids]], dim=1)
        return positions, scores, descriptors, detected

    def _forward(self, image: np.ndarray) -> Features | None:
        """The pyramid on the (resized) network input; keypoints in its pixels."""
        with torch.inference_mode():
            x = self._preprocessed(image)
            in_h, in_w = x.shape[2:]
            keypoints, scales, scores, descriptors = [], [], [], []
            previous, banned = None, None
            for idx, scale in enumerate(self.config.scales):
                level = x if scale == 1 else F.interpolate(
                    x, scale_factor=scale, mode="bilinear", align_corners=True)
                lvl_h, lvl_w = level.shape[2:]
                if min(lvl_h, lvl_w) < MIN_LEVEL_SIDE:
                    previous = None
                    continue
                dense = self.dense_features(level)
                del level
                if previous is not None:  # accumulate the coarser levels' maps
                    dense += F.interpolate(previous, size=dense.shape[2:], mode="bilinear",
                                           align_corners=True)
                if banned is not None:    # cells already detected at a coarser level
                    banned = F.interpolate(banned[None, None].float(),
                                           size=dense.shape[2:])[0, 0].bool()
                pos, level_scores, desc, detected = self.detect_level(dense, banned)
                banned = detected if banned is None else banned | detected
                if len(pos) == 0:
                    previous = None
                    continue
                previous = dense
                pos = pos.double().cpu().numpy()
                positions = self.config.positions
                kp_y = fmap_to_image(pos[:, 0], lvl_h, in_h, in_h, positions)
                kp_x = fmap_to_image(pos[:, 1], lvl_w, in_w, in_w, positions)
                keypoints.append(np.stack([kp_x, kp_y], axis=1))
                scales.append(np.full(len(pos), STRIDE / scale))
                scores.append((level_scores / (idx + 1)).cpu().numpy())
                descriptors.append(desc.cpu().numpy())
        if not keypoints:  # e.g. an image smaller than the network's receptive grid
            return None
        features = Features(
            keypoints=np.concatenate(keypoints).astype(np.float32),
            scores=np.concatenate(scores),
            descriptors=np.concatenate(descriptors),
            scales=np.concatenate(scales).astype(np.float32),
        )
        return features.top_k(self.config.max_keypoints)
