"""Dense MVS benchmark: sfmfeat CPU MVS against OpenCV StereoSGBM on rectified pairs.

    python benchmarks/mvs.py [--images DIR] [--sfm MODEL] [--work DIR] [--max-image-size 1000]

Runs in one process, on the same undistorted images:
1. a sparse model (pycolmap SIFT + incremental mapping) unless ``--sfm`` is given;
2. ``sfmfeat.reconstruction.dense.densify`` from scratch: per-stage seconds, seconds per depth
   map and per megapixel, fused points, and for the sparse points seen in >= 3 images the median
   distance to the nearest fused point as a fraction of the scene extent (diagonal of the 1-99
   percentile box of the sparse points);
3. OpenCV StereoSGBM on each image rectified with the best-ranked partner that gives a usable
   rectified pair (wide-baseline photo pairs often do not): seconds per depth map and per megapixel, and for both methods the agreement of
   their depths with the sparse points (median relative error, share within 1 %, coverage).
Figures are printed as ratios sfmfeat / SGBM. It runs on the synthetic scene first (its "sparse
points" are exact surface points, so agreement there is accuracy), then on the real images.

    python benchmarks/mvs.py --reference-commit e21b4bd --sfm MODEL [--rounds 3] [--images DIR]

instead times this checkout's depth maps against those of an earlier commit (its ``sfmfeat``
taken with ``git archive`` into a temporary folder): each side runs ``densify`` from scratch
in its own process, alternating reference / current for ``--rounds`` rounds, on the same
model and images; it prints the depth-map seconds of each run, the ratio reference / current
of their sums, and each side's fused points and agreement with the sparse points.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from scipy.spatial import cKDTree

from sfmfeat.reconstruction import mvs_cpu
from sfmfeat.reconstruction.dense import DenseConfig, densify
from sfmfeat.synthetic import SceneConfig, SyntheticScene

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
    r1, r2, p1, p2, _, _, _ = cv2.stereoRectify(
        k1, None, k2, None, size, r_rel, t_rel.reshape(3, 1), alpha=-1)
    vertical = abs(p2[1, 3]) > abs(p2[0, 3])
    axis = 1 if vertical else 0
    m1 = cv2.initUndistortRectifyMap(k1, None, r1, p1, size, cv2.CV_32FC1)
    m2 = cv2.initUndistortRectifyMap(k2, None, r2, p2, size, cv2.CV_32FC1)
    for (mx, my), img in ((m1, img1), (m2, img2)):
        inside = (mx >= 0) & (my >= 0) & (mx < img.shape[1]) & (my < img.shape[0])
        if inside.mean() < 0.5:
            return None                  # degenerate rectification (epipole near the image)
    rect1 = cv2.remap(img1, *m1, cv2.INTER_LINEAR)
    rect2 = cv2.remap(img2, *m2, cv2.INTER_LINEAR)
    # SGBM searches left-to-right along rows: transpose vertical pairs, mirror reversed ones.
    flip = p2[axis, 3] > 0
    def to_sgbm(img):
        img = img.T if vertical else img
        return np.ascontiguousarray(img[:, ::-1]) if flip else img
    rect1, rect2 = to_sgbm(rect1), to_sgbm(rect2)
    f, baseline = p1[axis, axis], abs(p2[axis, 3]) / p2[axis, axis]
    xy, cam = observations(rec, ref_id)
    rect_cam = cam @ r1.T
    disp_true = f * baseline / rect_cam[:, 2]
    lo, hi = np.percentile(disp_true, [1, 99])
    width = rect1.shape[1]
    logging.getLogger("mvs-bench").debug("pair %s-%s f %.1f baseline %.3g disparity %.1f-%.1f",
                                         ref.name, src.name, f, baseline, lo, hi)
    if not (0 < lo and hi < width / 2):
        return None                      # degenerate rectification (wide baseline)
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
    if vertical:
        u, v = v, u
    if flip:
        u = width - 1 - u
    c, r = np.rint(u).astype(int), np.rint(v).astype(int)
    ok = (c >= 0) & (r >= 0) & (c < disparity.shape[1]) & (r < disparity.shape[0])
    d = np.full(len(u), -1.0)
    d[ok] = disparity[r[ok], c[ok]]
    has = d >= min_disp
    depth = f * baseline / d[has]
    errors = list(np.abs(depth - rect_cam[has, 2]) / rect_cam[has, 2])
    return seconds, size[0] * size[1] / 1e6, errors, len(xy)


def run(label: str, images: Path, model: Path, workspace: Path, max_image_size: int,
        keep: bool) -> None:
    if not keep:
        shutil.rmtree(workspace, ignore_errors=True)
    t0 = time.perf_counter()
    result = densify(model, images, workspace, DenseConfig(max_image_size=max_image_size))
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

    # SGBM: per reference image, the best-ranked partner that rectifies into a usable pair.
    ranked = mvs_cpu.select_source_views(
        rec, mvs_cpu.CpuMvsConfig(num_source_views=len(views), min_triangulation_angle=1.0))
    sgbm_seconds, sgbm_mp, sgbm_errors, sgbm_total, pairs = 0.0, 0.0, [], 0, 0
    for ref_id in sorted(views):
        for src_id in ranked.get(ref_id, []):
            out = sgbm_pair(rec, views, ref_id, src_id, workspace)
            if out is not None:
                sgbm_seconds += out[0]
                sgbm_mp += out[1]
                sgbm_errors += out[2]
                sgbm_total += out[3]
                pairs += 1
                break
    ours_errors, ours_total = our_agreement(rec, workspace)

    print(f"\n=== dense MVS benchmark: {label} ===")
    print(f"images: {images} ({len(views)} views, {megapixels:.2f} MP undistorted at "
          f"max {max_image_size} px)")
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
          f"agreement with the sparse points: {agreement(ours_errors, ours_total)}")
    if pairs:
        print(f"OpenCV StereoSGBM ({pairs}/{len(views)} images had a rectifiable partner): "
              f"{sgbm_seconds / pairs:.2f} s per depth map, {sgbm_seconds / sgbm_mp:.2f} s per MP "
              f"(incl. rectification); agreement: {agreement(sgbm_errors, sgbm_total)}")
        print(f"ratio sfmfeat / SGBM: time per depth map {ours_per_map / (sgbm_seconds / pairs):.2f}x, "
              f"per MP {ours_per_mp / (sgbm_seconds / sgbm_mp):.2f}x")
    else:
        print("OpenCV StereoSGBM: no image pair rectifies into a usable stereo pair "
              "(wide baselines / epipoles inside the images); no reference figures")


def depth_run(images: Path, model: Path, workspace: Path, max_image_size: int) -> dict:
    """One densify from scratch (no mesh): depth-map seconds, fused points, agreement."""
    shutil.rmtree(workspace, ignore_errors=True)
    result = densify(model, images, workspace, DenseConfig(max_image_size=max_image_size,
                                                           mesh=False))
    rec = pycolmap.Reconstruction(str(workspace / "sparse"))
    errors, total = our_agreement(rec, workspace)
    e = np.asarray(errors)
    return {"depth_seconds": next(v for k, v in result.timings.items()
                                  if k.startswith("depth maps")),
            "backend": result.backend, "num_depth_maps": result.num_depth_maps,
            "fused_points": result.num_fused_points,
            "median_error": float(np.median(e)) if len(e) else None,
            "within_1pct": float(np.mean(e < 0.01)) if len(e) else None,
            "coverage": len(e) / max(total, 1)}


def compare_with_commit(commit: str, images: Path, model: Path, work: Path,
                        max_image_size: int, rounds: int) -> None:
    """Reference (``commit``) and current depth maps in alternating processes."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="mvs-reference-") as tmp:
        # Both sides are snapshots taken now, so editing the checkout during a run is safe.
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "sfmfeat"],
                                 check=True, capture_output=True).stdout
        (Path(tmp) / "reference").mkdir()
        subprocess.run(["tar", "-x", "-C", str(Path(tmp) / "reference")], input=archive,
                       check=True)
        shutil.copytree(repo / "sfmfeat", Path(tmp) / "current" / "sfmfeat",
                        ignore=shutil.ignore_patterns("__pycache__"))
        worker = Path(tmp) / "worker" / "mvs.py"
        worker.parent.mkdir()
        shutil.copy(__file__, worker)
        sides = {"reference": Path(tmp) / "reference", "current": Path(tmp) / "current"}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for i in range(rounds):
            for name, root in sides.items():
                env = dict(os.environ, PYTHONPATH=str(root))
                out = subprocess.run(
                    [sys.executable, str(worker), "--worker", "--images", str(images), "--sfm",
                     str(model), "--work", str(work / name), "--max-image-size",
                     str(max_image_size)], env=env, check=True, capture_output=True, text=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                seconds = runs[name][-1]["depth_seconds"]
                print(f"round {i + 1} {name:9s}: depth maps {seconds:.1f} s", flush=True)
    print(f"\n=== depth maps: {commit} (reference) vs this checkout, {images} at max "
          f"{max_image_size} px, {rounds} alternating rounds ===")
    for name, rs in runs.items():
        r = rs[-1]
        seconds = ", ".join(f"{x['depth_seconds']:.1f}" for x in rs)
        print(f"{name:9s}: depth maps {seconds} s "
              f"({r['num_depth_maps']} maps, {r['backend']}); fused points "
              f"{', '.join(str(x['fused_points']) for x in rs)}; sparse-point agreement: median "
              f"rel. error {100 * r['median_error']:.3f} %, within 1 %: "
              f"{100 * r['within_1pct']:.2f} %, coverage {100 * r['coverage']:.1f} %")
    ref_s = sum(r["depth_seconds"] for r in runs["reference"])
    cur_s = sum(r["depth_seconds"] for r in runs["current"])
    per_round = [a["depth_seconds"] / b["depth_seconds"]
                 for a, b in zip(runs["reference"], runs["current"])]
    print(f"speed-up reference / current: {ref_s / cur_s:.2f}x (per round "
          f"{', '.join(f'{x:.2f}' for x in per_round)})")
    ref, cur = runs["reference"][-1], runs["current"][-1]
    print(f"current / reference: fused points {cur['fused_points'] / ref['fused_points']:.3f}, "
          f"median error {cur['median_error'] / ref['median_error']:.3f}, share within 1 % "
          f"{cur['within_1pct'] / ref['within_1pct']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--sfm", type=Path, help="existing sparse model (default: build one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sfmfeat_mvs_benchmark"))
    parser.add_argument("--max-image-size", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="resume the dense workspaces")
    parser.add_argument("--no-synthetic", action="store_true",
                        help="skip the synthetic scene (exact ground-truth points)")
    parser.add_argument("--reference-commit",
                        help="time the depth maps against this commit's (needs --sfm)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating reference/current rounds of --reference-commit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pycolmap.logging.minloglevel = 2
        print(json.dumps(depth_run(args.images, args.sfm, args.work, args.max_image_size)))
        return
    if args.reference_commit:
        if args.sfm is None:
            parser.error("--reference-commit needs --sfm (a sparse model of --images)")
        compare_with_commit(args.reference_commit, args.images, args.sfm, args.work,
                            args.max_image_size, args.rounds)
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    pycolmap.logging.minloglevel = 2
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.no_synthetic:
        scene = SyntheticScene(SceneConfig())
        syn = args.work / "synthetic"
        if not (syn / "sfm" / "points3D.bin").is_file():
            scene.write_images(syn / "images")
            (syn / "sfm").mkdir(parents=True, exist_ok=True)
            scene.ground_truth_reconstruction(num_points=3000).write(str(syn / "sfm"))
        run("synthetic scene (sparse points = 3000 exact surface points)", syn / "images",
            syn / "sfm", syn / "mvs", args.max_image_size, args.keep)
    if not args.images.is_dir():
        print(f"image folder {args.images} is missing; skipping the real images")
        return
    t0 = time.perf_counter()
    model = args.sfm or sparse_model(args.images, args.work)
    print(f"sparse model: {model} ({time.perf_counter() - t0:.1f} s)")
    run(f"{args.images.name}", args.images, model, args.work / "mvs", args.max_image_size,
        args.keep)


if __name__ == "__main__":
    main()
