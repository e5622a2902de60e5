"""Dense reconstruction: undistortion, depth/normal maps, fusion and Poisson meshing.

Workspace layout (``OUT``), COLMAP's own, so every COLMAP tool can read it:

    images/  sparse/  stereo/{depth_maps,normal_maps}/<name>.{photometric,geometric}.bin
    stereo/{patch-match,fusion}.cfg  fused.ply  meshed-poisson.ply  dense.json

Depth maps come from COLMAP PatchMatch (``pycolmap.patch_match_stereo``) when pycolmap is
built with CUDA, otherwise from :mod:`sfmfeat.reconstruction.mvs_cpu`. Every stage resumes:
the undistorted workspace, each depth map already written (written atomically) and the
fused cloud are reused when the configuration that made them is unchanged.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycolmap

from ..config import config_hash, config_to_dict
from ..progress import tqdm
from ..timing import StageTimer
from ..atomic import atomic_path, write_text_atomic
from ..errors import ConfigError, InputError, ReconstructionError
from ..lineage import check_images_belong_to_model
from . import mvs_cpu
from .mvs_cpu import CpuMvsConfig

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")
MODEL_FILES = ("cameras", "images", "points3D")


@dataclass(frozen=True)
class DenseConfig:
    max_image_size: int = 1000           # long side of the undistorted images (-1 = keep)
    backend: str = "auto"                # auto (CUDA when available), cpu or cuda
    cpu: CpuMvsConfig = CpuMvsConfig()
    fusion_min_num_pixels: int = 2      # each pixel already passed the 2-view geometric check
    fusion_max_reproj_error: float = 2.0
    fusion_max_depth_error: float = 0.01
    fusion_max_normal_error: float = 20.0
    mesh: bool = True
    poisson_depth: int = 9
    poisson_trim: float = 10.0
    poisson_num_threads: int = 1         # OpenMP spin-waits: 21 s with 1 thread, 600 s with
    num_threads: int = -1                # all on this shared 2-core machine (54k points)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"dense backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.max_image_size == 0 or self.max_image_size < -1:
            raise ConfigError(f"max_image_size={self.max_image_size}: use a positive size or -1")


@dataclass
class DenseResult:
    workspace: Path
    fused_path: Path
    mesh_path: Path | None
    backend: str
    backend_reason: str
    num_fused_points: int
    num_depth_maps: int
    timings: dict[str, float] = field(default_factory=dict)
    skipped_images: dict[str, str] = field(default_factory=dict)


def select_backend(requested: str, has_cuda: bool) -> tuple[str, str]:
    """(backend, reason): CUDA PatchMatch when available and allowed, else our CPU MVS."""
    if requested not in BACKENDS:
        raise ConfigError(f"dense backend {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested == "cuda":
        if not has_cuda:
            raise ConfigError("dense backend 'cuda' requested but this pycolmap is built without "
                              "CUDA (pycolmap.has_cuda is False); use --backend cpu or auto")
        return "cuda", "requested, and pycolmap is built with CUDA"
    if requested == "cpu":
        return "cpu", "requested"
    if has_cuda:
        return "cuda", "pycolmap.has_cuda is True: COLMAP PatchMatch stereo on the GPU"
    return "cpu", "pycolmap.has_cuda is False: sfmfeat CPU plane-sweep MVS"


# Inputs -------------------------------------------------------------------------------

def find_model_dir(sfm_dir: str | Path) -> Path:
    """The folder holding cameras/images/points3D (.bin or .txt): SFM_DIR or SFM_DIR/0."""
    sfm_dir = Path(sfm_dir)
    if not sfm_dir.is_dir():
        raise InputError(f"sparse model folder {sfm_dir} does not exist")
    for candidate in (sfm_dir, sfm_dir / "sfm", sfm_dir / "0"):
        if all((candidate / f"{n}.bin").is_file() or (candidate / f"{n}.txt").is_file()
               for n in MODEL_FILES):
            return candidate
    raise InputError(f"{sfm_dir} holds no COLMAP model (cameras, images, points3D .bin/.txt); "
                     "pass the folder written by `sfmfeat reconstruct` (OUT/sfm) or by COLMAP")


def check_inputs(rec: pycolmap.Reconstruction, image_dir: Path, model_dir: Path) -> None:
    """Clear errors for models that cannot be densified."""
    registered = rec.reg_image_ids()
    if len(registered) < 2:
        raise ReconstructionError(
            f"the model in {model_dir} has {len(registered)} registered image(s); dense "
            "reconstruction needs at least two overlapping views")
    if not image_dir.is_dir():
        raise InputError(f"image folder {image_dir} does not exist")
    missing = sorted(rec.images[i].name for i in registered
                     if not (image_dir / rec.images[i].name).is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise InputError(
            f"{len(missing)} of the {len(registered)} images of the model are missing from "
            f"{image_dir} ({shown}); pass the image folder the model was built from")
    check_images_belong_to_model(rec, model_dir, image_dir)  # before the native undistorter
    if rec.num_points3D() == 0:
        raise ReconstructionError(
            f"the model in {model_dir} has no 3D points; depth ranges and source views come "
            "from the sparse points, so triangulate the model first")


# Workspace state ----------------------------------------------------------------------

def _read_state(workspace: Path) -> dict[str, Any]:
    path = workspace / "dense.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("ignoring unreadable %s", path)
    return {}


def _write_state(workspace: Path, state: dict[str, Any]) -> None:
    write_text_atomic(workspace / "dense.json", json.dumps(state, indent=2, sort_keys=True))


def _atomic_write(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        obj.write(str(tmp))


def normal_map(normals: np.ndarray) -> pycolmap.NormalMap:
    """A ``pycolmap.NormalMap`` that COLMAP reads back as ``normals`` (H×W×3).

    pycolmap 4.2.1's ``NormalMap.from_array`` copies the interleaved numpy buffer as is,
    while COLMAP's ``Mat`` (and so ``stereo_fusion``) reads channel-planar data; without
    this reordering fusion sees scrambled normals and rejects almost every pixel.
    """
    h, w, _ = normals.shape
    planar = np.ascontiguousarray(normals.transpose(2, 0, 1), dtype=np.float32)
    return pycolmap.NormalMap.from_array(planar.reshape(h, w, 3))


def _read_depth(path: Path) -> np.ndarray:
    depth = pycolmap.DepthMap()
    depth.read(str(path))
    return np.asarray(depth.to_array(), np.float32)


def _undistort(model_dir: Path, image_dir: Path, workspace: Path, config: DenseConfig,
               state: dict[str, Any], names: list[str]) -> None:
    key = {"model_dir": str(model_dir.resolve()), "max_image_size": config.max_image_size}
    done = (state.get("undistort") == key and (workspace / "sparse").is_dir()
            and all((workspace / "images" / n).is_file() for n in names))
    if done:
        logger.info("undistorted workspace %s already exists; reusing it", workspace)
        return
    options = pycolmap.UndistortCameraOptions(max_image_size=config.max_image_size)
    pycolmap.undistort_images(str(workspace), str(model_dir), str(image_dir),
                              undistort_options=options, num_threads=config.num_threads)
    state.clear()                        # everything downstream is stale
    state["undistort"] = key
    _write_state(workspace, state)


# Depth maps ---------------------------------------------------------------------------

def _depth_paths(workspace: Path, name: str, kind: str) -> tuple[Path, Path]:
    stereo = workspace / "stereo"
    return (stereo / "depth_maps" / f"{name}.{kind}.bin",
            stereo / "normal_maps" / f"{name}.{kind}.bin")


def _run_cuda(workspace: Path, config: DenseConfig, names: list[str]) -> list[str]:
    if all(_depth_paths(workspace, n, "geometric")[0].is_file() for n in names):
        logger.info("all %d geometric depth maps exist; skipping PatchMatch", len(names))
        return names
    options = pycolmap.PatchMatchOptions(max_image_size=config.max_image_size,
                                         geom_consistency=True)
    pycolmap.patch_match_stereo(str(workspace), options=options)
    return [n for n in names if _depth_paths(workspace, n, "geometric")[0].is_file()]


def _load_gray(workspace: Path, name: str) -> np.ndarray:
    path = workspace / "images" / name
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError(f"cannot read the undistorted image {path}; delete {workspace} and rerun")
    return image.astype(np.float32) / 255.0


def _fingerprint(paths: list[Path]) -> list[list]:
    """(name, size, mtime) of files: changes whenever one is rewritten."""
    out = []
    for path in sorted(paths):
        stat = path.stat()
        out.append([path.name, stat.st_size, stat.st_mtime_ns])
    return out


def _photometric_depth_maps(workspace: Path, todo: list[int], views, sources, ranges,
                            cfg: CpuMvsConfig) -> dict[int, np.ndarray]:
    """Estimate and write the photometric depth map of each image in ``todo``, several at
    once (one per OpenCV thread allowed; numpy and OpenCV release the GIL), each written as
    soon as it is done and in order, so an interrupted run keeps a prefix of them."""
    workers = max(1, min(cv2.getNumThreads(), len(todo)))
    gray_cache: dict[int, np.ndarray] = {}

    def gray(image_id: int) -> np.ndarray:
        if image_id not in gray_cache:
            if len(gray_cache) > (workers + 1) * (cfg.num_source_views + 1):
                gray_cache.pop(next(iter(gray_cache)))
            gray_cache[image_id] = _load_gray(workspace, views[image_id].name)
        return gray_cache[image_id]

    def finish(image_id: int, future: Future) -> None:
        depth, _ = future.result()
        lo, hi = ranges[image_id]
        depth_path, _ = _depth_paths(workspace, views[image_id].name, "photometric")
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(pycolmap.DepthMap.from_array(depth, lo, hi), depth_path)
        done[image_id] = depth
        bar.update()

    done: dict[int, np.ndarray] = {}
    in_flight: deque[tuple[int, Future]] = deque()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)            # the parallelism is across images
    bar = tqdm(total=len(todo), desc="depth maps (cpu)", unit="img")
    try:
        with ThreadPoolExecutor(workers) as pool:
            try:
                for image_id in todo:
                    srcs = sources[image_id]
                    in_flight.append((image_id, pool.submit(
                        mvs_cpu.estimate_depth, gray(image_id), views[image_id],
                        [gray(s) for s in srcs], [views[s] for s in srcs], ranges[image_id],
                        cfg)))
                    if len(in_flight) > workers:   # one queued: no worker waits on
                        finish(*in_flight.popleft())  # the oldest map being written
                while in_flight:
                    finish(*in_flight.popleft())
            except BaseException:
                for _, future in in_flight:
                    future.cancel()
                raise
    finally:
        cv2.setNumThreads(threads)
        bar.close()
    return done


def _run_cpu(workspace: Path, config: DenseConfig, skipped: dict[str, str],
             state: dict[str, Any]) -> list[str]:
    cfg = config.cpu
    rec = pycolmap.Reconstruction(str(workspace / "sparse"))
    views = mvs_cpu.views_from_reconstruction(rec)
    sources = mvs_cpu.select_source_views(rec, cfg)
    ranges = mvs_cpu.depth_ranges(rec, cfg)
    todo = []
    for image_id, view in sorted(views.items(), key=lambda kv: kv[1].name):
        if not sources.get(image_id):
            skipped[view.name] = (f"no image shares >= 10 sparse points with it at a "
                                  f"triangulation angle >= {cfg.min_triangulation_angle} deg")
        elif image_id not in ranges:
            skipped[view.name] = "too few sparse points in front of it for a depth range"
        else:
            todo.append(image_id)
    for name, reason in skipped.items():
        logger.warning("no depth map for %s: %s", name, reason)
    if not todo:
        raise ReconstructionError(
            "no two views of the model overlap (no pair shares enough sparse points at a "
            f"triangulation angle >= {cfg.min_triangulation_angle} deg); nothing to densify")
    for image_id in todo:
        logger.debug("%s: sources %s, depth range %.3g-%.3g", views[image_id].name,
                     [views[s].name for s in sources[image_id]], *ranges[image_id])

    # Pass 1: photometric depth maps, one per image, resumable.
    photometric: dict[int, np.ndarray] = {}
    missing = []
    for image_id in todo:
        depth_path, _ = _depth_paths(workspace, views[image_id].name, "photometric")
        if depth_path.is_file():
            photometric[image_id] = _read_depth(depth_path)
        else:
            missing.append(image_id)
    if len(missing) < len(todo):
        logger.info("reused %d photometric depth map(s) already written",
                    len(todo) - len(missing))
    photometric.update(_photometric_depth_maps(workspace, missing, views, sources, ranges, cfg))

    # Pass 2: geometric consistency and normals (fast), unless already done on these maps.
    geometric_key = json.loads(json.dumps({
        "photometric": _fingerprint([_depth_paths(workspace, views[i].name, "photometric")[0]
                                     for i in todo]),
        "config": config_to_dict(cfg)}))
    names = [views[i].name for i in todo]
    if state.get("geometric") == geometric_key and all(
            p.is_file() for n in names for p in _depth_paths(workspace, n, "geometric")):
        logger.info("geometric depth and normal maps are up to date; reusing them")
        return names
    def consistent(image_id: int) -> str:
        view = views[image_id]
        depth = mvs_cpu.geometric_filter_one(image_id, photometric, views,
                                             sources.get(image_id, []), cfg)
        normals = mvs_cpu.normals_from_depth(depth, view.K, cfg.normal_radius)
        depth_path, normal_path = _depth_paths(workspace, view.name, "geometric")
        normal_path.parent.mkdir(parents=True, exist_ok=True)
        lo, hi = ranges[image_id]
        _atomic_write(normal_map(normals), normal_path)
        _atomic_write(pycolmap.DepthMap.from_array(depth, lo, hi), depth_path)
        kept = float((depth > 0).mean())
        if kept < 0.01:
            logger.warning("%s: only %.1f%% of its pixels have a consistent depth",
                           view.name, 100 * kept)
        return view.name

    # Images are independent here, and numpy releases the GIL: one per core.
    with ThreadPoolExecutor(max(1, min(cv2.getNumThreads(), len(todo)))) as pool:
        done = list(tqdm(pool.map(consistent, todo), total=len(todo),
                         desc="consistency + normals", unit="img"))
    state["geometric"] = geometric_key
    _write_state(workspace, state)
    return done


# Fusion and meshing -------------------------------------------------------------------

def _ply_vertex_count(path: Path) -> int:
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("ascii", "replace").strip()
            if line.startswith("element vertex"):
                return int(line.split()[-1])
            if line == "end_header":
                break
    return 0


def _fuse(workspace: Path, config: DenseConfig, names: list[str]) -> Path:
    (workspace / "stereo" / "fusion.cfg").write_text("".join(f"{n}\n" for n in names))
    options = pycolmap.StereoFusionOptions(
        min_num_pixels=config.fusion_min_num_pixels,
        max_reproj_error=config.fusion_max_reproj_error,
        max_depth_error=config.fusion_max_depth_error,
        max_normal_error=config.fusion_max_normal_error,
        num_threads=config.num_threads)
    fused = workspace / "fused.ply"
    with atomic_path(fused) as tmp:
        pycolmap.stereo_fusion(str(tmp), str(workspace), input_type="geometric",
                               options=options, output_type="PLY")
    return fused


def _mesh(fused: Path, config: DenseConfig) -> Path | None:
    """The Poisson mesh of the fused cloud, or None (with a warning) when it is empty."""
    mesh = fused.with_name("meshed-poisson.ply")
    mesh.unlink(missing_ok=True)  # never leave an earlier mesh beside a new cloud
    options = pycolmap.PoissonMeshingOptions(depth=config.poisson_depth, trim=config.poisson_trim,
                                             num_threads=config.poisson_num_threads)
    with atomic_path(mesh) as tmp:
        pycolmap.poisson_meshing(str(fused), str(tmp), options)
        if not tmp.is_file():
            raise ReconstructionError(f"Poisson meshing of {fused} wrote no mesh")
        if _ply_vertex_count(tmp) == 0:
            tmp.unlink()   # nothing written: the mesh stays absent
    if not mesh.is_file():
        logger.warning("Poisson meshing of %s gave an empty mesh (trim %.1f removed every "
                       "vertex, or the cloud is too sparse); no mesh written: lower "
                       "poisson_trim or poisson_depth", fused, config.poisson_trim)
        return None
    return mesh


# Entry point --------------------------------------------------------------------------

def densify(sfm_dir: str | Path, image_dir: str | Path, out_dir: str | Path,
            config: DenseConfig = DenseConfig()) -> DenseResult:
    """Dense model of the sparse model in ``sfm_dir`` (images in ``image_dir``) in ``out_dir``."""
    model_dir = find_model_dir(sfm_dir)
    image_dir = Path(image_dir)
    workspace = Path(out_dir)
    rec = pycolmap.Reconstruction(str(model_dir))
    check_inputs(rec, image_dir, model_dir)
    backend, reason = select_backend(config.backend, bool(getattr(pycolmap, "has_cuda", False)))
    logger.info("dense: depth maps by %s (%s)", backend.upper(), reason)
    names = sorted(rec.images[i].name for i in rec.reg_image_ids())

    workspace.mkdir(parents=True, exist_ok=True)
    state = _read_state(workspace)
    timer = StageTimer(logger, prefix="dense: ")
    skipped: dict[str, str] = {}
    with timer.stage("undistortion"):
        _undistort(model_dir, image_dir, workspace, config, state, names)

    depth_key = json.loads(json.dumps(     # as it reads back from dense.json
        {"backend": backend, "config": mvs_cpu.photometric_key(config.cpu)
         if backend == "cpu" else {"max_image_size": config.max_image_size}}))
    if state.get("depth") != depth_key:
        stale = list((workspace / "stereo").glob("*_maps/*.bin"))
        if stale:
            logger.info("depth maps in %s were made with another configuration; recomputing",
                        workspace)
            for path in stale:
                path.unlink()
        state["depth"] = depth_key
        state.pop("fusion", None)
        _write_state(workspace, state)

    with timer.stage(f"depth maps ({backend})"):
        if backend == "cuda":
            done = _run_cuda(workspace, config, names)
        else:
            done = _run_cpu(workspace, config, skipped, state)
    if not done:
        raise ReconstructionError("no depth map could be computed; see the warnings above")

    fusion_key = json.loads(json.dumps({
        "maps": _fingerprint([p for n in done for p in _depth_paths(workspace, n, "geometric")]),
        "hash": config_hash("fusion", config)}))
    fused = workspace / "fused.ply"
    with timer.stage("fusion"):
        if state.get("fusion") == fusion_key and fused.is_file():
            logger.info("fused cloud %s exists; reusing it", fused)
        else:
            _fuse(workspace, config, done)
            state["fusion"] = fusion_key
            state.pop("mesh", None)
            _write_state(workspace, state)
    num_points = _ply_vertex_count(fused)
    logger.info("fused cloud: %d points -> %s", num_points, fused)
    if num_points == 0:
        raise ReconstructionError(
            "fusion produced no point: the depth maps do not agree across views; check that "
            "the images overlap and the sparse model is correct")

    mesh_path = None
    if config.mesh:
        mesh_path = workspace / "meshed-poisson.ply"
        with timer.stage("poisson meshing"):
            if state.get("mesh") == fusion_key and mesh_path.is_file():
                logger.info("mesh %s exists; reusing it", mesh_path)
            else:
                mesh_path = _mesh(fused, config)
                state["mesh"] = fusion_key
                _write_state(workspace, state)

    result = DenseResult(workspace, fused, mesh_path, backend, reason, num_points, len(done),
                         timer.seconds, skipped)
    state["result"] = {"backend": backend, "reason": reason, "num_fused_points": num_points,
                       "num_depth_maps": len(done), "timings": timer.seconds,
                       "skipped_images": skipped, "config": config_to_dict(config)}
    _write_state(workspace, state)
    return result
