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


# ---------------------------------------------------------------- seeds and measured figures
# End-to-end tests run with the seed (and thread count) that benchmarks/test_spread.py sets
# through these variables, so that each threshold can be checked against the spread of its
# figure over seeds and thread counts, not against one run.
SEED_VARIABLE, THREADS_VARIABLE, FIGURES_VARIABLE = (
    "SFMFEAT_TEST_SEED", "SFMFEAT_TEST_THREADS", "SFMFEAT_TEST_FIGURES")


def test_seed() -> int:
    return int(os.environ.get(SEED_VARIABLE, "0"))


def seed_arguments() -> list[str]:
    """``--seed N`` (and ``--threads N`` when the spread runner asks) for a CLI verb."""
    threads = os.environ.get(THREADS_VARIABLE)
    return ["--seed", str(test_seed())] + (["--threads", threads] if threads else [])


@pytest.fixture
def run_seed() -> int:
    return test_seed()


@pytest.fixture
def seed_args() -> list[str]:
    return seed_arguments()


@pytest.fixture(scope="session")
def sift_run(tmp_path_factory):
    """(images, OUT) of one `sfmfeat reconstruct` of the Sacre-Coeur images with SIFT,
    shared by the tests that only read it."""
    from sfmfeat.cli import main

    images = require_shared("data/sacre_coeur/mapping")
    out = tmp_path_factory.mktemp("sacre_coeur_sift")
    code = main(["-q", "reconstruct", str(images), str(out), "--features", "sift",
                 "--matcher", "mnn-ratio", *seed_arguments()])
    assert code == 0
    return images, out


class Figures:
    """Checks a measured figure against its threshold, and records both for the spread runner."""

    _OPERATORS = {">=": lambda v, t: v >= t, ">": lambda v, t: v > t,
                  "<=": lambda v, t: v <= t, "<": lambda v, t: v < t,
                  "==": lambda v, t: v == t}

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id

    def check(self, name: str, value, operator: str, threshold) -> None:
        value = value.item() if hasattr(value, "item") else value
        met = self._OPERATORS[operator](value, threshold)
        record = os.environ.get(FIGURES_VARIABLE)
        if record:
            import json

            with open(record, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({
                    "test": self.test_id, "figure": name, "value": value,
                    "operator": operator, "threshold": threshold, "met": met,
                    "seed": os.environ.get(SEED_VARIABLE, "0"),
                    "threads": os.environ.get(THREADS_VARIABLE, "all")}) + "\n")
        assert met, (
            f"{name} = {value}, expected {operator} {threshold}")


@pytest.fixture
def figures(request) -> Figures:
    return Figures(request.node.nodeid)


def pytest_collection_modifyitems(config, items):
    """Under the spread runner only the tests that check measured figures run."""
    if not os.environ.get(FIGURES_VARIABLE):
        return
    kept = [item for item in items if "figures" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


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
