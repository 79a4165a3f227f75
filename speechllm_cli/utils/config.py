"""Experiment configs: YAML mappings loaded into (nested) dataclasses, checked key by key.

A config file is a mapping of sections (``model:``, ``train:``...) whose keys are the fields of a
dataclass. An unknown key or a value of the wrong type is an error naming the file, the key, what
was expected and the valid keys. ``dump_config`` writes the fully resolved config back as YAML.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Optim:
    ...     lr: float = 1e-3
    ...     scheduler: str = "noam"
    >>> @dataclass
    ... class Exp:
    ...     tokenizer: str = ""
    ...     train: Optim = field(default_factory=Optim)
    >>> exp = load_dataclass(Exp, {"train": {"lr": 1e-4}}, source="conf/x.yaml")
    >>> (exp.train.lr, exp.train.scheduler)
    (0.0001, 'noam')
    >>> try:
    ...     load_dataclass(Optim, {"lr": "fast"}, source="conf/x.yaml")
    ... except ConfigError as exc:
    ...     print(exc)
    conf/x.yaml: lr: expected a float, got 'fast' (str)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from speechllm_cli.utils.io import atomic_write_text


class ConfigError(ValueError):
    """A config file has an unknown key or a value of the wrong type; the message says what to fix."""


def _type_name(tp: Any) -> str:
    names = {int: "an int", float: "a float", bool: "a bool (true/false)", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list ({tp})"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return str(tp)


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints accepted for floats, lists for tuples)."""
    where = f"{source}: {key}"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, key)
            except ConfigError as exc:
                errors.append(exc)
        allowed = " or ".join(_type_name(a) if a is not type(None) else "null" for a in args)
        raise ConfigError(f"{where}: expected {allowed}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return _build(tp, value, source, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r} ({type(value).__name__})")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected {_type_name(bool)}, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an int, got {value!r} ({type(value).__name__})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, mapping: dict, source: str, keypath: str) -> Any:
    """``cls(**mapping)`` with every value checked; ``keypath`` is the dotted section name ('' at top)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in mapping if k not in fields)
    if unknown:
        section = f"section '{keypath}'" if keypath else "top level"
        raise ConfigError(f"{source}: unknown key(s) {unknown} at {section}; "
                          f"valid keys of {cls.__name__} are {sorted(fields)}")
    kwargs = {}
    for name, value in mapping.items():
        kwargs[name] = _convert(hints[name], value, source, f"{keypath}.{name}" if keypath else name)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {keypath or cls.__name__}: {exc}") from exc


def load_dataclass(cls: type, mapping: dict | None, source: str = "<config>") -> Any:
    """Build dataclass ``cls`` from ``mapping`` (nested dataclass fields from nested mappings).

    Raises ConfigError naming ``source``, the key and the fix on an unknown key or a wrong type.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(mapping).__name__}")
    return _build(cls, mapping, str(source), "")


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML file holding a mapping (an empty file is an empty mapping).

    A top-level ``base: OTHER.yaml`` (relative to this file) makes the file an overlay: OTHER is read first
    (itself maybe an overlay) and this file's values replace its values key by key, nested mappings merged,
    so an ablation config holds only what it changes::

        base: ../train_speechllm.yaml
        model:
          compression: blank_remove
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    if "base" not in data:
        return data
    base = path.parent / str(data.pop("base"))
    if base.resolve() in _seen or base.resolve() == path.resolve():
        raise ConfigError(f"{path}: 'base: {base}' makes a cycle of base configs")
    return _merge(read_yaml(base, (*_seen, path.resolve())), data)


def _changes_type(base: Any, overlay: dict) -> bool:
    """A section whose ``type`` the overlay changes (a front-end, an adapter) starts from the new type's defaults."""
    return isinstance(base, dict) and "type" in overlay and overlay["type"] != base.get("type")


def _merge(base: dict, overlay: dict) -> dict:
    """``base`` updated by ``overlay``, nested mappings merged key by key (a changed ``type`` replaces the section)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not _changes_type(merged[key], value):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def apply_overrides(mapping: dict, overrides: dict | None) -> dict:
    """A copy of ``mapping`` with dotted keys set: ``{"train.max_steps": 10, "tokenizer": "x"}``; setting a
    section's ``type`` to another one empties the section first (``model.adapter.type=conv``: conv's defaults)."""
    result = yaml.safe_load(yaml.safe_dump(mapping))  # deep copy of plain data
    for dotted, value in (overrides or {}).items():
        node = result
        *parents, leaf = str(dotted).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: '{part}' is not a section")
        if leaf == "type" and _changes_type(node, {"type": value}):
            node.clear()
        node[leaf] = value
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. train.max_steps=100")
    return key.strip(), yaml.safe_load(value)


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples/paths -> dicts/lists/strings that YAML writes plainly."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def dump_config(path: str | os.PathLike, obj: Any) -> Path:
    """Write the fully resolved config ``obj`` (dataclass or mapping) as YAML, atomically."""
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(to_plain(obj), sort_keys=False, allow_unicode=True))
    return path
