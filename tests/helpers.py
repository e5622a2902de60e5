"""Builders of test inputs shared by several test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np


def make_bad_input_folder(source: Path, target: Path) -> dict[str, str]:
    """Copy the real images of ``source`` into ``target`` in many formats and names, plus
    broken files. Returns {name: "valid" | reason keyword} for every file written."""
    target.mkdir(parents=True, exist_ok=True)
    images = sorted(source.glob("*.jpg"))
    kinds: dict[str, str] = {}

    def bgr(i):
        return cv2.imread(str(images[i]))

    cv2.imwrite(str(target / "sixteen bit.png"), bgr(0).astype(np.uint16) * 257)
    kinds["sixteen bit.png"] = "valid"
    cv2.imwrite(str(target / "gray.png"), cv2.cvtColor(bgr(1), cv2.COLOR_BGR2GRAY))
    kinds["gray.png"] = "valid"
    cv2.imwrite(str(target / "rgba.png"), cv2.cvtColor(bgr(2), cv2.COLOR_BGR2BGRA))
    kinds["rgba.png"] = "valid"
    (target / "sub dir").mkdir(exist_ok=True)
    for offset, name in enumerate(["Sacré-Cœur façade.jpg", "sub dir/with space.jpg",
                                   "日本語.jpg"]):
        shutil.copyfile(images[3 + offset], target / name)
        kinds[name] = "valid"
    for index in range(6, len(images)):
        shutil.copyfile(images[index], target / images[index].name)
        kinds[images[index].name] = "valid"
    data = images[0].read_bytes()
    (target / "corrupt.jpg").write_bytes(data[:600] + bytes(range(256)) * 8)
    kinds["corrupt.jpg"] = "not a readable image"
    (target / "empty.jpg").write_bytes(b"")
    kinds["empty.jpg"] = "empty file"
    (target / "text.jpg").write_text("this is not an image\n")
    kinds["text.jpg"] = "not a readable image"
    cv2.imwrite(str(target / "tiny.png"), np.full((8, 8, 3), 128, np.uint8))
    kinds["tiny.png"] = "smaller than"
    return kinds


def write_scene_split(scene, database: Path, queries: Path, query_views) -> None:
    """Render every view of a SyntheticScene into ``database`` or, for ``query_views``,
    ``queries`` (image files named as the scene names them)."""
    for view, name in enumerate(scene.names):
        folder = queries if view in query_views else database
        folder.mkdir(parents=True, exist_ok=True)
        rgb, _ = scene.render(view)
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def build_weights_dir(root: Path, shared: Path) -> Path:
    """A weights dir serving every preset: the shared official files, the D2-Net and CAPS
    parity fixtures (random weights in the official format) and default-initialised (seeded)
    ContextDesc networks. Only for tests that check geometry, not descriptor quality."""
    import lzma

    import torch

    from sfmfeat.extractors.contextdesc import REGIONAL_NAME, VARIANT_URLS
    from sfmfeat.extractors.contextdesc_nets import ContextDescNet, RegionalResNet50

    for method in ("aliked", "disk", "r2d2", "deepdesc"):
        (root / method).symlink_to(shared / "weights" / method)
    for method, fixture, name in (("d2net", "d2net/d2_tf.pth.xz", "d2_tf.pth"),
                                  ("caps", "caps/caps_rand.pth.xz", "caps-pretrained.pth")):
        (root / method).mkdir()
        with lzma.open(shared / "fixtures" / fixture) as src, \
                open(root / method / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    (root / "contextdesc").mkdir()
    torch.manual_seed(0)
    for variant in VARIANT_URLS:
        torch.save(ContextDescNet().state_dict(), root / "contextdesc" / f"{variant}.pth")
    torch.save(RegionalResNet50().state_dict(), root / "contextdesc" / f"{REGIONAL_NAME}.pth")
    return root
