"""What a model was built from, and the checks that refuse inputs from elsewhere.

``sfmfeat reconstruct`` writes ``sfm/lineage.json`` beside the model: the run id, the
feature and match stores (path, method, config hash) and, per registered image, the
``keypoints_digest`` of its feature record and the BLAKE2b of its image file. ``localize``,
``dense`` and the reconstruction pipeline's own rerun compare their inputs with it; a model
without one (made by COLMAP or an older sfmfeat) gets the cheap check only: the number of
points2D of each image equals its keypoint count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pycolmap

from .atomic import write_text_atomic
from .errors import InputError
from .images import image_size
from .store import FeatureReader, MatchReader, image_fingerprint

LINEAGE_FILE = "lineage.json"


def store_identity(reader: FeatureReader | MatchReader) -> dict[str, str]:
    return {"path": str(reader.path.resolve()), "method": reader.method,
            "config_hash": reader.config_hash}


def write_model_lineage(model_dir: str | Path, run_id: str,
                        reconstruction: pycolmap.Reconstruction, features: FeatureReader,
                        matches: MatchReader) -> Path:
    images = {}
    for image_id in reconstruction.reg_image_ids():
        name = reconstruction.images[image_id].name
        fingerprint = features.fingerprint(name) or {}
        images[name] = {"keypoints_digest": features.keypoints_digest(name),
                        "blake2b": fingerprint.get("blake2b")}
    data = {"run_id": run_id, "features": store_identity(features),
            "matches": store_identity(matches), "images": images}
    path = Path(model_dir) / LINEAGE_FILE
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def read_model_lineage(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / LINEAGE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is unreadable ({err}); delete it or rebuild the model") \
            from None


def check_features_belong_to_model(reconstruction: pycolmap.Reconstruction,
                                   model_dir: Path | None, features: FeatureReader,
                                   source: str) -> None:
    """Refuse, naming both, features that are not those the model's points2D index."""
    lineage = read_model_lineage(model_dir) if model_dir is not None else None
    recorded = (lineage or {}).get("images", {})
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.images[image_id]
        if image.name not in features:
            continue
        expected = recorded.get(image.name, {}).get("keypoints_digest")
        if expected is not None:
            if features.keypoints_digest(image.name) != expected:
                raise InputError(
                    f"the features in {features.path} are not those {source} was built from "
                    f"(image {image.name!r} has other keypoints; the model was built from "
                    f"{lineage['features']['path']}); pass --db-features with those")
            continue
        num_keypoints = len(features.keypoints(image.name))
        if image.num_points2D() != num_keypoints:
            raise InputError(
                f"the features in {features.path} are not those {source} was built from "
                f"(image {image.name!r}: {num_keypoints} keypoints, the model has "
                f"{image.num_points2D()} points2D); pass the features the model was built from")


def check_images_belong_to_model(reconstruction: pycolmap.Reconstruction, model_dir: Path,
                                 image_dir: Path) -> None:
    """Refuse an image folder whose images differ from those the model was made from: other
    pixel sizes than the cameras' (always) or other content than recorded (lineage)."""
    recorded = (read_model_lineage(model_dir) or {}).get("images", {})
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.images[image_id]
        camera = reconstruction.cameras[image.camera_id]
        path = image_dir / image.name
        width, height = image_size(path)
        if (width, height) != (camera.width, camera.height):
            raise InputError(
                f"{path} is {width}x{height} px but the model in {model_dir} has it at "
                f"{camera.width}x{camera.height}; pass the image folder the model was built from")
        expected = recorded.get(image.name, {}).get("blake2b")
        if expected is not None and image_fingerprint(path)["blake2b"] != expected:
            raise InputError(
                f"{path} is not the image the model in {model_dir} was built from (other "
                "content); pass the image folder the model was built from")
