"""Localization against the InLoc database: lidar cut-outs with per-pixel 3D points.

Dataset layout (InLoc_demo ``setup_project_ht_WUSTL.m``; hloc ``localize_inloc.py``)::

    query/iphone7/IMG_*.JPG
    database/cutouts/<floor>/<scan>/<bldg>_cutout_<scan>_<yaw>_<pitch>.jpg   (+ .jpg.mat)
    database/alignments/<floor>/transformations/<bldg>_trans_<scan>.txt

- ``<cutout>.jpg.mat`` holds ``XYZcut``, H×W×3 points in the scan's frame with NaN where
  the lidar had no return. MATLAB v5 files are read with scipy, v7.3 (HDF5) with h5py.
- Lines 8–11 of the transformation file are ``P_after_GICP``, the 4×4 scan → building
  (floor) transform; localized poses are world-to-camera in that frame.
- Query camera: iPhone 7, SIMPLE_PINHOLE with f = 4032·28/36 px at 4032 px on the long
  side (scaled to the actual image size), principal point at the image centre.

For a query, the matches to each retrieved cut-out with at least ``min_matches`` (20)
matches give 2D–3D correspondences: the matched cut-out keypoint is looked up in XYZcut
(bilinear, nearest for NaN holes) and moved to the building frame. PnP (LO-RANSAC,
48 px) over all of them gives the pose. Each cut-out's 3D points for all its keypoints are
computed once and cached (the .mat is not reread per pair). A bad cut-out (missing file,
no ``XYZcut``, bad alignment) is skipped with its reason in the query's log; a query that
fails gets no pose.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pycolmap

from ..errors import InputError, SfmfeatError
from ..images import image_size, rescale_pixels
from ..progress import tqdm
from ..store import FeatureReader, MatchReader
from .pose import PoseConfig, estimate_pose
from .results import INLOC_THRESHOLDS, pose_errors, recall
from .model_localization import QueryResult

logger = logging.getLogger(__name__)

IPHONE7_FOCAL_35MM = 28.0           # mm, 35 mm-equivalent focal length of the iPhone 7
IPHONE7_LONG_SIDE = 4032            # px of the original photos
QUERY_DIR = "query/iphone7"
CUTOUT_DIR = "database/cutouts"
ALIGNMENT_DIR = "database/alignments"
_CUTOUT = re.compile(r"^(?P<bldg>[^_/]+)_cutout_(?P<scan>[^_/]+)_(?P<yaw>-?[\d.]+)_"
                     r"(?P<pitch>-?[\d.]+)\.jpg$", re.IGNORECASE)


@dataclass(frozen=True)
class InLocConfig:
    pose: PoseConfig = PoseConfig(max_error=48.0)
    min_matches: int = 20               # cut-outs with fewer matches are skipped (hloc)
    cache_mb: float = 1024.0            # budget of the per-cut-out 3D point cache


def query_camera(width: int, height: int) -> pycolmap.Camera:
    """The InLoc iPhone 7 camera at this image size."""
    focal = IPHONE7_LONG_SIDE * IPHONE7_FOCAL_35MM / 36.0 * max(width, height) / \
        IPHONE7_LONG_SIDE
    return pycolmap.Camera(model="SIMPLE_PINHOLE", width=int(width), height=int(height),
                           params=[focal, width / 2.0, height / 2.0])


@dataclass(frozen=True)
class Cutout:
    name: str           # relative to the dataset root
    floor: str          # DUC1, DUC2, ...
    building: str       # DUC
    scan: str           # 024

    @property
    def alignment(self) -> str:
        return (f"{ALIGNMENT_DIR}/{self.floor}/transformations/"
                f"{self.building}_trans_{self.scan}.txt")

    @property
    def xyz(self) -> str:
        return self.name + ".mat"


def parse_cutout(name: str) -> Cutout:
    """``database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg`` -> floor DUC1, scan 024."""
    parts = name.replace("\\", "/").split("/")
    match = _CUTOUT.match(parts[-1])
    if len(parts) < 3 or match is None:
        raise InputError(f"{name!r} is not an InLoc cut-out name "
                         "(<floor>/<scan>/<bldg>_cutout_<scan>_<yaw>_<pitch>.jpg)")
    return Cutout(name=name, floor=parts[-3], building=match["bldg"], scan=match["scan"])


def read_alignment(path: str | Path) -> np.ndarray:
    """``P_after_GICP`` (lines 8–11) of an InLoc transformation file, 4×4."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"alignment file {path} does not exist")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if len(lines) < 11:
        raise InputError(f"{path}: {len(lines)} lines, expected P_after_GICP on lines 8-11")
    rows = []
    for number in range(8, 12):
        try:
            row = [float(v) for v in lines[number - 1].replace(",", " ").split()]
        except ValueError:
            row = []
        if len(row) != 4:
            raise InputError(f"{path}:{number}: expected 4 numbers of P_after_GICP, got "
                             f"{lines[number - 1].strip()!r}")
        rows.append(row)
    matrix = np.array(rows)
    if not np.isfinite(matrix).all() or not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(f"{path}:11: P_after_GICP is not a rigid 4x4 transform "
                         f"(last row {matrix[3].tolist()})")
    return matrix


def read_xyzcut(path: str | Path) -> np.ndarray:
    """``XYZcut`` of a cut-out's .mat file as H×W×3 float32 (NaN = no 3D point)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cut-out 3D file {path} does not exist")
    if h5py.is_hdf5(path):                     # MATLAB v7.3
        try:
            with h5py.File(path, "r") as handle:
                if "XYZcut" not in handle:
                    raise InputError(f"{path} has no XYZcut variable (found: "
                                     f"{', '.join(sorted(handle)) or 'nothing'})")
                # MATLAB is column-major: an H×W×3 array is stored as 3×W×H
                xyz = np.asarray(handle["XYZcut"][()], np.float32).transpose(2, 1, 0)
        except OSError as err:
            raise InputError(f"{path}: unreadable MATLAB v7.3 file ({err})") from err
    else:
        from scipy.io import loadmat, whosmat

        try:
            content = loadmat(path, variable_names=["XYZcut"])
        except (ValueError, TypeError, OSError, NotImplementedError) as err:
            raise InputError(f"{path}: unreadable MATLAB file ({err})") from err
        if "XYZcut" not in content:
            try:
                found = ", ".join(v[0] for v in whosmat(path)) or "nothing"
            except (ValueError, OSError):
                found = "unknown"
            raise InputError(f"{path} has no XYZcut variable (found: {found})")
        xyz = np.asarray(content["XYZcut"], np.float32)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise InputError(f"{path}: XYZcut has shape {xyz.shape}, expected H×W×3")
    return xyz


def lookup_xyz(xyz: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D points at ``keypoints`` (pixel centres at integers, in XYZ-map pixels).

    Bilinear interpolation where the four neighbours are valid, else the nearest pixel;
    returns (N×3 float64, N bool valid). Points outside the map are invalid.
    """
    height, width = xyz.shape[:2]
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    x, y = kp[:, 0], kp[:, 1]
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    x = np.clip(x, 0, width - 1)
    y = np.clip(y, 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(width - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(height - 2, 0))
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    bilinear = ((1 - ax) * (1 - ay) * xyz[y0, x0] + ax * (1 - ay) * xyz[y0, x1]
                + (1 - ax) * ay * xyz[y1, x0] + ax * ay * xyz[y1, x1])
    nearest = xyz[np.rint(y).astype(np.int64), np.rint(x).astype(np.int64)]
    points = np.where(np.isfinite(bilinear).all(1, keepdims=True), bilinear, nearest)
    valid = inside & np.isfinite(points).all(1)
    return points.astype(np.float64), valid


class CutoutPoints:
    """Building-frame 3D points of every keypoint of a cut-out, computed once per cut-out.

    ``get(name)`` reads the .mat and the alignment the first time, keeps an N×3 array per
    cut-out (LRU within ``cache_mb``) and remembers failures, so no file is read twice.
    """

    def __init__(self, dataset: str | Path, features: FeatureReader,
                 cache_mb: float = 1024.0) -> None:
        self.dataset = Path(dataset)
        self.features = features
        self.budget = cache_mb * 2**20
        self._points: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._errors: dict[str, str] = {}
        self._alignments: dict[str, np.ndarray] = {}
        self.reads = 0                       # .mat files read (for tests and logs)

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name in self._errors:
            raise InputError(self._errors[name])
        if name in self._points:
            self._points.move_to_end(name)
            return self._points[name]
        try:
            value = self._compute(name)
        except InputError as err:
            self._errors[name] = str(err)
            raise
        self._points[name] = value
        self._bytes += value[0].nbytes + value[1].nbytes
        while self._bytes > self.budget and len(self._points) > 1:
            _, old = self._points.popitem(last=False)
            self._bytes -= old[0].nbytes + old[1].nbytes
        return value

    def _compute(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        cutout = parse_cutout(name)
        if cutout.alignment not in self._alignments:
            self._alignments[cutout.alignment] = read_alignment(self.dataset
                                                                / cutout.alignment)
        transform = self._alignments[cutout.alignment]
        self.reads += 1
        xyz = read_xyzcut(self.dataset / cutout.xyz)
        keypoints = self.features.keypoints(name).astype(np.float64)
        width, height = self.features.image_size(name)
        if (width, height) != (xyz.shape[1], xyz.shape[0]):  # XYZ map of another size
            keypoints = rescale_pixels(keypoints, (xyz.shape[1] / width, xyz.shape[0] / height))
        points, valid = lookup_xyz(xyz, keypoints)
        points = points @ transform[:3, :3].T + transform[:3, 3]
        return points, valid


@dataclass
class InLocResult(QueryResult):
    floor: str | None = None                        # floor of the best-supported cut-out
    skipped_db_images: dict[str, str] = field(default_factory=dict)   # name -> reason

    def log_entry(self) -> dict[str, Any]:
        entry = super().log_entry()
        entry["floor"] = self.floor
        entry["skipped_db_images"] = self.skipped_db_images
        return entry


def localize_inloc_query(name: str, camera: pycolmap.Camera, db_names: Sequence[str],
                         features: FeatureReader, matches: MatchReader,
                         cutouts: CutoutPoints, config: InLocConfig) -> InLocResult:
    """Localize one query against its retrieved cut-outs (never raises for a bad cut-out)."""
    result = InLocResult(name=name, num_retrieved=len(db_names),
                         camera=f"{camera.model.name} {camera.width}x{camera.height} "
                                f"{camera.params_to_string()}")
    start = time.perf_counter()
    query_kp = features.keypoints(name)
    points2d, points3d, owner, used = [], [], [], []
    for db_name in db_names:
        try:
            if (name, db_name) not in matches:
                raise InputError(f"no matches for ({name}, {db_name}) in {matches.path}")
            pair = matches.read(name, db_name)[0]
            result.matched_db_images[db_name] = len(pair)
            if len(pair) < config.min_matches:
                result.skipped_db_images[db_name] = (f"{len(pair)} matches < "
                                                     f"{config.min_matches}")
                continue
            xyz, valid = cutouts.get(db_name)
        except SfmfeatError as err:
            result.skipped_db_images[db_name] = str(err)
            logger.warning("%s: skipping %s: %s", name, db_name, err)
            continue
        keep = valid[pair[:, 1]]
        points2d.append(query_kp[pair[keep, 0]])
        points3d.append(xyz[pair[keep, 1]])
        owner.append(np.full(int(keep.sum()), len(used)))
        used.append(db_name)
    result.timings["2d3d"] = time.perf_counter() - start
    if not used:
        result.reason = ("no usable cut-out: " + "; ".join(
            f"{k}: {v}" for k, v in list(result.skipped_db_images.items())[:3])
            if result.skipped_db_images else "no retrieved cut-out")
        result.floor = _floor_of(db_names)
        return result
    p2d, p3d, who = np.concatenate(points2d), np.concatenate(points3d), np.concatenate(owner)
    result.num_correspondences = len(p2d)
    start = time.perf_counter()
    pose = estimate_pose(p2d, p3d, camera, config.pose)
    result.timings["pnp"] = time.perf_counter() - start
    if pose is None:
        result.reason = (f"no pose: {len(p2d)} 2D-3D correspondences from {len(used)} of "
                         f"{len(db_names)} retrieved cut-outs")
        result.floor = _floor_of(used)
        return result
    result.status = "localized"
    result.cam_from_world = pose.cam_from_world
    result.num_inliers = pose.num_inliers
    ids, counts = np.unique(who[pose.inlier_mask], return_counts=True)
    result.inliers_per_db_image = {used[i]: int(c) for i, c in zip(ids, counts)}
    best = max(result.inliers_per_db_image.items(), key=lambda kv: kv[1])[0]
    result.floor = _floor_of([best])
    return result


def _floor_of(names: Sequence[str]) -> str | None:
    for name in names:
        try:
            return parse_cutout(name).floor
        except InputError:
            continue
    return None


@dataclass
class InLocReport:
    results: dict[str, InLocResult] = field(default_factory=dict)
    mat_files_read: int = 0

    @property
    def poses(self) -> dict[str, pycolmap.Rigid3d]:
        return {n: r.cam_from_world for n, r in self.results.items() if r.localized}

    def log(self) -> dict[str, dict[str, Any]]:
        return {n: r.log_entry() for n, r in self.results.items()}

    def per_floor(self, ground_truth: Mapping[str, pycolmap.Rigid3d] | None = None,
                  thresholds=INLOC_THRESHOLDS) -> dict[str, dict[str, Any]]:
        """Counts (and recall against ``ground_truth``) per floor, e.g. DUC1 and DUC2."""
        floors: dict[str, list[InLocResult]] = {}
        for result in self.results.values():
            floors.setdefault(result.floor or "unknown", []).append(result)
        summary = {}
        for floor, results in sorted(floors.items()):
            entry: dict[str, Any] = {"num_queries": len(results),
                                     "num_localized": sum(r.localized for r in results)}
            if ground_truth is not None:
                errors = []
                for r in results:
                    reference = _lookup(ground_truth, r.name)
                    if reference is None:
                        continue
                    errors.append(pose_errors(r.cam_from_world, reference) if r.localized
                                  else (np.inf, np.inf))
                entry["num_with_ground_truth"] = len(errors)
                entry["thresholds"] = [list(t) for t in thresholds]
                entry["recall"] = recall(errors, thresholds)
            summary[floor] = entry
        return summary


def _lookup(poses: Mapping[str, pycolmap.Rigid3d], name: str) -> pycolmap.Rigid3d | None:
    if name in poses:
        return poses[name]
    return poses.get(name.replace("\\", "/").split("/")[-1])


def localize_inloc(dataset: str | Path, retrieval: Mapping[str, Sequence[str]],
                   features: str | Path, matches: str | Path,
                   config: InLocConfig | None = None, progress: bool = True) -> InLocReport:
    """Localize every query of ``retrieval`` (query -> cut-out names, dataset-relative).

    A query whose image or features are missing is reported as an error and the others
    still run.
    """
    config = config or InLocConfig()
    dataset = Path(dataset)
    report = InLocReport()
    with FeatureReader(features) as feature_reader, MatchReader(matches) as match_reader:
        cutouts = CutoutPoints(dataset, feature_reader, config.cache_mb)
        for name, db_names in tqdm(retrieval.items(), desc="inloc", unit="query",
                                   disable=not progress):
            try:
                path = dataset / name
                if not path.is_file():
                    raise InputError(f"query image {path} does not exist")
                if name not in feature_reader:
                    raise InputError(f"query {name!r} has no features in "
                                     f"{feature_reader.path}")
                width, height = image_size(path)
                result = localize_inloc_query(name, query_camera(width, height), db_names,
                                              feature_reader, match_reader, cutouts, config)
            except SfmfeatError as err:
                result = InLocResult(name=name, status="error", reason=str(err),
                                     num_retrieved=len(db_names), floor=_floor_of(db_names))
            if not result.localized:
                logger.warning("%s not localized: %s", name, result.reason)
            report.results[name] = result
        report.mat_files_read = cutouts.reads
    return report

