"""Localization result files and their evaluation against reference poses.

Pose files hold one line per query, ``name qw qx qy qz tx ty tz``: the world-to-camera
rotation (Hamilton quaternion, w first) and translation, COLMAP's ``cam_from_world``.
This is the visuallocalization.net submission format (Aachen, InLoc).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..atomic import write_text_atomic
from ..errors import InputError
from ..textfiles import quote_name, read_records

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
INLOC_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 10.0), (0.5, 10.0), (1.0, 10.0))


def quaternion_wxyz(pose: pycolmap.Rigid3d) -> np.ndarray:
    x, y, z, w = np.asarray(pose.rotation.quat, dtype=np.float64)  # pycolmap stores xyzw
    q = np.array([w, x, y, z])
    return -q if w < 0 else q  # canonical sign: w >= 0


def pose_from_wxyz(qvec: Sequence[float], tvec: Sequence[float]) -> pycolmap.Rigid3d:
    w, x, y, z = (float(v) for v in qvec)
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if not np.isfinite(norm) or norm < 1e-12:
        raise InputError(f"invalid quaternion {list(qvec)}")
    rotation = pycolmap.Rotation3d(np.array([x, y, z, w]) / norm)
    return pycolmap.Rigid3d(rotation, np.asarray(tvec, dtype=np.float64))


def write_poses(path: str | Path, poses: Mapping[str, pycolmap.Rigid3d],
                prepend_camera_name: bool = False) -> Path:
    """Write ``name qw qx qy qz tx ty tz`` lines (world-to-camera), atomically.

    The name is the basename (the submission format), or ``camera/basename`` with
    ``prepend_camera_name`` (the parent folder, as InLoc/RobotCar submissions expect).
    Two queries that would get the same written name raise an InputError.
    """
    path = Path(path)
    lines, written = [], {}
    for name, pose in poses.items():
        parts = name.replace("\\", "/").split("/")
        short = "/".join(parts[-2:]) if prepend_camera_name else parts[-1]
        if short in written:
            raise InputError(f"queries {written[short]!r} and {name!r} would both be written "
                             f"as {short!r} in {path}")
        written[short] = name
        q = quaternion_wxyz(pose)
        t = np.asarray(pose.translation, dtype=np.float64)
        values = " ".join(f"{v:.10g}" for v in (*q, *t))
        lines.append(f"{quote_name(short)} {values}\n")
    write_text_atomic(path, "".join(lines), parents=True)
    return path


def read_poses(path: str | Path) -> dict[str, pycolmap.Rigid3d]:
    """Read a pose file written by :func:`write_poses` (or any 8-field submission file)."""
    poses: dict[str, pycolmap.Rigid3d] = {}
    for where, text, fields in read_records(path, "pose file"):
        if len(fields) != 8:
            raise InputError(f"{where}: expected 'name qw qx qy qz tx ty tz' "
                             f"(8 fields), got {len(fields)}: {text!r}")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise InputError(f"{where}: non-numeric pose values in {text!r}") from None
        if not np.isfinite(values).all():
            raise InputError(f"{where}: non-finite pose values in {text!r}")
        try:
            poses[fields[0]] = pose_from_wxyz(values[:4], values[4:])
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    return poses


def pose_errors(estimate: pycolmap.Rigid3d, reference: pycolmap.Rigid3d
                ) -> tuple[float, float]:
    """(position error in world units, rotation error in degrees) of two world-to-camera
    poses; the position error is the distance between the camera centres."""
    center_estimate = np.asarray(estimate.inverse().translation)
    center_reference = np.asarray(reference.inverse().translation)
    translation_error = float(np.linalg.norm(center_estimate - center_reference))
    r_estimate = np.asarray(estimate.rotation.matrix())
    r_reference = np.asarray(reference.rotation.matrix())
    cos = (np.trace(r_estimate @ r_reference.T) - 1.0) / 2.0
    rotation_error = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return translation_error, rotation_error


def recall(errors: Iterable[tuple[float, float]],
           thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
           total: int | None = None) -> list[float]:
    """Fraction of queries with position error <= t and rotation error <= r, per (t, r).

    ``total`` counts the queries that should have been localized (default: len(errors)):
    a query with no estimate counts as a failure, never as skipped.
    """
    errors = list(errors)
    total = len(errors) if total is None else total
    if total <= 0:
        return [0.0 for _ in thresholds]
    values = np.asarray(errors, dtype=np.float64).reshape(-1, 2)
    return [float(((values[:, 0] <= t) & (values[:, 1] <= r)).sum()) / total
            for t, r in thresholds]


def evaluate(estimates: Mapping[str, pycolmap.Rigid3d],
             references: Mapping[str, pycolmap.Rigid3d],
             thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
             match_basename: bool = True) -> dict[str, Any]:
    """Recall at ``thresholds`` and median errors over every reference query.

    A reference query without an estimate is a failure (infinite error). With
    ``match_basename`` the names are compared by basename when the full names differ
    (submission files store basenames).
    """
    def key(name: str) -> str:
        return name.replace("\\", "/").split("/")[-1] if match_basename else name

    by_key = {key(n): p for n, p in estimates.items()}
    per_query: dict[str, dict[str, float | None]] = {}
    errors = []
    for name, reference in references.items():
        estimate = estimates.get(name, by_key.get(key(name)))
        if estimate is None:
            per_query[name] = {"translation_error": None, "rotation_error_deg": None}
            errors.append((math.inf, math.inf))
            continue
        dt, dr = pose_errors(estimate, reference)
        per_query[name] = {"translation_error": dt, "rotation_error_deg": dr}
        errors.append((dt, dr))
    values = np.asarray(errors, dtype=np.float64).reshape(-1, 2)
    return {
        "num_queries": len(references),
        "num_localized": int(np.isfinite(values[:, 0]).sum()),
        "thresholds": [list(t) for t in thresholds],
        "recall": recall(errors, thresholds),
        "median_translation_error": float(np.median(values[:, 0])) if len(values) else None,
        "median_rotation_error_deg": float(np.median(values[:, 1])) if len(values) else None,
        "per_query": per_query,
    }


def format_recall(summary: Mapping[str, Any]) -> str:
    """One line: ``recall (0.25m,2°)/(0.5m,5°)/(5m,10°): 90.0 / 95.0 / 100.0 %, median ...``."""
    thresholds = "/".join(f"({t:g}m,{r:g}°)" for t, r in summary["thresholds"])
    values = " / ".join(f"{100 * v:.1f}" for v in summary["recall"])
    return (f"recall {thresholds}: {values} % of {summary['num_queries']} queries "
            f"({summary['num_localized']} localized); median error "
            f"{summary['median_translation_error']:.3g} m, "
            f"{summary['median_rotation_error_deg']:.3g}°")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, pycolmap.Rigid3d):
        return {"qvec_wxyz": quaternion_wxyz(value).tolist(),
                "tvec": np.asarray(value.translation).tolist()}
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomic JSON write (numpy values and poses converted, non-finite floats -> null)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(_jsonable(payload), indent=1, sort_keys=False) + "\n",
                      parents=True)
    return path


def write_query_log(path: str | Path, entries: Mapping[str, Mapping[str, Any]],
                    summary: Mapping[str, Any] | None = None) -> Path:
    """The per-query log: ``{"summary": {...}, "queries": {name: {status, inliers, ...}}}``."""
    return write_json(path, {"summary": dict(summary or {}), "queries": dict(entries)})


def read_query_log(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read localization log {path}: {err}") from None


def summary_text(results: Mapping[str, Any], poses_path: str | Path,
                 log_path: str | Path | None = None,
                 evaluation: Mapping[str, Any] | None = None,
                 groups: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """What a localization run prints at the end (every verb and pipeline): the counts,
    one line per query not localized, the mean per-query timings, per-group counts and
    recall (``groups``: e.g. InLoc's floors) and the recall against ground truth.

    results: query -> result (anything with ``localized``, ``status``, ``reason`` and
    ``timings``)."""
    localized = sum(bool(r.localized) for r in results.values())
    lines = [f"localized {localized} of {len(results)} queries -> {poses_path}"
             + (f" (log: {log_path})" if log_path else "")]
    for name, result in results.items():
        if not result.localized:   # most reasons already name the query
            reason = result.reason or result.status
            lines.append(f"  not localized: {reason if name in reason else f'{name}: {reason}'}")
    keys = sorted({k for r in results.values() for k in r.timings})
    if keys:
        lines.append("mean seconds per query: " + ", ".join(
            f"{k} {np.mean([r.timings[k] for r in results.values() if k in r.timings]):.3f}"
            for k in keys))
    for group, entry in (groups or {}).items():
        line = f"{group}: {entry['num_localized']}/{entry['num_queries']} localized"
        if "recall" in entry:
            line += " | recall " + " / ".join(
                f"({t:g}m,{r:g}°) {100 * v:.1f}%"
                for (t, r), v in zip(entry["thresholds"], entry["recall"]))
        lines.append(line)
    if evaluation is not None:
        lines.append(format_recall(evaluation))
    return "\n".join(lines)
