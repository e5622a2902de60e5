"""The hloc side of ``benchmarks/hloc_side_by_side.py``: runs in its own process.

Started by that script with ``PYTHONPATH`` set to hloc's source and its dependencies only;
it imports hloc (never sfmfeat) and writes one JSON file. Not a module of the package.

    python benchmarks/hloc_worker.py JOB.json

JOB: ``{"mode": "pipeline"|"map", "images": DIR, "out": DIR, "seeds": [..],
"feature_conf": NAME, "matcher_conf": NAME, "image_list": [..]}`` (pipeline: hloc's
``pairs_from_exhaustive``, ``extract_features``, ``match_features`` then
``reconstruction.main``) or with ``"features"``, ``"matches"``, ``"pairs"`` files
(map: ``reconstruction.main`` only), or ``"mode": "localize"`` with ``"queries"`` (folder),
``"query_list"`` (hloc's ``name MODEL w h params`` file), ``"model"``, ``"features"`` (the
model's images') and the confs: the queries are extracted into ``OUT/query-features.h5``,
matched exhaustively to the model's images into ``OUT/query-matches.h5`` and localized by
``localize_sfm.main`` into ``OUT/poses.txt``. Writes ``OUT/hloc_result.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _map(job: dict, features: Path, matches: Path, pairs: Path, out: Path) -> list[dict]:
    import pycolmap
    from hloc import reconstruction

    runs = []
    for seed in job["seeds"]:
        sfm_dir = out / f"sfm-seed{seed}"
        pycolmap.set_random_seed(seed)  # hloc's verification takes no seed of its own
        start = time.perf_counter()
        model = reconstruction.main(sfm_dir, Path(job["images"]), pairs, features, matches,
                                    camera_mode=getattr(pycolmap.CameraMode,
                                                        job.get("camera_mode", "AUTO")),
                                    image_list=job.get("image_list"),
                                    mapper_options={"random_seed": seed})
        seconds = time.perf_counter() - start
        with pycolmap.Database.open(sfm_dir / "database.db") as db:
            _, geometries = db.read_two_view_geometries()
            matched = db.num_matched_pairs() if hasattr(db, "num_matched_pairs") else None
        runs.append({
            "seed": seed, "sfm_dir": str(sfm_dir), "map_seconds": round(seconds, 2),
            "registered": 0 if model is None else model.num_reg_images(),
            "points": 0 if model is None else model.num_points3D(),
            "track": 0.0 if model is None else float(model.compute_mean_track_length()),
            "verified_pairs": sum(1 for g in geometries if len(g.inlier_matches) > 0),
            "matched_pairs": matched,
        })
    return runs


def _localize(job: dict, out: Path) -> dict:
    import pycolmap
    from hloc import extract_features, localize_sfm, match_features, pairs_from_exhaustive

    queries = Path(job["queries"])
    names = sorted(p.name for p in queries.iterdir())
    model = pycolmap.Reconstruction(job["model"])
    db_names = sorted(image.name for image in model.images.values())
    pairs = out / "pairs-query-exhaustive.txt"
    pairs_from_exhaustive.main(pairs, image_list=names, ref_list=db_names)
    query_features = out / "query-features.h5"
    query_matches = out / "query-matches.h5"
    start = time.perf_counter()
    extract_features.main(extract_features.confs[job["feature_conf"]], queries,
                          feature_path=query_features, image_list=names)
    match_features.main(match_features.confs[job["matcher_conf"]], pairs, query_features,
                        matches=query_matches, features_ref=Path(job["features"]))
    pycolmap.set_random_seed(job["seeds"][0])
    localize_sfm.main(model, Path(job["query_list"]), pairs, query_features, query_matches,
                      out / "poses.txt")
    return {"localize_seconds": round(time.perf_counter() - start, 2), "pairs": str(pairs),
            "query_features": str(query_features), "query_matches": str(query_matches),
            "poses": str(out / "poses.txt")}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"job": job}
    if job["mode"] == "pipeline":
        from hloc import extract_features, match_features, pairs_from_exhaustive

        images = Path(job["images"])
        names = job.get("image_list") or sorted(
            p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        pairs = out / "pairs-exhaustive.txt"
        pairs_from_exhaustive.main(pairs, image_list=names)
        start = time.perf_counter()
        features = extract_features.main(extract_features.confs[job["feature_conf"]], images,
                                         out, image_list=names)
        result["extract_seconds"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        matches = match_features.main(
            match_features.confs[job["matcher_conf"]], pairs, Path(features),
            matches=out / f"{Path(features).stem}_{job['matcher_conf']}_{pairs.stem}.h5")
        result["match_seconds"] = round(time.perf_counter() - start, 2)
        result.update(features=str(features), matches=str(matches), pairs=str(pairs))
    elif job["mode"] == "localize":
        result.update(_localize(job, out))
        (out / "hloc_result.json").write_text(json.dumps(result, indent=1))
        return 0
    else:
        features, matches, pairs = (Path(job[k]) for k in ("features", "matches", "pairs"))
    result["runs"] = _map(job, Path(features), Path(matches), Path(pairs), out)
    (out / "hloc_result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
