"""A procedurally textured synthetic scene seen from known cameras.

The scene (world frame, Z up, units are arbitrary "metres"):

- a ground plane,
- two walls meeting at a right angle behind it,
- a box standing on the ground, turned about the vertical axis.

Every face is a planar parallelogram carrying its own procedural texture: multi-scale
colour noise, random discs, rectangles, polygons and text-like strokes, so SIFT finds
thousands of distinctive, matchable keypoints. Faces are Lambertian with a fixed light,
so a surface point has the same colour in every view.

Rendering is exact ray casting: for every pixel the ray is intersected analytically
with each face's plane, the nearest hit inside its parallelogram wins (a per-pixel
z-buffer) and the texture is sampled there. Colours are supersampled
(``SceneConfig.supersample``) and area-averaged; depth and world points are evaluated
at the pixel centres, so they are exact.

Pixel convention: COLMAP's. The centre of the pixel at row ``r``, column ``c`` has image
coordinates ``(c + 0.5, r + 0.5)``; the principal point is the image centre.
Poses are COLMAP's ``cam_from_world`` (world-to-camera). Everything is deterministic
for a given :class:`SceneConfig`; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError, InputError

logger = logging.getLogger(__name__)

CAMERA_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL")


@dataclass(frozen=True)
class SceneConfig:
    seed: int = 0
    num_views: int = 12
    width: int = 800
    height: int = 600
    focal_factor: float = 0.8           # focal length = focal_factor * width (pixels)
    camera_model: str = "PINHOLE"       # or SIMPLE_PINHOLE / SIMPLE_RADIAL (zero distortion)
    arc_degrees: float = 100.0          # the cameras span this arc around the scene centre
    radius: float = 6.5                 # horizontal distance of the cameras from the target
    camera_height: float = 3.0
    roll_degrees: float = 0.0           # the views roll about their axis by +/- this, in turn
    texels_per_unit: float = 160.0      # texture resolution
    supersample: int = 2                # colour samples per pixel side (1 = none)
    background: tuple[int, int, int] = (90, 90, 96)

    def __post_init__(self) -> None:
        if self.num_views < 1:
            raise ConfigError(f"SceneConfig.num_views={self.num_views}: need at least one view")
        if self.width < 16 or self.height < 16:
            raise ConfigError(
                f"SceneConfig size {self.width}x{self.height}: both sides must be >= 16 pixels")
        if self.camera_model not in CAMERA_MODELS:
            raise ConfigError(f"SceneConfig.camera_model={self.camera_model!r}: "
                              f"choose one of {', '.join(CAMERA_MODELS)}")
        if self.supersample < 1:
            raise ConfigError(f"SceneConfig.supersample={self.supersample}: must be >= 1")
        if self.focal_factor <= 0 or self.texels_per_unit <= 0:
            raise ConfigError("SceneConfig.focal_factor and texels_per_unit must be positive")


@dataclass(frozen=True)
class Face:
    """A textured parallelogram ``origin + a * edge_u + b * edge_v``, ``a, b`` in [0, 1]."""

    name: str
    origin: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    texture: np.ndarray                  # H×W×3 float32 in [0, 255]; columns along u, rows along v

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.edge_u, self.edge_v)
        return n / np.linalg.norm(n)

    def corners(self) -> np.ndarray:
        o, u, v = self.origin, self.edge_u, self.edge_v
        return np.stack([o, o + u, o + u + v, o + v])


# Scene layout ---------------------------------------------------------------------------

_GROUND = ((-4.0, -4.0), (3.0, 3.0))     # x/y range of the ground
_WALL_HEIGHT = 3.0
_BOX_CENTER = (-0.6, -0.4)
_BOX_SIZE = (1.5, 1.2, 1.3)              # x, y, z before turning
_BOX_YAW_DEG = 30.0
_TARGET = np.array([0.3, 0.3, 0.6])     # the cameras look here
_LIGHT = np.array([0.4, -0.6, 1.0]) / np.linalg.norm([0.4, -0.6, 1.0])


def _look_at(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation of cam_from_world for a camera at ``center`` (x right, y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    rotation = np.stack([x, y, z])
    return rotation, -rotation @ center


class SyntheticScene:
    """The scene of ``config``: cameras, poses, names, renderer and ground truth."""

    def __init__(self, config: SceneConfig | None = None) -> None:
        self.config = config or SceneConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self.faces: list[Face] = self._build_faces()
        self.names: list[str] = [f"view_{i:03d}.png" for i in range(self.config.num_views)]
        self._rt = [self._camera_pose(i) for i in range(self.config.num_views)]

    # Cameras -----------------------------------------------------------------------------

    @property
    def focal(self) -> float:
        return self.config.focal_factor * self.config.width

    @property
    def K(self) -> np.ndarray:
        c = self.config
        return np.array([[self.focal, 0, c.width / 2], [0, self.focal, c.height / 2], [0, 0, 1]])

    @property
    def cameras(self):
        """The shared ``pycolmap.Camera`` (camera_id 1) of every view."""
        import pycolmap

        c = self.config
        params = {
            "PINHOLE": [self.focal, self.focal, c.width / 2, c.height / 2],
            "SIMPLE_PINHOLE": [self.focal, c.width / 2, c.height / 2],
            "SIMPLE_RADIAL": [self.focal, c.width / 2, c.height / 2, 0.0],
        }[c.camera_model]
        return pycolmap.Camera(camera_id=1, model=c.camera_model, width=c.width,
                               height=c.height, params=params)

    @property
    def camera(self):
        return self.cameras

    @property
    def poses(self):
        """``pycolmap.Rigid3d`` cam_from_world of each view."""
        import pycolmap

        return [pycolmap.Rigid3d(pycolmap.Rotation3d(r), t) for r, t in self._rt]

    def rotation_translation(self, view_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, t) of cam_from_world as numpy arrays: x_cam = R @ x_world + t."""
        r, t = self._rt[self._check_index(view_index)]
        return r.copy(), t.copy()

    def projection_center(self, view_index: int) -> np.ndarray:
        r, t = self._rt[self._check_index(view_index)]
        return -r.T @ t

    def _camera_pose(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        base = math.radians(225.0)            # opposite the corner of the walls
        half = math.radians(c.arc_degrees) / 2
        angle = base if c.num_views == 1 else base - half + 2 * half * index / (c.num_views - 1)
        center = _TARGET + np.array([c.radius * math.cos(angle), c.radius * math.sin(angle),
                                     c.camera_height - _TARGET[2]])
        rotation, translation = _look_at(center, _TARGET)
        if c.roll_degrees == 0:
            return rotation, translation
        roll = math.radians(c.roll_degrees) * (1 if index % 2 else -1)
        rotation = np.array([[math.cos(roll), -math.sin(roll), 0.0],
                             [math.sin(roll), math.cos(roll), 0.0],
                             [0.0, 0.0, 1.0]]) @ rotation
        return rotation, -rotation @ center

    def _check_index(self, view_index: int) -> int:
        if not 0 <= view_index < self.config.num_views:
            raise InputError(f"view index {view_index} is out of range "
                             f"(the scene has {self.config.num_views} views)")
        return int(view_index)

    # Geometry ----------------------------------------------------------------------------

    def _build_faces(self) -> list[Face]:
        (x0, y0), (x1, y1) = _GROUND
        h = _WALL_HEIGHT
        specs = [
            ("ground", [x0, y0, 0.0], [x1 - x0, 0, 0], [0, y1 - y0, 0]),
            ("wall_back", [x0, y1, 0.0], [x1 - x0, 0, 0], [0, 0, h]),
            ("wall_side", [x1, y0, 0.0], [0, y1 - y0, 0], [0, 0, h]),
        ]
        # The box: 5 visible faces (the bottom lies on the ground).
        sx, sy, sz = _BOX_SIZE
        yaw = math.radians(_BOX_YAW_DEG)
        ex = np.array([math.cos(yaw), math.sin(yaw), 0.0]) * sx
        ey = np.array([-math.sin(yaw), math.cos(yaw), 0.0]) * sy
        ez = np.array([0.0, 0.0, sz])
        base = np.array([*_BOX_CENTER, 0.0]) - ex / 2 - ey / 2
        specs += [
            ("box_top", base + ez, ex, ey),
            ("box_front", base, ex, ez),
            ("box_back", base + ey, ex, ez),
            ("box_left", base, ey, ez),
            ("box_right", base + ex, ey, ez),
        ]
        faces = []
        for name, origin, eu, ev in specs:
            eu, ev = np.asarray(eu, float), np.asarray(ev, float)
            tw = max(32, int(round(np.linalg.norm(eu) * self.config.texels_per_unit)))
            th = max(32, int(round(np.linalg.norm(ev) * self.config.texels_per_unit)))
            texture = _procedural_texture(self._rng, th, tw)
            normal = np.cross(eu, ev)
            shade = 0.6 + 0.4 * abs(float(normal @ _LIGHT) / np.linalg.norm(normal))
            faces.append(Face(name, np.asarray(origin, float), eu, ev,
                              np.clip(texture * shade, 0, 255).astype(np.float32)))
        return faces

    def extent(self) -> float:
        """Diagonal of the bounding box of the scene geometry."""
        corners = np.concatenate([f.corners() for f in self.faces])
        return float(np.linalg.norm(corners.max(0) - corners.min(0)))

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        corners = np.concatenate([f.corners() for f in self.faces])
        return corners.min(0), corners.max(0)

    # Rendering ---------------------------------------------------------------------------

    def _trace(self, view_index: int, scale: int):
        """Per (sub)pixel: nearest depth, face index (-1 = background), and (a, b) on it."""
        c = self.config
        r, t = self._rt[self._check_index(view_index)]
        center = -r.T @ t
        h, w = c.height * scale, c.width * scale
        u = ((np.arange(w, dtype=np.float64) + 0.5) / scale - c.width / 2) / self.focal
        v = ((np.arange(h, dtype=np.float64) + 0.5) / scale - c.height / 2) / self.focal
        # Ray direction in the world, scaled so that the camera z-component is 1:
        # d(u, v) = R^T (u, v, 1) = u * r0 + v * r1 + r2 (r_i = rows of R).
        depth = np.full((h, w), np.inf, np.float64)
        face_id = np.full((h, w), -1, np.int16)
        coord_a = np.zeros((h, w), np.float32)
        coord_b = np.zeros((h, w), np.float32)
        for index, face in enumerate(self.faces):
            n = np.cross(face.edge_u, face.edge_v)
            # Dual basis of (edge_u, edge_v) in the face plane: a = (X - O) . du, b = (X - O) . dv
            gram = np.array([[face.edge_u @ face.edge_u, face.edge_u @ face.edge_v],
                             [face.edge_u @ face.edge_v, face.edge_v @ face.edge_v]])
            inv = np.linalg.inv(gram)
            du = inv[0, 0] * face.edge_u + inv[0, 1] * face.edge_v
            dv = inv[1, 0] * face.edge_u + inv[1, 1] * face.edge_v
            # s = n.(O - C) / n.d,  a = (C - O).du + s d.du
            num = n @ (face.origin - center)
            denom = (n @ r[0]) * u[None, :] + (n @ r[1]) * v[:, None] + n @ r[2]
            with np.errstate(divide="ignore", invalid="ignore"):
                s = num / denom
            a = (center - face.origin) @ du + s * ((du @ r[0]) * u[None, :]
                                                  + (du @ r[1]) * v[:, None] + du @ r[2])
            b = (center - face.origin) @ dv + s * ((dv @ r[0]) * u[None, :]
                                                  + (dv @ r[1]) * v[:, None] + dv @ r[2])
            hit = (s > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & (s < depth)
            depth[hit] = s[hit]
            face_id[hit] = index
            coord_a[hit] = a[hit]
            coord_b[hit] = b[hit]
        return depth, face_id, coord_a, coord_b

    def render(self, view_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 H×W×3, depth float32 H×W: camera z, NaN for background)."""
        c = self.config
        ss = c.supersample
        _, face_id, a, b = self._trace(view_index, ss)
        color = np.empty((*face_id.shape, 3), np.float32)
        color[:] = np.asarray(c.background, np.float32)
        for index, face in enumerate(self.faces):
            mask = face_id == index
            if not mask.any():
                continue
            th, tw = face.texture.shape[:2]
            map_x = np.where(mask, a * tw - 0.5, -1).astype(np.float32)
            map_y = np.where(mask, b * th - 0.5, -1).astype(np.float32)
            sampled = cv2.remap(face.texture, map_x, map_y, cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
            color[mask] = sampled[mask]
        if ss > 1:
            color = cv2.resize(color, (c.width, c.height), interpolation=cv2.INTER_AREA)
        rgb = np.clip(np.rint(color), 0, 255).astype(np.uint8)
        return rgb, self.render_depth(view_index)

    def render_depth(self, view_index: int) -> np.ndarray:
        """Depth (camera z) at the pixel centres, float32, NaN for background."""
        depth = self._trace(view_index, 1)[0]
        depth[~np.isfinite(depth)] = np.nan
        return depth.astype(np.float32)

    def render_face_ids(self, view_index: int) -> np.ndarray:
        """Index into ``faces`` of the surface seen at each pixel centre (-1 = background)."""
        return self._trace(view_index, 1)[1]

    def render_points(self, view_index: int) -> np.ndarray:
        """World XYZ at each pixel centre, float32 H×W×3, NaN for background."""
        c = self.config
        depth = self._trace(view_index, 1)[0]
        r, t = self._rt[self._check_index(view_index)]
        center = -r.T @ t
        u = ((np.arange(c.width) + 0.5) - c.width / 2) / self.focal
        v = ((np.arange(c.height) + 0.5) - c.height / 2) / self.focal
        uu, vv = np.meshgrid(u, v)
        rays = np.stack([uu, vv, np.ones_like(uu)], -1) @ r   # R^T (u, v, 1) per pixel
        points = center + depth[..., None] * rays
        points[~np.isfinite(depth)] = np.nan
        return points.astype(np.float32)

    def render_normals(self, view_index: int) -> np.ndarray:
        """Unit surface normals in the camera frame, facing the camera; NaN for background."""
        c = self.config
        face_id = self._trace(view_index, 1)[1]
        r, _ = self._rt[self._check_index(view_index)]
        normals = np.full((*face_id.shape, 3), np.nan, np.float32)
        for index, face in enumerate(self.faces):
            normals[face_id == index] = r @ face.normal
        uu, vv = np.meshgrid((np.arange(c.width) + 0.5 - c.width / 2) / self.focal,
                             (np.arange(c.height) + 0.5 - c.height / 2) / self.focal)
        rays = np.stack([uu, vv, np.ones_like(uu)], -1)
        normals[np.sum(normals * rays, -1) > 0] *= -1      # towards the camera
        return normals

    # Ground truth and files --------------------------------------------------------------

    def ground_truth_reconstruction(self, num_points: int = 0, min_track_length: int = 2):
        """A ``pycolmap.Reconstruction`` with the camera and posed images (ids 1..N).

        With ``num_points=0`` (default) it has no 3D points. Otherwise about ``num_points``
        exact surface points are added, sampled at random pixel centres of the views, each
        with a track of every view that sees it unoccluded (z-buffer test) and with at least
        ``min_track_length`` observations; keypoints use COLMAP's pixel convention.
        """
        import pycolmap

        tracks: dict[int, list[tuple[int, np.ndarray]]] = {}
        points = np.zeros((0, 3))
        if num_points > 0:
            points, tracks = self._sample_tracks(num_points, min_track_length)
        per_image: dict[int, list[np.ndarray]] = {i: [] for i in range(self.config.num_views)}
        point_obs: list[list[tuple[int, int]]] = [[] for _ in range(len(points))]
        for pid in range(len(points)):
            for view, xy in tracks[pid]:
                point_obs[pid].append((view + 1, len(per_image[view])))
                per_image[view].append(xy)

        rec = pycolmap.Reconstruction()
        rec.add_camera_with_trivial_rig(self.cameras)
        for index, (name, pose) in enumerate(zip(self.names, self.poses)):
            keypoints = np.array(per_image[index], np.float64).reshape(-1, 2)
            image = pycolmap.Image(name=name, keypoints=keypoints, camera_id=1,
                                   image_id=index + 1)
            rec.add_image_with_trivial_frame(image, pose)
        for pid, xyz in enumerate(points):
            track = pycolmap.Track()
            for image_id, idx in point_obs[pid]:
                track.add_element(image_id, idx)
            rec.add_point3D(xyz, track, np.array([128, 128, 128], np.uint8))
        return rec

    def _sample_tracks(self, num_points: int, min_track_length: int):
        rng = np.random.default_rng(self.config.seed + 7919)
        c = self.config
        depths = [self.render_depth(i) for i in range(c.num_views)]
        per_view = int(math.ceil(num_points / c.num_views))
        candidates = []
        for view in range(c.num_views):
            world = self.render_points(view)
            rows, cols = np.nonzero(np.isfinite(depths[view]))
            pick = rng.choice(len(rows), size=min(per_view, len(rows)), replace=False)
            candidates.append(world[rows[pick], cols[pick]].astype(np.float64))
        candidates = np.concatenate(candidates)[:num_points]
        obs: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(len(candidates))]
        for view in range(c.num_views):
            r, t = self._rt[view]
            cam = candidates @ r.T + t
            z = cam[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                x = self.focal * cam[:, 0] / z + c.width / 2
                y = self.focal * cam[:, 1] / z + c.height / 2
            col, row = np.floor(x).astype(int), np.floor(y).astype(int)
            inside = (z > 0) & (col >= 0) & (col < c.width) & (row >= 0) & (row < c.height)
            ref = np.full(len(z), np.nan)
            ref[inside] = depths[view][row[inside], col[inside]]
            # Unoccluded when the depth at the enclosing pixel is not much in front of it.
            visible = inside & (np.abs(ref - z) < 0.01 * z)
            for pid in np.nonzero(visible)[0]:
                obs[pid].append((view, np.array([x[pid], y[pid]])))
        keep = [i for i, o in enumerate(obs) if len(o) >= min_track_length]
        return candidates[keep], {new: obs[old] for new, old in enumerate(keep)}

    def write_images(self, out_dir: str | Path) -> list[str]:
        """Render every view to ``out_dir/<name>`` (PNG); returns the paths written."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, name in enumerate(self.names):
            rgb, _ = self.render(index)
            path = out_dir / name
            if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise InputError(f"cannot write {path}; check that the folder is writable")
            paths.append(str(path))
        return paths


# Textures -------------------------------------------------------------------------------

_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#&%@"


def _procedural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour noise at several scales with random shapes and text-like strokes on top."""
    texture = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(60, 200, size=3).astype(np.float32)
    texture[:] = base
    # Multi-scale value noise (band-limited by the bicubic upsampling).
    for cell, amplitude in ((64, 50.0), (24, 35.0), (8, 22.0)):
        gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
        noise = rng.normal(0, 1, size=(gh, gw, 3)).astype(np.float32)
        texture += amplitude * cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    texture = np.clip(np.rint(texture), 0, 255).astype(np.uint8)   # cv2 text needs 8-bit
    area = height * width
    # Filled shapes of random colour and size.
    for _ in range(int(area / 1500)):
        kind = rng.integers(0, 3)
        color = tuple(int(x) for x in rng.integers(0, 256, size=3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(3, 18))
        if kind == 0:
            cv2.circle(texture, (cx, cy), size, color, -1, cv2.LINE_AA)
        elif kind == 1:
            w2, h2 = int(rng.integers(3, 20)), int(rng.integers(3, 20))
            cv2.rectangle(texture, (cx - w2, cy - h2), (cx + w2, cy + h2), color, -1)
        else:
            pts = np.array([[cx + rng.integers(-size, size + 1), cy + rng.integers(-size, size + 1)]
                            for _ in range(int(rng.integers(3, 6)))], np.int32)
            cv2.fillPoly(texture, [pts], color, cv2.LINE_AA)
    # Text-like strokes.
    for _ in range(int(area / 4000)):
        text = "".join(rng.choice(list(_GLYPHS), size=int(rng.integers(1, 4))))
        color = tuple(int(x) for x in rng.integers(0, 256, size=3))
        org = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        font = int(rng.choice([0, 1, 2, 3, 4, 6, 7]))      # cv2.FONT_HERSHEY_* faces
        cv2.putText(texture, text, org, font, float(rng.uniform(0.3, 0.9)), color,
                    int(rng.integers(1, 3)), cv2.LINE_AA)
    # Remove texel-level aliasing so the texture is band-limited.
    return cv2.GaussianBlur(texture.astype(np.float32), (0, 0), 0.8)


def write_synthetic_run(output_dir: str | Path, num_images: int, num_points: int,
                        track_length: int = 4, outlier_matches: int = 20,
                        seed: int = 0) -> Path:
    """A `sfmfeat reconstruct`-like output folder of any size, for the report's tests and
    benchmark: ``sfm/`` (cameras on a circle around a Gaussian point cloud, each point seen
    by ``track_length`` consecutive images), ``database.db`` (the model's points2D as
    keypoints; the raw matches of each image with the next ``track_length - 1`` ones are
    its shared points plus ``outlier_matches`` wrong ones, the verified inliers the shared
    points) and ``summary.json``. No image files: the report then draws no pairs."""
    import json

    import pycolmap

    from .reconstruction.database import to_colmap_keypoints

    if num_images < 2 or num_points < 1 or track_length < 2:
        raise ConfigError("write_synthetic_run needs num_images >= 2, num_points >= 1 and "
                          "track_length >= 2")
    rng = np.random.default_rng(seed)
    output_dir = Path(output_dir)
    (output_dir / "sfm").mkdir(parents=True, exist_ok=True)
    width, height = 640, 480
    camera = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 500.0, width, height)
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(camera)
    angles = np.linspace(0, 2 * np.pi, num_images, endpoint=False)
    centers = np.c_[10 * np.cos(angles), rng.normal(0, 0.2, num_images), 10 * np.sin(angles)]
    points = rng.normal(0, 2, (num_points, 3))
    first_image = rng.integers(0, num_images, num_points)
    seen_by: list[list[int]] = [[] for _ in range(num_images)]
    for point, first in enumerate(first_image):
        for step in range(track_length):
            seen_by[(first + step) % num_images].append(point)
    names = [f"frame_{i:05d}.jpg" for i in range(num_images)]
    keypoints = []
    for i, center in enumerate(centers):
        forward = -center / np.linalg.norm(center)
        right = np.cross([0.0, 1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        rotation = np.stack([right, np.cross(forward, right), forward])
        uv = camera.img_from_cam(points[seen_by[i]] @ rotation.T - rotation @ center)
        keypoints.append(uv - 0.5)
        image = pycolmap.Image(name=names[i], camera_id=1, image_id=i + 1,
                               points2D=pycolmap.Point2DList([pycolmap.Point2D(p) for p in uv]))
        reconstruction.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ center))
    index_in: list[dict[int, int]] = [{p: k for k, p in enumerate(seen)} for seen in seen_by]
    colours = rng.integers(0, 256, (num_points, 3)).astype(np.uint8)
    for point in range(num_points):
        track = pycolmap.Track()
        for step in range(track_length):
            i = (first_image[point] + step) % num_images
            track.add_element(i + 1, index_in[i][point])
        point_id = reconstruction.add_point3D(points[point], track, colours[point])
        reconstruction.points3D[point_id].error = float(rng.gamma(2.0, 0.3))
    reconstruction.write(str(output_dir / "sfm"))
    database = output_dir / "database.db"
    database.unlink(missing_ok=True)
    with pycolmap.Database.open(str(database)) as db, pycolmap.DatabaseTransaction(db):
        db.write_camera(camera, use_camera_id=True)
        for i, name in enumerate(names):
            db.write_image(pycolmap.Image(name=name, camera_id=1, image_id=i + 1),
                           use_image_id=True)
            db.write_keypoints(i + 1, to_colmap_keypoints(keypoints[i].astype(np.float32)))
        written: set[tuple[int, int]] = set()
        for i in range(num_images):
            for step in range(1, min(track_length, num_images)):
                j = (i + step) % num_images
                if (min(i, j), max(i, j)) in written:
                    continue  # a small ring reaches a pair from both ends
                written.add((min(i, j), max(i, j)))
                shared = [(k, index_in[j][p]) for p, k in index_in[i].items()
                          if p in index_in[j]]
                inliers = np.array(shared, np.uint32).reshape(-1, 2)
                wrong = np.c_[rng.integers(0, max(len(seen_by[i]), 1), outlier_matches),
                              rng.integers(0, max(len(seen_by[j]), 1), outlier_matches)]
                db.write_matches(i + 1, j + 1, np.vstack([inliers, wrong]).astype(np.uint32))
                geometry = pycolmap.TwoViewGeometry()
                geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
                geometry.inlier_matches = inliers
                db.write_two_view_geometry(i + 1, j + 1, geometry)
    summary = {"num_images": num_images, "num_registered": num_images,
               "num_points3D": num_points,
               "num_observations": num_points * track_length,
               "mean_track_length": float(track_length),
               "mean_reprojection_error": float(reconstruction.compute_mean_reprojection_error()),
               "rejected_images": {}, "timings": {}, "config": {"synthetic": True},
               "seed": seed}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return output_dir
