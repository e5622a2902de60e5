"""ContextDesc (Luo et al., CVPR'19): SIFT patches described by GeoDesc, augmented with the
visual context of a retrieval ResNet50 and the geometric context of the keypoint layout.

    keypoints  = top-n SIFT by response (contrast 0.0067), sorted by size, optionally upright
    patches    = 32×32 crops of the raw gray image over the SIFT descriptor support region
    local, m   = GeoDesc(standardised patches): raw conv6 feature (128) and matchability
    regional   = ResNet50 res5c of the RGB image (long side <= 1024, mean subtracted)
    descriptor = l2norm(local + visual(regional, local, xy) + geometric(m, xy))

The weights are the official TF1 files converted once with
``sfmfeat weights convert contextdesc ARCHIVE_OR_DIR`` (no TensorFlow needed); the
``weights`` field names the local model's file (``contextdesc++.pth``, ...) or a path;
``context=False`` gives the plain local descriptor (l2norm(local)) without the regional model.

Template: ``Extractor.extract`` checks the image and resizes it to ``max_edge`` (official:
never, the default None) before ``_forward``; keypoints and scales come back in original
pixels. ``regional_max_dim`` is another quantity: the long side of the regional model's
input only (the official ``RegModel`` resize of the image SIFT ran on), which keypoints and
patches never see.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass

import cv2
import numpy as np

from ..config import Relation, ValidatedConfig, at_least, between, greater_than, one_of, \
    registered_or_path
from ..errors import ConfigError
from ..images import to_grayscale
from ..weights import WeightFile, load_state_dict_strict, load_torch_checkpoint, resolve
from .base import Extractor, Features

logger = logging.getLogger(__name__)

PATCH_SIZE = 32
REGIONAL_MEAN_RGB = (124.0, 117.0, 104.0)   # the official RegModel's (ImageNet's, in 0..255)
_LICENCE = "none stated (repository has no LICENSE file): all rights reserved by the authors"
_CONVERT_NOTE = ("official TensorFlow archive; turn it into this file with "
                 "`sfmfeat weights convert contextdesc ARCHIVE_OR_DIR`")

#: variant -> official download page of its TF archive (lzx551402/contextdesc README)
VARIANT_URLS = {
    "contextdesc": "https://1drv.ms/u/s!Anl8gFgW1C7LknSY_WFPd04d9TO-?e=75ABot",
    "contextdesc+": "https://1drv.ms/u/s!Anl8gFgW1C7LknHOpThg7ibyMTrV?e=SWWhsz",
    "contextdesc++": "https://1drv.ms/u/s!Anl8gFgW1C7LknLru_1GITirPEpg?e=20f0nd",
    "contextdesc++_upright": "https://1drv.ms/u/s!Anl8gFgW1C7Lkm-wuQU2EVdmh7dG?e=Wg1GAL",
}
REGIONAL_NAME = "retrieval_model"
REGIONAL_URL = "https://1drv.ms/u/s!Anl8gFgW1C7LknXMylr9bnoXQVlE?e=lHWQor"

WEIGHT_FILES = {
    name: WeightFile("contextdesc", f"{name}.pth", url, _LICENCE, note=_CONVERT_NOTE,
                     manual=True)
    for name, url in {**VARIANT_URLS, REGIONAL_NAME: REGIONAL_URL}.items()
}


@dataclass(frozen=True)
class ContextDescConfig(ValidatedConfig):
    weights: str = "contextdesc++.pth"  # local model: a registered file (VARIANT_URLS) or a path
    context: bool = True               # False: l2norm(local feature) only, no regional model
    max_keypoints: int | None = 8192   # SIFT top-n by response (official n_feature); None = all
    upright: bool = False              # orientation 0, keypoints differing only in angle merged
    contrast_threshold: float = 0.0067  # official peak_thld (image_matching.py uses 0.04)
    edge_threshold: float = 10.0
    n_octave_layers: int = 3
    sigma: float = 1.6
    regional_max_dim: int = 1024       # long side of the regional model's input
    max_edge: int | None = None        # long side of the image SIFT runs on; None = full
    patch_sampler: str = "opencv"      # "opencv" (official cv2.remap) or "torch" (grid_sample)
    inverse_distance: bool = False     # True: 1/d weights in the 3-NN interpolation (official: 1/3)
    quantize: bool = False             # official uint8 quantisation, returned de-quantised
    # patches per local-model forward: 128 keeps the 32×32×32 maps in cache on CPU (1.3×
    # the throughput of 512, benchmarks/extract_contextdesc.py)
    batch_size: int = 128

    rules = {"max_keypoints": at_least(1),
             "contrast_threshold": at_least(0), "edge_threshold": greater_than(0),
             "n_octave_layers": between(1, 16), "sigma": between(0.01, 10),
             "regional_max_dim": at_least(32), "patch_sampler": one_of("opencv", "torch"),
             "batch_size": at_least(1), "max_edge": at_least(32),
             "weights": registered_or_path(*(f"{v}.pth" for v in VARIANT_URLS))}
    relations = (Relation(("context", "inverse_distance"),
                          "inverse_distance must be false with context=false (it "
                          "weights the context interpolation)",
                          lambda c: c.context or not c.inverse_distance),)


class ContextDesc(Extractor):
    name = "contextdesc"
    config_class = ContextDescConfig
    presets = {
        "contextdesc": ContextDescConfig(weights="contextdesc.pth"),
        "contextdesc+": ContextDescConfig(weights="contextdesc+.pth"),
        "contextdesc++": ContextDescConfig(),
        "contextdesc++-upright": ContextDescConfig(weights="contextdesc++_upright.pth",
                                                   upright=True),
        "contextdesc++-local": ContextDescConfig(context=False),
    }
    weight_files = tuple(WEIGHT_FILES.values())
    resize_backend = "cv2-area"
    descriptor_dim = 128
    with_geometry = True

    def __init__(self, config: ContextDescConfig | None = None, device: str | None = None) -> None:
        super().__init__(config, device)
        import torch

        from .contextdesc_nets import ContextDescNet, RegionalResNet50

        c = self.config
        self._torch = torch
        self.net = ContextDescNet(c.inverse_distance)
        _load(self.net, self._weights())
        self.net.to(self.device).eval().requires_grad_(False)
        self.net.local.fold_bn()
        self.net.aug.fold_bn()
        self.regional = None
        if c.context:
            self.regional = RegionalResNet50()
            _load(self.regional, resolve(WEIGHT_FILES[REGIONAL_NAME]))
            self.regional.to(self.device).eval().requires_grad_(False)
            self.regional.fold_bn()
        self._sift = cv2.SIFT_create(0, c.n_octave_layers, c.contrast_threshold,
                                     c.edge_threshold, c.sigma)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ steps
    def detect(self, gray: np.ndarray) -> list:
        """SIFT keypoints as the official ``SiftWrapper.detect``: (upright de-dup,) top-n by
        response, then sorted by size, largest first."""
        keypoints = list(self._sift.detect(gray, None))
        return select_keypoints(keypoints, self.config.max_keypoints, self.config.upright)

    def patches(self, gray: np.ndarray, keypoints: list) -> np.ndarray:
        xy = np.array([kp.pt for kp in keypoints], np.float64).reshape(-1, 2)
        size = np.array([kp.size for kp in keypoints], np.float64)
        angle = np.zeros(len(keypoints)) if self.config.upright else \
            np.array([kp.angle for kp in keypoints], np.float64)
        sampler = sample_patches_cv2 if self.config.patch_sampler == "opencv" \
            else sample_patches_torch
        return sampler(gray, xy, size, angle)

    def describe_local(self, patches: np.ndarray):
        """Raw conv6 features (N×128) and matchability (N×1) of N×32×32 patches."""
        torch = self._torch
        fed = standardize_patches(patches)
        feats, mbs = [], []
        with torch.inference_mode():
            for start in range(0, len(fed), self.config.batch_size):
                batch = torch.from_numpy(fed[start:start + self.config.batch_size, None])
                feat, mb = self.net.local(batch.to(self.device))
                feats.append(feat.cpu())
                mbs.append(mb.cpu())
        return torch.cat(feats).numpy(), torch.cat(mbs).numpy()

    def regional_map(self, image: np.ndarray) -> np.ndarray:
        """res5c (h×w×2048 float32) of an H×W×3 uint8 RGB image (official input rules)."""
        torch = self._torch
        data = resize_for_regional(image, self.config.regional_max_dim)
        x = torch.from_numpy(data.astype(np.float32) - np.float32(REGIONAL_MEAN_RGB))
        with torch.inference_mode():
            out = self.regional(x.permute(2, 0, 1)[None].to(self.device))
        return out[0].permute(1, 2, 0).cpu().numpy()

    def global_descriptor(self, image: np.ndarray) -> np.ndarray:
        """A 2048-d unit global descriptor of the image (max-pooled res5c), for retrieval."""
        if self.regional is None:
            raise ConfigError("global_descriptor needs the regional model (context=True)")
        return regional_global_descriptor(self.regional_map(image))

    def augment(self, local_feat: np.ndarray, kpt_m: np.ndarray, kpt_xy: np.ndarray,
                regional: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.net.aug(
                torch.from_numpy(np.ascontiguousarray(local_feat, np.float32))[None].to(self.device),
                torch.from_numpy(np.ascontiguousarray(regional, np.float32)).permute(2, 0, 1)[None]
                .to(self.device),
                torch.from_numpy(np.ascontiguousarray(kpt_m, np.float32))[None].to(self.device),
                torch.from_numpy(np.ascontiguousarray(kpt_xy, np.float32))[None].to(self.device))
        return out[0].cpu().numpy()

    # ------------------------------------------------------------------ forward
    def _forward(self, image: np.ndarray) -> Features | None:
        timings = {}
        tic = time.perf_counter()
        gray = to_grayscale(image)
        keypoints = self.detect(gray)
        timings["sift"] = time.perf_counter() - tic
        if not keypoints:
            self.timings = timings
            return None
        tic = time.perf_counter()
        patches = self.patches(gray, keypoints)
        timings["patches"] = time.perf_counter() - tic
        tic = time.perf_counter()
        local_feat, kpt_m = self.describe_local(patches)
        timings["local"] = time.perf_counter() - tic
        xy = np.array([kp.pt for kp in keypoints], np.float64)
        if self.regional is None:
            descriptors = local_feat / np.maximum(
                np.linalg.norm(local_feat, axis=1, keepdims=True), 1e-12)
        else:
            tic = time.perf_counter()
            regional = self.regional_map(image)
            timings["regional"] = time.perf_counter() - tic
            tic = time.perf_counter()
            descriptors = self.augment(local_feat, kpt_m, normalized_xy(xy, gray.shape), regional)
            timings["augmentation"] = time.perf_counter() - tic
        if self.config.quantize:
            descriptors = dequantize(quantize(descriptors))
        self.timings = timings
        return Features(
            keypoints=xy.astype(np.float32),
            scores=np.array([kp.response for kp in keypoints], np.float32),
            descriptors=descriptors.astype(np.float32),
            scales=np.array([kp.size for kp in keypoints], np.float32),
            orientations=np.zeros(len(keypoints), np.float32) if self.config.upright
            else np.array([kp.angle % 360.0 for kp in keypoints], np.float32),
        )


# ---------------------------------------------------------------------- helpers


def _load(module, path: Path) -> None:
    state = load_torch_checkpoint(path)
    load_state_dict_strict(module, state, path)


def select_keypoints(keypoints: list, limit: int | None, upright: bool) -> list:
    """The official ``SiftWrapper.detect`` selection (same NumPy calls, so the same order)."""
    if not keypoints:
        return []
    if upright:
        rows = np.array([(kp.pt[0], kp.pt[1], kp.size) for kp in keypoints])
        _, unique = np.unique(rows, axis=0, return_index=True)
        keypoints = [keypoints[i] for i in unique]
    if limit is not None and limit > 0 and len(keypoints) > limit:
        response = np.array([kp.response for kp in keypoints])
        keypoints = [keypoints[i] for i in np.argsort(response)[::-1][:limit]]
    order = np.argsort(-np.array([kp.size for kp in keypoints], np.float64))
    return [keypoints[i] for i in order]


def support_radius(size: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Half side of the SIFT descriptor support region, as the official crop:
    ``round(3 · size/2 · √2 · (4+1)/2)`` capped at the image diagonal."""
    radius = np.round(3.0 * (np.asarray(size, np.float64) * 0.5) * np.sqrt(2) * 5 * 0.5)
    return np.minimum(radius, np.sqrt(np.sum(np.square(image_shape))))


def official_grid(xy: np.ndarray, size: np.ndarray, angle_deg: np.ndarray,
                  image_shape: tuple[int, int]) -> np.ndarray:
    """N×32×32×2 sample points of the official crop (float32, as its ``cv2.remap`` map).

    Patch pixel (row i, col j) has offsets ``g = (j/16 - 1, i/16 - 1)`` (so the grid is not
    symmetric: it spans [-r, r - r/16]) rotated by the keypoint angle.
    """
    steps = np.arange(PATCH_SIZE, dtype=np.float32) / PATCH_SIZE * 2 - 1
    gy, gx = np.meshgrid(steps, steps, indexing="ij")
    ori = (360.0 - np.asarray(angle_deg, np.float64)) * (np.pi / 180.0)
    radius = support_radius(size, image_shape)
    m_cos = (np.cos(ori) * radius).astype(np.float32)[:, None, None]
    m_sin = (np.sin(ori) * radius).astype(np.float32)[:, None, None]
    cx = np.asarray(xy[:, 0], np.float32)[:, None, None]
    cy = np.asarray(xy[:, 1], np.float32)[:, None, None]
    # float32 with the official matmul's rounding: fma(gy, m, gx·m') then + centre
    # (float32 products are exact in float64, so float64 then one cast emulates the fma)
    gy64 = gy.astype(np.float64)
    x = (gy64 * m_sin + (gx * m_cos)).astype(np.float32) + cx
    y = (gy64 * m_cos + (gx * -m_sin)).astype(np.float32) + cy
    return np.stack([x, y], axis=-1).astype(np.float32)


def sample_patches_cv2(gray: np.ndarray, xy: np.ndarray, size: np.ndarray,
                       angle_deg: np.ndarray) -> np.ndarray:
    """N×32×32 float32 patches with ``cv2.remap`` (bilinear, replicate border), as the
    official ``SiftWrapper.get_interest_region`` with OpenCV 3/4 (1/32-pixel positions)."""
    n = len(xy)
    if n == 0:
        return np.zeros((0, PATCH_SIZE, PATCH_SIZE), np.float32)
    grid = official_grid(xy, size, angle_deg, gray.shape)
    # OpenCV <= 4 remaps with coordinates rounded to 1/32 pixel (INTER_TAB_SIZE); OpenCV 5
    # interpolates exactly. Rounding the map first gives the OpenCV 4 result with both.
    grid = np.rint(grid * np.float32(32)) / np.float32(32)
    image = gray.astype(np.float32)
    out = []
    per_call = 1000  # cv2.remap maps must stay below 32767 rows
    for start in range(0, n, per_call):
        chunk = grid[start:start + per_call]
        m = len(chunk)
        patches = cv2.remap(image, chunk.reshape(m * PATCH_SIZE, PATCH_SIZE, 2), None,
                            interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out.append(patches.reshape(m, PATCH_SIZE, PATCH_SIZE))
    return np.concatenate(out)


def sample_patches_torch(gray: np.ndarray, xy: np.ndarray, size: np.ndarray,
                         angle_deg: np.ndarray) -> np.ndarray:
    """The same crop through the shared ``extract_patches`` (exact bilinear ``grid_sample``).

    ``extract_patches`` samples cell centres ``(2j+1)/P - 1``; the official grid starts at
    ``-1`` (``2j/P - 1``), so the centre moves by ``-r/P`` along both patch axes.
    """
    import torch

    from .patches import extract_patches

    if len(xy) == 0:
        return np.zeros((0, PATCH_SIZE, PATCH_SIZE), np.float32)
    radius = support_radius(size, gray.shape)
    a = np.deg2rad(np.asarray(angle_deg, np.float64))
    shift = radius / PATCH_SIZE
    centers = np.stack([xy[:, 0] - shift * (np.cos(a) - np.sin(a)),
                        xy[:, 1] - shift * (np.sin(a) + np.cos(a))], axis=-1)
    image = torch.from_numpy(gray.astype(np.float32))[None]
    patches = extract_patches(image, centers, radius, angle_deg, patch_size=PATCH_SIZE)
    return patches[:, 0].numpy()


def standardize_patches(patches: np.ndarray) -> np.ndarray:
    """The official NumPy step: ``(p - mean) / (std + 1e-8)`` per patch, float32."""
    patches = np.asarray(patches, np.float32)
    mean = np.mean(patches, axis=(1, 2), keepdims=True)
    std = np.std(patches, axis=(1, 2), keepdims=True)
    return (patches - mean) / (std + np.float32(1e-8))


def normalized_xy(xy: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Keypoints in [-1, 1]: ``((x - W/2) / (W/2), (y - H/2) / (H/2))``, float32."""
    height, width = image_shape[:2]
    xy = np.asarray(xy, np.float64)
    return np.stack([(xy[:, 0] - width / 2.0) / (width / 2.0),
                     (xy[:, 1] - height / 2.0) / (height / 2.0)], axis=-1).astype(np.float32)


def resize_for_regional(image: np.ndarray, max_dim: int) -> np.ndarray:
    """The official ``RegModel`` resize: ``cv2.resize(fx=fy=max_dim/long side)``, bilinear."""
    long_side = max(image.shape[:2])
    if long_side <= max_dim:
        return image
    ratio = max_dim / float(long_side)
    return cv2.resize(np.ascontiguousarray(image), (0, 0), fx=ratio, fy=ratio)


def quantize(descriptors: np.ndarray) -> np.ndarray:
    """The official uint8 code ``(d·128 + 128)`` truncated (clipped to 0–255 here)."""
    values = np.asarray(descriptors, np.float32) * np.float32(128) + np.float32(128)
    return np.clip(values, 0, 255).astype(np.uint8)


def dequantize(codes: np.ndarray) -> np.ndarray:
    """Centre of each truncation bin: within 1/256 of the original value per component."""
    return (np.asarray(codes, np.float32) - np.float32(127.5)) / np.float32(128)


def regional_global_descriptor(regional: np.ndarray) -> np.ndarray:
    """A global image descriptor from the res5c map: ReLU, spatial max pooling, L2 (MAC)."""
    pooled = np.maximum(regional, 0).reshape(-1, regional.shape[-1]).max(0)
    return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


__all__ = ["ContextDesc", "ContextDescConfig", "WEIGHT_FILES", "VARIANT_URLS", "quantize",
           "dequantize", "select_keypoints", "sample_patches_cv2", "sample_patches_torch",
           "official_grid", "support_radius", "normalized_xy", "regional_global_descriptor"]
