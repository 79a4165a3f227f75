"""A stage's options as dataclasses: the one source of their defaults, and the YAML file a job reads them from.

A subcommand's options are the fields of one or two dataclasses (as ``FbankConfig`` in features/fbank.py). The Typer
command takes each default from a field (:func:`field_default`), the Python entry point builds the dataclass from
keyword fields (:func:`split_fields`), and a job that a stage launches (``decode --nj``, ``train --num-procs``)
reads the resolved options from a flat YAML file (:func:`write_options`, :func:`read_options`) instead of a command
line that repeats every flag.

Example:
    >>> import dataclasses, tempfile
    >>> @dataclasses.dataclass
    ... class Search:
    ...     beam: int = 1
    ...     langs: tuple[str, ...] = ("en",)
    >>> @dataclasses.dataclass
    ... class Run:
    ...     nj: int = 1
    >>> field_default(Search, "beam")
    1
    >>> split_fields({"beam": 4, "nj": 2}, Search, Run)
    [{'beam': 4}, {'nj': 2}]
    >>> path = write_options(tempfile.mkdtemp() + "/options.yaml", Search(beam=4, langs=("en", "de")), Run())
    >>> read_options(path, Search, Run)
    [{'beam': 4, 'langs': ('en', 'de')}, {'nj': 1}]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from speechllm_cli.utils.config import ConfigError, dump_config, load_dataclass, read_yaml, to_plain


def field_default(cls: type, name: str) -> Any:
    """The default of the field ``name`` of the dataclass ``cls`` (a fresh value for a ``default_factory``)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"{cls.__name__}.{name} has no default")


def split_fields(values: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """``values`` split by the dataclass (of ``classes``) each key is a field of; an unknown key is a TypeError."""
    parts: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in values.items():
        owner = next((i for i, cls in enumerate(classes) if key in {f.name for f in dataclasses.fields(cls)}), None)
        if owner is None:
            valid = sorted(f.name for cls in classes for f in dataclasses.fields(cls))
            raise TypeError(f"unknown option {key!r}; valid options are {valid}")
        parts[owner][key] = value
    return parts


def write_options(path: str | os.PathLike, *objs: Any) -> Path:
    """Write the fields of the dataclass instances ``objs`` as one flat YAML mapping (atomically)."""
    merged: dict[str, Any] = {}
    for obj in objs:
        merged.update(to_plain(obj))
    return dump_config(path, merged)


def read_options(path: str | os.PathLike, *classes: type) -> list[dict[str, Any]]:
    """The fields each dataclass of ``classes`` gets from the flat YAML mapping ``path`` (only the keys it holds),
    type-checked as an experiment config is; an unknown key or a wrong type is a ConfigError naming the file."""
    try:
        parts = split_fields(read_yaml(path), *classes)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for cls, part in zip(classes, parts):
        checked = load_dataclass(cls, part, source=str(path))
        part.update({name: getattr(checked, name) for name in part})
    return parts
