"""Query lists: image names with their intrinsics, or intrinsics from EXIF.

A query list holds one line per query, ``name MODEL width height params...`` (COLMAP
camera model and parameters, e.g. ``query/day/a.jpg SIMPLE_RADIAL 1600 1200 1469 800
600 -0.02``), the format of Aachen's ``*_queries_with_intrinsics.txt``. Database intrinsics
files (``database_intrinsics.txt``) use the same format.

Malformed lines do not stop the others: :func:`read_queries` returns the valid queries
and one message per bad line, naming ``file:line`` (``strict=True`` raises instead).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import InputError
from ..textfiles import quote_name, read_lines, split_fields

logger = logging.getLogger(__name__)


@dataclass
class QueryList:
    cameras: dict[str, pycolmap.Camera] = field(default_factory=dict)  # name -> intrinsics
    errors: dict[str, str] = field(default_factory=dict)  # "file:line" or name -> message
    sources: dict[str, str] = field(default_factory=dict)  # name -> "file:line"

    @property
    def names(self) -> list[str]:
        return list(self.cameras)

    def __len__(self) -> int:
        return len(self.cameras)

    def merge(self, other: QueryList) -> QueryList:
        for name, camera in other.cameras.items():
            if name in self.cameras:
                where = other.sources.get(name, name)
                self.errors[where] = (f"{where}: query {name!r} is listed twice (first at "
                                      f"{self.sources.get(name, '?')}); the first entry is kept")
                logger.error("%s", self.errors[where])
                continue
            self.cameras[name] = camera
            self.sources[name] = other.sources.get(name, name)
        self.errors.update(other.errors)
        return self


def _num_params(model: str) -> int:
    return len(pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1).params)


def parse_camera(fields: list[str]) -> pycolmap.Camera:
    """A camera from ``[MODEL, width, height, params...]``; InputError if malformed."""
    if len(fields) < 3:
        raise InputError("expected 'name MODEL width height params...'")
    model = fields[0]
    try:
        expected = _num_params(model)
    except (ValueError, RuntimeError, TypeError):
        raise InputError(f"unknown camera model {model!r}") from None
    try:
        width, height = int(fields[1]), int(fields[2])
    except ValueError:
        raise InputError(f"width/height must be integers, got {fields[1]!r} {fields[2]!r}"
                         ) from None
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    try:
        params = np.array([float(v) for v in fields[3:]], dtype=np.float64)
    except ValueError:
        raise InputError(f"non-numeric camera parameter in {' '.join(fields[3:])!r}") from None
    if len(params) != expected:
        raise InputError(f"{model} takes {expected} parameters, got {len(params)}")
    if not np.isfinite(params).all():
        raise InputError("camera parameters must be finite")
    camera = pycolmap.Camera.create_from_model_name(0, model, 1.0, width, height)
    camera.params = params
    focal = [camera.params[i] for i in camera.focal_length_idxs()]
    if min(focal) <= 0:
        raise InputError(f"focal length must be positive, got {focal}")
    camera.has_prior_focal_length = True
    return camera


def read_queries(path: str | Path, strict: bool = False) -> QueryList:
    """Read ``name MODEL w h params...`` lines (blank lines and ``#`` comments skipped)."""
    result = QueryList()
    for where, text in read_lines(path, "query list"):
        try:
            fields = split_fields(text)
            if len(fields) < 2:
                raise InputError("expected 'name MODEL width height params...', "
                                 f"got {text!r}")
            camera = parse_camera(fields[1:])
            name = fields[0]
            if name in result.cameras:
                raise InputError(f"query {name!r} is listed twice (first at "
                                 f"{result.sources[name]})")
        except InputError as err:
            message = f"{where}: {err}"
            if strict:
                raise InputError(message) from None
            logger.error("%s", message)
            result.errors[where] = message
            continue
        result.cameras[name] = camera
        result.sources[name] = where
    if not result.cameras and not result.errors:
        raise InputError(f"query list {path} names no query")
    return result


def read_query_lists(paths: Iterable[str | Path], strict: bool = False) -> QueryList:
    """Several lists (e.g. Aachen's day and night files) merged in order."""
    result = QueryList()
    for path in paths:
        result.merge(read_queries(path, strict=strict))
    return result


def queries_from_exif(image_dir: str | Path, names: Iterable[str],
                      model: str = "SIMPLE_RADIAL") -> QueryList:
    """Intrinsics from each image's EXIF focal length (COLMAP's rule: 1.2·max(w, h) and
    ``has_prior_focal_length=False`` when the file has none). Missing or unreadable images
    are reported in ``errors``, not raised."""
    from ..images import image_size
    from ..reconstruction.database import infer_camera

    image_dir = Path(image_dir)
    result = QueryList()
    for name in names:
        path = image_dir / name
        try:
            if not path.is_file():
                raise InputError(f"query image {path} does not exist")
            size = image_size(path)
            camera = infer_camera(path, size, model)
        except InputError as err:
            logger.error("%s", err)
            result.errors[name] = str(err)
            continue
        result.cameras[name] = camera
        result.sources[name] = str(path)
    return result


def write_queries(path: str | Path, cameras: dict[str, pycolmap.Camera]) -> Path:
    """Write a query list (``name MODEL w h params...``) — the inverse of read_queries."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, camera in cameras.items():
        token = quote_name(name)
        params = " ".join(f"{v:.10g}" for v in camera.params)
        lines.append(f"{token} {camera.model.name} {camera.width} {camera.height} {params}\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path
