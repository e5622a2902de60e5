"""One self-contained HTML page showing a reconstruction or localization run.

``write_report(OUT)`` reads what a run left in its output folder and writes
``OUT/report.html``: a plotly 3D view (points in their colours, camera frusta, localized
queries), the verified-inlier match graph, a per-image (or per-query) table that says why
an image is not registered, track-length and reprojection-error histograms, per-stage
timings, the config with its hash, the versions, and PNG drawings of the strongest and
weakest verified pairs. Every script is embedded: the page works offline.

Run outputs it understands:
- ``sfmfeat reconstruct`` OUT: ``summary.json``, ``sfm/`` (COLMAP model), ``database.db``;
- ``sfmfeat localize`` (and the Aachen / InLoc pipelines) OUT: ``*_log.json``, whose
  summary names the model when it was a folder (else pass ``model=``).
Big models stay usable: points are subsampled, frusta and the match matrix capped, each
with a note on the page. plotly and OpenCV are imported when a report is made, not before.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import ValidatedConfig, at_least
from .atomic import write_text_atomic
from .errors import ReportError, SfmfeatError

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
VIEW3D_ID = "view3d"
HEADER_HEIGHT_PX = 96           # fixed, so the 3D view starts at a known height
VIEW3D_HEIGHT_PX = 640
QUERY_COLOUR = "#e4002b"
CAMERA_COLOUR = "#1f4e9c"


@dataclass(frozen=True)
class ReportLimits(ValidatedConfig):
    """What keeps the page of a 10k-image model small enough for a browser."""

    max_points: int = 50_000          # 3D points drawn (an even subsample beyond)
    max_frusta: int = 2_000           # cameras drawn as frusta (the rest as centres)
    max_matrix_images: int = 200      # rows of the match matrix (the most connected images)
    match_image_height: int = 300     # px of each image in the embedded pair drawings
    max_drawn_matches: int = 300      # lines per kind (inliers, outliers) in a drawing

    rules = {"max_points": at_least(1), "max_frusta": at_least(0),
             "max_matrix_images": at_least(2), "match_image_height": at_least(32),
             "max_drawn_matches": at_least(1)}


@dataclass
class RunData:
    """What a report shows, read from a run's output folder."""

    kind: str                                   # "reconstruction" or "localization"
    run_dir: Path
    summary: dict[str, Any]
    model_dir: Path | None = None
    reconstruction: Any = None                  # pycolmap.Reconstruction
    database: Path | None = None
    image_dir: Path | None = None
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_path: Path | None = None


# ----------------------------------------------------------------------------- loading

def load_run(run_dir: str | Path, log: str | Path | None = None,
             model: str | Path | None = None) -> RunData:
    """Read a run folder; a ReportError (one line) when it is not one or cannot be shown."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a folder; give the output folder of "
                          "`sfmfeat reconstruct` or `sfmfeat localize`")
    if log is None and (run_dir / "summary.json").is_file():
        return _load_reconstruction(run_dir)
    log_path = Path(log) if log is not None else _newest_log(run_dir)
    if log_path is None:
        raise ReportError(f"{run_dir} is not an sfmfeat run output: it has neither "
                          "summary.json (reconstruct) nor a *_log.json (localize)")
    return _load_localization(run_dir, log_path, Path(model) if model else None)


def _newest_log(run_dir: Path) -> Path | None:
    logs = sorted(run_dir.glob("*_log.json"), key=lambda p: p.stat().st_mtime)
    if len(logs) > 1:
        logger.info("%d localization logs in %s; reporting the newest, %s (pick one with "
                    "--log)", len(logs), run_dir, logs[-1].name)
    return logs[-1] if logs else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a JSON object")
    return data


def _read_model(model_dir: Path):
    import pycolmap

    if not all((model_dir / f"{name}.bin").is_file() or (model_dir / f"{name}.txt").is_file()
               for name in ("cameras", "images", "points3D")):
        raise ReportError(f"{model_dir} holds no COLMAP model (cameras, images, points3D)")
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except (ValueError, RuntimeError) as err:
        raise ReportError(f"cannot read the model in {model_dir}: {err}") from None


def _load_reconstruction(run_dir: Path) -> RunData:
    summary = _read_json(run_dir / "summary.json")
    if "num_registered" not in summary:
        raise ReportError(f"{run_dir / 'summary.json'} is not the summary of `sfmfeat "
                          "reconstruct` (no num_registered)")
    model_dir = run_dir / "sfm"
    if not model_dir.is_dir():
        raise ReportError(f"{run_dir} has a summary.json but no sfm/ model folder; rerun "
                          "`sfmfeat reconstruct`")
    reconstruction = _read_model(model_dir)
    if reconstruction.num_points3D() == 0:
        raise ReportError(f"the model in {model_dir} has no 3D points: nothing to show")
    image_dir = summary.get("image_dir")
    database = run_dir / "database.db"
    return RunData("reconstruction", run_dir, summary, model_dir, reconstruction,
                   database if database.is_file() else None,
                   Path(image_dir) if image_dir else None)


def _load_localization(run_dir: Path, log_path: Path, model: Path | None) -> RunData:
    log = _read_json(log_path)
    if not isinstance(log.get("queries"), dict):
        raise ReportError(f"{log_path} is not a localization log (no 'queries')")
    summary = dict(log.get("summary") or {})
    recorded = (summary.get("inputs") or {}).get("model")
    model_dir = model or (Path(recorded) if recorded else None)
    reconstruction = None
    if model_dir is not None:
        if (model_dir / "sfm").is_dir() and not (model_dir / "images.bin").is_file():
            model_dir = model_dir / "sfm"  # the output folder of `sfmfeat reconstruct`
        reconstruction = _read_model(model_dir)
    return RunData("localization", run_dir, summary, model_dir, reconstruction,
                   queries=log["queries"], log_path=log_path)


# ----------------------------------------------------------------------------- geometry

def _subsample(count: int, cap: int) -> np.ndarray:
    """Evenly spread indices of at most ``cap`` of ``count`` items (all when fewer)."""
    if count <= cap:
        return np.arange(count)
    return np.linspace(0, count - 1, cap).round().astype(int)


def _points(reconstruction) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """xyz (N×3), rgb (N×3 uint8), track lengths and reprojection errors of every point."""
    points = reconstruction.points3D
    count = len(points)
    xyz = np.empty((count, 3))
    rgb = np.empty((count, 3), np.uint8)
    tracks = np.empty(count, np.int64)
    errors = np.empty(count)
    for i, point in enumerate(points.values()):
        xyz[i] = point.xyz
        rgb[i] = point.color
        tracks[i] = point.track.length()
        errors[i] = point.error
    return xyz, rgb, tracks, errors


def _frustum_path(center: np.ndarray, world_from_cam: np.ndarray, corners: np.ndarray,
                  depth: float) -> list[np.ndarray]:
    """The polyline of one frustum (apex to the four image corners at ``depth``)."""
    rays = np.hstack([corners, np.ones((4, 1))]) * depth
    c = rays @ world_from_cam.T + center
    nan = np.full(3, np.nan)
    return [c[0], c[1], c[2], c[3], c[0], center, c[1], nan, center, c[2], nan, center, c[3],
            nan]


def _camera_geometry(pose: Any, camera: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, rotation world-from-camera and normalised image corners of a posed camera."""
    rotation = np.asarray(pose.rotation.matrix())
    center = -rotation.T @ np.asarray(pose.translation)
    w, h = camera.width, camera.height
    corners = np.asarray(camera.cam_from_img(
        np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)))
    return center, rotation.T, corners


def _scene_scale(xyz: np.ndarray, centers: np.ndarray) -> float:
    """A frustum depth: 4% of the robust extent of the points and cameras."""
    cloud = np.vstack([xyz.reshape(-1, 3), centers.reshape(-1, 3)])
    if not len(cloud):
        return 0.1
    low, high = np.percentile(cloud, [5, 95], axis=0)
    extent = float(np.linalg.norm(high - low))
    return 0.04 * extent if extent > 0 else 0.1


def _pose_from_log(entry: dict[str, Any]):
    from .localization.results import pose_from_wxyz

    pose = entry.get("cam_from_world")
    if not isinstance(pose, dict):
        return None
    try:
        return pose_from_wxyz(pose["qvec_wxyz"], pose["tvec"])
    except (KeyError, TypeError, ValueError, SfmfeatError):
        return None


def _query_camera(entry: dict[str, Any]):
    """The pycolmap camera of a query log entry ("MODEL WxH p1, p2, ...") or None."""
    import pycolmap

    text = entry.get("camera") or ""
    try:
        model, size, params = text.split(" ", 2)
        width, height = (int(v) for v in size.split("x"))
        values = [float(v) for v in params.replace(",", " ").split()]
        return pycolmap.Camera(model=model, width=width, height=height, params=values)
    except (ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------- figures

def _figure_html(fig, div_id: str, first: bool) -> str:
    import plotly.io as pio

    # plain dicts, not validated graph objects: a third of the report's time otherwise
    return pio.to_html(fig, full_html=False, include_plotlyjs=bool(first), div_id=div_id,
                       validate=False, config={"displaylogo": False, "responsive": True})


def _new_figure() -> dict[str, Any]:
    return {"data": [], "layout": {}}


def _view3d(run: RunData, limits: ReportLimits, xyz: np.ndarray,
            rgb: np.ndarray) -> tuple[Any, list[str]]:
    notes = []
    fig = _new_figure()
    if len(xyz):
        keep = _subsample(len(xyz), limits.max_points)
        if len(keep) < len(xyz):
            notes.append(f"{len(keep):,} of {len(xyz):,} points drawn (an even subsample)")
        colours = [f"rgb({r},{g},{b})" for r, g, b in rgb[keep]]
        fig["data"].append(dict(
            type="scatter3d", x=xyz[keep, 0].astype(np.float32),
            y=xyz[keep, 1].astype(np.float32), z=xyz[keep, 2].astype(np.float32),
            mode="markers", name="3D points", marker={"size": 2, "color": colours},
            hoverinfo="skip"))
    cameras: list[tuple[str, Any, Any, str]] = []  # name, pose, camera, hover
    rec = run.reconstruction
    if rec is not None:
        for image in rec.images.values():
            if image.has_pose:
                cameras.append((image.name, image.cam_from_world(),
                                rec.cameras[image.camera_id],
                                f"{html.escape(image.name)}<br>{image.num_points3D} "
                                "observations"))
    queries = []
    for name, entry in run.queries.items():
        pose, camera = _pose_from_log(entry), _query_camera(entry)
        if pose is not None and camera is not None:
            queries.append((name, pose, camera,
                            f"{html.escape(name)}<br>query: "
                            f"{entry.get('num_inliers', 0)} inliers"))
    centers = np.array([_camera_geometry(p, c)[0] for _, p, c, _ in cameras + queries]
                       ).reshape(-1, 3)
    depth = _scene_scale(xyz, centers)
    for group, colour, label in ((cameras, CAMERA_COLOUR, "cameras"),
                                 (queries, QUERY_COLOUR, "localized queries")):
        if not group:
            continue
        drawn = _subsample(len(group), limits.max_frusta) if limits.max_frusta else []
        if len(drawn) < len(group):
            notes.append(f"{len(drawn):,} of {len(group):,} {label} drawn as frusta, all "
                         "as centres")
        path = []
        for i in drawn:
            _, pose, camera, _ = group[i]
            path += _frustum_path(*_camera_geometry(pose, camera), depth)
        if path:
            lines = np.array(path)
            fig["data"].append(dict(type="scatter3d", x=lines[:, 0], y=lines[:, 1],
                                    z=lines[:, 2], mode="lines",
                                    line={"color": colour, "width": 2},
                                    name=f"{label} (frusta)", hoverinfo="skip"))
        group_centers = np.array([_camera_geometry(p, c)[0] for _, p, c, _ in group])
        fig["data"].append(dict(
            type="scatter3d", x=group_centers[:, 0], y=group_centers[:, 1], z=group_centers[:, 2],
            mode="markers", name=label, marker={"size": 3, "color": colour},
            text=[hover for *_, hover in group], hovertemplate="%{text}<extra></extra>"))
    low, high = _view_box(xyz, centers)
    extent = np.maximum(high - low, 1e-9 * max(float(np.max(high - low)), 1e-9))
    ratio = extent / float(np.prod(extent)) ** (1 / 3)  # box of volume 1: fills the view
    axes = {f"{axis}axis": {"visible": False, "range": [float(low[k]), float(high[k])]}
            for k, axis in enumerate("xyz")}
    fig["layout"].update(
        height=VIEW3D_HEIGHT_PX, margin={"l": 0, "r": 0, "t": 0, "b": 0},
        paper_bgcolor="white", showlegend=True,
        legend={"x": 0.01, "y": 0.01, "bgcolor": "rgba(255,255,255,0.7)"},
        # COLMAP's world is the first camera's frame: y points down; seen from the side
        scene={**axes, "aspectmode": "manual",
               "aspectratio": dict(zip("xyz", map(float, ratio))), "bgcolor": "white",
               "camera": {"up": {"x": 0, "y": -1, "z": 0},
                          "eye": {"x": 1.3, "y": -0.8, "z": -0.6}}})
    return fig, notes


def _view_box(xyz: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box the 3D view opens on: the central 98% of the points and every camera, so
    that a few far-away points do not shrink the model to a dot."""
    parts = [np.percentile(xyz, [1, 99], axis=0)] if len(xyz) else []
    if len(centers):
        parts.append(np.vstack([centers.min(axis=0), centers.max(axis=0)]))
    if not parts:
        return -np.ones(3), np.ones(3)
    low = np.min([p[0] for p in parts], axis=0)
    high = np.max([p[1] for p in parts], axis=0)
    margin = 0.05 * np.maximum(high - low, 1e-6)
    return low - margin, high + margin


def _histogram(values: np.ndarray, title: str, xlabel: str, integer: bool):
    if integer:
        counts = np.bincount(values.astype(np.int64))
        centers = np.arange(len(counts))
        keep = counts > 0
        centers, counts, width = centers[keep], counts[keep], 0.9
    else:
        high = float(np.percentile(values, 99.5)) if len(values) else 1.0
        counts, edges = np.histogram(np.clip(values, 0, high), bins=50, range=(0, high or 1))
        centers, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    fig = _new_figure()
    fig["data"].append(dict(type="bar", x=centers, y=counts, width=width,
                            marker={"color": "#4c72b0"},
                            hovertemplate=f"{xlabel} %{{x}}<br>%{{y}} points<extra></extra>"))
    fig["layout"].update(title={"text": title}, height=320, bargap=0,
                         margin={"l": 50, "r": 10, "t": 40, "b": 40},
                         xaxis={"title": {"text": xlabel}},
                         yaxis={"title": {"text": "points"}})
    return fig


def _timings_figure(timings: dict[str, float], title: str, unit: str = "s"):
    names = [k for k in timings if k != "total"]
    fig = _new_figure()
    fig["data"].append(dict(type="bar", x=[timings[k] for k in names], y=names,
                            orientation="h", marker={"color": "#55a868"},
                            hovertemplate=f"%{{y}}: %{{x:.3f}} {unit}<extra></extra>"))
    fig["layout"].update(title={"text": title}, height=60 + 28 * max(len(names), 1),
                         margin={"l": 160, "r": 10, "t": 40, "b": 40},
                         xaxis={"title": {"text": unit}},
                         yaxis={"autorange": "reversed", "automargin": True})
    return fig


# ----------------------------------------------------------------------------- database

@dataclass
class MatchGraph:
    names: dict[int, str]                                # image id -> name
    inliers: dict[tuple[int, int], int]                  # verified inliers per pair
    raw: dict[tuple[int, int], int]                      # raw matches per pair
    keypoints: dict[int, int]                            # keypoints per image


def read_match_graph(database: Path) -> MatchGraph:
    import pycolmap

    with pycolmap.Database.open(str(database)) as db:
        names = {image.image_id: image.name for image in db.read_all_images()}
        keypoints = {i: int(db.num_keypoints_for_image(i)) for i in names}
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
        inliers = {_pair(pid): int(n) for pid, n in zip(pair_ids, counts)}
        pair_ids, counts = db.read_num_matches()
        raw = {_pair(pid): int(n) for pid, n in zip(pair_ids, counts)}
    return MatchGraph(names, inliers, raw, keypoints)


def _pair(pair_id: int) -> tuple[int, int]:
    import pycolmap

    a, b = pycolmap.pair_id_to_image_pair(pair_id)
    return (int(a), int(b)) if a < b else (int(b), int(a))


def _match_matrix(graph: MatchGraph, limits: ReportLimits):
    degree: dict[int, int] = {i: 0 for i in graph.names}
    for (a, b), n in graph.inliers.items():
        degree[a] = degree.get(a, 0) + n
        degree[b] = degree.get(b, 0) + n
    ids = sorted(graph.names, key=lambda i: graph.names[i])
    note = ""
    if len(ids) > limits.max_matrix_images:
        top = set(sorted(ids, key=lambda i: -degree[i])[:limits.max_matrix_images])
        note = (f"showing {len(top):,} of {len(ids):,} images (those with the most verified "
                "inliers)")
        ids = [i for i in ids if i in top]
    position = {image_id: k for k, image_id in enumerate(ids)}
    size = len(ids)
    inliers = np.zeros((size, size), np.int64)
    raw = np.zeros((size, size), np.int64)
    for table, matrix in ((graph.inliers, inliers), (graph.raw, raw)):
        for (a, b), n in table.items():
            if a in position and b in position:
                matrix[position[a], position[b]] = matrix[position[b], position[a]] = n
    labels = [graph.names[i] for i in ids]
    fig = _new_figure()
    fig["data"].append(dict(
        type="heatmap", z=inliers, x=labels, y=labels, customdata=raw, colorscale="Viridis",
        colorbar={"title": {"text": "inliers"}},
        hovertemplate="%{y} – %{x}<br>raw matches %{customdata}<br>verified inliers "
                      "%{z}<extra></extra>"))
    side = min(900, 200 + 18 * size)
    fig["layout"].update(height=side, width=side + 120, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis={"showticklabels": size <= 40, "scaleanchor": "y",
                                "automargin": True},
                         yaxis={"showticklabels": size <= 40, "autorange": "reversed",
                                "automargin": True})
    return fig, note


# ----------------------------------------------------------------------------- pair drawings

def draw_pair(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray,
              keypoints1: np.ndarray, matches: np.ndarray, inlier: np.ndarray,
              height: int | None = None, max_lines: int | None = None) -> np.ndarray:
    """Two RGB images side by side with their matches: inliers green, outliers red.

    Keypoints are in sfmfeat's pixel convention (centre of the top-left pixel at 0, 0);
    ``height`` rescales both images to that many rows (None: the taller one's);
    ``max_lines`` draws at most that many inliers and as many outliers (evenly spread)."""
    import cv2

    target = height or max(image0.shape[0], image1.shape[0])
    scaled, factors = [], []
    for image in (image0, image1):
        factor = target / image.shape[0]
        size = (max(1, round(image.shape[1] * factor)), target)
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        scaled.append(cv2.resize(image, size, interpolation=interpolation))
        factors.append(factor)
    canvas = np.ascontiguousarray(np.hstack(scaled)[:, :, ::-1])  # BGR for OpenCV
    offset = scaled[0].shape[1]
    xy0 = (keypoints0[matches[:, 0]] + 0.5) * factors[0] - 0.5
    xy1 = (keypoints1[matches[:, 1]] + 0.5) * factors[1] - 0.5
    xy1[:, 0] += offset
    thickness = 1 if target < 600 else 2
    overlay = canvas.copy()
    for is_inlier, colour in ((False, (40, 40, 230)), (True, (60, 200, 40))):
        p0, p1 = xy0[inlier == is_inlier], xy1[inlier == is_inlier]
        keep = _subsample(len(p0), max_lines) if max_lines else np.arange(len(p0))
        for p, q in zip(np.rint(p0[keep]).astype(int), np.rint(p1[keep]).astype(int)):
            cv2.line(overlay, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour,
                     thickness, cv2.LINE_AA)
            for end in (p, q):
                cv2.circle(overlay, (int(end[0]), int(end[1])), thickness + 1, colour, -1,
                           cv2.LINE_AA)
    canvas = cv2.addWeighted(overlay, 0.75, canvas, 0.25, 0)
    return canvas[:, :, ::-1]


def pair_matches(database: Path, name0: str, name1: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints of both images (sfmfeat convention), their raw matches (K×2, column 0 in
    ``name0``) and which are verified inliers, from a run's COLMAP database."""
    import pycolmap

    from .reconstruction.database import from_colmap_keypoints

    with pycolmap.Database.open(str(database)) as db:
        images = {}
        for name in (name0, name1):
            image = db.read_image_with_name(name)
            if image is None:
                raise ReportError(f"{database} has no image {name!r}")
            images[name] = image.image_id
        id0, id1 = images[name0], images[name1]
        keypoints0 = from_colmap_keypoints(np.asarray(db.read_keypoints(id0))[:, :2])
        keypoints1 = from_colmap_keypoints(np.asarray(db.read_keypoints(id1))[:, :2])
        if not db.exists_matches(id0, id1):
            raise ReportError(f"{database} has no matches between {name0!r} and {name1!r}")
        matches = np.asarray(db.read_matches(id0, id1), np.int64).reshape(-1, 2)
        verified = (np.asarray(db.read_two_view_geometry(id0, id1).inlier_matches, np.int64)
                    .reshape(-1, 2) if db.exists_two_view_geometry(id0, id1)
                    else np.zeros((0, 2), np.int64))
    inlier_set = {tuple(row) for row in verified.tolist()}
    inlier = np.array([tuple(row) in inlier_set for row in matches.tolist()], bool)
    return keypoints0, keypoints1, matches, inlier


def render_pair(database: Path, image_dir: Path, name0: str, name1: str,
                height: int | None = None, max_lines: int | None = None
                ) -> tuple[np.ndarray, int, int]:
    """The drawing of one pair of a reconstruction run, with its inlier and match counts."""
    from .images import read_image

    keypoints0, keypoints1, matches, inlier = pair_matches(database, name0, name1)
    try:
        image0, image1 = read_image(image_dir / name0), read_image(image_dir / name1)
    except SfmfeatError as err:
        raise ReportError(f"cannot draw {name0!r} - {name1!r}: {err}") from None
    drawing = draw_pair(image0, image1, keypoints0, keypoints1, matches, inlier, height,
                        max_lines)
    return drawing, int(inlier.sum()), len(matches)


def _png_base64(rgb: np.ndarray) -> str:
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]),
                            [cv2.IMWRITE_PNG_COMPRESSION, 2])  # 3x faster than 6, 5% larger
    if not ok:
        raise ReportError("OpenCV could not encode a PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def _pair_drawings(run: RunData, graph: MatchGraph, limits: ReportLimits) -> str:
    verified = sorted(((n, pair) for pair, n in graph.inliers.items() if n > 0),
                      key=lambda item: (item[0], graph.names[item[1][0]], graph.names[item[1][1]]))
    if not verified:
        return "<p>No verified pair.</p>"
    if run.image_dir is None or not run.image_dir.is_dir():
        where = run.image_dir or "not recorded in summary.json"
        return (f"<p class=note>The image folder ({html.escape(str(where))}) is not "
                "available: no pair drawings. Use <code>sfmfeat show-matches OUT NAME0 NAME1 "
                "--images DIR -o pair.png</code>.</p>")
    chosen = [("strongest", verified[-1])] + ([("weakest", verified[0])]
                                              if len(verified) > 1 else [])
    parts = []
    for label, (_, (a, b)) in chosen:
        name0, name1 = graph.names[a], graph.names[b]
        try:
            drawing, num_inliers, num_matches = render_pair(
                run.database, run.image_dir, name0, name1, limits.match_image_height,
                limits.max_drawn_matches)
        except ReportError as err:
            parts.append(f"<p class=note>{html.escape(str(err))}</p>")
            continue
        caption = (f"{label} verified pair: {html.escape(name0)} – {html.escape(name1)}: "
                   f"{num_inliers} inliers (green) of {num_matches} raw matches "
                   f"({num_matches - num_inliers} outliers, red); at most "
                   f"{limits.max_drawn_matches} lines of each colour drawn")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                     f"{_png_base64(drawing)}'><figcaption>{caption}</figcaption></figure>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- tables

def _table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None,
           table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for k, row in enumerate(rows):
        cls = f" class='{row_classes[k]}'" if row_classes and row_classes[k] else ""
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image_rows(run: RunData, graph: MatchGraph | None) -> tuple[list[list[Any]], list[str]]:
    """One row per image: keypoints, observations, registered or why not."""
    rec = run.reconstruction
    in_model = {image.name: image for image in rec.images.values()}
    keypoints = {name: graph.keypoints[i] for i, name in graph.names.items()} if graph else {}
    verified: dict[str, list[int]] = {}
    if graph:
        for (a, b), n in graph.inliers.items():
            if n > 0:
                for image_id in (a, b):
                    verified.setdefault(graph.names[image_id], []).append(n)
    names = sorted(set(in_model) | set(keypoints))
    rows, classes = [], []
    for name in names:
        image = in_model.get(name)
        registered = image is not None and image.has_pose
        if registered:
            status = "registered"
        else:
            pairs = verified.get(name, [])
            status = (f"not registered: {len(pairs)} verified pairs, at most {max(pairs)} "
                      "inliers; the mapper could not add it" if pairs else
                      "not registered: no verified pair")
        count = keypoints.get(name, image.num_points2D() if image is not None else "")
        rows.append([name, count, image.num_points3D if registered else 0, status])
        classes.append("" if registered else "bad")
    for name, reason in sorted((run.summary.get("rejected_images") or {}).items()):
        rows.append([name, "", "", f"rejected: {reason}"])
        classes.append("bad")
    return rows, classes


def _query_rows(run: RunData) -> tuple[list[list[Any]], list[str]]:
    rows, classes = [], []
    for name, entry in sorted(run.queries.items()):
        status = entry.get("status", "?")
        rows.append([name, status, entry.get("num_inliers", ""),
                     entry.get("num_correspondences", ""), entry.get("num_retrieved", ""),
                     entry.get("reason") or ""])
        classes.append("" if status == "localized" else "bad")
    return rows, classes


# ----------------------------------------------------------------------------- page

_STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 0; color: #222; overflow-x: hidden; }}
header {{ height: {HEADER_HEIGHT_PX}px; box-sizing: border-box; padding: 12px 20px;
         overflow: hidden; border-bottom: 1px solid #ddd; }}
header h1 {{ font-size: 22px; margin: 0 0 6px 0; }}
header p {{ margin: 0; font-size: 14px; white-space: nowrap; overflow: hidden;
            text-overflow: ellipsis; }}
#{VIEW3D_ID} {{ height: {VIEW3D_HEIGHT_PX}px; }}
section {{ padding: 8px 20px; overflow-x: auto; }}
h2 {{ font-size: 18px; border-bottom: 1px solid #eee; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
tr.bad td {{ background: #fdecea; }}
.note {{ color: #8a5a00; font-size: 13px; }}
pre {{ background: #f6f6f6; padding: 8px; font-size: 12px; overflow: auto; max-height: 480px; }}
img {{ max-width: 100%; }}
.row {{ display: flex; flex-wrap: wrap; gap: 16px; }}
"""


def _versions(summary: dict[str, Any]) -> dict[str, str]:
    import cv2
    import plotly
    import pycolmap

    return {"run: sfmfeat": summary.get("version", "?"),
            "run: pycolmap": summary.get("pycolmap_version", "?"),
            "report: sfmfeat": __version__, "report: pycolmap": pycolmap.__version__,
            "report: plotly": plotly.__version__, "report: numpy": np.__version__,
            "report: opencv": cv2.__version__, "report: python": platform.python_version()}


def _json_block(data: Any) -> str:
    return f"<pre>{html.escape(json.dumps(data, indent=2, ensure_ascii=False, default=str))}</pre>"


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
            + "\n".join(sections) + "</body></html>\n")


def _notes(notes: list[str]) -> str:
    return "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)


def _reconstruction_page(run: RunData, limits: ReportLimits) -> str:
    s = run.summary
    xyz, rgb, tracks, errors = _points(run.reconstruction)
    graph = read_match_graph(run.database) if run.database else None
    view, notes = _view3d(run, limits, xyz, rgb)
    unregistered = s.get("num_images", 0) - s.get("num_registered", 0)
    if unregistered:
        notes.append(f"{unregistered} image(s) not registered (no pose to draw): see the table")
    rows, classes = _image_rows(run, graph)
    sections = [f"<div id='{VIEW3D_ID}-section'>{_figure_html(view, VIEW3D_ID, True)}</div>",
                f"<section>{_notes(notes)}<h2>Images ({len(rows)})</h2>"
                + _table(["image", "keypoints", "observations", "status"], rows, classes,
                         "images") + "</section>"]
    if graph is not None:
        matrix, note = _match_matrix(graph, limits)
        sections.append("<section><h2>Match graph: verified inliers per pair</h2>"
                        + _notes([note] if note else [])
                        + _figure_html(matrix, "matchgraph", False) + "</section>")
        sections.append("<section><h2>Matches of the strongest and weakest verified pairs"
                        "</h2>" + _pair_drawings(run, graph, limits) + "</section>")
    else:
        sections.append("<section><p class=note>No database.db in the run folder: no match "
                        "graph and no pair drawings.</p></section>")
    sections.append(
        "<section><h2>Tracks and errors</h2><div class=row>"
        + _figure_html(_histogram(tracks, "track length", "images per point", True),
                       "tracks", False)
        + _figure_html(_histogram(errors, "reprojection error (the last bar holds the top "
                                  "0.5 %)", "px", False), "errors", False)
        + "</div></section>")
    sections.append(_details_section(s, s.get("timings") or {}, "per-stage timings"))
    subtitle = (f"{run.run_dir} · registered {s.get('num_registered')}/{s.get('num_images')} "
                f"· {s.get('num_points3D')} points · track {s.get('mean_track_length', 0):.2f} "
                f"· reprojection {s.get('mean_reprojection_error', 0):.3f} px · "
                f"{s.get('config', {}).get('features', '?')} + "
                f"{s.get('config', {}).get('matcher', '?')} · seed {s.get('seed', '?')}")
    return _page("sfmfeat reconstruction report", subtitle, sections)


def _details_section(summary: dict[str, Any], timings: dict[str, float], title: str) -> str:
    parts = ["<section>"]
    if timings:
        chart = _figure_html(_timings_figure(timings, title), "timings", False)
        parts.append(f"<h2>Timings</h2>{chart}")
        parts.append(_table(["stage", "seconds"], [[k, v] for k, v in timings.items()]))
    if "config_hash" in summary:
        digest = html.escape(str(summary["config_hash"]))
        parts.append(f"<h2>Config</h2><p>config hash <code>{digest}</code></p>"
                     + _json_block(summary.get("config", {})))
    versions = _versions(summary)
    parts.append("<h2>Versions</h2>" + _table(["component", "version"],
                                              [[k, v] for k, v in versions.items()]))
    parts.append("<h2>Summary</h2>" + _json_block(summary) + "</section>")
    return "".join(parts)


def _localization_page(run: RunData, limits: ReportLimits) -> str:
    s = run.summary
    xyz = rgb = np.zeros((0, 3))
    if run.reconstruction is not None:
        xyz, rgb, _, _ = _points(run.reconstruction)
    view, notes = _view3d(run, limits, xyz, rgb)
    if run.reconstruction is None:
        notes.append("the model is not known (not recorded in the log): only the query "
                     "cameras are drawn; pass --model to draw it")
    failed = [n for n, e in run.queries.items() if e.get("status") != "localized"]
    if failed:
        notes.append(f"{len(failed)} query(ies) not localized (no pose to draw): see the table")
    rows, classes = _query_rows(run)
    sections = [f"<div id='{VIEW3D_ID}-section'>{_figure_html(view, VIEW3D_ID, True)}</div>",
                f"<section>{_notes(notes)}<h2>Queries ({len(rows)})</h2>"
                + _table(["query", "status", "inliers", "2D-3D correspondences",
                          "retrieved", "reason"], rows, classes, "queries") + "</section>"]
    if s.get("evaluation"):
        sections.append("<section><h2>Evaluation</h2>" + _json_block(s["evaluation"])
                        + "</section>")
    timings = dict(s.get("mean_seconds_per_query") or {})
    sections.append(_details_section(s, timings, "mean seconds per query"))
    localized = len(run.queries) - len(failed)
    subtitle = (f"{run.log_path} · localized {localized} of {len(run.queries)} queries · "
                f"model {run.model_dir or 'not recorded'}")
    return _page("sfmfeat localization report", subtitle, sections)


def write_report(run_dir: str | Path, output: str | Path | None = None, *,
                 log: str | Path | None = None, model: str | Path | None = None,
                 limits: ReportLimits = ReportLimits()) -> Path:
    """Write the HTML report of the run in ``run_dir`` to ``output`` (default
    ``run_dir/report.html``) and return its path. ``log``: the localization log to show
    when the folder has several; ``model``: the model a localization ran against when its
    log does not name it."""
    if importlib.util.find_spec("plotly") is None:
        raise ReportError("the report needs plotly: pip install plotly")
    start = time.perf_counter()
    run = load_run(run_dir, log, model)
    page = (_reconstruction_page if run.kind == "reconstruction" else _localization_page)(
        run, limits)
    path = Path(output) if output is not None else run.run_dir / REPORT_NAME
    write_text_atomic(path, page)
    logger.info("report (%s, %.1f MB) in %.2f s -> %s", run.kind, len(page) / 1e6,
                time.perf_counter() - start, path)
    return path


def write_report_after_run(run_dir: str | Path, output: str | Path | None = None,
                           **kwargs: Any) -> Path | None:
    """``write_report`` at the end of a run: a report that cannot be made or written (a
    full disk included) is a warning, not a failure: the run's results stand."""
    try:
        return write_report(run_dir, output, **kwargs)
    except SfmfeatError as err:
        logger.warning("no report: %s", err)
    except OSError as err:
        from .cli import describe_os_error

        logger.warning("no report: %s", describe_os_error(err))
    return None

