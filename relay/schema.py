"""Typed config sections built from plain YAML mappings.

Each component declares its config as a ``@dataclass(kw_only=True)``; :func:`build` turns a
mapping into that dataclass, rejecting unknown keys and wrong types with an error that names the
YAML path (``targets.heap.app_id``). A typo is an error, never a silent default.

A field declared with :func:`secret` (keys, tokens, signing secrets, auth headers) is marked once
here: no error about it ever shows its value, only its type ("expected a string, got a list"),
whichever check raises it.
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

SECRET = "secret"  # dataclass field metadata flag: the value must never appear in a message


def secret(**kwargs: Any) -> Any:
    """A config field holding a secret: never shown by repr, never quoted in an error."""
    metadata = {**kwargs.pop("metadata", {}), SECRET: True}
    return dataclasses.field(repr=False, metadata=metadata, **kwargs)


def is_secret(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get(SECRET))


def _kind(value: Any) -> str:
    """What a value is, without what it says: for errors about secret fields."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class ConfigError(ValueError):
    """A bad config value; the message starts with the YAML path of the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigErrors(ConfigError):
    """Several config errors found in one pass; ``errors`` in the order of the file."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = flatten(errors)
        first = self.errors[0]
        super().__init__(first.path, first.message)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def flatten(errors: list[ConfigError]) -> list[ConfigError]:
    out: list[ConfigError] = []
    for error in errors:
        out.extend(error.errors if isinstance(error, ConfigErrors) else [error])
    return out


def raise_all(errors: list[ConfigError]) -> None:
    """Nothing when ``errors`` is empty; the one error; or all of them as ConfigErrors."""
    errors = flatten(errors)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class ByteSize(int):
    """A size in bytes; accepts ``5MiB``, ``512KB``, ``1GiB`` or a plain integer."""


class Duration(float):
    """A duration in seconds; accepts ``200ms``, ``5s``, ``10m``, ``24h``, ``7d`` or a number."""


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any, path: str) -> ByteSize:
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a size like 5MiB, got {value!r}")
    if isinstance(value, int):
        return ByteSize(value)
    match = _NUMBER_UNIT.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(path, f"expected a size like 5MiB or 512KB, got {value!r}")
    return ByteSize(int(float(match.group(1)) * _SIZE_UNITS[unit]))


def parse_duration(value: Any, path: str) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration like 5s, got {value!r}")
    if isinstance(value, int | float):
        return Duration(value)
    match = _NUMBER_UNIT.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _DURATION_UNITS:
        raise ConfigError(path, f"expected a duration like 200ms, 5s, 10m or 24h, got {value!r}")
    return Duration(float(match.group(1)) * _DURATION_UNITS[unit])


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, path: str, hide: bool = False) -> Any:
    """Check and convert one YAML value to the annotated type ``tp``; ``hide`` (a secret
    field) names the value's type in errors instead of quoting it."""
    shown = _kind(value) if hide else repr(value)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        others = [option for option in options if option is not type(None)]
        if len(others) == 1:  # X | None: X's own error, with its full path
            return convert(value, others[0], path, hide)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, path, hide)
            except ConfigError as exc:
                errors.append(str(exc).removeprefix(f"{path}: "))
        raise ConfigError(path, " or ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {', '.join(map(str, allowed))}; got {shown}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str | dict) or not isinstance(value, list | tuple):
            if isinstance(value, str) and item_tp is str:
                return [value]  # a single string where a list is expected: accept it
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        return [convert(item, item_tp, f"{path}[{i}]", hide) for i, item in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return {
            convert(k, key_tp, path): convert(v, value_tp, f"{path}.{k}", hide)
            for k, v in value.items()
        }
    if tp is ByteSize:
        return parse_size(value, path)
    if tp is Duration:
        return parse_duration(value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, hide)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {shown}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {shown}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {shown}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise ConfigError(path, f"expected a string, got {shown}")
        if hide and not isinstance(value, str):
            # YAML reads 0755 as 493 and 1_000 as 1000: a secret would change without a word.
            raise ConfigError(path, f"expected a quoted string, got {shown}; quote the value")
        return str(value)
    raise ConfigError(path, f"unsupported config type {_type_name(tp)}")


def build(cls: type[T], data: Any, path: str = "", hide: bool = False) -> T:
    """Build dataclass ``cls`` from ``data``; unknown or missing keys are errors naming the path.

    ``hide``: the whole section is secret (every value in it is treated as a secret field).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    # A field may name its YAML key in metadata, for keys that are Python keywords ("from").
    fields = {
        f.metadata.get("key", f.name): f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
    }
    # Every unknown, missing or wrong key of the section, not only the first.
    errors: list[ConfigError] = []
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            errors.append(
                ConfigError(where, f"unknown key; expected one of: {', '.join(sorted(fields))}")
            )
    kwargs = {}
    for key, field in fields.items():
        field_path = f"{path}.{key}" if path else key
        if key in data:
            try:
                kwargs[field.name] = convert(
                    data[key], hints[field.name], field_path, hide or is_secret(field)
                )
            except ConfigError as exc:
                errors.append(exc)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append(ConfigError(field_path, "required key is missing"))
    raise_all(errors)
    secrets = [
        kwargs[f.name]
        for f in dataclasses.fields(cls)
        if f.name in kwargs and (hide or is_secret(f))  # type: ignore[arg-type]
    ]
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # raised by __post_init__ with a path relative to this section
        inner = ".".join(p for p in (path, exc.path) if p)
        raise ConfigError(inner, _without(exc.message, secrets)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, _without(str(exc), secrets)) from None


def _without(message: str, secrets: list[Any]) -> str:
    """A section's own check (``__post_init__``) may quote a value: never a secret one."""
    texts: list[str] = []
    for value in secrets:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list | tuple):
            texts.extend(v for v in value if isinstance(v, str))
        elif isinstance(value, dict):
            texts.extend(v for v in value.values() if isinstance(v, str))
    for text in sorted(texts, key=len, reverse=True):
        if len(text) >= 4:  # a very short one would blank ordinary words; it is no secret
            message = message.replace(text, "[secret]")
    return message


__all__ = [
    "ByteSize",
    "ConfigError",
    "ConfigErrors",
    "Duration",
    "build",
    "convert",
    "parse_duration",
    "parse_size",
    "raise_all",
    "secret",
]
