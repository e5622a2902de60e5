"""sfmfeat's default pipelines side by side with hloc's published confs, by pose accuracy.

    python benchmarks/hloc_side_by_side.py --hloc-src DIR --hloc-deps DIR[:DIR] \\
        --set fox [--subset 15] [--pair OURS=HLOC_FEATURES+HLOC_MATCHER ...] [--seed 0]
        [--work DIR] [--json FILE]
    python benchmarks/hloc_side_by_side.py --hloc-src DIR --hloc-deps DIR[:DIR] \\
        map FEATURES MATCHES PAIRS IMAGES OUT [--seed 0 ...]

hloc (cvg/Hierarchical-Localization) is never imported here: ``benchmarks/hloc_worker.py``
runs it in its own process with ``PYTHONPATH`` = ``--hloc-src`` (a checkout; R2D2 needs its
``third_party/r2d2`` submodule with ``models/r2d2_WASF_N16.pt``) and ``--hloc-deps``
(kornia, LightGlue, torchvision, ...). hloc fetches weights through torch hub; the worker's
``TORCH_HOME`` is a folder under ``--work`` whose ``hub/checkpoints`` links the files of
``$SFMFEAT_WEIGHTS_DIR`` under the names kornia and LightGlue look for, so nothing is
downloaded.

Default pairs (our preset default, i.e. ``reconstruct --features X`` with its own matcher,
against hloc's conf as published): disk=disk+NN-mutual, aliked-n16=aliked-n16+NN-mutual,
sift=sift+NN-ratio, r2d2=r2d2+NN-mutual. Each row is run ours then hloc's, alternating, on
the same subset images (``benchmarks/accuracy.py``'s subset), hloc with its
``pairs_from_exhaustive`` and ``reconstruction.main``; both models are scored by
``sfmfeat.evaluation`` against the set's reference poses (similarity-aligned). Wall time
is the whole pipeline (extract, match, verify, map) of each side; the ratio column is
ours / hloc's, measured back to back under the same load.

``--camera-mode single`` (or ``per-image``) gives both sides that camera mode: ours as
``reconstruct --camera-mode``, with whatever our mapper does with it by default (it refines a
shared camera's principal point), hloc's as its ``reconstruction.main(camera_mode=...)`` with
its own mapper defaults. A run in the same ``--work`` as an earlier one reuses both sides'
features and matches (hloc skips what its files hold, ours resumes), so its times are not
the pipelines' times.

``map`` runs hloc's ``reconstruction.main`` alone on given files (e.g. ours written by
``sfmfeat export hloc``), once per ``--seed``, and prints registered images and points.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from accuracy import add_reference_arguments, reference_images, run_case
from seed_spread import Case

from sfmfeat.evaluation import EvaluationConfig, evaluate_poses, registered_poses
from sfmfeat.posefiles import match_names, restrict_to_folder
from sfmfeat.weights import weights_dir

import pycolmap

logger = logging.getLogger("hloc_side_by_side")

WORKER = Path(__file__).with_name("hloc_worker.py")
DEFAULT_PAIRS = ("disk=disk+NN-mutual", "aliked-n16=aliked-n16+NN-mutual",
                 "sift=sift+NN-ratio", "r2d2=r2d2+NN-mutual")
# torch hub file name (as kornia / LightGlue ask for it) -> file under $SFMFEAT_WEIGHTS_DIR
HUB_FILES = {
    "depth-save.pth": "disk/depth-save.pth",
    "aliked-n16.pth": "aliked/aliked-n16.pth",
    "disk_lightglue_v0-1_arxiv.pth": "lightglue/disk_lightglue.pth",
    "aliked_lightglue_v0-1_arxiv.pth": "lightglue/aliked_lightglue.pth",
}


def torch_home(work: Path) -> Path:
    """A TORCH_HOME whose hub cache holds our weight files under hloc's names."""
    home = work / "torch-home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for hub_name, ours in HUB_FILES.items():
        source = weights_dir() / ours
        link = checkpoints / hub_name
        if source.is_file() and not link.exists():
            link.symlink_to(source.resolve())
    return home


def run_hloc(job: dict, src: Path, deps: str, work: Path) -> dict:
    """Run the worker on ``job``; its result with the process's wall time."""
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / "job.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), deps]),
           "TORCH_HOME": str(torch_home(work))}
    start = time.perf_counter()
    with open(out / "hloc.log", "w") as log:
        # -P: benchmarks/ not on the worker's path, where our extract.py would shadow the
        # `extract` module of r2d2 that hloc's R2D2 extractor imports
        done = subprocess.run([sys.executable, "-P", str(WORKER), str(job_path)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=out)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (out / "hloc.log").read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"hloc worker failed ({out / 'hloc.log'}): {' '.join(tail)}")
    result = json.loads((out / "hloc_result.json").read_text())
    result["seconds"] = round(seconds, 1)
    return result


def score_model(sfm_dir: Path, images: Path, reference: dict, seed: int) -> dict:
    model = pycolmap.Reconstruction(str(sfm_dir))
    estimate, ref = match_names(registered_poses(model), restrict_to_folder(reference, images))
    evaluation = evaluate_poses(estimate, ref, EvaluationConfig(seed=seed))
    scale = evaluation.reference_scale
    return {"registered": len(evaluation.errors), "images": evaluation.num_reference,
            "points": model.num_points3D(), "track": float(model.compute_mean_track_length()),
            "rot_median": evaluation.median_rotation_deg, "rot_max": evaluation.max_rotation_deg,
            "pos_median_pct": 100 * evaluation.median_position / scale,
            "pos_max_pct": 100 * evaluation.max_position / scale}


def format_rows(rows: list[dict]) -> str:
    lines = ["| preset | pipeline | reg | points | track | rot med / max (°) "
             "| pos med / max (% scale) | time (s) | ours/hloc time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['pipeline']} | failed: {r['error']} |||||||")
            continue
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else ""
        lines.append(f"| {r['preset']} | {r['pipeline']} | {r['registered']}/{r['images']} | "
                     f"{r['points']} | {r['track']:.2f} | {r['rot_median']:.3f} / "
                     f"{r['rot_max']:.3f} | {r['pos_median_pct']:.2f} / "
                     f"{r['pos_max_pct']:.2f} | {r['seconds']:.0f} | {ratio} |")
    return "\n".join(lines)


def side_by_side(args: argparse.Namespace) -> int:
    images, reference, work = reference_images(args)
    names = sorted(p.name for p in images.iterdir())
    camera_mode = (args.camera_mode or "auto").upper().replace("-", "_")   # pycolmap's name
    rows: list[dict] = []
    for text in args.pair or DEFAULT_PAIRS:
        ours, hloc_conf = text.split("=", 1)
        features_conf, matcher_conf = hloc_conf.split("+", 1)
        try:
            overrides = (("camera_mode", args.camera_mode),) if args.camera_mode else ()
            row = run_case(Case(f"ours-{ours}", ours, overrides=overrides), images,
                           work / f"ours-{ours}", reference, args.seed, args.threads, None)
            row.update(preset=ours, pipeline=f"sfmfeat `--features {ours}`"
                       + (f" `--camera-mode {args.camera_mode}`" if args.camera_mode
                          else " (default)"))
        except Exception as err:  # one failed row must not lose the others
            row = {"preset": ours, "pipeline": "sfmfeat", "error": " ".join(str(err).split())}
        rows.append(row)
        hloc_row = {"preset": ours, "pipeline": f"hloc `{features_conf}` + `{matcher_conf}`"
                    + (f", {camera_mode}" if args.camera_mode else "")}
        try:
            result = run_hloc({"mode": "pipeline", "images": str(images),
                               "out": str(work / f"hloc-{features_conf}-{matcher_conf}"),
                               "seeds": [args.seed], "feature_conf": features_conf,
                               "matcher_conf": matcher_conf, "image_list": names,
                               "camera_mode": camera_mode},
                              args.hloc_src, args.hloc_deps, args.work)
            hloc_row.update(score_model(Path(result["runs"][0]["sfm_dir"]), images,
                                        reference, args.seed), seconds=result["seconds"])
            if "seconds" in row:
                row["ratio"] = row["seconds"] / result["seconds"]
        except Exception as err:
            hloc_row["error"] = " ".join(str(err).split())
        rows.append(hloc_row)
        print(format_rows(rows[-2:]).splitlines()[-2:], flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{args.set or images}: {len(names)} images, seed {args.seed}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(format_rows(rows))
    return 0


def map_only(args: argparse.Namespace) -> int:
    result = run_hloc({"mode": "map", "images": str(args.images), "out": str(args.out),
                       "seeds": args.seed or [0], "features": str(args.features.resolve()),
                       "matches": str(args.matches.resolve()),
                       "pairs": str(args.pairs.resolve())},
                      args.hloc_src, args.hloc_deps, args.work)
    for run in result["runs"]:
        print(f"seed {run['seed']}: {run['registered']} registered, {run['points']} points, "
              f"{run['verified_pairs']} verified pairs, map {run['map_seconds']} s "
              f"({run['sfm_dir']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hloc-src", type=Path, required=True)
    parser.add_argument("--hloc-deps", required=True, help="extra PYTHONPATH entries")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sfmfeat-hloc-side-by-side"))
    sub = parser.add_subparsers(dest="command")
    mapper = sub.add_parser("map", help="hloc's reconstruction.main on given files")
    for name in ("features", "matches", "pairs", "images", "out"):
        mapper.add_argument(name, type=Path)
    mapper.add_argument("--seed", type=int, action="append")
    add_reference_arguments(parser)
    parser.add_argument("--pair", action="append", help="OURS=HLOC_FEATURES+HLOC_MATCHER")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=-1)
    parser.add_argument("--camera-mode", choices=("single", "per-image"),
                        help="both sides' camera mode (default: each pipeline's own, auto)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return map_only(args) if args.command == "map" else side_by_side(args)


if __name__ == "__main__":
    sys.exit(main())
