"""Multi-view stereo on the CPU: plane sweep, local refinement, consistency filtering.

For each reference image of an undistorted (pinhole) COLMAP workspace:

1. **Source views** are chosen from the sparse model: the images that share the most 3D
   points with the reference at a useful triangulation angle.
2. **Plane sweep** (coarse, at ``sweep_max_size``): fronto-parallel planes sampled
   uniformly in inverse depth over the range of the sparse points seen by the reference.
   Each source image is warped onto the reference by the plane's homography; the matching
   cost of a view is ``1 - NCC`` over a square window, and the costs of the ``best_k`` best
   views are averaged (robust to occlusion). Winner-takes-all plus a parabola fit.
3. **Refinement** at full resolution: a local search around the upsampled coarse depth,
   warping every pixel with its own depth (so the window follows the surface), twice
   with a shrinking step, then a parabola fit.
4. **Photometric filter:** keep pixels with enough texture and a high aggregated NCC.
5. **Geometric filter** (needs the photometric maps of all images): a pixel survives if its
   3D point, projected into a source view and lifted back with that view's depth, comes
   back within ``geom_max_reproj_error`` pixels and ``geom_max_depth_error`` relative
   depth in at least ``geom_min_consistent`` views.

Pixel coordinates follow COLMAP's SfM convention (pixel centres at +0.5); OpenCV calls get
the -0.5 shift. Note that COLMAP's own MVS code (PatchMatch, ``stereo_fusion``) lifts depth-map
pixel (row, col) with image point (col, row), i.e. half a pixel off that convention; the
resulting 0.5 px shift is far inside fusion's 2 px reprojection tolerance.
Normals are estimated from the filtered depth (camera frame, facing the camera).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..images import to_grayscale

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuMvsConfig:
    num_source_views: int = 4            # per reference image, chosen from the sparse model
    min_triangulation_angle: float = 2.0  # degrees; shared points below it do not count
    num_depths: int = 128                # plane-sweep hypotheses (uniform in inverse depth)
    sweep_max_size: int = 480            # long side of the coarse sweep (pixels)
    window_radius: int = 3               # NCC window radius at the sweep scale
    best_k: int = 2                      # average the costs of the best k source views
    refine_window_radius: int = 4        # NCC window radius of the full-resolution refinement
    refine_rounds: int = 2               # local search rounds (step halves each round... /4)
    min_ncc: float = 0.5                 # photometric filter on the aggregated NCC
    min_texture: float = 0.01            # std of intensity (0..1) in the window
    geom_max_reproj_error: float = 1.0   # pixels
    geom_max_depth_error: float = 0.01   # relative
    geom_min_consistent: int = 1         # source views that must agree
    depth_percentiles: tuple[float, float] = (1.0, 99.0)
    depth_margin: float = 0.25           # range = [p_lo * (1 - m), p_hi * (1 + m)]
    normal_radius: int = 4               # smoothing and difference radius of the normals


PHOTOMETRIC_FIELDS = ("num_source_views", "min_triangulation_angle", "num_depths", "sweep_max_size",
                      "window_radius", "best_k", "refine_window_radius", "refine_rounds", "min_ncc",
                      "min_texture", "depth_percentiles", "depth_margin")


def photometric_key(config: CpuMvsConfig) -> dict:
    """The fields that change a photometric depth map (the rest act after it)."""
    return {name: getattr(config, name) for name in PHOTOMETRIC_FIELDS}


@dataclass(frozen=True)
class PinholeView:
    """A calibrated view: x_cam = R @ x_world + t, pixel = K @ x_cam (COLMAP convention)."""

    name: str
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    def scaled(self, width: int, height: int) -> PinholeView:
        s = np.diag([width / self.width, height / self.height, 1.0])
        return PinholeView(self.name, s @ self.K, self.R, self.t, width, height)


_TO_CV = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])   # COLMAP -> OpenCV pixel coords


def views_from_reconstruction(rec) -> dict[int, PinholeView]:
    """PinholeView per registered image (the cameras must be PINHOLE/SIMPLE_PINHOLE)."""
    views = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        camera = rec.cameras[image.camera_id]
        pose = image.cam_from_world()
        views[image_id] = PinholeView(
            image.name, camera.calibration_matrix(), pose.rotation.matrix(),
            np.asarray(pose.translation, np.float64), camera.width, camera.height)
    return views


def select_source_views(rec, config: CpuMvsConfig) -> dict[int, list[int]]:
    """For each registered image, up to ``num_source_views`` images sharing the most points."""
    centers = {i: rec.images[i].projection_center() for i in rec.reg_image_ids()}
    min_cos = math.cos(math.radians(config.min_triangulation_angle))
    shared: dict[int, dict[int, int]] = {i: {} for i in centers}
    for point in rec.points3D.values():
        ids = sorted({el.image_id for el in point.track.elements} & centers.keys())
        if len(ids) < 2:
            continue
        rays = {i: point.xyz - centers[i] for i in ids}
        rays = {i: r / max(np.linalg.norm(r), 1e-12) for i, r in rays.items()}
        for a in ids:
            for b in ids:
                if a != b and float(rays[a] @ rays[b]) <= min_cos:
                    shared[a][b] = shared[a].get(b, 0) + 1
    result = {}
    for image_id, counts in shared.items():
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        result[image_id] = [b for b, n in ranked[: config.num_source_views] if n >= 10]
    return result


def depth_ranges(rec, config: CpuMvsConfig) -> dict[int, tuple[float, float]]:
    """Per registered image: the depth range of its sparse points, with a margin."""
    ranges = {}
    lo_p, hi_p = config.depth_percentiles
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        pose = image.cam_from_world()
        xyz = np.array([rec.points3D[p.point3D_id].xyz for p in image.points2D
                        if p.has_point3D()]).reshape(-1, 3)
        if len(xyz) == 0:
            continue
        z = (xyz @ pose.rotation.matrix().T + np.asarray(pose.translation))[:, 2]
        z = z[z > 0]
        if len(z) < 3:
            continue
        lo, hi = np.percentile(z, [lo_p, hi_p])
        ranges[image_id] = (float(lo * (1 - config.depth_margin)),
                            float(hi * (1 + config.depth_margin)))
    return ranges


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Float32 intensity in [0, 1]."""
    rgb = to_grayscale(rgb)
    return rgb.astype(np.float32) / (65535.0 if rgb.dtype == np.uint16 else 255.0)


class _Ncc:
    """NCC of a fixed reference image against warped source images, box windows.

    Written for speed at equal results: buffers are allocated once per reference image,
    each view's cost is computed while its planes are still in cache, window means are two
    1-D passes of OpenCV's separable filter (1.6-2x its box filter here; the sums round
    differently, within an ulp), the share of NaN samples in a window is an integer box
    count on a uint8 mask, and the best-k mean uses elementwise min/max, not a partition.
    """

    def __init__(self, ref: np.ndarray, radius: int, min_texture: float,
                 num_views: int) -> None:
        self.ksize = (2 * radius + 1, 2 * radius + 1)
        self._taps = np.full(2 * radius + 1, 1.0 / (2 * radius + 1), np.float32)
        self.ref = ref
        self.mu = self._window_mean(ref)
        var = self._window_mean(ref * ref) - self.mu * self.mu
        self.std = np.sqrt(np.maximum(var, 0))
        self.textured = self.std >= min_texture
        self._inv_std = 1.0 / np.maximum(self.std, 1e-4)
        area = self.ksize[0] * self.ksize[1]
        # Fewest NaN samples for which the window's float mean of the mask exceeds 0.2.
        self._min_nan = next(n for n in range(area + 1)
                             if np.float32(n * (1.0 / area)) > np.float32(0.2))
        h, w = ref.shape
        self.warped = np.empty((h, w), np.float32)     # warp callbacks write here
        self._mean, self._sq, self._tmp, self._tmp2 = (np.empty((h, w), np.float32)
                                                       for _ in range(4))
        self._costs = np.empty((num_views, h, w), np.float32)
        self._nan = np.empty((h, w), bool)
        self._count = np.empty((h, w), np.uint16)
        self._invalid = np.empty((h, w), bool)

    def _window_mean(self, src: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        """Mean over the square window (borders reflected, as ``cv2.blur``)."""
        return cv2.sepFilter2D(src, cv2.CV_32F, self._taps, self._taps, dst=dst,
                               borderType=cv2.BORDER_REFLECT_101)

    def _cost(self, cov: np.ndarray) -> None:
        """1 - NCC in [0, 2] of ``self.warped`` into ``cov``; 2 where more than a fifth of
        the window left the source image (NaN samples)."""
        warped, tmp, mean, var = self.warped, self._tmp, self._mean, self._sq
        np.isnan(warped, out=self._nan)
        partial = bool(self._nan.any())
        if partial:
            cv2.boxFilter(self._nan.view(np.uint8), cv2.CV_16U, self.ksize, dst=self._count,
                          normalize=False)
            np.greater_equal(self._count, self._min_nan, out=self._invalid)
            cv2.patchNaNs(warped, 0.0)
        self._window_mean(warped, mean)
        np.multiply(warped, warped, out=tmp)
        self._window_mean(tmp, var)
        np.multiply(self.ref, warped, out=tmp)
        self._window_mean(tmp, cov)
        np.multiply(mean, mean, out=tmp)
        var -= tmp
        np.multiply(self.mu, mean, out=tmp)
        cov -= tmp
        np.maximum(var, 1e-8, out=var)
        np.sqrt(var, out=var)
        cov *= self._inv_std
        cov /= var
        np.clip(cov, -1.0, 1.0, out=cov)
        np.subtract(1.0, cov, out=cov)
        if partial:
            np.copyto(cov, 2.0, where=self._invalid)

    def aggregated_cost(self, warp, best_k: int, out: np.ndarray) -> None:
        """Mean of the ``best_k`` smallest view costs into ``out``. ``warp(v, dst)`` writes
        source view ``v``, warped onto the reference, into ``dst``."""
        costs = self._costs
        for v in range(len(costs)):
            warp(v, self.warped)
            self._cost(costs[v])
        n = len(costs)
        k = min(best_k, n)
        if k == n:
            np.mean(costs, 0, out=out)
            return
        if k == 1:
            np.min(costs, 0, out=out)
            return
        if (n, k) == (4, 2):                 # the default: two smallest of four, 8 min/max
            low, high = self._tmp, self._tmp2
            np.minimum(costs[0], costs[1], out=low)
            np.maximum(costs[0], costs[1], out=high)
            np.maximum(costs[2], costs[3], out=out)
            np.minimum(high, out, out=high)                   # min of the two pair maxima
            np.minimum(costs[2], costs[3], out=out)
            np.maximum(low, out, out=self._mean)              # larger pair minimum
            np.minimum(low, out, out=low)                     # the smallest
            np.minimum(self._mean, high, out=high)            # the second smallest
            np.add(low, high, out=out)
            out /= k
            return
        smallest = [np.full(out.shape, np.inf, np.float32) for _ in range(k)]
        larger = np.empty(out.shape, np.float32)
        for cost in costs:                   # keep the k smallest sorted: insert with min/max
            cost = cost.copy()
            for s in smallest:
                np.maximum(s, cost, out=larger)
                np.minimum(s, cost, out=s)
                cost, larger = larger, cost
        np.copyto(out, smallest[0])
        for s in smallest[1:]:
            out += s
        out /= k


def _parabola(c_minus: np.ndarray, c0: np.ndarray, c_plus: np.ndarray) -> np.ndarray:
    """Sub-sample offset in [-0.5, 0.5] of the minimum of a parabola through three costs."""
    denom = c_minus - 2 * c0 + c_plus
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = 0.5 * (c_minus - c_plus) / denom
    offset[~(denom > 1e-9)] = 0.0
    return np.clip(offset, -0.5, 0.5)


def _relative(ref: PinholeView, src: PinholeView) -> tuple[np.ndarray, np.ndarray]:
    r = src.R @ ref.R.T
    return r, src.t - r @ ref.t


def _pick(volume: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(volume, index[None], 0)[0]


def plane_sweep(ref_img, ref: PinholeView, src_imgs, srcs: list[PinholeView],
                inv_depths: np.ndarray, config: CpuMvsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Winner-takes-all inverse depth (with parabola refinement) and its cost, at ref size."""
    ncc = _Ncc(ref_img, config.window_radius, config.min_texture, len(srcs))
    h, w = ref_img.shape
    k_inv, from_cv = np.linalg.inv(ref.K), np.linalg.inv(_TO_CV)
    relative = [_relative(ref, src) for src in srcs]
    volume = np.empty((len(inv_depths), h, w), np.float32)
    best = np.zeros((h, w), np.intp)                   # running argmin (first minimum)
    better = np.empty((h, w), bool)
    for di, inv_d in enumerate(inv_depths):
        def warp(v: int, dst: np.ndarray) -> None:
            r, t = relative[v]
            hom = _TO_CV @ srcs[v].K @ (r + np.outer(t, [0.0, 0.0, inv_d])) @ k_inv @ from_cv
            cv2.warpPerspective(src_imgs[v], hom, (w, h), dst=dst,
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))
        ncc.aggregated_cost(warp, config.best_k, volume[di])
        if di == 0:
            cost0 = volume[0].copy()
        else:
            np.less(volume[di], cost0, out=better)
            np.copyto(cost0, volume[di], where=better)
            np.copyto(best, di, where=better)
    lo = np.clip(best - 1, 0, len(inv_depths) - 1)
    hi = np.clip(best + 1, 0, len(inv_depths) - 1)
    offset = _parabola(_pick(volume, lo), cost0, _pick(volume, hi))
    offset[(best == 0) | (best == len(inv_depths) - 1)] = 0.0
    step = inv_depths[1] - inv_depths[0] if len(inv_depths) > 1 else 0.0
    return (inv_depths[best] + offset * step).astype(np.float32), cost0


_BAND_ROWS = 64   # rows per band of the refinement: a band's planes stay in the caches


def refine(ref_img, ref: PinholeView, src_imgs, srcs: list[PinholeView], inv_depth: np.ndarray,
           step: float, config: CpuMvsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local search around a per-pixel inverse depth: (inverse depth, cost, textured mask).

    Every pixel is warped with its own depth, so the image is processed in bands of rows
    (each with ``refine_window_radius`` rows of context on either side, whose own results
    are dropped): the same numbers as one whole-image pass, at a fraction of its memory
    traffic.
    """
    h, w = ref_img.shape
    radius = config.refine_window_radius
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5)
    pix = np.stack([xs, ys, np.ones_like(xs)], 0).reshape(3, -1)
    rays = np.linalg.inv(ref.K) @ pix
    bases = []
    for src in srcs:
        r, t = _relative(ref, src)
        bases.append(((src.K @ r @ rays).astype(np.float32).reshape(3, h, w),
                      (src.K @ t).astype(np.float32)))
    current = inv_depth.astype(np.float32).copy()
    cost = np.empty((h, w), np.float32)
    textured = np.empty((h, w), bool)
    for round_index in range(max(1, config.refine_rounds)):
        updated = np.empty_like(current)
        for y0 in range(0, h, _BAND_ROWS):
            y1 = min(h, y0 + _BAND_ROWS)
            top, bottom = max(0, y0 - radius), min(h, y1 + radius)
            inner = slice(y0 - top, y1 - top)
            ncc = _Ncc(ref_img[top:bottom], radius, config.min_texture, len(srcs))
            band = _refine_band(ncc, src_imgs, [(q[:, top:bottom], b) for q, b in bases],
                                current[top:bottom], step, config.best_k)
            updated[y0:y1], cost[y0:y1] = band[0][inner], band[1][inner]
            if round_index == 0:
                textured[y0:y1] = ncc.textured[inner]
        current = updated
        step = step / 3
    return current, cost, textured


def _refine_band(ncc: _Ncc, src_imgs, bases, current: np.ndarray, step: float,
                 best_k: int) -> tuple[np.ndarray, np.ndarray]:
    """One refinement round of a band of rows: (inverse depth, cost)."""
    offsets = (-1.0, 0.0, 1.0)
    agg = np.empty((len(offsets),) + current.shape, np.float32)
    for oi, off in enumerate(offsets):
        inv_d = current + off * step

        def warp(v: int, dst: np.ndarray) -> None:
            q, b = bases[v]
            z = q[2] + b[2] * inv_d
            with np.errstate(divide="ignore", invalid="ignore"):
                map_x = (q[0] + b[0] * inv_d) / z - 0.5
                map_y = (q[1] + b[1] * inv_d) / z - 0.5
            map_x[z <= 0] = -1e4
            cv2.remap(src_imgs[v], map_x, map_y, cv2.INTER_LINEAR, dst=dst,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))
        ncc.aggregated_cost(warp, best_k, agg[oi])
    best = np.argmin(agg, axis=0)
    shift = best.astype(np.float32) - 1.0
    frac = _parabola(agg[0], agg[1], agg[2])
    return current + (shift + np.where(best == 1, frac, 0.0)) * step, _pick(agg, best)


def estimate_depth(ref_img: np.ndarray, ref: PinholeView, src_imgs: list[np.ndarray],
                   srcs: list[PinholeView], depth_range: tuple[float, float],
                   config: CpuMvsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Photometrically filtered depth (0 = invalid) and aggregated NCC of one reference view."""
    h, w = ref_img.shape
    scale = min(1.0, config.sweep_max_size / max(h, w))
    cw, ch = max(8, round(w * scale)), max(8, round(h * scale))
    small = lambda img: img if (cw, ch) == (img.shape[1], img.shape[0]) else cv2.resize(  # noqa: E731
        img, (cw, ch), interpolation=cv2.INTER_AREA)
    ref_c = ref.scaled(cw, ch)
    srcs_c = [s.scaled(round(s.width * cw / w), round(s.height * ch / h)) for s in srcs]
    src_c = [cv2.resize(img, (s.width, s.height), interpolation=cv2.INTER_AREA)
             if (s.width, s.height) != (img.shape[1], img.shape[0]) else img
             for img, s in zip(src_imgs, srcs_c)]
    d_min, d_max = depth_range
    inv_depths = np.linspace(1.0 / d_max, 1.0 / d_min, config.num_depths)
    inv_c, _ = plane_sweep(small(ref_img), ref_c, src_c, srcs_c, inv_depths, config)
    inv_full = inv_c if (cw, ch) == (w, h) else cv2.resize(inv_c, (w, h), interpolation=cv2.INTER_LINEAR)
    step = float(inv_depths[1] - inv_depths[0]) if len(inv_depths) > 1 else 0.0
    inv_ref, cost, textured = refine(ref_img, ref, src_imgs, srcs, inv_full, step, config)
    ncc = 1.0 - cost
    keep = textured & (ncc >= config.min_ncc) & (inv_ref >= 1.0 / d_max) & (inv_ref <= 1.0 / d_min)
    depth = np.zeros((h, w), np.float32)
    depth[keep] = 1.0 / inv_ref[keep]
    return depth, ncc.astype(np.float32)


def geometric_filter(depths: dict[int, np.ndarray], views: dict[int, PinholeView],
                     sources: dict[int, list[int]], config: CpuMvsConfig) -> dict[int, np.ndarray]:
    """Keep the pixels whose depth agrees with at least ``geom_min_consistent`` source views."""
    return {ref_id: geometric_filter_one(ref_id, depths, views, sources.get(ref_id, []), config)
            for ref_id in depths}


def geometric_filter_one(ref_id: int, depths: dict[int, np.ndarray],
                         views: dict[int, PinholeView], sources: list[int],
                         config: CpuMvsConfig) -> np.ndarray:
    """:func:`geometric_filter` of one reference image (images are independent).

    Each pixel goes ref -> source -> ref through two composed 3x3 maps (pinhole K, last
    row 0 0 1, so the projective third coordinate is the camera depth), component-wise in
    float64; the way back is evaluated only where the source has a depth.
    """
    ref, depth = views[ref_id], depths[ref_id]
    rows, cols = np.nonzero(depth > 0)
    d = depth[rows, cols].astype(np.float64)
    px, py = cols + 0.5, rows + 0.5
    consistent = np.zeros(len(d), np.int32)
    for src_id in sources:
        if src_id not in depths:
            continue
        src, src_depth = views[src_id], depths[src_id]
        r_rel, t_rel = _relative(ref, src)
        there = src.K @ r_rel @ np.linalg.inv(ref.K)        # ref pixel * depth -> src pixel
        there_t = src.K @ t_rel
        back = ref.K @ r_rel.T @ np.linalg.inv(src.K)       # and back
        back_t = -ref.K @ r_rel.T @ t_rel
        sp = [(m[0] * px + m[1] * py + m[2]) * d + o for m, o in zip(there, there_t)]
        with np.errstate(divide="ignore", invalid="ignore"):
            sx, sy = sp[0] / sp[2], sp[1] / sp[2]
            c, r = np.floor(sx), np.floor(sy)
            inside = (sp[2] > 0) & (c >= 0) & (c < src.width) & (r >= 0) & (r < src.height)
        idx = np.flatnonzero(inside)
        ds = src_depth[r[idx].astype(np.int64), c[idx].astype(np.int64)].astype(np.float64)
        idx, ds = idx[ds > 0], ds[ds > 0]
        qx, qy = sx[idx] * ds, sy[idx] * ds
        rp = [m[0] * qx + m[1] * qy + m[2] * ds + o for m, o in zip(back, back_t)]
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.hypot(rp[0] / rp[2] - px[idx], rp[1] / rp[2] - py[idx])
            depth_err = np.abs(rp[2] - d[idx]) / d[idx]
        ok = (err <= config.geom_max_reproj_error) & (depth_err <= config.geom_max_depth_error)
        consistent[idx[ok]] += 1
    filtered = np.zeros_like(depth)
    keep = consistent >= config.geom_min_consistent
    filtered[rows[keep], cols[keep]] = depth[rows[keep], cols[keep]]
    return filtered


def normals_from_depth(depth: np.ndarray, K: np.ndarray, radius: int = 4) -> np.ndarray:
    """Unit normals (camera frame, facing the camera) from a depth map; 0 where invalid.

    The back-projected points are first smoothed by a masked (normalised) box filter of
    radius ``radius``; the normal is the cross product of their central differences at the
    same radius, so noise in single depths barely tilts it. Computed per coordinate plane
    (contiguous arrays, no reductions over a length-3 axis).
    """
    h, w = depth.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32) + 0.5, np.arange(h, dtype=np.float32) + 0.5)
    k_inv = np.linalg.inv(K).astype(np.float32)
    rays = (k_inv[0, 0] * xs + k_inv[0, 2], k_inv[1, 1] * ys + k_inv[1, 2], np.ones_like(xs))
    valid = depth > 0
    r = max(1, radius)
    ksize = (2 * r + 1, 2 * r + 1)
    weight = np.maximum(cv2.blur(valid.astype(np.float32), ksize), 1e-6)
    ok = weight > 0.3
    dx, dy = [], []
    for ray in rays:
        point = cv2.blur(ray * depth, ksize) / weight
        pad = np.pad(point, r, mode="edge")
        dx.append(pad[r:-r, 2 * r:] - pad[r:-r, : -2 * r])
        dy.append(pad[2 * r:, r:-r] - pad[: -2 * r, r:-r])
    okpad = np.pad(ok, r, mode="constant")
    good = valid & okpad[r:-r, 2 * r:] & okpad[r:-r, : -2 * r] & okpad[2 * r:, r:-r] & okpad[: -2 * r, r:-r]
    normal = [dx[1] * dy[2] - dx[2] * dy[1], dx[2] * dy[0] - dx[0] * dy[2],
              dx[0] * dy[1] - dx[1] * dy[0]]
    norm = np.sqrt(normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2])
    good &= norm > 0
    ray_norm = np.sqrt(rays[0] * rays[0] + rays[1] * rays[1] + rays[2] * rays[2])
    norm = np.maximum(norm, 1e-20)
    normal = [np.where(good, n / norm, -ray / ray_norm) for n, ray in zip(normal, rays)]
    flip = (normal[0] * rays[0] + normal[1] * rays[1] + normal[2] * rays[2]) > 0
    out = np.stack(normal, -1)
    out[flip] *= -1
    out[~valid] = 0
    return out.astype(np.float32)
