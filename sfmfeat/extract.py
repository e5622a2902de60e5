"""Extract local features for a folder of images into a features.h5 store."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, ImageReadError, InputError, StoreError, WeightsError
from .extractors import ExtractorSpec, create_extractor, resolve_spec
from .extractors.base import Extractor
from .features import Features
from .images import list_images, read_image
from .progress import tqdm
from .store import FeatureReader, FeatureWriter, image_fingerprint, same_image_content

if TYPE_CHECKING:
    from .executors import ExecutorConfig

logger = logging.getLogger(__name__)


@dataclass
class ExtractionReport:
    output: Path
    extracted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)         # stored, but the image changed
    rejected: dict[str, str] = field(default_factory=dict)   # name -> reason
    seconds: float = 0.0

    @property
    def valid_names(self) -> list[str]:
        return self.already_done + self.extracted


def extract_features(image_dir: str | Path, output: str | Path, features: str = "sift",
                     image_names: list[str] | None = None,
                     overrides: dict[str, Any] | None = None, device: str | None = None,
                     strict: bool = False, overwrite: bool = False,
                     extractor: Extractor | None = None,
                     checkpoint_every: int = 16,
                     executor: ExecutorConfig | None = None) -> ExtractionReport:
    """Extract ``features`` (a preset name) for every image and store them in ``output``.

    Images already in ``output`` with the same config and the same file content (size and
    BLAKE2b hash, see ``store.image_fingerprint``) are skipped (resumption); an image whose
    file has changed since is re-extracted and listed in ``ExtractionReport.changed``. Unreadable
    images are reported in ``ExtractionReport.rejected`` with their reason, or raise with
    ``strict=True``. Results are made durable every ``checkpoint_every`` images (and at
    least every 20 s), so a killed run loses at most that much work. ``executor``: where to
    extract (default in this process; ``sfmfeat.executors`` for a Ray cluster).
    """
    start = time.perf_counter()
    image_dir = Path(image_dir)
    names = list(image_names) if image_names is not None else list_images(image_dir)
    if not names:
        raise InputError(f"no images to extract in {image_dir}")
    report = ExtractionReport(output=Path(output))
    if executor is not None and executor.kind == "ray":
        from .executors import extract_on_ray

        extract_on_ray(image_dir, names, features, overrides, device, strict, overwrite,
                       executor, report)
        return _finish(report, start, image_dir, names)
    extractor = extractor or create_extractor(features, overrides, device=device)
    with FeatureWriter(output, method=features, config_hash=extractor.config_hash,
                       config=extractor.describe_config(), overwrite=overwrite,
                       spec=extractor.spec, flush_items=checkpoint_every) as writer:
        todo = _images_to_extract(image_dir, names, writer, report)
        in_flight = _images_in_flight(extractor)
        # decode the next image while the current one is being processed; with several
        # images in flight each worker also extracts its own, and this thread writes them
        # in order
        in_worker = extractor if in_flight > 1 else None
        with ThreadPoolExecutor(max_workers=in_flight) as pool:
            tasks = [pool.submit(_load_and_extract, image_dir / name, in_worker)
                     for name in todo[:in_flight]]
            for index, name in enumerate(tqdm(todo, desc=f"extract {features}", unit="img")):
                if index + in_flight < len(todo):
                    tasks.append(pool.submit(_load_and_extract,
                                             image_dir / todo[index + in_flight], in_worker))
                image, error, fingerprint, result = tasks[index].result()
                tasks[index] = None  # release the pixels
                if error is not None:
                    if strict:
                        raise error
                    logger.warning("skipping %s", error)
                    report.rejected[name] = str(error)
                    continue
                if result is None:
                    result = extractor.extract(image)
                _check_features(result, name)
                writer.write(name, result, (image.shape[1], image.shape[0]), fingerprint)
                report.extracted.append(name)
    return _finish(report, start, image_dir, names)


_MAX_IMAGES_IN_FLIGHT = 2   # SIFT holds ~2 GB of pyramids per 3200 px image


def _images_in_flight(extractor: Extractor) -> int:
    """Images extracted at once: 2 for extractors whose work runs outside the GIL
    (``Extractor.concurrent_images``: OpenCV's SIFT, whose serial stretches leave cores
    idle; 2.1 s against 2.55 s for the 10 sacre_coeur images on 2 cores, at twice the peak
    memory), unless OpenCV is held to one thread (``--threads 1``); else 1."""
    if not extractor.concurrent_images:
        return 1
    import cv2

    return max(1, min(_MAX_IMAGES_IN_FLIGHT, cv2.getNumThreads()))


def _finish(report: ExtractionReport, start: float, image_dir: Path,
            names: list[str]) -> ExtractionReport:
    report.seconds = time.perf_counter() - start
    if not report.valid_names:
        raise InputError(f"none of the {len(names)} images in {image_dir} could be read: "
                         + "; ".join(report.rejected.values())[:500])
    return report


def _images_to_extract(image_dir: Path, names: list[str], writer: FeatureWriter,
                       report: ExtractionReport) -> list[str]:
    """The names to (re-)extract: new ones and stored ones whose image file has changed."""
    todo, unknown = [], []
    for name in names:
        if name not in writer:
            todo.append(name)
            continue
        path = image_dir / name
        current = _fingerprint(path) if path.is_file() else None
        stored = writer.stored_fingerprint(name)
        if current is None:  # gone or unreadable: the reader reports it below
            todo.append(name)
        elif same_image_content(stored, current):
            report.already_done.append(name)
        else:
            (report.changed if stored else unknown).append(name)
            todo.append(name)
    if report.already_done:
        logger.info("%d of %d images already extracted", len(report.already_done), len(names))
    if unknown:
        logger.warning("%d stored record(s) carry no image fingerprint (an older sfmfeat made "
                       "them); re-extracting them", len(unknown))
    if report.changed:
        logger.warning("%d stored image(s) changed since their features were extracted; "
                       "re-extracting: %s", len(report.changed),
                       ", ".join(report.changed[:10]) + (" ..." if len(report.changed) > 10
                                                         else ""))
    return todo


def extractor_from_store(store: str | Path | FeatureReader,
                         device: str | None = None) -> Extractor:
    """The extractor that made the features store (a path or an open reader), rebuilt from
    the preset name and overrides it records; refused (StoreError) unless its config hash is
    the store's (checked by ``spec_of_store`` before any network is built)."""
    return spec_of_store(store).build(device)


def spec_of_store(store: str | Path | FeatureReader) -> ExtractorSpec:
    """The validated spec of the extractor that made the features store, without building
    it; a StoreError (one line) when the store records none, when the spec no longer
    resolves (unknown preset, invalid overrides, missing weight file) or when it gives
    another config hash than the store's."""
    if isinstance(store, FeatureReader):
        path, spec, stored_hash = store.path, store.spec, store.config_hash
    else:
        path = store
        with FeatureReader(path) as reader:
            spec, stored_hash = reader.spec, reader.config_hash
    if not isinstance(spec, dict) or not isinstance(spec.get("preset"), str) \
            or not isinstance(spec.get("overrides", {}), dict):
        raise StoreError(f"{path} does not record the extractor that made it (written by "
                         "hand or by an older sfmfeat); pass --features/--conf explicitly")
    spec = {"preset": spec["preset"], "overrides": spec.get("overrides", {})}
    try:
        resolved = resolve_spec(spec["preset"], spec["overrides"])
        found = resolved.config_hash()
    except (ConfigError, WeightsError) as err:
        raise StoreError(f"{path} was made by {spec['preset']} with overrides "
                         f"{spec['overrides']}, which does not resolve here ({err}); "
                         "re-extract it with --overwrite") from None
    if found != stored_hash:
        raise StoreError(
            f"{path} was made by {spec['preset']} with overrides {spec['overrides']} and "
            f"config {stored_hash}, but the same spec gives config {found} "
            "here (other weights or another sfmfeat version): re-extract it with --overwrite")
    return resolved


def _fingerprint(path: Path) -> dict[str, Any] | None:
    try:
        return image_fingerprint(path)
    except OSError:
        return None


def _load(path: Path) -> tuple[np.ndarray | None, ImageReadError | None,
                                dict[str, Any] | None]:
    try:
        return read_image(path), None, _fingerprint(path)
    except ImageReadError as err:
        return None, err, None


def _load_and_extract(path: Path, extractor: Extractor | None):
    """``_load``'s (image, error, fingerprint) and the image's features when ``extractor``
    is given (else None: the caller extracts)."""
    image, error, fingerprint = _load(path)
    features = extractor.extract(image) if extractor is not None and error is None else None
    return image, error, fingerprint, features


def _check_features(features: Features, name: str) -> None:
    if len(features) and not (np.isfinite(features.keypoints).all()
                              and np.isfinite(features.descriptors).all()):
        raise InputError(f"{name}: the extractor produced non-finite keypoints or "
                         "descriptors")
