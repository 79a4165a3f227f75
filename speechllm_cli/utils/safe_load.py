"""Refusing pickled files: ``torch.load`` only with ``weights_only=True``, and our own message when it refuses.

A ``.pt``/``.bin`` file that holds pickled Python objects (not just tensors and plain containers) could run code
when unpickled, so speechllm never loads it. :func:`load_weights_only` raises :class:`UnsafeCheckpointError`
naming the file, the object that made torch refuse it and how to convert a trusted file to safetensors, with
this module's converter (the one place that unpickles, and only when asked to on the command line).

Usage:
    python -m speechllm_cli.utils.safe_load IN.pt OUT.safetensors --trust   # only for a file you trust
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path

import torch

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeCheckpointError(ValueError):
    """A file holds pickled Python objects; the message names it, the object, and how to convert it."""


class CorruptCheckpointError(ValueError):
    """A file is not a readable torch checkpoint (truncated, or not a checkpoint at all)."""


def unsafe_file_error(path: str | os.PathLike, exc: BaseException, what_else: str = "",
                      convert_to: str | os.PathLike | None = None) -> UnsafeCheckpointError:
    """Our message for torch's weights-only refusal ``exc`` of ``path``: the file, the object that made torch refuse
    it, and the command converting it to ``convert_to`` (default: ``path`` with the suffix .safetensors);
    ``what_else`` ends the message."""
    found = _GLOBAL.search(str(exc))
    holds = f"a pickled {found.group(1)} object" if found else "pickled Python objects"
    convert_to = convert_to or Path(path).with_suffix(".safetensors")
    return UnsafeCheckpointError(
        f"{path}: refused: it holds {holds}, and unpickling such a file can run arbitrary code, so speechllm reads "
        "torch files with the weights-only loader only (tensors, numbers, strings, lists and dicts). If you trust "
        f"where the file came from, convert its tensors to safetensors once: "
        f"`python -m speechllm_cli.utils.safe_load {path} {convert_to} --trust`. {what_else}".rstrip()
    )


def load_weights_only(path: str | os.PathLike, what_else: str = "") -> dict:
    """``torch.load(path, weights_only=True)`` on CPU; UnsafeCheckpointError or CorruptCheckpointError otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise unsafe_file_error(path, exc, what_else) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0]}); it was "
                                     f"cut short or is not a checkpoint. {what_else}") from None


def _tensors(value, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().cpu().contiguous()
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensors(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _tensors(item, f"{prefix}.{i}" if prefix else str(i), out)


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Unpickle ``src`` (trusted by the caller) and save every tensor in it to ``dst`` (nested dict keys joined by
    dots: a plain state dict keeps its keys). Returns the number of tensors."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    _tensors(torch.load(src, map_location="cpu", weights_only=False), "", tensors)
    if not tensors:
        raise ValueError(f"{src}: holds no tensors")
    save_file({k: v.clone() for k, v in tensors.items()}, str(dst))
    return len(tensors)


def main(argv: list[str] | None = None) -> int:
    """Command line of :func:`convert_to_safetensors`."""
    parser = argparse.ArgumentParser(description="Convert a trusted pickled torch file to safetensors.")
    parser.add_argument("src", help="the .pt/.bin file (it is unpickled: only a file you trust)")
    parser.add_argument("dst", help="the .safetensors file to write")
    parser.add_argument("--trust", action="store_true", help="confirm that you trust SRC (required)")
    args = parser.parse_args(argv)
    if not args.trust:
        parser.error("unpickling can run code hidden in the file: pass --trust if you know where it came from")
    print(f"wrote {convert_to_safetensors(args.src, args.dst)} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
