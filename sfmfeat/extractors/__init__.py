"""Extractor registry: preset names -> configured extractors, imported lazily.

``PRESET_MODULES`` names the module of this package that defines each preset, so that the
preset names are known, and one method built, without importing the other networks (a SIFT
run does not pay for torch). ``tests/test_registry.py`` checks the table against the
``presets`` of every Extractor class, so a new method that forgets its entry fails there.
A name ``desc+det`` combines a descriptor-only method with a detector preset
(e.g. ``deepdesc+sift``, ``caps+d2net-ss``); a bare descriptor name uses its default detector.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..config import apply_overrides
from ..errors import ConfigError
from ..features import Features
from .base import Describer, DetectAndDescribe, Extractor

__all__ = ["Extractor", "Describer", "Features", "create_extractor", "available_presets",
           "extractor_classes", "default_matcher", "preset_names", "PRESET_MODULES",
           "ExtractorSpec", "resolve_spec", "check_feature_names"]

PRESET_MODULES: dict[str, str] = {
    "sift": "sift", "sift-l2": "sift", "sift-upright": "sift", "rootsift": "sift",
    "d2net-ss": "d2net", "d2net-ms": "d2net",
    "disk": "disk",
    "aliked-n16": "aliked", "aliked-n32": "aliked", "aliked-t16": "aliked",
    "aliked-n16rot": "aliked",
    "r2d2": "r2d2",
    "deepdesc": "deepdesc",
    "caps": "caps",
    "contextdesc": "contextdesc", "contextdesc+": "contextdesc",
    "contextdesc++": "contextdesc", "contextdesc++-upright": "contextdesc",
    "contextdesc++-local": "contextdesc",
}


def preset_names() -> tuple[str, ...]:
    """Every preset name, sorted; imports no extractor module."""
    return tuple(sorted(PRESET_MODULES))


@lru_cache(maxsize=None)
def _module_classes(module_name: str) -> tuple[type[Extractor], ...]:
    module = importlib.import_module(f"{__name__}.{module_name}")
    return tuple(obj for _, obj in inspect.getmembers(module, inspect.isclass)
                 if issubclass(obj, Extractor) and obj.__module__ == module.__name__
                 and not inspect.isabstract(obj) and obj.presets)


def extractor_classes() -> tuple[type[Extractor], ...]:
    """Every registered Extractor class (imports every method module)."""
    modules = sorted(set(PRESET_MODULES.values()))
    return tuple(cls for name in modules for cls in _module_classes(name))


def available_presets() -> dict[str, tuple[type[Extractor], Any]]:
    """Preset name -> (extractor class, config); imports every method module."""
    return {name: _preset(name) for name in preset_names()}


def _preset(name: str) -> tuple[type[Extractor], Any]:
    for cls in _module_classes(PRESET_MODULES[name]):
        if name in cls.presets:
            return cls, cls.presets[name]
    raise ConfigError(f"preset {name!r} is registered for module "
                      f"{PRESET_MODULES[name]!r}, which does not define it")


def _lookup(name: str) -> tuple[type[Extractor], Any]:
    if name not in PRESET_MODULES:
        raise ConfigError(f"unknown feature preset {name!r}; choose one of: "
                          + ", ".join(preset_names()))
    return _preset(name)


def default_matcher(name: str) -> str:
    """The matcher preset that goes with feature preset ``name`` (the describer's, for
    ``desc+det`` combinations)."""
    if name not in PRESET_MODULES:
        name = name.partition("+")[0]
    return _lookup(name)[0].default_matcher


@dataclass(frozen=True)
class ExtractorSpec:
    """What builds one extractor: the preset name as given, the overrides as given, and the
    resolved (validated) config; ``detector`` is the detector's spec for a describer."""

    name: str
    overrides: dict[str, Any]
    extractor_class: type[Extractor]
    config: Any
    detector: "ExtractorSpec | None" = None

    def config_hash(self) -> str:
        """The ``config_hash`` of the extractor ``build`` gives, without building a network
        or downloading weights (a user's weight file is hashed)."""
        return self.extractor_class.hash_of(self.config, self._weights_identity()) \
            if self.detector is None else DetectAndDescribe.pair_hash(
                self.detector.description(), self.description())

    def description(self) -> dict[str, Any]:
        """``Extractor.describe_config`` of this (single) method's extractor."""
        return self.extractor_class.description(self.config, self._weights_identity())

    def _weights_identity(self) -> str | None:
        return self.extractor_class.weights_identity(self.config)

    def build(self, device: str | None = None) -> Extractor:
        if self.detector is None:
            extractor = self.extractor_class(self.config, device=device)
        else:
            describer = self.extractor_class(self.config, device=device)
            extractor = DetectAndDescribe(self.detector.build(device), describer,
                                          self.detector.name, self.name.partition("+")[0])
        extractor.spec = {"preset": self.name, "overrides": _json_ready(self.overrides)}
        return extractor


def _json_ready(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides as JSON keeps them: tuples as lists, paths as strings."""
    return json.loads(json.dumps(overrides, default=str))


def resolve_spec(name: str, overrides: dict[str, Any] | None = None) -> ExtractorSpec:
    """The validated spec of preset ``name`` (``desc+det`` for combinations) with
    ``overrides``; builds no network. For a combination, keys prefixed ``detector.`` go to
    the detector and the others to the describer."""
    overrides = dict(overrides or {})
    describer_name, _, detector_name = name.partition("+")
    if name in PRESET_MODULES:   # preset names may contain '+' (e.g. contextdesc++)
        describer_name, detector_name = name, ""
    cls, config = _lookup(describer_name)
    if not issubclass(cls, Describer):
        if detector_name:
            raise ConfigError(f"{describer_name!r} detects its own keypoints; "
                              f"'+{detector_name}' applies only to descriptor-only methods")
        return ExtractorSpec(name, overrides, cls, apply_overrides(config, overrides))
    detector_name = detector_name or cls.default_detector
    detector_overrides = {k.removeprefix("detector."): v for k, v in overrides.items()
                          if k.startswith("detector.")}
    own = {k: v for k, v in overrides.items() if not k.startswith("detector.")}
    detector = resolve_spec(detector_name, detector_overrides)
    if detector.detector is not None or issubclass(detector.extractor_class, Describer):
        raise ConfigError(f"{detector_name!r} cannot serve as a detector")
    return ExtractorSpec(name, overrides, cls, apply_overrides(config, own), detector)


def create_extractor(name: str, overrides: dict[str, Any] | None = None,
                     device: str | None = None) -> Extractor:
    """Build the extractor of preset ``name`` (``desc+det`` for combinations) with
    ``overrides`` applied to the preset's config (see ``resolve_spec``)."""
    return resolve_spec(name, overrides).build(device)


def check_feature_names(names: list[str]) -> list[str]:
    """``names`` if each is a preset or a valid ``desc+det`` combination, else a ConfigError
    naming the first unknown one: lets a multi-method run fail before its first method."""
    if not names:
        raise ConfigError("no feature preset given")
    for name in names:
        resolve_spec(name)   # validates names and configs without importing a network
    return names
