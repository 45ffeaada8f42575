"""Strict loading of a small TOML config file against a schema: unknown, missing or mistyped keys are errors.

A schema is ``{table: {key: kind}}`` where kind is ``float``, ``int``, ``str``, ``bool`` or
``list`` (of strings). Nested tables are written ``"outer.inner"``. Every error is one line
naming the file, the table and the key, and what to do.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Mapping

from smartrouter.errors import ConfigError

_WANT = {float: "a number", int: "an integer", str: "a string", bool: "true or false", list: "a list of strings"}


def _typed(where: str, value: Any, kind: type) -> Any:
    good = {
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        list: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not good:
        raise ConfigError(f"{where} = {value!r} must be {_WANT[kind]}")
    return float(value) if kind is float else value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': {'c': 1}}} -> {'a.b': {'c': 1}} for tables that hold only values at their level."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        full = f"{prefix}{name}"
        if not isinstance(value, dict):
            out[full] = value
            continue
        plain = {k: v for k, v in value.items() if not isinstance(v, dict)}
        out[full] = plain
        out.update(_flatten({k: v for k, v in value.items() if isinstance(v, dict)}, f"{full}."))
    return out


def load(path: str | Path, schema: Mapping[str, Mapping[str, type]], *, what: str, home: str,
         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``{table: {key: value}}`` from ``path``, checked against ``schema`` (``what`` names the file in errors,
    ``home`` is where the shipped copy lives, for the fix), then ``{table: {key: value}}`` overrides
    (a profile, a CLI flag, a test) checked the same way. The file must be complete on its own."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; restore {home} or pass an existing file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML ({exc}); fix the file") from None
    tables = _flatten(raw)
    out: dict[str, dict[str, Any]] = {}
    for table, values in tables.items():
        if table not in schema:
            raise ConfigError(f"{what} {path}: unknown table or key [{table}]; the tables are {', '.join(schema)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{what} {path}: {table} must be a table [{table}], not a value")
        out[table] = {}
        for key, value in values.items():
            if key not in schema[table]:
                raise ConfigError(f"{what} {path}: unknown key {key!r} in [{table}]; keys there: {', '.join(schema[table])}")
            out[table][key] = _typed(f"{what} {path} [{table}] {key}", value, schema[table][key])
    missing = [f"[{t}] {k}" for t, keys in schema.items() for k in keys if k not in out.get(t, {})]
    if missing:
        raise ConfigError(f"{what} {path} lacks {', '.join(missing)}; add them (see {home})")
    for table, values in (overrides or {}).items():
        if table not in schema or not isinstance(values, Mapping):
            raise ConfigError(f"{what} override: unknown table [{table}]; the tables are {', '.join(schema)}")
        for key, value in values.items():
            if key not in schema[table]:
                raise ConfigError(f"{what} override: unknown key {key!r} in [{table}]; keys there: {', '.join(schema[table])}")
            out[table][key] = _typed(f"{what} override {table}.{key}", value, schema[table][key])
    return out


def require(cond: bool, path: str | Path, where: str, message: str) -> None:
    """Raise a ConfigError naming the file and key unless ``cond``."""
    if not cond:
        raise ConfigError(f"{path}: {where} {message}")
