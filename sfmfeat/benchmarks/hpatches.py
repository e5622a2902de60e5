"""HPatches sequences: the D2-Net matching protocol and homography-estimation accuracy.

Protocol (Dusmanu et al. 2019, ``hpatches_sequences/`` of mihaidusmanu/d2-net):

- ``hpatches-sequences-release`` minus the 8 high-resolution sequences
  (:data:`EXCLUDED_SEQUENCES`): 52 ``i_`` (illumination) + 56 ``v_`` (viewpoint) sequences;
- image 1 of every sequence against images 2..6, mutual nearest neighbours on L2-normalised
  descriptors (largest dot product), keypoints of image 1 warped with ``H_1_k``;
- per pair, the fraction of matches whose reprojection error is <= t px, t = 1..15; a pair
  with no match has the single error ``inf`` (it scores 0 but still counts);
- MMA(t) = the sum of those fractions over the pairs of a kind / the number of such pairs.

Failures are counted as the protocol counts a pair without matches: a missing or unreadable
image, a missing or malformed homography file or an image with no keypoint makes each affected
pair score 0 (error ``inf``) and is listed with its reason; nothing is skipped.

The cache layout is the published one (``np.save`` of ``[i_err, v_err, [seq_type, n_feats,
n_matches]]``): ``i_err``/``v_err`` map each threshold (int64) to the summed per-pair
accuracies; ``seq_type`` has one letter per pair, ``n_feats`` one count per image (image 1
then 2..6 for every sequence) and ``n_matches`` one count per pair. Caches published by
D2-Net, R2D2, DISK and image-matching-toolbox load with :func:`load_cache`.

Homography accuracy (not in the D2-Net notebook; the SuperPoint/LightGlue style): a homography
is fitted to the matches with OpenCV's RANSAC (``cv2.findHomography(..., cv2.RANSAC)``), the
four image-1 corners (0,0), (W,0), (W,H), (0,H) are mapped with it and with the ground truth,
and the mean corner distance is the error (``inf`` when fewer than 4 matches or no model).
Reported: the AUC of the error curve up to 1/3/5 px and the fraction of pairs within them.

Coordinates: keypoints are used as sfmfeat stores them (pixel centres at integers).
"""

from __future__ import annotations

import dataclasses

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from ..atomic import atomic_path
from ..errors import InputError, SfmfeatError
from ..features import Features

logger = logging.getLogger(__name__)

EXCLUDED_SEQUENCES = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
                      "v_artisans", "v_astronautis", "v_talent")
THRESHOLDS = tuple(range(1, 16))           # px; the published caches hold these
PLOT_THRESHOLDS = tuple(range(1, 11))      # px; the published figures show these
AUC_THRESHOLDS = (1, 3, 5)                 # px, homography corner error
TARGET_INDICES = (2, 3, 4, 5, 6)
IMAGE_EXTENSION = "ppm"
KINDS = ("i", "v")


@dataclass(frozen=True)
class HomographyConfig:
    """``cv2.findHomography`` with RANSAC (deterministic: OpenCV seeds it internally)."""
    ransac_threshold: float = 3.0   # px
    max_iterations: int = 10000
    confidence: float = 0.9999


# ------------------------------------------------------------------------------ dataset

def image_name(sequence: str, index: int) -> str:
    return f"{sequence}/{index}.{IMAGE_EXTENSION}"


def homography_name(sequence: str, index: int) -> str:
    return f"{sequence}/H_1_{index}"


def list_sequences(dataset_dir: str | Path, exclude: Iterable[str] = EXCLUDED_SEQUENCES
                   ) -> tuple[list[str], list[str]]:
    """Sorted ``i_*``/``v_*`` sequence folders of ``dataset_dir`` and the excluded ones found."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(f"HPatches folder {root} does not exist; pass the "
                         "hpatches-sequences-release folder")
    excluded = set(exclude)
    names = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and p.name[:2] in ("i_", "v_"))
    kept = [n for n in names if n not in excluded]
    dropped = [n for n in names if n in excluded]
    if not kept:
        raise InputError(f"{root} holds no i_* or v_* sequence folder; pass the "
                         "hpatches-sequences-release folder")
    return kept, dropped


def read_homography(path: str | Path) -> np.ndarray:
    """The 3×3 matrix of an ``H_1_k`` text file; InputError naming the fault otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: homography file missing")
    try:
        values = np.array(path.read_text(encoding="utf-8").split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: not a text file of numbers") from None
    if values.size != 9 or not np.isfinite(values).all():
        raise InputError(f"{path}: expected 9 finite numbers (a 3×3 homography), "
                         f"found {values.size}")
    matrix = values.reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-12:
        raise InputError(f"{path}: singular homography")
    return matrix


def write_homography(path: str | Path, matrix: np.ndarray) -> None:
    """Write a 3×3 matrix as HPatches does: three lines of three numbers."""
    matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    Path(path).write_text("".join(" ".join(f"{v:.10g}" for v in row) + "\n" for row in matrix),
                          encoding="utf-8")


# ------------------------------------------------------------------------------ geometry

def warp_points(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    projected = np.concatenate([points, np.ones((len(points), 1))], 1) @ homography.T
    return projected[:, :2] / projected[:, 2:]


def match_errors(keypoints0: np.ndarray, keypoints1: np.ndarray, matches: np.ndarray,
                 homography: np.ndarray) -> np.ndarray:
    """Reprojection error (px) of each match (index into keypoints0, index into keypoints1)."""
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return np.zeros(0)
    warped = warp_points(keypoints0[matches[:, 0], :2], homography)
    return np.linalg.norm(keypoints1[matches[:, 1], :2] - warped, axis=1)


def pair_accuracy(errors: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Fraction of matches within each threshold; 0 everywhere for a pair without matches
    (its single error is ``inf``, as in the protocol)."""
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        errors = np.array([np.inf])
    return np.array([np.mean(errors <= t) for t in thresholds])


def corner_error(estimate: np.ndarray | None, truth: np.ndarray, width: int,
                 height: int) -> float:
    """Mean distance of the four image corners mapped by ``estimate`` and by ``truth``."""
    if estimate is None:
        return float("inf")
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.linalg.norm(warp_points(corners, estimate) - warp_points(corners, truth),
                               axis=1).mean()
    return float(error) if np.isfinite(error) else float("inf")


def estimate_homography(points0: np.ndarray, points1: np.ndarray,
                        config: HomographyConfig = HomographyConfig()) -> np.ndarray | None:
    """RANSAC homography from matched points, or None with fewer than 4 matches / no model."""
    if len(points0) < 4:
        return None
    matrix, _ = cv2.findHomography(np.asarray(points0, np.float64),
                                   np.asarray(points1, np.float64), cv2.RANSAC,
                                   config.ransac_threshold, maxIters=config.max_iterations,
                                   confidence=config.confidence)
    if matrix is None or not np.isfinite(matrix).all():
        return None
    return matrix


def error_auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS
              ) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by it (0..1).

    Errors are sorted, the recall of the k-th is k/N and the curve starts at (0, 0); ``inf``
    errors (failures) never enter the area but count in N.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64).reshape(-1))
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    recall = np.arange(errors.size + 1) / errors.size
    errors = np.concatenate([[0.0], errors])
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        x = np.concatenate([errors[:last], [t]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / t))
    return aucs


# ------------------------------------------------------------------------------ evaluation

@dataclass
class PairOutcome:
    sequence: str
    index: int                       # target image 2..6
    num_matches: int
    errors: np.ndarray               # per-match reprojection error, px
    corner_error: float              # homography estimate, px (inf = failure)
    failure: str | None = None       # why the pair scored nothing, when it did not run

    @property
    def kind(self) -> str:
        return self.sequence[0]


@dataclass
class SequenceOutcome:
    name: str
    num_features: list[int]          # images 1..6
    pairs: list[PairOutcome] = field(default_factory=list)


FeatureSource = Callable[[str], Features]   # image name -> Features; raises on failure


def evaluate_sequences(dataset_dir: str | Path, sequences: Sequence[str],
                       read_features: FeatureSource,
                       match: Callable[[Features, Features], np.ndarray],
                       homography: HomographyConfig = HomographyConfig(),
                       top_k: int | None = None,
                       progress: Callable[[Iterable], Iterable] = iter) -> list[SequenceOutcome]:
    """Match image 1 against 2..6 in each sequence and measure every pair.

    ``read_features(name)`` returns the Features of an image or raises an SfmfeatError (e.g.
    the image could not be read); ``match(features0, features1)`` returns K×2 index pairs
    (descriptors L2-normalised first).
    """
    root = Path(dataset_dir)
    outcomes = []
    for sequence in progress(sequences):
        if sequence[0] not in KINDS:
            raise InputError(f"sequence {sequence!r}: the name must start with i_ or v_")
        features: dict[int, Features | None] = {}
        reasons: dict[int, str] = {}
        for index in (1, *TARGET_INDICES):
            try:
                feats = read_features(image_name(sequence, index)).top_k(top_k)
                features[index] = feats
                if len(feats) == 0:
                    reasons[index] = f"{image_name(sequence, index)}: no keypoint"
            except (SfmfeatError, OSError) as error:   # each names the image at fault
                features[index] = None
                reasons[index] = str(error)
        outcome = SequenceOutcome(sequence, [0 if f is None else len(f)
                                             for f in features.values()])
        size = _image_size(root / image_name(sequence, 1))
        for index in TARGET_INDICES:
            outcome.pairs.append(_evaluate_pair(root, sequence, index, features, reasons,
                                                match, homography, size))
        outcomes.append(outcome)
    return outcomes


def _image_size(path: Path) -> tuple[int, int] | None:
    from ..images import image_size

    try:
        return image_size(path)
    except (InputError, OSError):
        return None


def _evaluate_pair(root: Path, sequence: str, index: int, features: dict,
                   reasons: dict[int, str], match, config: HomographyConfig,
                   size: tuple[int, int] | None) -> PairOutcome:
    failures = [reasons[i] for i in (1, index) if i in reasons]
    try:
        truth = read_homography(root / homography_name(sequence, index))
    except InputError as error:
        truth = None
        failures.append(str(error))
    f0, f1 = features[1], features[index]
    if truth is None or f0 is None or f1 is None or not len(f0) or not len(f1):
        return PairOutcome(sequence, index, 0, np.zeros(0), float("inf"),
                           "; ".join(failures) or "no features")
    f0 = dataclasses.replace(f0, descriptors=_unit(f0.descriptors))
    f1 = dataclasses.replace(f1, descriptors=_unit(f1.descriptors))
    matches = np.asarray(match(f0, f1), dtype=np.int64).reshape(-1, 2)
    errors = match_errors(f0.keypoints, f1.keypoints, matches, truth)
    estimate = estimate_homography(f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]],
                                   config) if len(matches) else None
    failure = "; ".join(failures) or (None if len(matches) else "no match")
    error = corner_error(estimate, truth, *size) if size else float("inf")
    return PairOutcome(sequence, index, len(matches), errors, error, failure)


def _unit(descriptors: np.ndarray) -> np.ndarray:
    """L2-normalised rows: the protocol's MNN uses the dot product of unit descriptors."""
    norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
    return (descriptors / np.maximum(norms, 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------ cache

def build_cache(outcomes: Sequence[SequenceOutcome],
                thresholds: Sequence[int] = THRESHOLDS) -> np.ndarray:
    """The published cache object: ``[i_err, v_err, [seq_type, n_feats, n_matches]]``."""
    sums = {kind: np.zeros(len(thresholds)) for kind in KINDS}
    seq_type, n_feats, n_matches = [], [], []
    for outcome in outcomes:
        n_feats.extend(outcome.num_features)
        for pair in outcome.pairs:
            sums[pair.kind] += pair_accuracy(pair.errors, thresholds)
            seq_type.append(pair.kind)
            n_matches.append(pair.num_matches)
    errs = [{np.int64(t): np.float64(s) for t, s in zip(thresholds, sums[kind])}
            for kind in KINDS]
    cache = np.empty(3, dtype=object)   # np.array() of this ragged tuple fails on numpy >= 1.24
    cache[0], cache[1] = errs
    cache[2] = [np.array(seq_type, dtype="<U1"), np.array(n_feats, dtype=np.int64),
                np.array(n_matches, dtype=np.int64)]
    return cache


def save_cache(path: str | Path, cache: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path, parents=True) as tmp:
        np.save(tmp, cache, allow_pickle=True)
    return path


def load_cache(path: str | Path) -> tuple[dict, dict, list[np.ndarray]]:
    """Read a cache in the published layout; InputError naming what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cache {path} does not exist")
    try:
        data = np.load(path, allow_pickle=True)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"{path}: not a readable .npy cache ({error})") from None
    try:
        i_err, v_err, stats = data
        seq_type, n_feats, n_matches = (np.asarray(x) for x in stats)
    except (TypeError, ValueError):
        raise InputError(f"{path}: expected [i_err, v_err, [seq_type, n_feats, n_matches]] "
                         "(the D2-Net HPatches cache layout)") from None
    if not isinstance(i_err, dict) or not isinstance(v_err, dict):
        raise InputError(f"{path}: i_err and v_err must be dicts threshold -> summed accuracy")
    if len(seq_type) != len(n_matches):
        raise InputError(f"{path}: {len(seq_type)} pair types but {len(n_matches)} match "
                         "counts")
    return i_err, v_err, [seq_type, n_feats, n_matches]


def summarize_cache(cache, thresholds: Sequence[int] = THRESHOLDS) -> dict:
    """MMA per threshold for i, v and overall, and the feature / match counts."""
    i_err, v_err, (seq_type, n_feats, n_matches) = cache
    seq_type = np.asarray(seq_type).astype(str)
    n_matches = np.asarray(n_matches, dtype=np.float64)
    n_feats = np.asarray(n_feats, dtype=np.float64)
    pairs = {kind: int(np.sum(seq_type == kind)) for kind in KINDS}
    total = pairs["i"] + pairs["v"]
    thresholds = [t for t in thresholds if t in i_err and t in v_err]

    def ratio(values: list[float], count: int) -> list[float]:
        return [float(v / count) if count else 0.0 for v in values]

    i_sum = [float(i_err[t]) for t in thresholds]
    v_sum = [float(v_err[t]) for t in thresholds]
    return {
        "thresholds": [int(t) for t in thresholds],
        "mma": {"overall": ratio([a + b for a, b in zip(i_sum, v_sum)], total),
                "i": ratio(i_sum, pairs["i"]), "v": ratio(v_sum, pairs["v"])},
        "num_pairs": {"overall": total, **pairs},
        "num_sequences": {k: v // len(TARGET_INDICES) for k, v in pairs.items()},
        "features": {"mean": float(n_feats.mean()) if n_feats.size else 0.0,
                     "min": int(n_feats.min()) if n_feats.size else 0,
                     "max": int(n_feats.max()) if n_feats.size else 0},
        "matches": {"overall": float(n_matches.sum() / total) if total else 0.0,
                    **{kind: float(n_matches[seq_type == kind].sum() / pairs[kind])
                       if pairs[kind] else 0.0 for kind in KINDS}},
    }


def homography_summary(outcomes: Sequence[SequenceOutcome],
                       thresholds: Sequence[float] = AUC_THRESHOLDS) -> dict:
    """AUC of the corner error and the fraction of pairs within each threshold, i/v/overall."""
    errors = {kind: [p.corner_error for o in outcomes for p in o.pairs if p.kind == kind]
              for kind in KINDS}
    errors["overall"] = errors["i"] + errors["v"]
    result = {"thresholds": list(thresholds), "method": "cv2.findHomography RANSAC"}
    for kind in ("overall", "i", "v"):
        values = np.asarray(errors[kind], dtype=np.float64)
        result[kind] = {
            "auc": error_auc(values, thresholds),
            "accuracy": [float(np.mean(values <= t)) if values.size else 0.0
                         for t in thresholds],
            "failures": int(np.sum(~np.isfinite(values))),
        }
    return result


def failures(outcomes: Sequence[SequenceOutcome]) -> list[dict]:
    return [{"sequence": o.name, "pair": f"1-{p.index}", "reason": p.failure}
            for o in outcomes for p in o.pairs if p.failure]


# ------------------------------------------------------------------------------ one method

@dataclass
class MethodResult:
    name: str
    outcomes: list[SequenceOutcome]
    cache: np.ndarray
    rejected_images: dict[str, str]
    extraction_seconds: float

    def summary(self) -> dict:
        return {**summarize_cache(self.cache), "homography": homography_summary(self.outcomes),
                "failures": failures(self.outcomes), "rejected_images": self.rejected_images}


def evaluate_method(dataset_dir: str | Path, sequences: Sequence[str], features: str,
                    features_path: str | Path, matcher: str = "mnn",
                    overrides: dict | None = None, matcher_overrides: dict | None = None,
                    top_k: int | None = None, homography: HomographyConfig = HomographyConfig(),
                    device: str | None = None, extractor=None) -> MethodResult:
    """Extract ``features`` for every image of ``sequences`` (resuming from ``features_path``)
    and run the protocol. ``extractor`` replaces the preset's extractor (e.g. in tests)."""
    from ..progress import tqdm

    from ..extract import extract_features
    from ..matchers import create_matcher
    from ..store import FeatureReader

    names = [image_name(s, i) for s in sequences for i in (1, *TARGET_INDICES)]
    report = extract_features(dataset_dir, features_path, features, image_names=names,
                              overrides=overrides, device=device, extractor=extractor)
    for name, reason in report.rejected.items():
        logger.warning("%s: %s; its pairs count as failures", name, reason)
    model = create_matcher(matcher, matcher_overrides, device=device, features_method=features)

    with FeatureReader(features_path) as reader:
        def read(name: str) -> Features:
            if name in report.rejected:
                raise InputError(report.rejected[name])
            return reader.read(name)

        outcomes = evaluate_sequences(
            dataset_dir, sequences, read, lambda f0, f1: model.match(f0, f1)[0],
            homography=homography, top_k=top_k,
            progress=lambda items: tqdm(items, desc=f"hpatches {features}", unit="seq"))
    return MethodResult(features, outcomes, build_cache(outcomes), dict(report.rejected),
                        report.seconds)
