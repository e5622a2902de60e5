"""Typed, frozen configurations and their stable hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable
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


def config_hash(kind: str, config: Any, **identity: Any) -> str:
    """A short stable hash of ``kind`` (a method's stable name, never a module path), the
    resolved config and any further ``identity`` (e.g. ``weights=`` of the loaded file;
    None values are left out, so adding an identity key keeps the other hashes)."""
    payload = json.dumps({"kind": kind, "config": config_to_dict(config),
                          **{k: v for k, v in identity.items() if v is not None}},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint on a config field (on each element of a tuple field)."""

    allowed: str                        # what is allowed, for the error message: ">= 1"
    accepts: Callable[[Any], bool]


def at_least(bound: float) -> Rule:
    return Rule(f">= {bound}", lambda v: v >= bound)


def greater_than(bound: float) -> Rule:
    return Rule(f"> {bound}", lambda v: v > bound)


def between(low: float, high: float) -> Rule:
    return Rule(f"in [{low}, {high}]", lambda v: low <= v <= high)


def one_of(*values: Any) -> Rule:
    return Rule("one of " + ", ".join(map(str, values)), lambda v: v in values)


def registered_or_path(*names: str) -> Rule:
    """A weights option: one of the registered file names, or a path (has a separator)."""
    return Rule("one of " + ", ".join(names) + " or a path to a file",
                lambda v: v in names or "/" in v or "\\" in v or v.startswith("~"))


def odd_at_least(bound: int) -> Rule:
    return Rule(f"odd and >= {bound}", lambda v: v >= bound and v % 2 == 1)


@dataclasses.dataclass(frozen=True)
class Relation:
    """A constraint between config fields, checked after every field's own rule."""

    fields: tuple[str, ...]             # the fields it involves, named in the error
    allowed: str                        # what must hold, for the error message: "a must be ..."
    accepts: Callable[[Any], bool]      # called with the config


def not_above(low: str, high: str) -> Relation:
    """``low <= high`` unless either is None."""
    return Relation((low, high), f"{low} must be <= {high}",
                    lambda c: getattr(c, low) is None or getattr(c, high) is None
                    or getattr(c, low) <= getattr(c, high))


class ValidatedConfig:
    """Base of the frozen config dataclasses: ``__post_init__`` checks every field.

    Each field must match its annotation (int, float, bool, str, None, tuples of them;
    ints are accepted for floats and stored as floats; floats must be finite) and the
    ``Rule`` named for it in the class attribute ``rules``; then every cross-field
    ``Relation`` in ``relations`` must hold. Failures raise a ConfigError naming the
    field(s), the value(s) and what is allowed.
    """

    rules: dict[str, Rule] = {}
    relations: tuple[Relation, ...] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _checked_value(self, field.name, getattr(self, field.name),
                                   hints[field.name])
            object.__setattr__(self, field.name, value)
            rule = self.rules.get(field.name)
            items = value if isinstance(value, tuple) else (value,)
            if rule is not None and value is not None and not all(map(rule.accepts, items)):
                raise ConfigError(f"{type(self).__name__}.{field.name}={value!r}: must be "
                                  f"{'each ' if isinstance(value, tuple) else ''}"
                                  f"{rule.allowed}")
        for relation in self.relations:
            if not relation.accepts(self):
                values = ", ".join(f"{name}={getattr(self, name)!r}" for name in relation.fields)
                raise ConfigError(f"{type(self).__name__}: {values}: {relation.allowed}")


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_text(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             type(None): "None"}
    texts = []
    for member in _members(hint):
        if typing.get_origin(member) is tuple:
            texts.append("a list of " + ", ".join(
                _type_text(a) for a in typing.get_args(member) if a is not Ellipsis))
        else:
            texts.append(names.get(member, getattr(member, "__name__", str(member))))
    return " or ".join(texts)


def _checked_value(config: Any, name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` asks (int -> float, list -> tuple), or ConfigError."""
    for member in _members(hint):
        converted = _as_type(value, member)
        if converted is not _REJECTED:
            return converted
    raise ConfigError(f"{type(config).__name__}.{name}={value!r}: expected "
                      f"{_type_text(hint)}")


_REJECTED = object()


def _as_type(value: Any, hint: Any) -> Any:
    if hint is type(None):
        return None if value is None else _REJECTED
    if hint is bool:
        return value if isinstance(value, bool) else _REJECTED
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _REJECTED
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            return float(value)
        return _REJECTED
    if hint is str:
        return value if isinstance(value, str) else _REJECTED
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (tuple, list)):
            return _REJECTED
        args = typing.get_args(hint)
        element_types = ([args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis
                         else list(args))
        if len(element_types) != len(value) or not value:
            return _REJECTED
        items = tuple(_as_type(v, t) for v, t in zip(value, element_types))
        return _REJECTED if any(i is _REJECTED for i in items) else items
    return value if isinstance(value, hint) else _REJECTED


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
    hints = typing.get_type_hints(type(config))
    converted = {k: _convert(k, v, hints[k]) for k, v in overrides.items()}
    return dataclasses.replace(config, **converted)


def _convert(key: str, value: Any, hint: Any) -> Any:
    """A command-line string as the field's annotated type; other values unchanged (the
    config's own validation judges them)."""
    if not isinstance(value, str):
        return value
    members = _members(hint)
    text = value.strip()
    if type(None) in members and text.lower() in ("none", "null"):
        return None
    if str in members:
        return value
    for member in members:
        try:
            if member is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
            elif member is int:
                return int(text)
            elif member is float:
                return float(text)
            elif typing.get_origin(member) is tuple:
                items = json.loads(text if text.startswith("[") else f"[{text}]")
                return tuple(items) if isinstance(items, list) else items
        except (ValueError, json.JSONDecodeError):
            continue
    raise ConfigError(f"option {key}={value!r}: expected {_type_text(hint)}")


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse ``["key=value", ...]`` from the command line."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--conf expects key=value, got {item!r}")
        result[key.strip()] = value
    return result
