"""Scale- and orientation-aware square patches around keypoints, batched with ``grid_sample``.

Geometry (exact)
----------------
A keypoint has a centre ``c = (cx, cy)`` in image pixels (pixel centre at integer
coordinates, sfmfeat's convention), a support radius ``r`` (half the side of the square
support region, pixels) and an angle ``a`` in degrees with OpenCV's ``KeyPoint.angle``
convention: the direction ``(cos a, sin a)`` in image coordinates (x right, y *down*).

Patch pixel ``(row i, col j)``, ``0 <= i, j < P``, covers the cell of side ``2r/P`` whose
centre has normalised patch coordinates::

    u = (2j + 1) / P - 1,   v = (2i + 1) / P - 1          (both in (-1, 1))

and is sampled at the image point::

    x = cx + r * (u * cos a - v * sin a)
    y = cy + r * (u * sin a + v * cos a)

So the patch covers the square ``[-r, r]²`` around the keypoint (cell centres, not edges, at
``±r(1 - 1/P)``), its +x axis (columns) points along the keypoint orientation and its +y axis
(rows) along the orientation turned by +90° (clockwise on screen); ``a = 0`` is no rotation.
This is the frame OpenCV's SIFT descriptor uses, so a structure pointing along the keypoint
orientation comes out pointing right, upright and centred.

Sampling is bilinear between pixel centres; outside the image the nearest border pixel is
repeated (replicate border). Images are not smoothed before sampling, so a support region
much larger than the patch aliases; describers that need it pass a pre-smoothed image.

Bad input
---------
- no keypoints: an empty ``(0, C, P, P)`` tensor;
- centres at or beyond the border: the parts outside are border-replicated (no crash, any
  distance: the affine entries are clamped to ±1e30, so positions stay finite and
  grid_sample's border mode clips them);
- radius 0: every sample hits the centre, so the patch is constant (the bilinear value at
  the centre); huge radii sample a shrunken, border-replicated image;
- non-finite centres, radii or angles, or negative radii: ``ValueError``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: keypoints per ``grid_sample`` call; bounds the temporaries to about chunk·P²·(C + 2)·4
#: bytes (small chunks stay in the allocator's reused heap instead of fresh pages)
DEFAULT_CHUNK = 256


def patch_grid(centers: torch.Tensor, radii: torch.Tensor, angles_deg: torch.Tensor,
               patch_size: int) -> torch.Tensor:
    """Image coordinates (x, y) of every patch pixel: an ``N×P×P×2`` tensor (see module doc).
    A direct, slow transcription of the geometry, for tests and documentation;
    ``extract_patches`` composes the same map into one affine per keypoint."""
    steps = (2 * torch.arange(patch_size, dtype=centers.dtype, device=centers.device) + 1
             ) / patch_size - 1
    v, u = torch.meshgrid(steps, steps, indexing="ij")              # P×P, v = rows, u = cols
    theta = torch.deg2rad(angles_deg)
    cos = (torch.cos(theta) * radii)[:, None, None]
    sin = (torch.sin(theta) * radii)[:, None, None]
    x = centers[:, 0, None, None] + u * cos - v * sin
    y = centers[:, 1, None, None] + u * sin + v * cos
    return torch.stack([x, y], dim=-1)


def extract_patches(image: torch.Tensor, centers, radii, angles_deg=None, patch_size: int = 64,
                    chunk_size: int = DEFAULT_CHUNK, out: torch.Tensor | None = None,
                    rows=None) -> torch.Tensor:
    """``N×C×P×P`` patches of ``image`` (``C×H×W`` float) around ``centers`` (``N×2``, x, y).

    ``radii`` (N) is the half side of the square support region in pixels; ``angles_deg``
    (N, OpenCV convention, None = 0) rotates the patch so that the keypoint orientation is
    the patch +x axis. One bilinear, border-replicating ``grid_sample`` runs per chunk of
    ``chunk_size`` keypoints (all patches of the chunk in a single call).

    With ``out`` (an ``M×C×P×P`` tensor) the patches are written into it, patch k at row
    ``rows[k]`` (``rows`` None: rows 0..N-1), and ``out`` is returned; this spares a copy
    when several calls fill one array.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be C×H×W, got shape {tuple(image.shape)}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not image.is_floating_point():
        image = image.float()
    channels, height, width = image.shape
    dtype, device = image.dtype, image.device
    centers = torch.as_tensor(centers, dtype=torch.float64, device=device).reshape(-1, 2)
    n = len(centers)
    radii = torch.as_tensor(radii, dtype=torch.float64, device=device).reshape(-1)
    if angles_deg is None:
        angles_deg = torch.zeros(n, dtype=torch.float64, device=device)
    angles_deg = torch.as_tensor(angles_deg, dtype=torch.float64, device=device).reshape(-1)
    if len(radii) != n or len(angles_deg) != n:
        raise ValueError(f"centers ({n}), radii ({len(radii)}) and angles ({len(angles_deg)}) "
                         "must have one entry per keypoint")
    if out is None:
        out = image.new_empty((n, channels, patch_size, patch_size))
    elif out.shape[1:] != (channels, patch_size, patch_size) or out.dtype != dtype:
        raise ValueError(f"out must be M×{channels}×{patch_size}×{patch_size} {dtype}, got "
                         f"{tuple(out.shape)} {out.dtype}")
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.long, device=device).reshape(-1)
        if len(rows) != n:
            raise ValueError(f"rows ({len(rows)}) must have one entry per keypoint ({n})")
    elif len(out) < n:
        raise ValueError(f"out has {len(out)} rows for {n} keypoints")
    if n == 0:
        return out
    for name, values in (("centers", centers), ("radii", radii), ("angles", angles_deg)):
        if not torch.isfinite(values).all():
            raise ValueError(f"keypoint {name} must be finite")
    if (radii < 0).any():
        raise ValueError("keypoint radii must be >= 0")

    theta = _normalized_affine(centers, radii, angles_deg, height, width).to(dtype)
    # the cell centres u (columns) = v (rows) of the module docstring
    base = (2 * torch.arange(patch_size, dtype=dtype, device=device) + 1) / patch_size - 1
    along_u = theta[:, None, :, 0] * base[None, :, None]                      # N×P×2
    along_v = theta[:, None, :, 1] * base[None, :, None] + theta[:, None, :, 2]  # N×P×2
    step = max(1, chunk_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        # grid[k, i, j] = theta_k · (u_j, v_i, 1): separable, one broadcast add
        grid = torch.add(along_u[start:stop, None], along_v[start:stop, :, None])
        # entries of theta are within ±1e30, so the grid is finite; grid_sample's border
        # mode clips out-of-image positions to the border pixels. The image is expanded
        # (a stride-0 view, no copy) to one batch entry per keypoint because the CPU kernel
        # spreads only the batch dimension over threads.
        sampled = F.grid_sample(image.expand(stop - start, -1, -1, -1), grid,
                                mode="bilinear", padding_mode="border", align_corners=False)
        if rows is None:
            out[start:stop] = sampled
        else:
            out.index_copy_(0, rows[start:stop], sampled)
    return out


def _normalized_affine(centers, radii, angles_deg, height: int, width: int) -> torch.Tensor:
    """N×2×3 maps from patch (u, v, 1) to grid_sample's normalised image coordinates
    (align_corners=False: pixel k spans [2k/W - 1, (2k+2)/W - 1]), in float64."""
    theta = torch.deg2rad(angles_deg)
    cos, sin = torch.cos(theta) * radii, torch.sin(theta) * radii
    affine = torch.stack([
        torch.stack([2 * cos / width, -2 * sin / width, (2 * centers[:, 0] + 1) / width - 1], 1),
        torch.stack([2 * sin / height, 2 * cos / height, (2 * centers[:, 1] + 1) / height - 1], 1),
    ], 1)
    # absurd (but finite) geometry must not overflow float32 into inf/NaN: any entry this
    # large already puts every sample far outside the image
    return affine.clamp(-1e30, 1e30)


def support_radius(sizes, factor: float) -> torch.Tensor:
    """Half side of the support region for OpenCV keypoint diameters ``sizes``: factor·size/2."""
    sizes = torch.as_tensor(sizes, dtype=torch.float64)
    return sizes * (factor / 2.0)


def affine_for_patch(center, radius: float, angle_deg: float, patch_size: int):
    """The 2×3 matrix mapping image to patch pixels for ``cv2.warpAffine`` (same geometry as
    ``extract_patches``; used by tests and the reference crop loop of the benchmark)."""
    a = math.radians(angle_deg)
    s = patch_size / (2.0 * radius) if radius > 0 else 0.0
    cos, sin = math.cos(a), math.sin(a)
    cx, cy = float(center[0]), float(center[1])
    half = (patch_size - 1) / 2.0
    # col j = half + s((x-cx) cos + (y-cy) sin), row i = half + s(-(x-cx) sin + (y-cy) cos)
    return [[s * cos, s * sin, half - s * (cx * cos + cy * sin)],
            [-s * sin, s * cos, half - s * (-cx * sin + cy * cos)]]
