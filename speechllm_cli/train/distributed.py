"""Data-parallel plumbing: one code path for 1 process (no process group) and torchrun's N processes.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``init_distributed`` starts a process
group: NCCL on GPUs (one per local rank), gloo on CPU. The reductions here are no-ops in a single
process. ``launch`` re-runs a module under ``python -m torch.distributed.run``.

Example:
    >>> env = init_distributed()            # rank 0 of 1 on CPU when not under torchrun
    >>> (env.rank, env.world_size, env.is_main)
    (0, 1, True)
    >>> all_reduce_sums({"loss": (3.0, 2.0)}, env)
    {'loss': (3.0, 2.0)}
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    """This process's rank, world size and device; starts the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        logger.info("process group: rank %d of %d on %s (%s)", rank, world_size, device, dist.get_backend())
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(value: float, env: DistEnv) -> float:
    """``value`` summed over ranks."""
    if not env.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def all_gather(obj, env: DistEnv) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not env.distributed:
        return [obj]
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sums(stats: dict[str, tuple[float, float]], env: DistEnv) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` stats summed over ranks (ranks may hold different metric names)."""
    total: dict[str, tuple[float, float]] = {}
    for rank_stats in all_gather(stats, env):
        for name, (value, count) in rank_stats.items():
            old = total.get(name, (0.0, 0.0))
            total[name] = (old[0] + value, old[1] + count)
    return total


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def launch(num_procs: int, module: str, args: Sequence[str]) -> int:
    """Run ``python -m module args`` in ``num_procs`` processes under torchrun (one node); its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_procs}",
           "-m", module, *args]
    logger.info("launching: %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode
