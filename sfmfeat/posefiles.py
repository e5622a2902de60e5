"""Camera poses in the formats reference sets ship them, read as name -> ``cam_from_world``.

- a COLMAP model folder (``cameras``/``images``/``points3D`` as ``.bin`` or ``.txt``), or a
  ``sfmfeat reconstruct`` output folder (its ``sfm/`` model);
- a COLMAP ``images.txt`` on its own (``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` lines,
  each followed by its points line);
- ``name qw qx qy qz tx ty tz`` lines (the localization submission format);
- an NVM_V3 file (``.nvm``);
- Image Matching Challenge files: a folder of ``calibration_<name>.h5`` (IMC 2020, datasets
  ``R`` and ``T`` with ``x_cam = R x + T``), or a ``.csv`` with an image column
  (``image_id``, ``image_name``, ``image_path`` or ``image``) and ``rotation_matrix`` /
  ``translation_vector`` columns (IMC 2022-2025, values separated by spaces or ``;``);
- a NeRF ``transforms.json`` (camera-to-world matrices, OpenGL axes);
- Strecha et al. (CVPR'08) ``<image name>.camera`` files, one per image, or a folder of them:
  K (3 lines), distortion (1 line), the camera-to-world rotation R (3 lines, its columns the
  camera axes in world coordinates), the camera centre C (1 line), width and height; so
  ``x_cam = R^T (x - C)``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import pycolmap

from .errors import InputError

FORMATS = ("COLMAP model folder or images.txt, 'name qw qx qy qz tx ty tz' lines, .nvm, "
           "IMC calibration_<name>.h5 folder or .csv, NeRF transforms.json, Strecha "
           "<name>.camera files")
_NAME_COLUMNS = ("image_name", "image_path", "image_id", "image")
# NeRF/OpenGL camera axes (x right, y up, z backwards) to COLMAP's (x right, y down, z forward)
_OPENGL_TO_COLMAP = np.diag([1.0, -1.0, -1.0])


def _rigid(rotation: np.ndarray, translation: np.ndarray, where: str) -> pycolmap.Rigid3d:
    """cam_from_world from a 3×3 rotation (re-orthonormalised) and a translation."""
    rotation = np.asarray(rotation, np.float64)
    translation = np.asarray(translation, np.float64).reshape(-1)
    if rotation.shape != (3, 3) or translation.shape != (3,):
        raise InputError(f"{where}: expected a 3×3 rotation and a 3-vector translation, got "
                         f"shapes {rotation.shape} and {translation.shape}")
    if not (np.isfinite(rotation).all() and np.isfinite(translation).all()):
        raise InputError(f"{where}: non-finite pose values")
    u, _, vt = np.linalg.svd(rotation)
    nearest = u @ vt
    if np.linalg.det(nearest) < 0 or np.abs(nearest - rotation).max() > 1e-3:
        raise InputError(f"{where}: the rotation matrix is not a rotation "
                         "(not orthonormal, or a reflection)")
    return pycolmap.Rigid3d(pycolmap.Rotation3d(nearest), translation)


def _colmap_model(path: Path) -> dict[str, pycolmap.Rigid3d]:
    try:
        model = pycolmap.Reconstruction(str(path))
    except Exception as err:  # pycolmap raises plain RuntimeError/ValueError
        raise InputError(f"cannot read the COLMAP model {path}: "
                         f"{' '.join(str(err).split()) or type(err).__name__}") from None
    return {image.name: image.cam_from_world() for image in model.images.values()
            if image.has_pose}


def _is_colmap_model(path: Path) -> bool:
    return any((path / f"images{ext}").is_file() and (path / f"cameras{ext}").is_file()
               for ext in (".bin", ".txt"))


def read_colmap_images_txt(path: Path) -> dict[str, pycolmap.Rigid3d]:
    from .localization.results import pose_from_wxyz

    lines = [(number, line.strip()) for number, line in
             enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if not line.lstrip().startswith("#")]
    poses: dict[str, pycolmap.Rigid3d] = {}
    index = 0
    while index < len(lines):
        number, text = lines[index]
        if not text:  # a blank line where a pose line is due: tolerated
            index += 1
            continue
        where = f"{path}:{number}"
        fields = text.split()
        if len(fields) < 10:
            raise InputError(f"{where}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID "
                             f"NAME', got {text!r}")
        try:
            int(fields[0]), int(fields[8])
            values = [float(v) for v in fields[1:8]]
        except ValueError:
            raise InputError(f"{where}: non-numeric pose values in {text!r}") from None
        if not np.isfinite(values).all():
            raise InputError(f"{where}: non-finite pose values in {text!r}")
        try:
            poses[" ".join(fields[9:])] = pose_from_wxyz(values[:4], values[4:])
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        index += 2  # the points line follows every pose line (it may be empty)
    return poses


def _looks_like_colmap_images(path: Path) -> bool:
    if path.name == "images.txt":
        return True
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            return len(fields) >= 10 and all(re.fullmatch(r"-?\d+", fields[i]) for i in (0, 8))
    return False


def _nvm(path: Path) -> dict[str, pycolmap.Rigid3d]:
    from .reconstruction.nvm import read_nvm

    return {camera.name: camera.cam_from_world
            for camera in read_nvm(path, read_points=False).cameras}


def _imc_h5_folder(folder: Path) -> dict[str, pycolmap.Rigid3d]:
    import h5py

    poses = {}
    for file in sorted(folder.glob("calibration_*.h5")):
        try:
            with h5py.File(file, "r") as handle:
                rotation, translation = handle["R"][()], handle["T"][()]
        except KeyError:
            raise InputError(f"{file}: an IMC calibration file needs datasets 'R' and "
                             "'T'") from None
        except OSError as err:
            raise InputError(f"{file}: not a readable HDF5 file ({err})") from None
        poses[file.stem[len("calibration_"):]] = _rigid(rotation, translation, str(file))
    return poses


def _numbers(text: str, count: int, where: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in re.split(r"[;,\s]+", text.strip()) if v])
    except ValueError:
        raise InputError(f"{where}: non-numeric values in {text!r}") from None
    if len(values) != count:
        raise InputError(f"{where}: expected {count} numbers, got {len(values)} in {text!r}")
    return values


def _imc_csv(path: Path) -> dict[str, pycolmap.Rigid3d]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        name_column = next((c for c in _NAME_COLUMNS if c in columns), None)
        if name_column is None or not {"rotation_matrix", "translation_vector"} <= set(columns):
            raise InputError(f"{path}: expected a csv header with an image column "
                             f"({' or '.join(_NAME_COLUMNS)}), rotation_matrix and "
                             f"translation_vector; got {columns}")
        poses = {}
        for number, row in enumerate(reader, 2):
            where = f"{path}:{number}"
            if any(row.get(c) is None for c in (name_column, "rotation_matrix",
                                                 "translation_vector")):
                raise InputError(f"{where}: the row has fewer fields than the header")
            poses[row[name_column]] = _rigid(
                _numbers(row["rotation_matrix"], 9, where).reshape(3, 3),
                _numbers(row["translation_vector"], 3, where), where)
    return poses


def _nerf_transforms(path: Path) -> dict[str, pycolmap.Rigid3d]:
    try:
        frames = json.loads(path.read_text(encoding="utf-8"))["frames"]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError):
        raise InputError(f"{path}: a transforms.json needs a 'frames' list") from None
    poses = {}
    for index, frame in enumerate(frames):
        where = f"{path}: frame {index}"
        try:
            name = str(PurePosixPath(frame["file_path"].replace("\\", "/")))
            world_from_camera = np.asarray(frame["transform_matrix"], np.float64)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise InputError(f"{where}: needs 'file_path' and a 4×4 'transform_matrix'") from None
        if world_from_camera.shape != (4, 4):
            raise InputError(f"{where}: transform_matrix must be 4×4, got "
                             f"{world_from_camera.shape}")
        rotation = world_from_camera[:3, :3] @ _OPENGL_TO_COLMAP
        scale = np.cbrt(np.linalg.det(rotation))  # some exports scale the axes
        if not scale > 0:
            raise InputError(f"{where}: the transform_matrix is singular or a reflection")
        rotation = rotation / scale
        poses[name] = _rigid(rotation.T, -rotation.T @ world_from_camera[:3, 3], where)
    return poses


def _strecha_camera(path: Path) -> dict[str, pycolmap.Rigid3d]:
    """One Strecha ``<image name>.camera`` file: K, distortion, camera-to-world R, centre C,
    width height (26 numbers)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        values = np.array([float(v) for v in text.split()])
    except ValueError:
        raise InputError(f"{path}: non-numeric values in a Strecha camera file") from None
    if len(values) != 26:
        raise InputError(f"{path}: a Strecha camera file holds K (9 numbers), distortion (3), "
                         f"R (9), the camera centre (3) and width height (2); got "
                         f"{len(values)} numbers")
    world_from_camera, centre = values[12:21].reshape(3, 3), values[21:24]
    rotation = world_from_camera.T
    return {path.name[:-len(".camera")]: _rigid(rotation, -rotation @ centre, str(path))}


def _strecha_folder(folder: Path) -> dict[str, pycolmap.Rigid3d]:
    poses: dict[str, pycolmap.Rigid3d] = {}
    for file in sorted(folder.glob("*.camera")):
        poses.update(_strecha_camera(file))
    return poses


def read_camera_poses(path: str | Path) -> dict[str, pycolmap.Rigid3d]:
    """name -> cam_from_world of every posed image in ``path`` (see the module docstring
    for the formats); InputError names the file, the line and what was expected."""
    from .localization.results import read_poses

    path = Path(path)
    if path.is_dir():
        if _is_colmap_model(path):
            poses = _colmap_model(path)
        elif _is_colmap_model(path / "sfm"):
            poses = _colmap_model(path / "sfm")
        elif any(path.glob("calibration_*.h5")):
            poses = _imc_h5_folder(path)
        elif any((path / "calibration").glob("calibration_*.h5")):
            poses = _imc_h5_folder(path / "calibration")
        elif (path / "transforms.json").is_file():
            poses = _nerf_transforms(path / "transforms.json")
        elif any(path.glob("*.camera")):
            poses = _strecha_folder(path)
        else:
            raise InputError(f"{path} holds no poses in a known layout; expected {FORMATS}")
    elif not path.is_file():
        raise InputError(f"pose file {path} does not exist")
    elif path.stat().st_size == 0 or not path.read_bytes().strip():
        raise InputError(f"pose file {path} is empty")
    else:
        readers: dict[str, Callable[[Path], dict[str, pycolmap.Rigid3d]]] = {
            ".nvm": _nvm, ".csv": _imc_csv, ".json": _nerf_transforms,
            ".camera": _strecha_camera}
        suffix = path.suffix.lower()
        if suffix in readers:
            poses = readers[suffix](path)
        elif suffix in (".h5", ".hdf5", ".bin", ".db", ".npy", ".npz", ".ply"):
            raise InputError(f"{path}: unknown pose file format {suffix!r}; expected "
                             f"{FORMATS}")
        elif _looks_like_colmap_images(path):
            poses = read_colmap_images_txt(path)
        else:
            poses = read_poses(path)
    if not poses:
        raise InputError(f"{path} holds no posed image")
    return poses


def restrict_to_folder(poses: Mapping[str, pycolmap.Rigid3d], folder: str | Path
                       ) -> dict[str, pycolmap.Rigid3d]:
    """The poses whose image file name is in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist")
    present = {p.name for p in folder.iterdir()}
    return {name: pose for name, pose in poses.items()
            if PurePosixPath(name.replace("\\", "/")).name in present}


def match_names(estimate: Mapping[str, pycolmap.Rigid3d],
                reference: Mapping[str, pycolmap.Rigid3d]
                ) -> tuple[dict[str, pycolmap.Rigid3d], dict[str, pycolmap.Rigid3d]]:
    """Both maps re-keyed by the name form that pairs most images: the full name, else the
    file name, else the file name without extension (each unique on both sides); the
    reference's names are kept where it pairs."""
    def keyed(poses, key) -> dict[str, tuple[str, pycolmap.Rigid3d]] | None:
        out = {}
        for name, pose in poses.items():
            k = key(name)
            if k in out:
                return None
            out[k] = (name, pose)
        return out

    best = (dict(estimate), dict(reference))
    best_count = len(set(estimate) & set(reference))
    for key in (lambda n: PurePosixPath(n.replace("\\", "/")).name,
                lambda n: PurePosixPath(n.replace("\\", "/")).stem):
        by_estimate, by_reference = keyed(estimate, key), keyed(reference, key)
        if by_estimate is None or by_reference is None:
            continue
        count = len(set(by_estimate) & set(by_reference))
        if count > best_count:
            names = {k: by_reference[k][0] for k in by_reference}
            best = ({names.get(k, by_estimate[k][0]): pose
                     for k, (_, pose) in by_estimate.items()},
                    {name: pose for name, pose in by_reference.values()})
            best_count = count
    return best
