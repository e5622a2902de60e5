"""Typed, frozen configurations and their stable hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) dataclass config."""
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"expected a dataclass config, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot serialise {value!r} in a config")


def config_hash(kind: str, config: Any) -> str:
    """A short stable hash of ``kind`` (e.g. the extractor class) and the resolved config."""
    payload = json.dumps({"kind": kind, "config": config_to_dict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def apply_overrides(config: C, overrides: dict[str, Any]) -> C:
    """``config`` with ``overrides`` applied; unknown keys raise a ConfigError naming them.

    String values (e.g. from the command line ``--conf key=value``) are converted to the
    type of the field's current value.
    """
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {type(config).__name__}; "
            f"valid options: {', '.join(sorted(fields))}"
        )
    converted = {k: _convert(k, v, getattr(config, k)) for k, v in overrides.items()}
    return dataclasses.replace(config, **converted)


def _convert(key: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
        return value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(json.loads(text if text.startswith("[") else f"[{text}]"))
        return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        if current is None:
            return text
        raise ConfigError(
            f"option {key}={value!r}: expected a value like {current!r}"
        ) from None


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse ``["key=value", ...]`` from the command line."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--conf expects key=value, got {item!r}")
        result[key.strip()] = value
    return result
