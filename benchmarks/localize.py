"""Localization figures: leave-one-out accuracy, the night query, and per-query speed.

    python benchmarks/localize.py [--sections loo,night,speed] [--hloc /tmp/official_hloc]
        [--work DIR] [--features sift] [--max-keypoints 8192]

loo    Sacre-Coeur leave-one-out: a reference model from COLMAP's own SIFT (computed here);
       each image localized against a model triangulated with sfmfeat features from the
       other nine. Pass: rotation < 2° and position < 5% of the median camera-to-scene
       distance.
night  query/night.jpg against the day model triangulated with the same features
       (the sift preset, images resized to 1600 px, database pairs matched by mutual NN and
       verified with the known poses; the query matched by mutual NN + ratio 0.8 and 0.9).
speed  A model of >= 10k points triangulated from the synthetic scene (exact poses, SIFT
       per 1280x960 view); 20 database views, 10 query views. Prints the per-query time of each
       step (features, retrieval, matching, 2D–3D, PnP) and, when the official hloc
       checkout is given (``--hloc``, e.g. ``git clone https://github.com/cvg/
       Hierarchical-Localization /tmp/official_hloc``), the ratio of our 2D–3D + PnP time
       to hloc's ``localize_sfm.pose_from_cluster`` on the very same model, features and
       matches (its h5 layout written here), plus both methods' pose errors.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))

from sfmfeat.extract import extract_features  # noqa: E402
from sfmfeat.hloc import export_features, export_matches  # noqa: E402
from sfmfeat.localization.leave_one_out import (colmap_sift_model, leave_one_out,  # noqa: E402
                                                median_scene_distance)
from sfmfeat.localization.pose import PoseConfig  # noqa: E402
from sfmfeat.localization.queries import QueryList, queries_from_exif  # noqa: E402
from sfmfeat.localization.results import pose_errors  # noqa: E402
from sfmfeat.localization.run import LocalizationRunConfig, run_localization  # noqa: E402
from sfmfeat.localization.model_localization import LocalizationConfig  # noqa: E402
from sfmfeat.match import match_pairs  # noqa: E402
from sfmfeat.pairs import exhaustive  # noqa: E402
from sfmfeat.reconstruction.triangulation import (TriangulationConfig,  # noqa: E402
                                                  triangulate_model)
from sfmfeat.store import FeatureReader, MatchReader  # noqa: E402

MAPPING = SHARED / "data/sacre_coeur/mapping"
QUERY = SHARED / "data/sacre_coeur/query"


@functools.lru_cache(maxsize=None)
def _reference(work: Path) -> pycolmap.Reconstruction:
    """The COLMAP SIFT reference model (computed once per run)."""
    return colmap_sift_model(MAPPING, work / "colmap", max_num_features=4096)


def section_loo(work: Path, args) -> None:
    print("\n== leave-one-out on Sacre-Coeur ==")
    start = time.perf_counter()
    reference = _reference(work)
    print(f"reference (COLMAP SIFT 4096, 1024 px): {reference.num_reg_images()} images, "
          f"{reference.num_points3D()} points, {time.perf_counter() - start:.1f} s")
    features = work / f"loo_{args.features}.h5"
    report = extract_features(MAPPING, features, args.features,
                              overrides={"max_keypoints": args.max_keypoints})
    pairs = exhaustive(report.valid_names)
    scale = median_scene_distance(reference)
    for matcher in ("mnn", "mnn-ratio"):
        matches = work / f"loo_{args.features}_{matcher}.h5"
        match_pairs(pairs, features, matches, matcher)
        results = leave_one_out(reference, features, matches, pairs, work / f"loo_{matcher}",
                                localization=LocalizationConfig(
                                    pose=PoseConfig(random_seed=0)),
                                scene_distance=scale)
        print(f"\nfeatures {args.features} (max {args.max_keypoints}), matcher {matcher} "
              f"(triangulation and query), median camera-to-scene distance {scale:.3f}")
        print(f"{'image':28s} {'points':>6s} {'inl/corr':>9s} {'rot °':>7s} {'pos %':>7s} "
              f"{'2D-3D+PnP s':>11s} pass")
        passed = 0
        for r in results:
            ok = (r.localized and r.rotation_error_deg < 2
                  and r.relative_translation_error < 0.05)
            passed += ok
            seconds = r.timings.get("2d3d", 0) + r.timings.get("pnp", 0)
            print(f"{r.name:28s} {r.num_points3D:6d} {r.num_inliers:4d}/"
                  f"{r.num_correspondences:<4d} {r.rotation_error_deg:7.3f} "
                  f"{100 * r.relative_translation_error:7.3f} {seconds:11.3f} "
                  f"{'yes' if ok else 'NO ' + str(r.reason or '')}")
        print(f"LOO ({matcher}): {passed}/{len(results)} within (2°, 5% of scene distance) "
              f"[acceptance >= 9/10]")


def section_night(work: Path, args) -> None:
    print("\n== night query against the day model ==")
    reference = _reference(work)
    conf = {"max_edge": 1600}
    features = work / "night_sift1600.h5"
    report = extract_features(MAPPING, features, "sift", overrides=conf)
    pairs = exhaustive(report.valid_names)
    matches = work / "night_db_mnn.h5"
    match_pairs(pairs, features, matches, "mnn")
    model = triangulate_model(reference, work / "night_model", features, matches, pairs,
                              config=TriangulationConfig(extract_colors=False)).reconstruction
    queries = queries_from_exif(QUERY, ["night.jpg"])
    poses = {}
    for label, ratio in (("mnn + ratio 0.8", 0.8), ("mnn + ratio 0.9", 0.9)):
        out = Path(tempfile.mkdtemp(prefix="night-", dir=work))
        run = run_localization(model, features, QUERY, queries, out,
                               config=LocalizationRunConfig(
                                   features="sift", feature_overrides=conf,
                                   matcher="mnn-ratio", matcher_overrides={"ratio": ratio},
                                   localization=LocalizationConfig(
                                       pose=PoseConfig(random_seed=0))))
        r = run.report.results["night.jpg"]
        print(f"sift preset (max_edge 1600, 8192 kp), db mnn + known-pose verification, "
              f"query {label}: {r.status}, {r.num_inliers} PnP inliers of "
              f"{r.num_correspondences} correspondences, model {model.num_points3D()} points"
              f" [acceptance >= 30 inliers]")
        poses[label] = r.cam_from_world
    if all(p is not None for p in poses.values()):
        dt, dr = pose_errors(*poses.values())
        print(f"agreement of the two night poses: {dt:.4f} "
              f"({100 * dt / median_scene_distance(reference):.2f}% of the scene distance), "
              f"{dr:.3f}°")


def _synthetic_model(work: Path):
    from sfmfeat.pairs import unique_pairs
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    scene = SyntheticScene(SceneConfig(num_views=30, width=1280, height=960, seed=3,
                                       camera_model="SIMPLE_RADIAL", arc_degrees=150,
                                       supersample=1))
    images = work / "synthetic30_1280"
    if not images.is_dir():
        scene.write_images(images)
    views = range(scene.config.num_views)
    db = [v for v in views if v % 3 != 1]
    queries = [v for v in views if v % 3 == 1]
    names = scene.names
    features = work / "synthetic30_1280_sift.h5"
    extract_features(images, features, "sift", image_names=names)
    db_pairs = unique_pairs((names[a], names[b]) for a in db for b in db
                            if a < b and b - a <= 7)
    query_pairs = [(names[q], names[d]) for q in queries for d in db if abs(q - d) <= 7]
    matches = work / "synthetic30_1280_mnn.h5"
    match_pairs(db_pairs + query_pairs, features, matches, "mnn")
    reference = scene.ground_truth_reconstruction()
    for q in queries:
        reference.deregister_frame(reference.images[q + 1].frame_id)
    reference_db = copy.copy(reference)
    model = triangulate_model(reference_db, work / "synthetic_model", features, matches,
                              db_pairs, config=TriangulationConfig(extract_colors=False))
    return scene, names, queries, features, matches, query_pairs, model.reconstruction


def section_speed(work: Path, args) -> None:
    print("\n== speed: 2D–3D + PnP per query on a model of >= 10k points ==")
    scene, names, queries, features, matches, query_pairs, model = _synthetic_model(work)
    print(f"model: {model.num_reg_images()} database views, {model.num_points3D()} points "
          f"(synthetic scene 1280x960, SIFT, mutual NN, known poses)")
    camera = scene.cameras
    qlist = QueryList(cameras={names[q]: camera for q in queries})
    out = Path(tempfile.mkdtemp(prefix="speed-", dir=work))
    run = run_localization(model, features, work / "synthetic30_1280", qlist, out,
                           pairs=query_pairs, config=LocalizationRunConfig(
                               features="sift", matcher="mnn", localization=LocalizationConfig(
                                   pose=PoseConfig(random_seed=0))))
    ours = []
    for q in queries:
        r = run.report.results[names[q]]
        dt, dr = pose_errors(r.cam_from_world, scene.poses[q]) if r.localized else (np.inf,) * 2
        ours.append((r.timings["2d3d"], r.timings["pnp"]))
        print(f"{names[q]}: {r.num_inliers:5d}/{r.num_correspondences:<5d} inliers, "
              + ", ".join(f"{k} {v:.3f}s" for k, v in r.timings.items())
              + f", error {dt:.4f} / {dr:.3f}°")
    print(f"one-off model loading and 2D–3D index: {run.seconds['load_model']:.3f} s")
    ours = np.array(ours)
    per_query = ours.sum(1)
    print(f"ours: 2D–3D {ours[:, 0].mean():.4f} s + PnP {ours[:, 1].mean():.4f} s = "
          f"{per_query.mean():.4f} s per query (max {per_query.max():.4f}) "
          f"[acceptance <= 0.2 s]")
    hloc = _import_hloc(args.hloc)
    if hloc is None:
        print("hloc reference: not available (pass --hloc PATH to an official checkout); "
              "only our figures are printed")
        return
    hfeatures, hmatches = _write_hloc_h5(work, features, matches, names, query_pairs)
    localizer = hloc.QueryLocalizer(model, {"estimation": {"ransac": {"max_error": 12}}})
    db_ids = {im.name: i for i, im in model.images.items()}
    times = []
    pycolmap.set_random_seed(0)
    for q in queries:
        ids = [db_ids[d] for qq, d in query_pairs if qq == names[q] and d in db_ids]
        start = time.perf_counter()
        ret, _ = hloc.pose_from_cluster(localizer, names[q], camera, ids, hfeatures, hmatches)
        times.append(time.perf_counter() - start)
        dt, dr = pose_errors(ret["cam_from_world"], scene.poses[q]) if ret else (np.inf,) * 2
        print(f"hloc {names[q]}: {ret['num_inliers'] if ret else 0} inliers, "
              f"{times[-1]:.3f} s, error {dt:.4f} / {dr:.3f}°")
    print(f"hloc pose_from_cluster: {np.mean(times):.4f} s per query; "
          f"ratio ours/hloc = {per_query.mean() / np.mean(times):.3f}")


def _import_hloc(path: str | None):
    if not path:
        return None
    if not (Path(path) / "hloc/localize_sfm.py").is_file():
        print(f"hloc checkout {path} not found")
        return None
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module("hloc.localize_sfm")
    except ImportError as err:
        print(f"cannot import hloc from {path}: {err}")
        return None


def _write_hloc_h5(work: Path, features: Path, matches: Path, names, pairs):
    """Our stores in hloc's layout (``sfmfeat.hloc``), for hloc's own localizer."""
    hfeatures, hmatches = work / "hloc_features.h5", work / "hloc_matches.h5"
    with FeatureReader(features) as freader, MatchReader(matches) as mreader:
        export_features(freader, hfeatures, names)
        export_matches(mreader, freader, hmatches, pairs)
    return hfeatures, hmatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="loo,night,speed")
    parser.add_argument("--hloc", help="official hloc checkout (for the speed reference)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--features", default="sift")
    parser.add_argument("--max-keypoints", type=int, default=8192)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-localize-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}")
    sections = {"loo": section_loo, "night": section_night, "speed": section_speed}
    for name in args.sections.split(","):
        sections[name.strip()](work, args)


if __name__ == "__main__":
    main()
