"""Listing and decoding images.

Conventions (the same everywhere in sfmfeat):
- Image names are POSIX paths relative to the image root (subfolders, spaces and
  non-ASCII characters are fine).
- Pixels are used as stored in the file: EXIF orientation is *not* applied, exactly as
  COLMAP does, so keypoints, COLMAP models and undistorted images all share one pixel
  grid. A log line says when an image carries a non-identity EXIF orientation.
- ``read_image`` returns an H×W×3 uint8 RGB array: grayscale is replicated to three
  channels, alpha is dropped, 16-bit data is scaled to 8 bits (value / 257, rounded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageReadError, InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp")
MIN_IMAGE_SIDE = 16


def list_images(root: str | Path) -> list[str]:
    """Sorted relative POSIX names of every image-like file below ``root`` (recursive)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of images")
    candidates = [p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    names = sorted(p.relative_to(root).as_posix() for p in candidates if p.is_file())
    for path in sorted(p for p in candidates if p.is_symlink() and not p.exists()):
        logger.warning("skipping %s: broken symbolic link to %s", path, os.readlink(path))
    if not names:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return names


def read_image_list(path: str | Path) -> list[str]:
    """Image names from a text file, one per line (blank lines and # comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image list {path} does not exist")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    if not names:
        raise InputError(f"image list {path} names no image")
    return names


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an H×W×3 uint8 RGB array, or raise ImageReadError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with non-ASCII paths
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    image = _to_rgb8(image, path)
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{path}: image is {width}x{height} px, smaller than {MIN_IMAGE_SIDE} px on a side"
        )
    orientation = exif_orientation(path)
    if orientation not in (None, 1):
        logger.info("%s has EXIF orientation %d; using the stored pixel grid as COLMAP does",
                    path, orientation)
    return image


def _to_rgb8(image: np.ndarray, path: Path) -> np.ndarray:
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"{path}: unsupported number of channels {channels}")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image without decoding the pixels when possible."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError):
        height, width = read_image(path).shape[:2]
        return width, height


def exif_orientation(path: str | Path) -> int | None:
    """The EXIF orientation tag (1..8) of an image, or None when absent or unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            value = im.getexif().get(0x0112)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return int(value) if value else None


#: ITU-R BT.601 luma weights of (R, G, B): OpenCV's RGB2GRAY and Torch7's ``image.rgb2y``
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: the ImageNet statistics of torchvision's ``Normalize`` (RGB in [0, 1]), which CAPS, R2D2
#: and D2-Net's "torch" preprocessing were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_grayscale(image: np.ndarray, rounded: bool = True) -> np.ndarray:
    """H×W luminance of an RGB image with ``LUMA_WEIGHTS``: uint8 rounded as OpenCV does, or
    (``rounded=False``) float32 in 0..255, unrounded as Torch7's ``image.rgb2y``."""
    if not rounded:
        if image.ndim == 2:
            return image.astype(np.float32)
        return image[..., :3].astype(np.float32) @ np.array(LUMA_WEIGHTS, np.float32)
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def imagenet_normalized(rgb):
    """``(rgb - IMAGENET_MEAN) / IMAGENET_STD`` of a torch B×3×H×W tensor in [0, 1], on its
    device and in its dtype."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


#: resize backends an extractor can declare (``Extractor.resize_backend``): OpenCV area
#: averaging, PIL bilinear (D2-Net's official scipy/PIL resize), torch bilinear with
#: antialiasing (DISK's official resize; returns float32 in [0, 1]); "pyramid": the method's
#: own pyramid applies ``max_edge`` to its levels (R2D2, whose extract.py builds every level
#: from the full-resolution image), so the template does not resize
RESIZE_BACKENDS = ("cv2-area", "pil-bilinear", "torch-antialias", "pyramid")


def max_edge_size(height: int, width: int, max_edge: int | None) -> tuple[int, int]:
    """(H, W) after a downscale to a long side of at most ``max_edge`` (rounded sides)."""
    if not max_edge or max(height, width) <= max_edge:
        return height, width
    scale = max_edge / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, size: tuple[int, int], backend: str) -> np.ndarray:
    """``image`` (H×W[×C] uint8) resized to ``size`` = (h, w) with ``backend``. The pixel
    map is the half-pixel one of all three: x_small = (x + 0.5) * w / W - 0.5."""
    height, width = size
    if backend == "cv2-area":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if backend == "pil-bilinear":
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(image, np.uint8))
                          .resize((width, height), Image.BILINEAR))
    if backend == "torch-antialias":
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
        x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        return (x.permute(1, 2, 0) if image.ndim == 3 else x[0]).numpy()
    raise ValueError(f"unknown resize backend {backend!r}; one of {RESIZE_BACKENDS}")


def rescale_pixels(xy: np.ndarray, factor: tuple[float, float]) -> np.ndarray:
    """N×2 (x, y) pixels of an image in the pixels of the same image resized by ``factor``
    = (w_new / w, h_new / h), pixel centres at integers in both: (x + 0.5) * f - 0.5."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return np.c_[(xy[:, 0] + 0.5) * factor[0] - 0.5, (xy[:, 1] + 0.5) * factor[1] - 0.5]


def resize_max_edge(image: np.ndarray, max_edge: int | None) -> tuple[np.ndarray, float]:
    """Downscale (OpenCV area) so that max(H, W) <= max_edge; the image and the scale."""
    height, width = image.shape[:2]
    size = max_edge_size(height, width, max_edge)
    if size == (height, width):
        return image, 1.0
    return resize_image(image, size, "cv2-area"), max_edge / max(height, width)
