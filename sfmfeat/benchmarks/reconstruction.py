"""The statistics of Schönberger et al. CVPR'17 ("Comparative evaluation of hand-crafted and
learned local features") for several features on the same images, side by side.

Each feature is reconstructed with :func:`sfmfeat.reconstruction.pipeline.reconstruct` into its
own folder; the table is then built *from the files those runs wrote* (``summary.json``, and
``dense/dense.json`` when densified), so every figure in it can be checked against them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..config import config_to_dict
from ..errors import InputError, SfmfeatError

logger = logging.getLogger(__name__)

# (key in the row, column header, format); the order of the CVPR'17 table
COLUMNS = (
    ("num_images", "#images", "{:d}"),
    ("num_registered", "#registered", "{:d}"),
    ("num_points3D", "#sparse points", "{:d}"),
    ("num_observations", "#observations", "{:d}"),
    ("mean_track_length", "track length", "{:.2f}"),
    ("mean_observations_per_image", "obs/image", "{:.1f}"),
    ("mean_reprojection_error", "reproj. error [px]", "{:.3f}"),
    ("num_dense_points", "#dense points", "{:d}"),
    ("num_verified_pairs", "#inlier pairs", "{:d}"),
    ("num_inlier_matches", "#inlier matches", "{:d}"),
)
SUMMARY_KEYS = tuple(key for key, _, _ in COLUMNS if key != "num_dense_points")
DENSE_DIR = "dense"


def read_row(run_dir: str | Path) -> dict[str, Any]:
    """One table row from a run folder: its summary.json and, if any, dense/dense.json."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist: the reconstruction did not finish")
    summary = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; rerun the reconstruction")
    row = {key: summary[key] for key in SUMMARY_KEYS}
    dense = run_dir / DENSE_DIR / "dense.json"
    row["num_dense_points"] = None
    if dense.is_file():
        result = json.loads(dense.read_text(encoding="utf-8")).get("result") or {}
        row["num_dense_points"] = result.get("num_fused_points")
    row["timings"] = summary.get("timings", {})
    return row


def run_feature(image_dir: str | Path, run_dir: str | Path, config, dense: bool = False,
                dense_config=None, image_names: Sequence[str] | None = None,
                device: str | None = None, rerun: bool = False) -> dict[str, Any]:
    """Reconstruct (and optionally densify) the images with ``config`` (a
    ReconstructionConfig); returns the row read back from the files written.

    A finished run with the same config is reused unless ``rerun``.
    """
    from ..reconstruction.pipeline import reconstruct

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    done = (summary_path.is_file() and not rerun and json.loads(
        summary_path.read_text(encoding="utf-8")).get("config") == config_to_dict(config))
    if done:
        logger.info("%s: reusing the finished reconstruction in %s", config.features, run_dir)
    else:
        summary_path.unlink(missing_ok=True)
        reconstruct(image_dir, run_dir, config,
                    image_names=list(image_names) if image_names else None, device=device)
    if dense:
        from ..reconstruction.dense import DenseConfig, densify

        densify(run_dir / "sfm", image_dir, run_dir / DENSE_DIR, dense_config or DenseConfig())
    return read_row(run_dir)


@dataclass(frozen=True)
class BenchmarkResult:
    rows: dict[str, dict[str, Any]]       # feature -> row (absent figures are None)
    failures: dict[str, str]              # feature -> reason


def benchmark(image_dir: str | Path, output_dir: str | Path, features: Sequence[str],
              config, dense: bool = False, dense_config=None,
              image_names: Sequence[str] | None = None, device: str | None = None,
              rerun: bool = False) -> BenchmarkResult:
    """Run every feature on the same images; a feature that fails is reported, not fatal."""
    output_dir = Path(output_dir)
    rows, failed = {}, {}
    for name in features:
        try:
            rows[name] = run_feature(image_dir, output_dir / _folder(name),
                                     replace(config, features=name), dense, dense_config,
                                     image_names, device, rerun)
        except SfmfeatError as error:
            logger.error("%s: %s", name, error)
            failed[name] = str(error)
    if not rows and failed:
        raise InputError("every feature failed: " + "; ".join(f"{k}: {v}"
                                                              for k, v in failed.items()))
    return BenchmarkResult(rows, failed)


def _folder(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in name)


def markdown_table(result: BenchmarkResult) -> str:
    headers = ["features"] + [header for _, header, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
    for name, row in result.rows.items():
        cells = [name] + [_format(row.get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    for name, reason in result.failures.items():
        lines.append("| " + " | ".join([name, f"failed: {reason[:80]}"]
                                       + [""] * (len(COLUMNS) - 1)) + " |")
    return "\n".join(lines) + "\n"


def _format(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    return fmt.format(int(value) if "d" in fmt else float(value))


def to_json(result: BenchmarkResult, output_dir: str | Path) -> dict[str, Any]:
    return {"columns": [{"key": k, "header": h} for k, h, _ in COLUMNS],
            "features": {name: {**row, "run_dir": str(Path(output_dir) / _folder(name))}
                         for name, row in result.rows.items()},
            "failures": result.failures}
