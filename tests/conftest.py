"""Shared test fixtures.

Real images, weights and parity fixtures live in ``<repo>/../shared``. Outside CI a test
that needs them is skipped when they are missing; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))


def require_shared(relative: str) -> Path:
    """The path ``shared/<relative>``; skip (locally) or fail (CI) when it is missing."""
    path = SHARED / relative
    if not path.exists():
        message = f"shared test data {path} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def sacre_coeur_dir() -> Path:
    return require_shared("data/sacre_coeur/mapping")


@pytest.fixture
def shared_weights_dir() -> Path:
    return require_shared("weights")


@pytest.fixture
def weights_env(monkeypatch, shared_weights_dir):
    """Point SFMFEAT_WEIGHTS_DIR at the staged official weights."""
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(shared_weights_dir))
    return shared_weights_dir


@pytest.fixture
def lightglue_weights_env(monkeypatch):
    """SFMFEAT_WEIGHTS_DIR holding the official LightGlue files (the fetched root of
    ``export SFMFEAT_WEIGHTS_DIR=$(../shared/weights/lightglue/fetch)``, which also serves
    every other method); skip locally, fail in CI when they are not there."""
    root = Path(os.environ.get("SFMFEAT_WEIGHTS_DIR", "")).expanduser()
    wanted = [root / "lightglue" / f"{name}_lightglue.pth" for name in ("aliked", "disk")]
    if not os.environ.get("SFMFEAT_WEIGHTS_DIR") or not all(p.is_file() for p in wanted):
        message = ("LightGlue weights missing: run "
                   "`export SFMFEAT_WEIGHTS_DIR=$(../shared/weights/lightglue/fetch)`")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(root))
    return root
