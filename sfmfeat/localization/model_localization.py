"""Localize query images against an SfM model through the model's tracks.

For a query, every match to a retrieved database image whose keypoint observes a 3D
point gives a 2D–3D correspondence; duplicates (the same query keypoint reaching the
same 3D point through several database images) are merged. PnP (LO-RANSAC + refinement,
:mod:`.pose`) gives the pose. With covisibility clustering the retrieved images are split
into groups that share 3D points, each group is tried, and the pose with most inliers
wins. A query that fails gets *no* pose and a reason in its log entry.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..errors import InputError, SfmfeatError
from ..pairs import Pair
from ..progress import tqdm
from ..store import FeatureReader, MatchReader
from .pose import PoseConfig, PoseResult, estimate_pose

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizationConfig:
    pose: PoseConfig = PoseConfig()
    covisibility_clustering: bool = False
    min_matches_per_image: int = 0       # db images with fewer 2D–3D matches are ignored
    estimate_focal_without_prior: bool = True  # queries without a focal prior: P4Pf


class ModelIndex:
    """Array views of a reconstruction for fast 2D–3D lookups (built once per model).

    ``rows(name)[k]`` is the row in ``xyz`` of the 3D point observed by keypoint ``k`` of
    database image ``name``, or -1. Rows index a dense copy of the points.
    """

    def __init__(self, reconstruction: pycolmap.Reconstruction, source: str = "model"):
        self.reconstruction = reconstruction
        if reconstruction.num_points3D() == 0:
            raise InputError(f"{source} has no 3D points: triangulate it first "
                             "(`sfmfeat triangulate`) or use a model from `sfmfeat reconstruct`")
        point_ids = sorted(reconstruction.point3D_ids())
        self.point_ids = np.asarray(point_ids, dtype=np.int64)
        row_of = {pid: row for row, pid in enumerate(point_ids)}
        self.xyz = np.empty((len(point_ids), 3), dtype=np.float64)
        self.image_ids: dict[str, int] = {}
        self._rows: dict[int, np.ndarray] = {}
        for image_id, image in reconstruction.images.items():
            if image.has_pose:
                self.image_ids[image.name] = image_id
                self._rows[image_id] = np.full(image.num_points2D(), -1, dtype=np.int64)
        for pid, point in reconstruction.points3D.items():
            row = row_of[pid]
            self.xyz[row] = point.xyz
            for element in point.track.elements:
                rows = self._rows.get(element.image_id)
                if rows is not None:
                    rows[element.point2D_idx] = row
        self._point_sets: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.image_ids

    def digest(self) -> str:
        """A digest of the points and of which keypoint observes which point."""
        h = hashlib.sha256(self.xyz.tobytes())
        for name, image_id in sorted(self.image_ids.items()):
            h.update(name.encode())
            h.update(self._rows[image_id].tobytes())
        return h.hexdigest()[:16]

    @property
    def names(self) -> list[str]:
        return list(self.image_ids)

    def rows(self, name: str) -> np.ndarray:
        return self._rows[self.image_ids[name]]

    def point_set(self, name: str) -> np.ndarray:
        """Sorted unique rows of the 3D points the image observes."""
        if name not in self._point_sets:
            rows = self.rows(name)
            self._point_sets[name] = np.unique(rows[rows >= 0])
        return self._point_sets[name]


@dataclass
class Correspondences:
    points2D: np.ndarray          # N×2, sfmfeat pixels
    point_rows: np.ndarray        # N, rows of ModelIndex.xyz
    keypoint_idxs: np.ndarray     # N, query keypoint indices
    db_image: np.ndarray          # N, index into db_names (first db image giving it)
    db_names: list[str]
    num_matches: dict[str, int]   # db image -> matches with a 3D point

    def __len__(self) -> int:
        return len(self.point_rows)

    def subset(self, names: Iterable[str]) -> "Correspondences":
        keep_idx = [i for i, n in enumerate(self.db_names) if n in set(names)]
        mask = np.isin(self.db_image, keep_idx)
        return Correspondences(self.points2D[mask], self.point_rows[mask],
                               self.keypoint_idxs[mask], self.db_image[mask], self.db_names,
                               {n: c for n, c in self.num_matches.items() if n in set(names)})


def correspondences_2d3d(index: ModelIndex, query: str, query_keypoints: np.ndarray,
                         db_names: Sequence[str], matches: MatchReader,
                         min_matches_per_image: int = 0) -> Correspondences:
    """2D–3D correspondences of ``query`` through the tracks of its matched db images.

    One correspondence per distinct (query keypoint, 3D point); db images missing from
    the model or without stored matches contribute nothing (logged at debug level).
    """
    keypoint_parts, row_parts, image_parts = [], [], []
    counts: dict[str, int] = {}
    names = []
    for name in db_names:
        if name not in index:
            logger.debug("%s: retrieved image %s is not registered in the model", query, name)
            continue
        if (query, name) not in matches:
            logger.debug("%s: no matches stored with %s", query, name)
            continue
        pair, _ = matches.read(query, name)
        if len(pair) == 0:
            continue
        rows = index.rows(name)
        db_idx = pair[:, 1]
        if db_idx.max(initial=-1) >= len(rows) or pair[:, 0].max(initial=-1) >= len(
                query_keypoints):
            raise InputError(f"matches {query} - {name} index keypoints beyond the model's "
                             "or the query's: the features do not belong to this model")
        point_rows = rows[db_idx]
        valid = point_rows >= 0
        if valid.sum() < max(min_matches_per_image, 1):
            continue
        counts[name] = int(valid.sum())
        keypoint_parts.append(pair[valid, 0].astype(np.int64))
        row_parts.append(point_rows[valid])
        image_parts.append(np.full(int(valid.sum()), len(names), dtype=np.int64))
        names.append(name)
    if keypoint_parts:
        keypoint_idxs = np.concatenate(keypoint_parts)
        point_rows = np.concatenate(row_parts)
        db_image = np.concatenate(image_parts)
        key = keypoint_idxs * len(index.xyz) + point_rows
        _, first = np.unique(key, return_index=True)
        first.sort()
        keypoint_idxs, point_rows, db_image = keypoint_idxs[first], point_rows[first], \
            db_image[first]
    else:
        keypoint_idxs = point_rows = db_image = np.zeros(0, dtype=np.int64)
    points2D = np.asarray(query_keypoints, np.float64)[keypoint_idxs, :2].reshape(-1, 2)
    return Correspondences(points2D, point_rows, keypoint_idxs, db_image, names, counts)


def covisibility_clusters(index: ModelIndex, names: Sequence[str]) -> list[list[str]]:
    """Connected components of ``names`` where an edge means "share a 3D point"; largest
    first (by number of images, then by retrieval order)."""
    remaining = list(names)
    clusters = []
    while remaining:
        seed = remaining.pop(0)
        cluster, frontier = [seed], [seed]
        while frontier:
            current = index.point_set(frontier.pop())
            linked = [n for n in remaining
                      if np.intersect1d(current, index.point_set(n), assume_unique=True).size]
            for name in linked:
                remaining.remove(name)
            cluster.extend(linked)
            frontier.extend(linked)
        clusters.append(cluster)
    clusters.sort(key=len, reverse=True)
    return clusters


@dataclass
class QueryResult:
    name: str
    status: str = "failed"                    # localized | failed | error
    reason: str | None = None
    cam_from_world: pycolmap.Rigid3d | None = None
    num_inliers: int = 0
    num_correspondences: int = 0
    num_retrieved: int = 0
    matched_db_images: dict[str, int] = field(default_factory=dict)
    inliers_per_db_image: dict[str, int] = field(default_factory=dict)
    num_clusters: int = 0
    camera: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def localized(self) -> bool:
        return self.cam_from_world is not None

    def log_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "status": self.status, "reason": self.reason,
            "num_inliers": self.num_inliers, "num_correspondences": self.num_correspondences,
            "num_retrieved": self.num_retrieved,
            "matched_db_images": self.matched_db_images,
            "inliers_per_db_image": self.inliers_per_db_image,
            "num_clusters": self.num_clusters, "camera": self.camera,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }
        if self.cam_from_world is not None:
            entry["cam_from_world"] = self.cam_from_world
        return entry

    @classmethod
    def from_log_entry(cls, name: str, entry: Mapping[str, Any]) -> "QueryResult":
        """The result that wrote ``entry`` (a per-query log entry, see ``log_entry``)."""
        from .results import pose_from_wxyz

        pose = entry.get("cam_from_world")
        return cls(name=name, status=entry["status"], reason=entry.get("reason"),
                   cam_from_world=pose_from_wxyz(pose["qvec_wxyz"], pose["tvec"])
                   if pose else None,
                   num_inliers=entry["num_inliers"],
                   num_correspondences=entry["num_correspondences"],
                   num_retrieved=entry["num_retrieved"],
                   matched_db_images=dict(entry["matched_db_images"]),
                   inliers_per_db_image=dict(entry["inliers_per_db_image"]),
                   num_clusters=entry["num_clusters"], camera=entry.get("camera"),
                   timings=dict(entry["timings"]))


def localize_query(index: ModelIndex, name: str, camera: pycolmap.Camera,
                   query_keypoints: np.ndarray, db_names: Sequence[str],
                   matches: MatchReader, config: LocalizationConfig) -> QueryResult:
    """Localize one query; never raises for a query that simply cannot be localized."""
    result = QueryResult(name=name, num_retrieved=len(db_names),
                         camera=f"{camera.model.name} {camera.width}x{camera.height} "
                                f"{camera.params_to_string()}")
    start = time.perf_counter()
    found = correspondences_2d3d(index, name, query_keypoints, db_names, matches,
                                 config.min_matches_per_image)
    result.timings["2d3d"] = time.perf_counter() - start
    result.matched_db_images = found.num_matches
    result.num_correspondences = len(found)
    pose_config = config.pose
    if config.estimate_focal_without_prior and not camera.has_prior_focal_length:
        from dataclasses import replace

        pose_config = replace(pose_config, estimate_focal_length=True)
    start = time.perf_counter()
    if config.covisibility_clustering:
        groups = covisibility_clusters(index, found.db_names)
        result.timings["2d3d"] += time.perf_counter() - start
        start = time.perf_counter()
        result.num_clusters = len(groups)
        best: tuple[PoseResult | None, Correspondences | None] = (None, None)
        for group in groups:
            part = found.subset(group)
            pose = estimate_pose(part.points2D, index.xyz[part.point_rows], camera,
                                 pose_config)
            if pose is not None and (best[0] is None or pose.num_inliers > best[0].num_inliers):
                best = (pose, part)
        pose, used = best
    else:
        pose = estimate_pose(found.points2D, index.xyz[found.point_rows], camera, pose_config)
        used = found
    result.timings["pnp"] = time.perf_counter() - start
    if pose is None:
        result.reason = (f"no pose: {len(found)} 2D-3D correspondences from "
                         f"{len(found.db_names)} of {len(db_names)} retrieved images"
                         + ("" if len(found) else " (no match reaches a 3D point)"))
        return result
    result.status = "localized"
    result.cam_from_world = pose.cam_from_world
    result.num_inliers = pose.num_inliers
    inlier_images = used.db_image[pose.inlier_mask]
    result.inliers_per_db_image = {used.db_names[i]: int(c) for i, c in
                                   zip(*np.unique(inlier_images, return_counts=True))}
    return result


@dataclass
class LocalizationReport:
    results: dict[str, QueryResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def poses(self) -> dict[str, pycolmap.Rigid3d]:
        return {n: r.cam_from_world for n, r in self.results.items() if r.localized}

    @property
    def failures(self) -> dict[str, str]:
        return {n: r.reason or r.status for n, r in self.results.items() if not r.localized}

    def log(self) -> dict[str, dict[str, Any]]:
        return {n: r.log_entry() for n, r in self.results.items()}

    def summary(self) -> dict[str, Any]:
        localized = [r for r in self.results.values() if r.localized]
        keys = sorted({k for r in self.results.values() for k in r.timings})
        timing = {k: float(np.mean([r.timings[k] for r in self.results.values()
                                    if k in r.timings])) for k in keys}
        return {
            "num_queries": len(self.results), "num_localized": len(localized),
            "num_failed": sum(r.status == "failed" for r in self.results.values()),
            "num_errors": sum(r.status == "error" for r in self.results.values()),
            "median_inliers": float(np.median([r.num_inliers for r in localized]))
            if localized else 0.0,
            "mean_seconds_per_query": timing, "seconds": self.seconds,
        }


def localize(model: pycolmap.Reconstruction | ModelIndex,
             queries: Mapping[str, pycolmap.Camera], retrieval: Mapping[str, Sequence[str]],
             query_features: str | Path | FeatureReader, matches: str | Path | MatchReader,
             config: LocalizationConfig | None = None,
             shared_timings: Mapping[str, float] | None = None,
             progress: bool = True) -> LocalizationReport:
    """Localize every query against ``model``.

    retrieval: query name -> database image names (its pairs). shared_timings: per-query
    amortised seconds of batch steps done outside (e.g. retrieval, matching), copied into
    every query's timings. A query's failure or invalid input is recorded in its result
    and the other queries still run.
    """
    config = config or LocalizationConfig()
    start = time.perf_counter()
    index = model if isinstance(model, ModelIndex) else ModelIndex(model)
    report = LocalizationReport()
    report.seconds["index"] = time.perf_counter() - start
    own_features = not isinstance(query_features, FeatureReader)
    own_matches = not isinstance(matches, MatchReader)
    features = FeatureReader(query_features) if own_features else query_features
    try:
        match_reader = MatchReader(matches) if own_matches else matches
    except SfmfeatError:
        if own_features:
            features.close()
        raise
    start = time.perf_counter()
    try:
        for name, camera in tqdm(queries.items(), desc="localize", unit="query",
                                 disable=not progress):
            try:
                if name not in features:
                    raise InputError(f"query {name!r} has no features in {features.path}")
                db_names = list(retrieval.get(name, ()))
                if not db_names:
                    raise InputError(f"query {name!r} has no database image to match "
                                     "(not in the pairs)")
                result = localize_query(index, name, camera, features.keypoints(name),
                                        db_names, match_reader, config)
            except SfmfeatError as err:
                result = QueryResult(name=name, status="error", reason=str(err))
            result.timings.update(shared_timings or {})
            if not result.localized:
                logger.warning("%s not localized: %s", name, result.reason)
            report.results[name] = result
    finally:
        if own_features:
            features.close()
        if own_matches:
            match_reader.close()
    report.seconds["localize"] = time.perf_counter() - start
    logger.info("localized %d of %d queries", len(report.poses), len(report.results))
    return report


def retrieval_from_pairs(pairs: Iterable[Pair], queries: Iterable[str]) -> dict[str, list[str]]:
    """query -> db names from pairs in either order (``q db`` or ``db q``)."""
    queries = set(queries)
    result: dict[str, list[str]] = {}
    for name0, name1 in pairs:
        if name0 in queries and name1 not in queries:
            result.setdefault(name0, []).append(name1)
        elif name1 in queries and name0 not in queries:
            result.setdefault(name1, []).append(name0)
    return result

