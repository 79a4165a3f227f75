"""A registry of pluggable model parts (front-ends, adapters) chosen by ``type:`` in their config section.

Example::

    from dataclasses import dataclass
    from speechllm_cli.models.component import Registry

    @dataclass
    class LinearConfig:
        type: str = "linear"
        dim: int = 8

    PARTS = Registry("adapter", {"linear": (LinearConfig, MyLinearAdapter)})
    config = PARTS.config({"type": "linear", "dim": 16})     # LinearConfig(type="linear", dim=16)
    module = PARTS.cls(config)(config, ...)                  # the class registered for config.type

A section without ``type`` takes the first registered one. Unknown types and unknown keys are errors that name the
section and list what is known (keys are checked by ``utils.config.load_dataclass``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from speechllm_cli.utils.config import ConfigError, load_dataclass


class Registry:
    def __init__(self, kind: str, entries: dict[str, tuple[type, type]]):
        self.kind = kind
        self.entries = entries

    @property
    def default_type(self) -> str:
        return next(iter(self.entries))

    def _entry(self, name: str) -> tuple[type, type]:
        if name not in self.entries:
            raise ConfigError(f"model.{self.kind}.type {name!r} is not one of {sorted(self.entries)}")
        return self.entries[name]

    def config(self, section: Any) -> Any:
        """A section mapping (or an already built config) -> the config dataclass of its type."""
        if dataclasses.is_dataclass(section) and not isinstance(section, type):
            self._entry(section.type)
            return section
        section = dict(section or {})
        name = section.setdefault("type", self.default_type)
        config_cls, _ = self._entry(name)
        return load_dataclass(config_cls, section, source=f"model.{self.kind} ({name})")

    def cls(self, config: Any) -> type:
        return self._entry(config.type)[1]
