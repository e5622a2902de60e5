"""InLoc: file formats, 3D lookup, and the pipeline end to end on a miniature dataset.

The miniature dataset has the exact InLoc layout. Two floors (DUC1, DUC2) are two
synthetic scenes (``sfmfeat.synthetic``) with different textures; the even views are the
cut-outs, each scan with its own rigid scan frame: XYZcut holds the rendered world points
moved into the scan frame (v5 .mat for one scan, v7.3/HDF5 for the other) and the
alignment file the scan -> world ``P_after_GICP``. The odd views are the iPhone queries,
rendered with f = 28/36 · width and saved downscaled (the camera must follow the size).
"""

from __future__ import annotations

import json
import math

import cv2
import h5py
import numpy as np
import pycolmap
import pytest
import scipy.io

from sfmfeat.errors import InputError
from sfmfeat.localization import inloc
from sfmfeat.localization.pose import PoseConfig
from sfmfeat.localization.results import pose_errors, read_poses, write_poses
from sfmfeat.synthetic import SceneConfig, SyntheticScene

FLOORS = {"DUC1": 11, "DUC2": 12}          # floor -> scene seed
NUM_VIEWS = 7
QUERY_SCALE = 0.75                          # queries are saved at 480×360


def _rigid(rng) -> np.ndarray:
    q = rng.normal(size=4)
    rotation = pycolmap.Rotation3d(q / np.linalg.norm(q)).matrix()
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = rng.uniform(-20, 20, 3)
    return transform


def _write_alignment(path, transform):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = lambda m: "".join(" ".join(f"{v:.12g}" for v in row) + "\n" for row in m)  # noqa
    path.write_text("-- P_before_GICP --\n" + rows(np.eye(4)) + "\n"
                    "-- P_after_GICP --\n" + rows(transform))


def _write_v73(path, **arrays):
    """A MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, column-major arrays."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for key, value in arrays.items():
            data = handle.create_dataset(key, data=np.asarray(value).transpose())
            data.attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by sfmfeat tests HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM")


def make_inloc(root):
    """Write the miniature dataset; returns ground truth {query name: cam_from_world}."""
    rng = np.random.default_rng(0)
    truth = {}
    pairs = []
    for floor, seed in FLOORS.items():
        scene = SyntheticScene(SceneConfig(seed=seed, num_views=NUM_VIEWS, width=640,
                                           height=480, focal_factor=28 / 36, supersample=1))
        scans = {"024": _rigid(rng), "025": _rigid(rng)}
        cutouts = {}
        for view in range(0, NUM_VIEWS, 2):
            scan = "024" if view < 4 else "025"
            name = (f"database/cutouts/{floor}/{scan}/DUC_cutout_{scan}_{30 * view}_0.jpg")
            rgb, _ = scene.render(view)
            world = scene.render_points(view).astype(np.float64)
            scan_from_world = np.linalg.inv(scans[scan])
            xyz = world @ scan_from_world[:3, :3].T + scan_from_world[:3, 3]
            holes = rng.random(xyz.shape[:2]) < 0.05          # lidar dropouts
            xyz[holes] = np.nan
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            if scan == "024":
                scipy.io.savemat(str(path) + ".mat", {"XYZcut": xyz, "RGBcut": rgb})
            else:
                _write_v73(str(path) + ".mat", XYZcut=xyz)
            cutouts[view] = name
        for scan, transform in scans.items():
            _write_alignment(root / f"database/alignments/{floor}/transformations/"
                                    f"DUC_trans_{scan}.txt", transform)
        for view in range(1, NUM_VIEWS, 2):
            name = f"query/iphone7/IMG_{floor}_{view:02d}.JPG"
            rgb, _ = scene.render(view)
            small = cv2.resize(rgb, None, fx=QUERY_SCALE, fy=QUERY_SCALE,
                               interpolation=cv2.INTER_AREA)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            truth[name] = scene.poses[view]
            pairs += [(name, cutouts[view - 1]), (name, cutouts[view + 1])]
    # a cut-out whose .mat has no XYZcut: its pairs are skipped, its query still localizes
    bad = "database/cutouts/DUC1/026/DUC_cutout_026_0_0.jpg"
    (root / bad).parent.mkdir(parents=True)
    cv2.imwrite(str(root / bad), cv2.imread(str(root / pairs[0][1])))
    scipy.io.savemat(str(root / bad) + ".mat", {"RGBcut": np.zeros((4, 4, 3))})
    _write_alignment(root / "database/alignments/DUC1/transformations/DUC_trans_026.txt",
                     np.eye(4))
    pairs.append((pairs[0][0], bad))
    # a query that is in the pairs but not in the dataset
    pairs.append(("query/iphone7/IMG_missing.JPG", pairs[0][1]))
    (root / "pairs-query.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    write_poses(root / "ground_truth.txt", truth)
    return truth


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("inloc")
    truth = make_inloc(root)
    return root, truth


# --------------------------------------------------------------------------- unit rules

def test_query_camera_follows_the_image_size():
    full = inloc.query_camera(4032, 3024)
    assert full.model.name == "SIMPLE_PINHOLE"
    np.testing.assert_allclose(full.params, [4032 * 28 / 36, 2016, 1512])
    portrait = inloc.query_camera(1512, 2016)
    np.testing.assert_allclose(portrait.params, [2016 * 28 / 36, 756, 1008])


def test_cutout_names_and_alignment_files(tmp_path):
    cut = inloc.parse_cutout("database/cutouts/DUC1/024/DUC_cutout_024_150_-30.jpg")
    assert (cut.floor, cut.building, cut.scan) == ("DUC1", "DUC", "024")
    assert cut.alignment == "database/alignments/DUC1/transformations/DUC_trans_024.txt"
    with pytest.raises(InputError, match="not an InLoc cut-out"):
        inloc.parse_cutout("database/cutouts/DUC1/024/photo.jpg")
    transform = _rigid(np.random.default_rng(1))
    good = tmp_path / "DUC_trans_024.txt"
    _write_alignment(good, transform)
    np.testing.assert_allclose(inloc.read_alignment(good), transform, atol=1e-10)
    bad = tmp_path / "DUC_trans_999.txt"
    bad.write_text(good.read_text().replace(good.read_text().splitlines()[8], "1 2 x 4"))
    with pytest.raises(InputError, match=r"DUC_trans_999\.txt:9"):
        inloc.read_alignment(bad)
    with pytest.raises(InputError, match="does not exist"):
        inloc.read_alignment(tmp_path / "nope.txt")


def test_xyzcut_v5_and_v73_read_the_same(tmp_path):
    xyz = np.random.default_rng(2).normal(size=(5, 7, 3))
    xyz[1, 2] = np.nan
    scipy.io.savemat(tmp_path / "a.jpg.mat", {"XYZcut": xyz})
    _write_v73(tmp_path / "b.jpg.mat", XYZcut=xyz)
    for name in ("a.jpg.mat", "b.jpg.mat"):
        np.testing.assert_array_equal(inloc.read_xyzcut(tmp_path / name),
                                      xyz.astype(np.float32))
    scipy.io.savemat(tmp_path / "c.jpg.mat", {"RGBcut": xyz})
    with pytest.raises(InputError, match=r"c\.jpg\.mat has no XYZcut.*RGBcut"):
        inloc.read_xyzcut(tmp_path / "c.jpg.mat")
    _write_v73(tmp_path / "d.jpg.mat", other=xyz)
    with pytest.raises(InputError, match=r"d\.jpg\.mat has no XYZcut"):
        inloc.read_xyzcut(tmp_path / "d.jpg.mat")


def test_lookup_is_bilinear_with_nearest_fallback():
    h, w = 6, 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xyz = np.stack([xx, yy, xx + 2 * yy], -1)             # linear: bilinear is exact
    kp = np.array([[2.25, 3.5], [0, 0], [7, 5], [6.6, 1.2], [-2, 1], [3, 9]])
    points, valid = inloc.lookup_xyz(xyz, kp)
    np.testing.assert_allclose(points[:4], np.c_[kp[:4], kp[:4, 0] + 2 * kp[:4, 1]],
                               atol=1e-5)
    assert valid.tolist() == [True, True, True, True, False, False]
    xyz[3, 2] = np.nan                                    # a hole next to (2.25, 3.5)
    points, valid = inloc.lookup_xyz(xyz, kp[:1])
    assert valid[0] and np.allclose(points[0], xyz[4, 2])  # nearest pixel (x 2, y 4)
    xyz[4, 2] = np.nan
    assert not inloc.lookup_xyz(xyz, kp[:1])[1][0]


# ---------------------------------------------------------------------------- end to end

def _check_poses(results_path, truth, report):
    poses = read_poses(results_path)
    assert set(poses) == {n.split("/")[-1] for n in truth}
    for name, reference in truth.items():
        dt, dr = pose_errors(poses[name.split("/")[-1]], reference)
        assert dt < 0.05 and dr < 0.5, f"{name}: {dt:.3f} units, {dr:.2f} deg"


@pytest.mark.slow
def test_pipeline_end_to_end_with_pairs_file(dataset, tmp_path, run_seed, figures):
    from pipelines.inloc import InLocRunConfig, main, run

    root, truth = dataset
    out = tmp_path / "out"
    config = inloc.InLocConfig(pose=PoseConfig(max_error=48.0, random_seed=run_seed))
    summary = run(root, out, InLocRunConfig(pairs=root / "pairs-query.txt", features="sift",
                                            ground_truth=root / "ground_truth.txt",
                                            localization=config))
    report = summary["report"]
    results = out / "InLoc_sift+mnn-ratio_pairs-query.txt"
    _check_poses(results, truth, report)
    # DUC1 and DUC2 reported separately, all within (0.25 m, 10°)
    floors = summary["per_floor"]
    assert floors["DUC1"]["num_localized"] == 3 and floors["DUC2"]["num_localized"] == 3
    assert floors["DUC1"]["recall"] == [1.0, 1.0, 1.0] == floors["DUC2"]["recall"]
    # the missing query is an error naming the file; the bad .mat is skipped by name
    missing = report.results["query/iphone7/IMG_missing.JPG"]
    assert missing.status == "error" and "IMG_missing.JPG does not exist" in missing.reason
    first = report.results["query/iphone7/IMG_DUC1_01.JPG"]
    assert first.localized
    figures.check("inliers_DUC1_01", first.num_inliers, ">", 100)
    reason = first.skipped_db_images["database/cutouts/DUC1/026/DUC_cutout_026_0_0.jpg"]
    assert "DUC_cutout_026_0_0.jpg.mat has no XYZcut" in reason
    # every .mat read once, although cut-outs are shared by two queries
    assert summary["mat_files_read"] == 9
    log = json.loads((out / "InLoc_sift+mnn-ratio_pairs-query_log.json").read_text())
    entry = log["queries"]["query/iphone7/IMG_DUC2_03.JPG"]
    assert entry["floor"] == "DUC2"
    figures.check("inliers_DUC2_03", entry["num_inliers"], ">", 100)
    assert {"2d3d", "pnp"} <= set(entry["timings"])
    page = (out / "report.html").read_text()   # the HTML report shows the failed query
    assert "sfmfeat localization report" in page and "IMG_missing.JPG does not exist" in page
    # an empty pairs file: a clear error naming it, exit status 2
    empty = tmp_path / "empty_pairs.txt"
    empty.write_text("\n")
    with pytest.raises(InputError, match=r"empty_pairs\.txt is empty"):
        run(root, out, InLocRunConfig(pairs=empty))
    assert main(["--dataset", str(root), "--outputs", str(out), "--pairs", str(empty)]) == 2


@pytest.mark.slow
def test_pipeline_with_vlad_retrieval(dataset, tmp_path):
    from pipelines.inloc import InLocRunConfig, run

    root, truth = dataset
    out = tmp_path / "out"
    summary = run(root, out, InLocRunConfig(features="sift", retrieval="vlad", num_neighbors=3,
                                            ground_truth=root / "ground_truth.txt"))
    pairs = (out / "pairs-query-vlad3.txt").read_text().split("\n")
    # each query retrieves cut-outs of its own floor first
    by_query = {}
    for line in filter(None, pairs):
        query, cutout = line.split()
        by_query.setdefault(query, []).append(cutout)
    for query, cutouts in by_query.items():
        assert inloc.parse_cutout(cutouts[0]).floor in query
    _check_poses(out / "InLoc_sift+mnn-ratio_vlad3.txt", truth, summary["report"])
    assert summary["per_floor"]["DUC1"]["recall"][0] == 1.0
    assert math.isclose(summary["per_floor"]["DUC2"]["recall"][0], 1.0)
