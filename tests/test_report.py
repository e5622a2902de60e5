"""The HTML report of a run (``sfmfeat report``), ``sfmfeat show-matches``, and the report
opened in headless Chromium: no JavaScript error, a drawn 3D view, every image listed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from sfmfeat.cli import main
from sfmfeat.report import (HEADER_HEIGHT_PX, REPORT_NAME, VIEW3D_HEIGHT_PX, ReportLimits,
                            draw_pair, write_report)
from sfmfeat.synthetic import write_synthetic_run

# what Chromium itself prints to the console about software WebGL; anything else is the
# page's (or plotly's) and fails the test
BROWSER_NOTES = ("GL Driver Message", "willReadFrequently",
                 "Automatic fallback to software WebGL")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _table_rows(page: str, table_id: str) -> list[list[str]]:
    # the file quotes attributes with ', Chromium's serialised DOM with "
    body = re.search(rf"<table id=['\"]{table_id}['\"]>.*?<tbody>(.*?)</tbody>", page,
                     re.S).group(1)
    return [[unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


# ------------------------------------------------------------------------- bad input

def test_a_folder_that_is_not_a_run_output_is_one_line(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    assert main(["report", str(tmp_path / "photos")]) == 2
    assert "is not an sfmfeat run output" in _one_line_error(capsys)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in _one_line_error(capsys)
    (tmp_path / "photos" / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path / "photos")]) == 2
    assert "cannot read" in _one_line_error(capsys)
    assert not (tmp_path / "photos" / REPORT_NAME).exists()


def test_a_model_without_points_is_one_line(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "run", num_images=4, num_points=50)
    model = pycolmap.Reconstruction(str(run / "sfm"))
    model.delete_all_points2D_and_points3D()
    model.write(str(run / "sfm"))
    assert main(["report", str(run)]) == 2
    assert f"the model in {run / 'sfm'} has no 3D points" in _one_line_error(capsys)
    shutil.rmtree(run / "sfm")
    assert main(["report", str(run)]) == 2
    assert "no sfm/ model folder" in _one_line_error(capsys)


def test_a_report_that_cannot_be_written_after_a_run_is_a_warning(tmp_path, caplog):
    from sfmfeat.report import write_report_after_run

    run = write_synthetic_run(tmp_path / "run", num_images=4, num_points=50)
    assert write_report_after_run(run, tmp_path / "missing" / "r.html") is None
    assert "no report: " in caplog.text and "No such file or directory" in caplog.text
    assert write_report_after_run(tmp_path / "missing") is None
    assert "is not a folder" in caplog.text
    assert not list(tmp_path.rglob(".*.tmp-*"))


def test_limits_are_validated():
    from sfmfeat.errors import ConfigError

    with pytest.raises(ConfigError, match="max_points"):
        ReportLimits(max_points=0)


# ------------------------------------------------------------------------- content

def test_a_big_model_is_capped_with_notes(tmp_path):
    run = write_synthetic_run(tmp_path / "run", num_images=60, num_points=4000)
    page = write_report(run, limits=ReportLimits(max_points=500, max_frusta=12,
                                                 max_matrix_images=25)).read_text()
    assert "500 of 4,000 points drawn" in page
    assert "12 of 60 cameras drawn as frusta" in page
    assert "showing 25 of 60 images" in page
    rows = _table_rows(page, "images")
    assert len(rows) == 60 and all(row[3] == "registered" for row in rows)
    # the synthetic keypoints are the model's points2D: 4000 * 4 observations over 60 images
    assert sum(int(row[1]) for row in rows) == 16000
    assert sum(int(row[2]) for row in rows) == 16000
    # offline: plotly.js is embedded (megabytes), no script or stylesheet is fetched
    assert "Plotly.newPlot" in page and len(page) > 3_000_000
    assert not re.findall(r"<script[^>]*\bsrc=|<link\b", page)


def test_the_3d_view_subsample_keeps_the_cap(tmp_path):
    from sfmfeat.report import _subsample

    assert list(_subsample(5, 10)) == [0, 1, 2, 3, 4]
    picked = _subsample(10_000, 100)
    assert len(picked) == 100 and picked[0] == 0 and picked[-1] == 9999
    assert len(set(picked.tolist())) == 100


def test_draw_pair_colours_inliers_green_and_outliers_red():
    image = np.full((100, 120, 3), 128, np.uint8)
    keypoints0 = np.array([[10.0, 20.0], [10.0, 80.0]])
    keypoints1 = np.array([[50.0, 20.0], [50.0, 80.0]])
    matches = np.array([[0, 0], [1, 1]])
    drawing = draw_pair(image, image, keypoints0, keypoints1, matches,
                        np.array([True, False]))
    assert drawing.shape == (100, 240, 3)
    r, g, b = (int(v) for v in drawing[20, 120])    # middle of the inlier line (y = 20)
    assert g > r + 40 and g > b + 40
    r, g, b = (int(v) for v in drawing[80, 120])    # middle of the outlier line (y = 80)
    assert r > g + 40 and r > b + 40
    assert tuple(drawing[50, 120]) == (128, 128, 128)  # no line in between
    half = draw_pair(image, image, keypoints0, keypoints1, matches, np.array([True, False]),
                     height=50)
    assert half.shape == (50, 120, 3)


def test_show_matches_on_a_synthetic_run(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "run", num_images=5, num_points=200)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        cv2.imwrite(str(images / f"frame_{i:05d}.jpg"), np.full((480, 640, 3), 90, np.uint8))
    out = tmp_path / "pair.png"
    assert main(["show-matches", str(run), "frame_00000.jpg", "frame_00001.jpg",
                 "--images", str(images), "-o", str(out)]) == 0
    drawing = cv2.imread(str(out))
    assert drawing.shape == (480, 1280, 3)
    assert (drawing[:, :, 1] > 150).sum() > 100 and (drawing[:, :, 2] > 150).sum() > 100
    assert main(["show-matches", str(run), "frame_00000.jpg", "nope.jpg",
                 "--images", str(images), "-o", str(out)]) == 2
    assert "has no image 'nope.jpg'" in _one_line_error(capsys)
    assert main(["show-matches", str(run), "frame_00000.jpg", "frame_00001.jpg",
                 "-o", str(out)]) == 2
    assert "pass --images" in _one_line_error(capsys)


# ------------------------------------------------------------------------- runs

@pytest.mark.slow
def test_a_run_with_rejected_and_unregistered_images_shows_them(tmp_path, seed_args):
    from sfmfeat.synthetic import SceneConfig, SyntheticScene

    scene = SyntheticScene(SceneConfig(num_views=5, width=320, height=240, arc_degrees=40))
    images = tmp_path / "images"
    scene.write_images(images)
    (images / "broken.jpg").write_bytes(b"not an image at all")
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "noise.png"), cv2.GaussianBlur(noise, (0, 0), 3))
    out = tmp_path / "out"
    assert main(["-q", "reconstruct", str(images), str(out), "--camera-mode", "per-image",
                 *seed_args]) == 0
    page = (out / REPORT_NAME).read_text()   # written by reconstruct itself
    rows = {row[0]: row for row in _table_rows(page, "images")}
    assert set(rows) == set(scene.names) | {"broken.jpg", "noise.png"}
    assert rows["broken.jpg"][3].startswith("rejected: ")
    assert "not a readable image" in rows["broken.jpg"][3]
    assert rows["noise.png"][3].startswith("not registered")
    assert sum(row[3] == "registered" for row in rows.values()) == 5
    assert "class='bad'" in page
    assert main(["-q", "reconstruct", str(images), str(tmp_path / "quiet"), "--no-report",
                 "--camera-mode", "per-image", *seed_args]) == 0
    assert not (tmp_path / "quiet" / REPORT_NAME).exists()


@pytest.mark.slow
def test_a_localization_with_a_failed_query_shows_it(sift_run, tmp_path, run_seed):
    images, recon = sift_run
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(images / "02928139_3448003521.jpg", queries / "again.jpg")
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(queries / "noise.jpg"), cv2.GaussianBlur(noise, (0, 0), 2))
    out = tmp_path / "loc"
    assert main(["-q", "localize", str(recon), str(queries), str(out),
                 "--seed", str(run_seed)]) == 0
    page = (out / REPORT_NAME).read_text()
    rows = {row[0]: row for row in _table_rows(page, "queries")}
    assert set(rows) == {"again.jpg", "noise.jpg"}
    assert rows["again.jpg"][1] == "localized" and int(rows["again.jpg"][2]) > 100
    assert rows["noise.jpg"][1] != "localized" and rows["noise.jpg"][5]
    assert "localized queries" in page and "inliers" in page
    assert "1 query(ies) not localized" in page
    # the model is drawn: its log records where it came from
    log = json.loads((out / "poses_log.json").read_text())
    assert log["summary"]["inputs"]["model"] == str((recon / "sfm").resolve())
    assert "3D points" in page


# ------------------------------------------------------------------------- browser

def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = ("chromium is not installed (apt-get install -y chromium; see the README's "
               "test command)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def open_in_chromium(page: Path, screenshot: Path, width: int = 1280,
                     height: int = 900) -> tuple[list[str], str]:
    """Load ``page`` in headless Chromium: (console messages of the page, the DOM after its
    scripts ran); the screenshot of the window goes to ``screenshot``."""
    result = subprocess.run(
        [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--enable-unsafe-swiftshader", f"--user-data-dir={screenshot.parent / 'profile'}",
         f"--screenshot={screenshot}", "--dump-dom", f"--window-size={width},{height}",
         "--enable-logging=stderr", "--v=0", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.is_file(), result.stderr[-2000:]
    console = [m.group(1) for m in re.finditer(r":CONSOLE[^\]]*\] \"(.*)\", source:",
                                               result.stderr)]
    return [m for m in console if not any(note in m for note in BROWSER_NOTES)], result.stdout


def drawn_fraction(screenshot: Path) -> float:
    """Share of non-white pixels in the inner part of the 3D view (legend, modebar and the
    borders left out)."""
    image = cv2.imread(str(screenshot))
    top, bottom = HEADER_HEIGHT_PX + 40, HEADER_HEIGHT_PX + VIEW3D_HEIGHT_PX - 80
    inner = image[top:bottom, 150:image.shape[1] - 150].astype(np.int32)
    return float((np.abs(inner - 255).max(axis=2) > 60).mean())


@pytest.mark.slow
def test_sacre_coeur_report_in_headless_chromium(sift_run, tmp_path, figures):
    _, out = sift_run
    report = out / REPORT_NAME   # written by reconstruct itself
    assert report.is_file()
    screenshot = tmp_path / "report.png"
    errors, dom = open_in_chromium(report, screenshot)
    keep = os.environ.get("SFMFEAT_REPORT_SCREENSHOT")  # a copy to look at
    if keep:
        shutil.copy(screenshot, keep)
    assert errors == []
    canvases = re.findall(r"<canvas[^>]*>", dom)
    assert canvases, "plotly drew no WebGL canvas"
    figures.check("drawn_fraction", drawn_fraction(screenshot), ">", 0.002)
    rows = _table_rows(dom, "images")
    names = sorted(p.name for p in sift_run[0].glob("*.jpg"))
    assert sorted(row[0] for row in rows) == names and len(names) == 10
    assert all(row[3] == "registered" for row in rows)
    assert len(re.findall(r"<figure><img [^>]*src=\"data:image/png;base64,", dom)) == 2

    # the checks can fail: a page with a script error and no 3D view
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><header style='height:96px'>x</header><div "
                      "style='height:640px'></div><script>undefinedFunction();</script>"
                      "</body></html>")
    errors, _ = open_in_chromium(broken, tmp_path / "broken.png")
    assert any("undefinedFunction" in e for e in errors)
    assert drawn_fraction(tmp_path / "broken.png") == 0.0
