"""Training checkpoints: what ``--resume`` needs to continue bit for bit, in torch.load(weights_only=True) form.

A checkpoint (``<out>/checkpoints/step<N>.pt``) is a dict of tensors and plain Python values:
the trainable model state, optimiser and scheduler states, step, epoch, the position in the
epoch, the metric history and every rank's RNG states (python, numpy, torch, cuda) converted to
tensors and lists. Epoch snapshots (``epoch<E>.safetensors``) hold the trainable state alone and
feed the best / averaged final models.

Example:
    >>> state = rng_state()
    >>> import torch; a = torch.rand(2); set_rng_state(state); b = torch.rand(2)
    >>> bool((a == b).all())
    True
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from speechllm_cli.utils.io import atomic_path
from speechllm_cli.utils.safe_load import load_weights_only

CHECKPOINT_RE = re.compile(r"^step(\d+)\.pt$")
SNAPSHOT_RE = re.compile(r"^epoch(\d+)\.safetensors$")


def rng_state() -> dict:
    """This process's RNG states as tensors, lists and ints (loadable with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (a killed run never leaves half a file)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``save_checkpoint``, on CPU, without unpickling arbitrary objects.

    A file holding pickled objects raises UnsafeCheckpointError, an unreadable one CorruptCheckpointError (both
    ValueErrors whose message names the file and what to do; no traceback of torch's)."""
    return load_weights_only(path, what_else="Training cannot resume from it: delete it to resume from the "
                                             "checkpoint before it, or start over.")


def resume_marker(path: str | os.PathLike, step: int, epoch: int, batch_pos: int) -> str:
    """The train.log line that marks where a resumed run takes over: what the stopped run logged after ``step``
    was redone by this run, so the lines after this one replace those."""
    return (f"===== resumed from {path}: step {step}, epoch {epoch}, batch {batch_pos} ===== lines below replace "
            f"what the stopped run logged after step {step}")


def _numbered(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step{step:08d}.pt"


def snapshot_path(folder: str | os.PathLike, epoch: int) -> Path:
    return Path(folder) / f"epoch{epoch:04d}.safetensors"


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step in ``folder`` (None when there is none)."""
    found = _numbered(Path(folder), CHECKPOINT_RE)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for _, path in _numbered(Path(folder), CHECKPOINT_RE)[:-keep]:
        path.unlink(missing_ok=True)


def prune_snapshots(folder: str | os.PathLike, keep_epochs: set[int]) -> None:
    """Delete epoch snapshots other than ``keep_epochs``."""
    for epoch, path in _numbered(Path(folder), SNAPSHOT_RE):
        if epoch not in keep_epochs:
            path.unlink(missing_ok=True)


def save_snapshot(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """``state`` as a safetensors file (CPU copies, so tied or strided tensors save), written atomically."""
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def load_snapshot(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} missing: the epoch snapshot was deleted; rerun training")
    return load_file(str(path))


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (in float64, cast back); other tensors from the last state."""
    if not states:
        raise ValueError("nothing to average")
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(s[key].to(torch.float64) for s in states)
            averaged[key] = (total / len(states)).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged
