"""Real image sets with reference poses, placed outside the repository for accuracy tuning.

    python benchmarks/reference_sets.py list
    python benchmarks/reference_sets.py place fox [--source GIT_DIR] [--cache DIR]

Each set comes from a public GitHub repository at a fixed commit. ``--source`` is a git
directory holding that commit (a clone, or a bare mirror); without it the script looks for
``/work/.mirror/<owner>+<name>/repo`` and else clones the repository (needs network). The
images and a ``reference_poses.txt`` (``name qw qx qy qz tx ty tz``, world-to-camera, read
by ``sfmfeat evaluate``) land in ``CACHE/<set>/`` (default ``~/.cache/sfmfeat-references``)
with a ``SOURCE.md`` naming the origin, the licence and the kind of reference. Nothing
here is ever copied into the repository. The Sacre-Coeur test images are not a reference
set: they are judged independently.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from sfmfeat.cli import run_guarded, setup_logging
from sfmfeat.errors import InputError
from sfmfeat.images import IMAGE_EXTENSIONS
from sfmfeat.localization.results import write_poses
from sfmfeat.posefiles import read_camera_poses

logger = logging.getLogger("reference_sets")

DEFAULT_CACHE = Path.home() / ".cache" / "sfmfeat-references"


@dataclass(frozen=True)
class ReferenceSet:
    name: str
    repository: str          # owner/name on GitHub
    commit: str
    image_dir: str           # inside the repository
    poses: str               # inside the repository
    pose_format: str         # "llff" (poses_bounds.npy), else read by sfmfeat.posefiles
                             # (a transforms.json, a folder of Strecha .camera files, ...)
    kind: str
    reference: str
    licence: str


_STRECHA_COMMIT = "348a981ef51112e9848acfb20004f4ed6fbc6ce3"
_STRECHA_LICENCE = (
    "EPFL CVLab multi-view data of Strecha, von Hansen, Van Gool, Fua, Thoennessen, 'On "
    "Benchmarking Camera Calibration and Multi-View Stereo for High Resolution Imagery', CVPR "
    "2008 (cvlabwww.epfl.ch/data/multiview/), as redistributed by openMVG's "
    "SfM_quality_evaluation (its Readme.txt: PNG recompressed to 'LosslessJPEG' -- the files "
    "are baseline JPEG --, .png.camera renamed .jpg.camera); no licence file in that "
    "repository: research evaluation use, cite the paper; never redistributed here")
_STRECHA_REFERENCE = (
    "metric GT: the benchmark's cameras, calibrated against a LIDAR scan of the scene "
    "(Strecha et al. CVPR'08; one intrinsic matrix for all images, no distortion), read from "
    "gt_dense_cameras/<image>.jpg.camera (camera-to-world R and the centre, in the scan's metric frame)")


def _strecha(name: str, count: int, subject: str) -> ReferenceSet:
    folder = f"Benchmarking_Camera_Calibration_2008/{name}"
    return ReferenceSet(
        name=name, repository="openMVG/SfM_quality_evaluation", commit=_STRECHA_COMMIT,
        image_dir=f"{folder}/images", poses=f"{folder}/gt_dense_cameras",
        pose_format="strecha",
        kind=f"building facade, outdoors: {count} photos of {subject}, 3072×2048, one "
             "camera with fixed intrinsics",
        reference=_STRECHA_REFERENCE, licence=_STRECHA_LICENCE)


REFERENCE_SETS = {s.name: s for s in (
    ReferenceSet(
        name="fox",
        repository="NVlabs/instant-ngp",
        commit="abe236ee00cf90cfca6e36e65c00435d5b21f50a",
        image_dir="data/nerf/fox/images",
        poses="data/nerf/fox/transforms.json",
        pose_format="nerf",
        kind="object sequence: 50 frames of a handheld phone video around a fox figurine "
             "on a table, indoors, 1080×1920 portrait, one camera",
        reference="pseudo-GT: COLMAP poses of 67 frames (the repository ships 50 of the "
                  "images since its 'smaller fox dataset' commit), converted to NeRF "
                  "transforms by instant-ngp's colmap2nerf (a similarity of COLMAP's "
                  "frame; OpenGL camera axes)",
        licence="NVIDIA Source Code License-NC (the repository's LICENSE.txt): "
                "non-commercial research and evaluation use; not redistributed here"),
    ReferenceSet(
        name="statue_of_liberty",
        repository="vork/StatueOfLiberty-Photogrammetry",
        commit="1d860be7ed5ebe86dafcb11f90c8557eb8cc5efc",
        image_dir="images",
        poses="poses_bounds.npy",
        pose_format="llff",
        kind="landmark photo collection: 135 photos of the Statue of Liberty (Flickr and "
             "Unsplash photos plus frames of four videos), resized to 800×1200",
        reference="pseudo-GT: the author's COLMAP model (DSP-SIFT with affine shapes, "
                  "8192 features, all 135 images, bundle-adjusted) saved as LLFF "
                  "poses_bounds.npy; COLMAP shared ONE camera model across all photos, so "
                  "the reference is weaker than a per-photo-intrinsics benchmark model",
        licence="no licence file in the repository (all rights reserved by default); the "
                "photos keep their Flickr/Unsplash licences; used locally for evaluation "
                "only, never redistributed"),
    _strecha("fountain-P11", 11, "a fountain set in a building wall"),
    _strecha("Herz-Jesus-P8", 8, "a church front and its portal"),
    _strecha("entry-P10", 10, "a building entrance"),
    _strecha("castle-P19", 19, "the inner courtyard of a castle"),
    _strecha("Herz-Jesus-P25", 25, "the same church front, more views"),
    _strecha("castle-P30", 30, "the same castle courtyard, more views"),
)}


def _git(git_dir: Path, *args: str) -> bytes:
    result = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True)
    if result.returncode:
        raise InputError(f"git {' '.join(args[:2])} in {git_dir} failed: "
                         f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def find_git_dir(reference_set: ReferenceSet, source: Path | None, work: Path) -> Path:
    if source is not None:
        candidates = [source / ".git", source]
    else:
        owner, name = reference_set.repository.split("/")
        candidates = [Path("/work/.mirror") / f"{owner}+{name}" / "repo"]
    for candidate in candidates:
        if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
            return candidate
    if source is not None:
        raise InputError(f"{source} is not a git directory")
    clone = work / "clone"
    logger.info("cloning %s (needs network)", reference_set.repository)
    result = subprocess.run(["git", "clone", "--bare", "--filter=blob:none",
                             f"https://github.com/{reference_set.repository}.git", str(clone)],
                            capture_output=True)
    if result.returncode:
        raise InputError(f"cannot clone {reference_set.repository}; pass --source with a "
                         "local copy")
    return clone


def llff_poses(poses_bounds: np.ndarray, names: list[str]) -> dict[str, pycolmap.Rigid3d]:
    """LLFF ``poses_bounds.npy`` rows (3×5 camera-to-world [down, right, back | centre |
    h w f], then near/far) in sorted-name order, as COLMAP cam_from_world."""
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17:
        raise InputError(f"poses_bounds.npy must be N×17, got {poses_bounds.shape}")
    if len(poses_bounds) != len(names):
        raise InputError(f"poses_bounds.npy has {len(poses_bounds)} poses for "
                         f"{len(names)} images: cannot pair them by sorted name")
    poses = {}
    for name, row in zip(sorted(names), poses_bounds):
        matrix = row[:15].reshape(3, 5)
        down, right, back, centre = matrix[:, 0], matrix[:, 1], matrix[:, 2], matrix[:, 3]
        world_from_camera = np.stack([right, down, -back], axis=1)  # COLMAP axes
        rotation = world_from_camera.T
        poses[name] = pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre)
    return poses


def place(reference_set: ReferenceSet, source: Path | None, cache: Path) -> Path:
    target = cache / reference_set.name
    if (target / "reference_poses.txt").is_file():
        logger.info("%s is already in %s", reference_set.name, target)
        return target
    with tempfile.TemporaryDirectory(dir=cache.parent if cache.parent.exists() else None
                                     ) as tmp:
        work = Path(tmp)
        git_dir = find_git_dir(reference_set, source, work)
        archive = _git(git_dir, "archive", reference_set.commit, reference_set.image_dir,
                       reference_set.poses)
        extracted = work / "extracted"
        extracted.mkdir()
        subprocess.run(["tar", "-x", "-C", str(extracted)], input=archive, check=True)
        images = extracted / reference_set.image_dir
        names = sorted(p.name for p in images.iterdir()  # not e.g. Strecha's K.txt
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        pose_file = extracted / reference_set.poses
        if reference_set.pose_format == "llff":
            poses = llff_poses(np.load(io.BytesIO(pose_file.read_bytes())), names)
        else:
            poses = {Path(n).name: p for n, p in read_camera_poses(pose_file).items()}
        unposed = sorted(set(names) - set(poses))
        poses = {name: pose for name, pose in poses.items() if name in set(names)}
        staged = work / "staged"
        (staged / "images").mkdir(parents=True)
        for name in names:
            if name in poses:
                shutil.move(str(images / name), staged / "images" / name)
        write_poses(staged / "reference_poses.txt", poses)
        (staged / "SOURCE.md").write_text(
            f"# {reference_set.name}\n\n"
            f"- origin: https://github.com/{reference_set.repository} at commit "
            f"{reference_set.commit}, {reference_set.image_dir} and {reference_set.poses}\n"
            f"- kind: {reference_set.kind}\n- reference: {reference_set.reference}\n"
            f"- licence: {reference_set.licence}\n"
            f"- images with a pose: {len(poses)}; without (left out): {len(unposed)}\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    logger.info("placed %s: %d posed images in %s", reference_set.name, len(poses), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the known reference sets")
    p = sub.add_parser("place", help="extract a set with its reference poses into the cache")
    p.add_argument("names", nargs="+", choices=sorted(REFERENCE_SETS))
    p.add_argument("--source", type=Path, help="git directory holding the set's commit")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    setup_logging()

    def job() -> int:
        if args.command == "list":
            for s in REFERENCE_SETS.values():
                print(f"{s.name}: {s.kind}\n  reference: {s.reference}\n  licence: "
                      f"{s.licence}\n  origin: github.com/{s.repository}@{s.commit[:10]}")
            return 0
        for name in args.names:
            print(place(REFERENCE_SETS[name], args.source, args.cache))
        return 0

    return run_guarded("reference_sets", job)


if __name__ == "__main__":
    sys.exit(main())
