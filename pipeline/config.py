"""Job configuration: one TOML file plus ``--set section.key=value`` overrides, into frozen option dataclasses.

Unknown sections and keys are errors (a typo must not silently fall back to a default). The resolved config
is recorded with each run, and a fingerprint of the parts that change output rows guards the output folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    pass


def load_toml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``section.key=value``; the value is read as a TOML value when it parses as one, else as a string."""
    config = {section: dict(values) for section, values in config.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        config.setdefault(section, {})[name] = value
    return config


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list")
        return tuple(_coerce(v, args[0], where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def build_options(cls: type, values: Mapping[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {key: _coerce(value, hints[key], f"{section}.{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from None


def build_config(sections: Mapping[str, type], raw: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}; known: {', '.join(sections)}")
    for section, values in raw.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] must be a table of keys")
    return {section: build_options(cls, raw.get(section, {}), section) for section, cls in sections.items()}


def to_plain(config: Mapping[str, Any]) -> dict[str, Any]:
    return {section: dataclasses.asdict(options) for section, options in config.items()}


def fingerprint(plain: Mapping[str, Any]) -> str:
    """A short hash of the config parts that decide output rows."""
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def to_toml(plain: Mapping[str, Any]) -> str:
    """The resolved config as TOML (``--print-config``); ``None`` values are left out, as TOML has no null."""
    lines = []
    for section, values in plain.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} =  (not set)")
            else:
                lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)}")
        lines.append("")
    return "\n".join(lines)
