"""Reconstruction benchmark: the CVPR'17 table is read from each run's own summary.json."""

from __future__ import annotations

import json

import pytest

from sfmfeat.benchmarks.reconstruction import (COLUMNS, SUMMARY_KEYS, BenchmarkResult,
                                               markdown_table, read_row)
from sfmfeat.errors import InputError

SUMMARY = {"num_images": 10, "num_registered": 9, "num_points3D": 1234,
           "num_observations": 5000, "mean_track_length": 4.0519,
           "mean_observations_per_image": 555.55, "mean_reprojection_error": 0.41234,
           "num_verified_pairs": 40, "num_inlier_matches": 9000, "timings": {"total": 3}}


def test_row_and_table_from_files(tmp_path):
    run = tmp_path / "sift"
    (run / "dense").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    row = read_row(run)
    assert row["num_dense_points"] is None
    (run / "dense" / "dense.json").write_text(json.dumps({"result": {"num_fused_points": 777}}))
    row = read_row(run)
    assert {k: row[k] for k in SUMMARY_KEYS} == {k: SUMMARY[k] for k in SUMMARY_KEYS}
    assert row["num_dense_points"] == 777
    table = markdown_table(BenchmarkResult({"sift": row}, {"bad": "no pair verified"}))
    lines = table.strip().splitlines()
    assert lines[0].count("|") == len(COLUMNS) + 2
    assert lines[2] == ("| sift | 10 | 9 | 1234 | 5000 | 4.05 | 555.5 | 0.412 | 777 | 40 | "
                        "9000 |")
    assert lines[3].startswith("| bad | failed: no pair verified")
    with pytest.raises(InputError, match="did not finish"):
        read_row(tmp_path / "missing")
    (run / "summary.json").write_text(json.dumps({"num_images": 3}))
    with pytest.raises(InputError, match="lacks"):
        read_row(run)


@pytest.fixture(scope="module")
def scene_images(tmp_path_factory):
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    folder = tmp_path_factory.mktemp("scene")
    SyntheticScene(SceneConfig(num_views=5, width=400, height=300, arc_degrees=50,
                               texels_per_unit=80)).write_images(folder)
    return folder


@pytest.mark.slow
def test_benchmark_table_matches_summaries(scene_images, tmp_path):
    from pipelines import benchmark_reconstruction as pipeline

    out = tmp_path / "out"
    argv = ["--images", str(scene_images), "--features", "sift,rootsift,no-such-feature",
            "--outputs", str(out), "--seed", "0", "--dense", "--dense-max-image-size", "160"]
    assert pipeline.main(argv) == 1           # one feature failed: reported, not a crash
    data = json.loads((out / "statistics.json").read_text())
    assert "no-such-feature" in data["failures"]
    table = (out / "statistics.md").read_text()
    for name in ("sift", "rootsift"):
        summary = json.loads((out / name / "summary.json").read_text())
        dense = json.loads((out / name / "dense" / "dense.json").read_text())["result"]
        row = data["features"][name]
        assert summary["num_images"] == 5 and summary["num_registered"] == 5
        for key in SUMMARY_KEYS:
            assert row[key] == summary[key], key
        assert row["num_dense_points"] == dense["num_fused_points"] > 0
        line = next(li for li in table.splitlines() if li.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[3]) == summary["num_points3D"]
        assert int(cells[4]) == summary["num_observations"]
        assert float(cells[5]) == pytest.approx(summary["mean_track_length"], abs=5e-3)
        assert float(cells[7]) == pytest.approx(summary["mean_reprojection_error"], abs=5e-4)
        assert int(cells[8]) == dense["num_fused_points"]
        assert int(cells[10]) == summary["num_inlier_matches"]
    # a rerun reuses the finished reconstruction: the same file, the same figures
    stamp = (out / "sift" / "summary.json").stat().st_mtime_ns
    assert pipeline.main(["--images", str(scene_images), "--features", "sift",
                          "--outputs", str(out), "--seed", "0"]) == 0
    assert (out / "sift" / "summary.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "statistics.json").read_text())["features"]["sift"]
    assert {k: again[k] for k in SUMMARY_KEYS} == {k: data["features"]["sift"][k]
                                                    for k in SUMMARY_KEYS}
