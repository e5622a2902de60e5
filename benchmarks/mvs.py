"""Dense MVS benchmark: sfmfeat CPU MVS against OpenCV StereoSGBM on rectified pairs.

    python benchmarks/mvs.py [--images DIR] [--sfm MODEL] [--work DIR] [--max-image-size 1000]

Runs in one process, on the same undistorted images:
1. a sparse model (pycolmap SIFT + incremental mapping) unless ``--sfm`` is given;
2. ``sfmfeat.reconstruction.dense.densify`` from scratch: per-stage seconds, seconds per depth
   map and per megapixel, fused points, and for the sparse points seen in >= 3 images the median
   distance to the nearest fused point as a fraction of the scene extent (diagonal of the 1-99
   percentile box of the sparse points);
3. OpenCV StereoSGBM on each image rectified with its best source view (the same view our MVS
   ranks first): seconds per depth map and per megapixel, and for both methods the agreement of
   their depths with the sparse points (median relative error, share within 1 %, coverage).
Figures are printed as ratios sfmfeat / SGBM.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from scipy.spatial import cKDTree

from sfmfeat.reconstruction import mvs_cpu
from sfmfeat.reconstruction.dense import DenseConfig, densify

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared/data/sacre_coeur/mapping"


def sparse_model(images: Path, work: Path) -> Path:
    out = work / "sparse"
    if (out / "0" / "points3D.bin").is_file():
        return out / "0"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    db = work / "database.db"
    db.unlink(missing_ok=True)
    pycolmap.extract_features(db, images, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    models = pycolmap.incremental_mapping(db, images, out)
    if not models:
        sys.exit("sparse reconstruction failed")
    return out / "0"


def read_ply_xyz(path: Path) -> np.ndarray:
    types = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4"}
    with open(path, "rb") as f:
        count, fields = 0, []
        while (line := f.readline().decode("ascii").strip()) != "end_header":
            if line.startswith("element vertex"):
                count = int(line.split()[-1])
            elif line.startswith("property"):
                _, kind, name = line.split()
                fields.append((name, types[kind]))
        data = np.frombuffer(f.read(), dtype=np.dtype(fields), count=count)
    return np.stack([data["x"], data["y"], data["z"]], 1).astype(np.float64)


def observations(rec: pycolmap.Reconstruction, image_id: int):
    """(pixel xy in COLMAP coords, camera-frame depth, camera xyz) of the image's 3D points."""
    image = rec.images[image_id]
    pose = image.cam_from_world()
    xy, xyz = [], []
    for p in image.points2D:
        if p.has_point3D():
            xy.append(p.xy)
            xyz.append(rec.points3D[p.point3D_id].xyz)
    cam = np.array(xyz).reshape(-1, 3) @ pose.rotation.matrix().T + np.asarray(pose.translation)
    return np.array(xy).reshape(-1, 2), cam


def agreement(errors: list[float], total: int) -> str:
    e = np.asarray(errors)
    if len(e) == 0:
        return "no depth at any sparse point"
    return (f"median rel. error {100 * np.median(e):.2f} %, within 1 %: {100 * np.mean(e < 0.01):.1f} %, "
            f"coverage {100 * len(e) / max(total, 1):.1f} % of {total} observations")


def our_agreement(rec, workspace: Path) -> tuple[list[float], int]:
    errors, total = [], 0
    for image_id in rec.reg_image_ids():
        name = rec.images[image_id].name
        path = workspace / "stereo" / "depth_maps" / f"{name}.geometric.bin"
        if not path.is_file():
            continue
        dm = pycolmap.DepthMap()
        dm.read(str(path))
        depth = dm.to_array()
        xy, cam = observations(rec, image_id)
        total += len(xy)
        c, r = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
        ok = (c >= 0) & (r >= 0) & (c < depth.shape[1]) & (r < depth.shape[0])
        d = np.zeros(len(xy))
        d[ok] = depth[r[ok], c[ok]]
        has = d > 0
        errors += list(np.abs(d[has] - cam[has, 2]) / cam[has, 2])
    return errors, total


def sgbm_pair(rec, views, ref_id, src_id, workspace):
    """Rectify (ref, src), run SGBM; returns (seconds, megapixels, errors, observations)."""
    ref, src = views[ref_id], views[src_id]
    r_rel = src.R @ ref.R.T
    t_rel = src.t - r_rel @ ref.t
    to_cv = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    k1, k2 = to_cv @ ref.K, to_cv @ src.K
    size = (ref.width, ref.height)
    img1 = cv2.imread(str(workspace / "images" / ref.name), cv2.IMREAD_GRAYSCALE)
    img2 = cv2.imread(str(workspace / "images" / src.name), cv2.IMREAD_GRAYSCALE)
    start = time.perf_counter()
    r1, r2, p1, p2, _, _, _ = cv2.stereoRectify(k1, None, k2, None, size, r_rel, t_rel, alpha=0)
    if abs(p2[1, 3]) > abs(p2[0, 3]) or p2[0, 3] > 0:
        return None                      # vertical or right-to-left pair: SGBM needs left/right
    m1 = cv2.initUndistortRectifyMap(k1, None, r1, p1, size, cv2.CV_32FC1)
    m2 = cv2.initUndistortRectifyMap(k2, None, r2, p2, size, cv2.CV_32FC1)
    rect1 = cv2.remap(img1, *m1, cv2.INTER_LINEAR)
    rect2 = cv2.remap(img2, *m2, cv2.INTER_LINEAR)
    f, baseline = p1[0, 0], -p2[0, 3] / p2[0, 0]
    xy, cam = observations(rec, ref_id)
    rect_cam = cam @ r1.T
    disp_true = f * baseline / rect_cam[:, 2]
    lo, hi = np.percentile(disp_true, [1, 99])
    min_disp = int(np.floor(lo * 0.75))
    num_disp = int(np.ceil((hi * 1.25 - min_disp) / 16.0)) * 16
    block = 5
    sgbm = cv2.StereoSGBM_create(minDisparity=min_disp, numDisparities=max(16, num_disp),
                                 blockSize=block, P1=8 * block * block, P2=32 * block * block,
                                 uniquenessRatio=10, speckleWindowSize=100, speckleRange=2,
                                 disp12MaxDiff=1)
    disparity = sgbm.compute(rect1, rect2).astype(np.float32) / 16.0
    seconds = time.perf_counter() - start
    u = p1[0, 0] * rect_cam[:, 0] / rect_cam[:, 2] + p1[0, 2]
    v = p1[1, 1] * rect_cam[:, 1] / rect_cam[:, 2] + p1[1, 2]
    c, r = np.rint(u).astype(int), np.rint(v).astype(int)
    ok = (c >= 0) & (r >= 0) & (c < size[0]) & (r < size[1])
    d = np.full(len(u), -1.0)
    d[ok] = disparity[r[ok], c[ok]]
    has = d > min_disp
    depth = f * baseline / d[has]
    errors = list(np.abs(depth - rect_cam[has, 2]) / rect_cam[has, 2])
    return seconds, size[0] * size[1] / 1e6, errors, len(xy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--sfm", type=Path, help="existing sparse model (default: build one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sfmfeat_mvs_benchmark"))
    parser.add_argument("--max-image-size", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="resume the dense workspace")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    pycolmap.logging.minloglevel = 2
    if not args.images.is_dir():
        sys.exit(f"image folder {args.images} is missing")
    args.work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model = args.sfm or sparse_model(args.images, args.work)
    sparse_seconds = time.perf_counter() - t0
    workspace = args.work / "mvs"
    if not args.keep:
        shutil.rmtree(workspace, ignore_errors=True)
    t0 = time.perf_counter()
    result = densify(model, args.images, workspace,
                     DenseConfig(max_image_size=args.max_image_size))
    dense_seconds = time.perf_counter() - t0

    rec = pycolmap.Reconstruction(str(workspace / "sparse"))
    views = mvs_cpu.views_from_reconstruction(rec)
    megapixels = sum(v.width * v.height for v in views.values()) / 1e6
    depth_seconds = next(v for k, v in result.timings.items() if k.startswith("depth maps"))

    sparse = pycolmap.Reconstruction(str(model))
    seen3 = np.array([p.xyz for p in sparse.points3D.values() if p.track.length() >= 3])
    all_xyz = np.array([p.xyz for p in sparse.points3D.values()])
    lo, hi = np.percentile(all_xyz, [1, 99], axis=0)
    extent = float(np.linalg.norm(hi - lo))
    fused = read_ply_xyz(result.fused_path)
    dist, _ = cKDTree(fused).query(seen3)

    sources = mvs_cpu.select_source_views(rec, mvs_cpu.CpuMvsConfig())
    sgbm_seconds, sgbm_mp, sgbm_errors, sgbm_total, pairs = 0.0, 0.0, [], 0, 0
    for ref_id in sorted(views):
        for src_id in sources.get(ref_id, [])[:2]:
            out = sgbm_pair(rec, views, ref_id, src_id, workspace)
            if out is None:
                out = sgbm_pair(rec, views, src_id, ref_id, workspace)
            if out is not None:
                sgbm_seconds += out[0]
                sgbm_mp += out[1]
                sgbm_errors += out[2]
                sgbm_total += out[3]
                pairs += 1
                break
    ours_errors, ours_total = our_agreement(rec, workspace)

    print("\n=== dense MVS benchmark ===")
    print(f"images: {args.images} ({len(views)} views, {megapixels:.2f} MP undistorted at "
          f"max {args.max_image_size} px), sparse model {sparse_seconds:.1f} s")
    print(f"backend: {result.backend} ({result.backend_reason})")
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
          + f"; total {dense_seconds:.1f} s")
    print(f"fused points: {result.num_fused_points}")
    print(f"sparse points seen in >= 3 images: {len(seen3)}; median distance to the nearest fused "
          f"point {np.median(dist):.4g} = {100 * np.median(dist) / extent:.3f} % of the extent "
          f"{extent:.3g}")
    ours_per_map = depth_seconds / max(result.num_depth_maps, 1)
    ours_per_mp = depth_seconds / megapixels
    print(f"sfmfeat CPU MVS: {ours_per_map:.2f} s per depth map, {ours_per_mp:.2f} s per MP; "
          f"{agreement(ours_errors, ours_total)}")
    if pairs:
        print(f"OpenCV StereoSGBM ({pairs} rectified pairs): {sgbm_seconds / pairs:.2f} s per depth "
              f"map, {sgbm_seconds / sgbm_mp:.2f} s per MP; {agreement(sgbm_errors, sgbm_total)}")
        print(f"ratio sfmfeat / SGBM: time per depth map {ours_per_map / (sgbm_seconds / pairs):.2f}x, "
              f"per MP {ours_per_mp / (sgbm_seconds / sgbm_mp):.2f}x")
    else:
        print("OpenCV StereoSGBM: no pair could be rectified left-to-right; no reference figures")


if __name__ == "__main__":
    main()
