"""Typed configs: dataclasses loaded from YAML, strictly.

Every run is described by a dataclass tree. YAML files fill it in; unknown keys, wrong
types and bad override syntax are errors that name the key and the file, so a typo never
silently falls back to a default. `--set a.b=value` overrides are parsed as YAML scalars
and applied before validation. The resolved config is written next to each run's outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from salt.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit its dataclass."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build `cls` from a YAML file (optional) plus `a.b=value` overrides."""
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} — check the path (configs/ holds one per stage and size)")
        try:
            loaded = yaml.load(path.read_text(), Loader=_StrictLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    for override in overrides:
        apply_override(data, override)
    where = source if not overrides else f"{source} with --set {' '.join(overrides)}"
    return from_dict(cls, data, where)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class OverrideSyntaxError(ConfigError):
    """A `--set` that is not KEY=VALUE: a misused command line (exit status 2, not 1)."""


def check_override(override: str) -> str:
    """`override` if it looks like `a.b=value`; OverrideSyntaxError naming it otherwise."""
    key, sep, _ = override.partition("=")
    if not sep or not key.strip():
        raise OverrideSyntaxError(
            f"--set {override!r} is not KEY=VALUE — write the value after '=', as in --set section.key=value"
        )
    return override


def override_option(ctx, param, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """click callback of every `--set`: a misused one is a usage error (exit status 2)."""
    import click

    for override in overrides:
        try:
            check_override(override)
        except OverrideSyntaxError:
            raise click.BadParameter(f"{override!r} is not KEY=VALUE: write the value after '='") from None
    return overrides


def override_argument(override: str) -> str:
    """argparse `type` of `--set` (deepspeed's entry points): a misused one exits 2, like click's."""
    import argparse

    try:
        return check_override(override)
    except OverrideSyntaxError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as a YAML scalar or list."""
    key, _, raw = check_override(override).partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {err}") from err
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: Any, source: str, prefix: str = "") -> T:
    """Validate `data` against dataclass `cls`; errors name the dotted key and `source`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(_join(prefix, k) for k in unknown)
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key(s) {names} — use one of the keys known here: {known}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, _join(prefix, name))
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as err:  # a required field left out, or __post_init__ checks
        raise ConfigError(f"{source}: {prefix or 'config'}: {err}") from err
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from err
    return instance


def to_dict(cfg: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config tree, ready for YAML or JSON."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config (every default filled in) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            with contextlib.suppress(ConfigError):  # the next option may fit
                return _coerce(option, value, source, key)
        raise ConfigError(f"{source}: {key} = {value!r} fits none of {_type_name(hint)}")
    if origin is Literal:
        if value not in get_args(hint):
            allowed = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {allowed}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {_describe(value)}")
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{source}: {key} must have {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_type = args[0] if args else Any
            items = [_coerce(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {_describe(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, str):
            # PyYAML reads `2e-3` (no dot) as a string; accept any plain float literal.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported config type {_type_name(hint)}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_arch_pairs(pairs: tuple[str, ...]) -> dict | None:
    """`--arch key=value` pairs (values read as YAML) as an arch dict; None for none."""
    arch = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--arch {pair!r} must look like key=value")
        arch[key.strip()] = yaml.safe_load(value)
    return arch or None
