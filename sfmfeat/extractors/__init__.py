"""Extractor registry: preset names -> configured extractors.

Every module in this package that defines ``Extractor`` subclasses contributes their
``presets``; no central list needs editing when a method is added.
A name ``desc+det`` combines a descriptor-only method with a detector preset
(e.g. ``deepdesc+sift``, ``caps+d2net-ss``); a bare descriptor name uses its default detector.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import lru_cache
from typing import Any

from ..config import apply_overrides
from ..errors import ConfigError
from .base import Describer, DetectAndDescribe, Extractor, Features

__all__ = ["Extractor", "Describer", "Features", "create_extractor", "available_presets",
           "extractor_classes", "default_matcher", "check_feature_names"]


@lru_cache(maxsize=1)
def extractor_classes() -> tuple[type[Extractor], ...]:
    """Every concrete Extractor subclass defined in this package, in module order."""
    found: list[type[Extractor]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, Extractor) and obj.__module__ == module.__name__
                    and not inspect.isabstract(obj) and obj.presets):
                found.append(obj)
    return tuple(found)


@lru_cache(maxsize=1)
def available_presets() -> dict[str, tuple[type[Extractor], Any]]:
    """Preset name -> (extractor class, config)."""
    presets: dict[str, tuple[type[Extractor], Any]] = {}
    for cls in extractor_classes():
        for preset, config in cls.presets.items():
            if preset in presets:
                raise ConfigError(f"preset {preset!r} is defined by both "
                                  f"{presets[preset][0].__name__} and {cls.__name__}")
            presets[preset] = (cls, config)
    return presets


def _lookup(name: str) -> tuple[type[Extractor], Any]:
    presets = available_presets()
    if name not in presets:
        raise ConfigError(f"unknown feature preset {name!r}; choose one of: "
                          + ", ".join(sorted(presets)))
    return presets[name]


def default_matcher(name: str) -> str:
    """The matcher preset that goes with feature preset ``name`` (the describer's, for
    ``desc+det`` combinations)."""
    if name not in available_presets():
        name = name.partition("+")[0]
    return _lookup(name)[0].default_matcher


def create_extractor(name: str, overrides: dict[str, Any] | None = None,
                     device: str | None = None) -> Extractor:
    """Build the extractor of preset ``name`` (``desc+det`` for combinations).

    ``overrides`` change fields of the preset's config; for a combination, keys prefixed
    ``detector.`` go to the detector and the others to the describer.
    """
    overrides = dict(overrides or {})
    describer_name, _, detector_name = name.partition("+")
    if name in available_presets():   # preset names may contain '+' (e.g. contextdesc++)
        describer_name, detector_name = name, ""
    cls, config = _lookup(describer_name)
    if issubclass(cls, Describer):
        detector_name = detector_name or cls.default_detector
        detector_overrides = {k.removeprefix("detector."): v for k, v in overrides.items()
                              if k.startswith("detector.")}
        own = {k: v for k, v in overrides.items() if not k.startswith("detector.")}
        describer = cls(apply_overrides(config, own), device=device)
        detector = create_extractor(detector_name, detector_overrides, device=device)
        if isinstance(detector, DetectAndDescribe):
            raise ConfigError(f"{detector_name!r} cannot serve as a detector")
        return DetectAndDescribe(detector, describer, detector_name, describer_name)
    if detector_name:
        raise ConfigError(f"{describer_name!r} detects its own keypoints; "
                          f"'+{detector_name}' applies only to descriptor-only methods")
    return cls(apply_overrides(config, overrides), device=device)


def check_feature_names(names: list[str]) -> list[str]:
    """``names`` if each is a preset or a valid ``desc+det`` combination, else a ConfigError
    naming the first unknown one: lets a multi-method run fail before its first method."""
    if not names:
        raise ConfigError("no feature preset given")
    for name in names:
        if name in available_presets():
            continue
        describer_name, _, detector_name = name.partition("+")
        cls, _ = _lookup(describer_name)
        if detector_name:
            if not issubclass(cls, Describer):
                raise ConfigError(f"{describer_name!r} detects its own keypoints; "
                                  f"'+{detector_name}' applies only to descriptor-only methods")
            _lookup(detector_name)
    return names
