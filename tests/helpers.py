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
