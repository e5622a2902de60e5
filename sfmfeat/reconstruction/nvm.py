"""VisualSfM NVM models (``NVM_V3``) to and from pycolmap reconstructions.

An NVM camera line is ``name focal qw qx qy qz cx cy cz radial 0``: the world-to-camera
rotation as a quaternion and the camera *centre* ``c`` (so ``t = -R c``). NVM stores no
image size or principal point, so the intrinsics come from a separate file of
``name MODEL width height params...`` lines (Aachen's ``database_intrinsics.txt``).
Point lines are ``x y z r g b n (image_index feature_index x y)*n`` with measurements
relative to the image centre; the reader parses them, the converter ignores them
(triangulation recomputes the points with new features).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class NvmCamera:
    name: str
    focal: float
    qvec_wxyz: np.ndarray
    center: np.ndarray
    radial: float = 0.0

    @property
    def cam_from_world(self) -> pycolmap.Rigid3d:
        w, x, y, z = self.qvec_wxyz / np.linalg.norm(self.qvec_wxyz)
        rotation = pycolmap.Rotation3d(np.array([x, y, z, w]))
        translation = -np.asarray(rotation.matrix()) @ self.center
        return pycolmap.Rigid3d(rotation, translation)


@dataclass
class NvmModel:
    cameras: list[NvmCamera] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    # per point: (image_index, feature_index, x, y) rows, x/y relative to the image centre
    measurements: list[np.ndarray] = field(default_factory=list)


def _tokens(path: Path):
    """(line number, fields) of the non-empty lines."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if fields:
                yield number, fields


def read_nvm(path: str | Path, read_points: bool = True) -> NvmModel:
    """Parse the first model of an NVM_V3 file; InputError names file:line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"NVM file {path} does not exist")
    lines = _tokens(path)
    try:
        number, fields = next(lines)
    except StopIteration:
        raise InputError(f"NVM file {path} is empty") from None
    if not fields[0].startswith("NVM_V3"):
        raise InputError(f"{path}:{number}: expected the NVM_V3 header, got {fields[0]!r}")
    if fields[0].startswith("NVM_V3_R9T"):
        raise InputError(f"{path}:{number}: NVM_V3_R9T (rotation-matrix) files are not "
                         "supported; export NVM_V3 (quaternions)")
    # "NVM_V3 FixedK fx cx fy cy r" keeps the quaternion layout: the intrinsics file wins

    def count(what: str) -> int:
        try:
            line_number, values = next(lines)
        except StopIteration:
            raise InputError(f"{path}: ends before the number of {what}") from None
        try:
            value = int(values[0])
        except ValueError:
            raise InputError(f"{path}:{line_number}: expected the number of {what}, got "
                             f"{values[0]!r}") from None
        if value < 0:
            raise InputError(f"{path}:{line_number}: negative number of {what}")
        return value

    model = NvmModel()
    for _ in range(count("cameras")):
        try:
            number, fields = next(lines)
        except StopIteration:
            raise InputError(f"{path}: ends inside the camera list") from None
        if len(fields) < 10:
            raise InputError(f"{path}:{number}: expected 'name focal qw qx qy qz cx cy cz "
                             f"radial 0', got {' '.join(fields)!r}")
        try:
            values = np.array([float(v) for v in fields[1:10]])
        except ValueError:
            raise InputError(f"{path}:{number}: non-numeric camera values") from None
        if not np.isfinite(values).all() or np.linalg.norm(values[1:5]) < 1e-12:
            raise InputError(f"{path}:{number}: invalid camera values")
        model.cameras.append(NvmCamera(fields[0], values[0], values[1:5], values[5:8],
                                       values[8]))
    if not read_points:
        return model
    try:
        num_points = count("points")
    except InputError:
        num_points = 0  # a file with cameras only
    points, colors = np.zeros((num_points, 3)), np.zeros((num_points, 3), np.uint8)
    for index in range(num_points):
        try:
            number, fields = next(lines)
            values = [float(v) for v in fields]
            num_measurements = int(values[6])
            rows = np.asarray(values[7:7 + 4 * num_measurements]).reshape(-1, 4)
            if len(rows) != num_measurements:
                raise ValueError
        except StopIteration:
            raise InputError(f"{path}: ends inside the point list") from None
        except (ValueError, IndexError):
            raise InputError(f"{path}:{number}: malformed point line") from None
        points[index], colors[index] = values[:3], values[3:6]
        model.measurements.append(rows)
    model.points, model.colors = points, colors
    return model


def read_intrinsics(path: str | Path) -> dict[str, pycolmap.Camera]:
    """``name MODEL w h params...`` per line (strict: a bad line raises with file:line)."""
    from ..localization.queries import read_queries

    return read_queries(path, strict=True).cameras


def reconstruction_from_nvm(nvm_path: str | Path, intrinsics: str | Path
                            | dict[str, pycolmap.Camera],
                            with_points: bool = False) -> pycolmap.Reconstruction:
    """A Reconstruction with the NVM poses: one camera per image, image ids in NVM order
    starting at 1. Images without intrinsics are skipped with a warning.

    with_points: also add the NVM points and their observations (e.g. for covisibility
    pairs); each image's points2D are its NVM measurements in measurement order.
    """
    model = read_nvm(nvm_path, read_points=with_points)
    cameras = intrinsics if isinstance(intrinsics, dict) else read_intrinsics(intrinsics)
    reconstruction = pycolmap.Reconstruction()
    missing = []
    observations: dict[int, list[tuple[int, float, float]]] = {}  # camera index -> rows
    for point_index, rows in enumerate(model.measurements if with_points else []):
        for image_index, _, x, y in rows:
            observations.setdefault(int(image_index), []).append((point_index, x, y))
    tracks: dict[int, list[tuple[int, int]]] = {}  # point -> [(image id, point2D idx)]
    for index, entry in enumerate(model.cameras):
        camera = cameras.get(entry.name)
        if camera is None:
            missing.append(entry.name)
            continue
        camera = pycolmap.Camera(model=camera.model, width=camera.width,
                                 height=camera.height, params=camera.params,
                                 camera_id=index + 1)
        camera.has_prior_focal_length = True
        reconstruction.add_camera_with_trivial_rig(camera)
        points2D = []
        for k, (point_index, x, y) in enumerate(observations.get(index, [])):
            points2D.append(pycolmap.Point2D(np.array([x + camera.principal_point_x,
                                                       y + camera.principal_point_y])))
            tracks.setdefault(point_index, []).append((index + 1, k))
        image = pycolmap.Image(name=entry.name, camera_id=camera.camera_id,
                               image_id=index + 1, points2D=points2D)
        reconstruction.add_image_with_trivial_frame(image, entry.cam_from_world)
    if missing:
        logger.warning("%d of %d NVM images have no intrinsics and are skipped (e.g. %s)",
                       len(missing), len(model.cameras), ", ".join(missing[:3]))
    if reconstruction.num_images() == 0:
        raise InputError(f"no image of {nvm_path} has intrinsics in the intrinsics file")
    for point_index, elements in tracks.items():
        if len(elements) < 2:
            continue
        track = pycolmap.Track()
        for image_id, point2D_idx in elements:
            track.add_element(image_id, point2D_idx)
        reconstruction.add_point3D(model.points[point_index], track,
                                   model.colors[point_index])
    return reconstruction


def write_nvm(path: str | Path, reconstruction: pycolmap.Reconstruction,
              write_points: bool = True) -> Path:
    """Write the registered images (and optionally the 3D points) as NVM_V3."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = sorted((im for im in reconstruction.images.values() if im.has_pose),
                    key=lambda im: im.image_id)
    index_of = {im.image_id: i for i, im in enumerate(images)}
    lines = ["NVM_V3", "", str(len(images))]
    for image in images:
        camera = reconstruction.cameras[image.camera_id]
        pose = image.cam_from_world()
        x, y, z, w = np.asarray(pose.rotation.quat)
        center = np.asarray(pose.inverse().translation)
        values = [camera.mean_focal_length(), w, x, y, z, *center, 0.0]
        lines.append(f"{image.name} " + " ".join(f"{v:.12g}" for v in values) + " 0")
    lines.append("")
    points = list(reconstruction.points3D.items()) if write_points else []
    lines.append(str(len(points)))
    for _, point in points:
        measurements = []
        for element in point.track.elements:
            if element.image_id not in index_of:
                continue
            image = reconstruction.images[element.image_id]
            camera = reconstruction.cameras[image.camera_id]
            xy = image.points2D[element.point2D_idx].xy
            measurements.append(f"{index_of[element.image_id]} {element.point2D_idx} "
                                f"{xy[0] - camera.principal_point_x:.6g} "
                                f"{xy[1] - camera.principal_point_y:.6g}")
        xyz = " ".join(f"{v:.12g}" for v in point.xyz)
        rgb = " ".join(str(int(v)) for v in point.color)
        lines.append(f"{xyz} {rgb} {len(measurements)} " + " ".join(measurements))
    lines += ["", "0", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
