"""The shared training loop: any model type, given as a ``Task`` (task.py), on 1 process or under torchrun.

It reads top to bottom: ``setup`` (process group, logging, model, optimiser, scheduler, samplers,
resume), ``train`` (epochs of ``train_step`` on micro-batches), ``validate``, ``save_checkpoint``
(every ``checkpoint_every_steps`` steps and every epoch) and ``finish`` (the final models).

``<out_dir>`` receives: ``config.yaml`` (fully resolved), ``train.log``, ``history.json``,
``images/<metric>.png``, ``checkpoints/step<N>.pt`` (resume state) and ``checkpoints/epoch<E>.safetensors``
(trainable state per epoch), and at the end ``model.safetensors`` (``final_model``: the average of the
last ``average_last_k`` epochs, the best epoch or the last), ``model.best.safetensors`` and
``model.avg.safetensors``. Only rank 0 writes.

``resume=True`` continues from the newest checkpoint exactly: same batches, same dropout masks, the
same parameters bit for bit as a run that was never stopped (same world size and device).

Usage:
    from speechllm_cli.train.loop import Trainer
    model_path = Trainer(task, train_set, valid_set, train_config, "exp/ctc", resolved_config=full_config).run()
    # N processes: torchrun --nproc_per_node N -m speechllm_cli.train.ctc_task --config ... (same code path)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from speechllm_cli.train import checkpoint as ckpt
from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.dataset import BucketBatchSampler, padding_fraction
from speechllm_cli.train.distributed import (
    DistEnv,
    all_gather,
    all_reduce_sum,
    all_reduce_sums,
    barrier,
    init_distributed,
    shutdown,
)
from speechllm_cli.train.optim import build_optimizer, build_scheduler
from speechllm_cli.train.plots import plot_history
from speechllm_cli.train.task import Stats, Task, unwrap
from speechllm_cli.utils.config import ConfigError, dump_config, read_yaml, to_plain
from speechllm_cli.utils.io import atomic_write_text
from speechllm_cli.utils.logging import LOG_FORMAT, setup_logging

logger = logging.getLogger(__name__)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of ``batch`` moved to ``device``; other values (lists of texts, ids) kept."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def add_stats(total: Stats, stats: Stats) -> Stats:
    for name, (value, count) in stats.items():
        old = total.get(name, (0.0, 0.0))
        total[name] = (old[0] + float(value), old[1] + float(count))
    return total


def means(stats: Stats) -> dict[str, float]:
    return {name: value / count for name, (value, count) in sorted(stats.items()) if count > 0}


def forward_backward(model, task: Task, micro_batches: list[dict], env: DistEnv, bf16: bool = False) -> Stats:
    """Accumulate into ``.grad`` the gradient of the mean loss over the global batch (all micro-batches on
    all ranks), each micro-batch weighted by its ``stats["loss"][1]``. Returns this rank's summed stats."""
    total: Stats = {}
    local_weight = 0.0
    ddp = isinstance(model, DistributedDataParallel)
    for i, batch in enumerate(micro_batches):
        batch = to_device(batch, env.device)
        sync = contextlib.nullcontext() if not ddp or i == len(micro_batches) - 1 else model.no_sync()
        with sync:
            with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, stats = task.compute_loss(model, batch)
            if "loss" not in stats:
                raise KeyError(f"{type(task).__name__}.compute_loss must return stats['loss'] = (sum, count)")
            weight = float(stats["loss"][1])
            (loss.float() * weight).backward()  # a sum over the micro-batch's units
        local_weight += weight
        add_stats(total, stats)
    # DDP averaged the summed gradients over ranks: x world_size / global weight gives the global mean.
    scale = env.world_size / max(all_reduce_sum(local_weight, env), 1e-12)
    for param in unwrap(model).parameters():
        if param.grad is not None:
            param.grad.mul_(scale)
    return total


class Trainer:
    """Trains ``task``'s model on ``train_set`` (any dataset with ``lengths(key)``) per ``config``."""

    def __init__(self, task: Task, train_set, valid_set, config: TrainConfig, out_dir, resolved_config=None):
        self.task = task
        self.train_set = train_set
        self.valid_set = valid_set
        self.config = config
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.resolved_config = resolved_config if resolved_config is not None else {"train": config}
        self._log_handler: logging.Handler | None = None
        self.env: DistEnv | None = None

    def run(self, resume: bool = False) -> Path:
        """Set up, train, write the final models; returns the path of the final model."""
        try:
            self.setup(resume)
            with logging_redirect_tqdm():
                self.train()
                final = self.finish()
            barrier(self.env)
            return final
        finally:
            if self.env is not None:
                shutdown(self.env)
            if self._log_handler is not None:
                logging.getLogger().removeHandler(self._log_handler)
                self._log_handler.close()

    # ------------------------------------------------------------------ setup
    def setup(self, resume: bool) -> None:
        cfg = self.config
        self.env = init_distributed()
        self._setup_logging()
        found = ckpt.latest_checkpoint(self.ckpt_dir)
        if found is not None and not resume:
            raise FileExistsError(f"{self.ckpt_dir} holds checkpoints ({found.name}): pass --resume to continue, "
                                  f"or remove {self.out_dir} to start over")
        self._write_config(resume and found is not None)

        ckpt.seed_everything(cfg.seed)
        model = self.task.build_model().to(self.env.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        num_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        self.param_counts = {"params_trained": sum(p.numel() for p in self.params),
                             "params_total": sum(p.numel() for p in self.params) + num_frozen}
        logger.info("model: %s; %.2fM trainable parameters, %.2fM frozen", type(model).__name__,
                    sum(p.numel() for p in self.params) / 1e6, num_frozen / 1e6)
        self.optimizer = build_optimizer(model, cfg)

        env = self.env
        self.train_lengths = self.train_set.lengths(self.task.length_key)
        self.sampler = BucketBatchSampler(self.train_lengths, cfg.batch_frames, cfg.max_batch_size, seed=cfg.seed,
                                          bucket_size=cfg.bucket_size, num_replicas=env.world_size, rank=env.rank)
        if self.valid_set is not None:
            self.valid_sampler = BucketBatchSampler(
                self.valid_set.lengths(self.task.length_key), cfg.batch_frames, cfg.max_batch_size, shuffle=False,
                bucket_size=cfg.bucket_size, num_replicas=env.world_size, rank=env.rank, pad_shards=False)
        steps_per_epoch = math.ceil(self.sampler.num_batches(1) / cfg.accum_grad)
        self.total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        logger.info("%d training examples, ~%d steps per epoch, %d steps in all, %d process(es) on %s",
                    len(self.train_set), steps_per_epoch, self.total_steps, env.world_size, env.device)

        self.step, self.epoch, self.batch_pos = 0, 1, 0
        self.history: list[dict] = []
        self.epoch_stats: Stats = {}
        self.best: dict = {"epoch": None, "value": None}
        self.earlier_train_seconds = 0.0  # wall time of the runs before a resume
        torch.manual_seed(cfg.seed + env.rank)  # per-rank randomness (dropout) from here on
        if resume and found is not None:
            self._load_checkpoint(model, found)
        elif resume:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.ckpt_dir)
        self.model = DistributedDataParallel(model) if env.distributed else model
        self.run_start = time.perf_counter()

    def _setup_logging(self) -> None:
        root = logging.getLogger()
        if not root.handlers:
            setup_logging()
        root.setLevel(min(root.level or logging.INFO, logging.INFO))  # train.log gets INFO (DEBUG kept)
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._log_handler = logging.FileHandler(self.out_dir / "train.log", encoding="utf-8")
            self._log_handler.setFormatter(logging.Formatter(LOG_FORMAT))
            logging.getLogger().addHandler(self._log_handler)
        else:
            logging.getLogger("speechllm_cli").setLevel(logging.WARNING)

    def _write_config(self, resuming: bool) -> None:
        if not self.env.is_main:
            return
        path = self.out_dir / "config.yaml"
        plain = to_plain(self.resolved_config)
        if resuming and path.is_file():
            old = read_yaml(path)
            if old != plain:
                changed = sorted(k for k in set(old) | set(plain) if old.get(k) != plain.get(k))
                logger.warning("resuming with a config that differs from %s in section(s) %s", path, changed)
        dump_config(path, plain)

    # ------------------------------------------------------------------ train
    def reached_max_steps(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def train(self) -> None:
        while self.epoch <= self.config.epochs and not (self.reached_max_steps() and self.batch_pos == 0):
            self.train_epoch()
            self.end_epoch()

    def _loader(self, dataset, batches: list[list[int]], seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)  # worker seeds; keeps the global RNG untouched
        return DataLoader(dataset, batch_sampler=batches, collate_fn=self.task.collate,
                          num_workers=self.config.num_workers, pin_memory=self.env.device.type == "cuda",
                          generator=generator)

    def train_epoch(self) -> None:
        cfg, env = self.config, self.env
        if hasattr(self.train_set, "set_epoch"):  # on-the-fly augmentation draws per (seed, epoch, utterance)
            self.train_set.set_epoch(self.epoch)
        batches = self.sampler.shard(self.sampler.batches(self.epoch))
        if self.batch_pos == 0:
            logger.info("epoch %d: %d batches per rank, padding %.1f%%", self.epoch, len(batches),
                        100 * padding_fraction(self.train_lengths, batches))
        todo = batches[self.batch_pos:]
        loader = self._loader(self.train_set, todo, seed=cfg.seed * 100003 + self.epoch * 101 + env.rank)
        self.model.train()
        # a bar on a terminal only (disable=None: off when not a tty); log lines report progress every log_interval
        progress = tqdm(total=len(batches), initial=self.batch_pos, desc=f"epoch {self.epoch}", unit="batch",
                        disable=None if env.is_main else True, leave=False, dynamic_ncols=True)
        interval: Stats = {}
        frames, start = 0, time.perf_counter()
        micro: list[dict] = []
        for indices, batch in zip(todo, loader):
            micro.append(batch)
            frames += sum(self.train_lengths[i] for i in indices)
            if len(micro) < cfg.accum_grad and self.batch_pos + len(micro) < len(batches):
                continue
            stats = self.train_step(micro)
            self.batch_pos += len(micro)
            self.step += 1
            progress.update(len(micro))
            micro = []
            add_stats(self.epoch_stats, stats)
            add_stats(interval, stats)
            if self.step % cfg.log_interval == 0:
                elapsed = time.perf_counter() - start
                shown = " ".join(f"{k} {v:.4g}" for k, v in means(interval).items())
                logger.info("epoch %d step %d: %s lr %.3g, %.0f frames/s (rank 0)", self.epoch, self.step, shown,
                            self.scheduler.get_last_lr()[0], frames / max(elapsed, 1e-9))
                progress.set_postfix_str(shown)
                interval, frames, start = {}, 0, time.perf_counter()
            if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                self.save_checkpoint()
            if self.reached_max_steps():
                break
        progress.close()

    def train_step(self, micro_batches: list[dict]) -> Stats:
        """One optimiser step over ``micro_batches`` (this rank's share of the global batch)."""
        stats = forward_backward(self.model, self.task, micro_batches, self.env, self.config.bf16)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)  # the norm before clipping
        if torch.isfinite(norm):
            self.optimizer.step()
        else:
            logger.warning("step %d: gradient norm %s, update skipped", self.step + 1, norm.item())
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return stats

    # ------------------------------------------------------------------ validate
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.valid_set is None:
            return {}
        model = unwrap(self.model)
        model.eval()
        batches = self.valid_sampler.shard(self.valid_sampler.batches(0))
        total: Stats = {}
        loader = self._loader(self.valid_set, batches, seed=self.env.rank)
        for batch in tqdm(loader, total=len(batches), desc="valid", unit="batch", leave=False,
                          disable=None if self.env.is_main else True, dynamic_ncols=True):
            with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                add_stats(total, self.task.validate_batch(model, to_device(batch, self.env.device)))
        model.train()
        return self.task.derived_metrics(means(all_reduce_sums(total, self.env)))

    def end_epoch(self) -> None:
        """Validate, record the epoch, keep its trainable state, draw the curves, checkpoint."""
        cfg, epoch = self.config, self.epoch
        entry = {"epoch": epoch, "step": self.step, "train": means(all_reduce_sums(self.epoch_stats, self.env)),
                 "valid": self.validate()}
        self.history.append(entry)
        logger.info("epoch %d done (step %d): train %s | valid %s", epoch, self.step,
                    _fmt(entry["train"]), _fmt(entry["valid"]))
        for warning in self.task.epoch_warnings(entry["valid"]):
            logger.warning("epoch %d: %s", epoch, warning)
        scores = entry["valid"] or entry["train"]
        if cfg.best_metric not in scores:
            raise ConfigError(f"train.best_metric '{cfg.best_metric}' is not a validation metric; "
                              f"choose one of {sorted(scores)}")
        value = scores[cfg.best_metric]
        old = self.best["value"]
        if old is None or (value < old if cfg.best_mode == "min" else value > old):
            self.best = {"epoch": epoch, "value": value}
        if self.env.is_main:
            ckpt.save_snapshot(self.task.trainable_state_dict(self.model), ckpt.snapshot_path(self.ckpt_dir, epoch))
            keep = {e["epoch"] for e in self.history[-cfg.average_last_k:]} | {self.best["epoch"]}
            ckpt.prune_snapshots(self.ckpt_dir, keep)
            plot_history(self.history, self.out_dir / "images")
            atomic_write_text(self.out_dir / "history.json", json.dumps(
                {"history": self.history, "best": self.best}, indent=1))
        self.epoch += 1
        self.batch_pos = 0
        self.epoch_stats = {}
        self.save_checkpoint()

    # ------------------------------------------------------------------ checkpoints
    def train_seconds(self) -> float:
        """Wall time spent training so far, over every run of this experiment (resumes included)."""
        return self.earlier_train_seconds + time.perf_counter() - self.run_start

    def save_checkpoint(self) -> None:
        rng_states = all_gather(ckpt.rng_state(), self.env)  # a collective: every rank calls it
        if not self.env.is_main:
            return
        payload = {
            "model": {k: v.detach().cpu() for k, v in self.task.trainable_state_dict(self.model).items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
            "epoch_stats": {k: list(v) for k, v in self.epoch_stats.items()},
            "history": self.history, "best": self.best,
            "rng": rng_states, "world_size": self.env.world_size, "train_seconds": self.train_seconds(),
        }
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.ckpt_dir, self.step), payload)
        ckpt.prune_checkpoints(self.ckpt_dir, self.config.keep_last_checkpoints)
        logger.info("saved %s (epoch %d, batch %d)", path, self.epoch, self.batch_pos)

    def _load_checkpoint(self, model, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        self.task.load_trainable_state_dict(model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_pos = state["step"], state["epoch"], state["batch_pos"]
        self.epoch_stats = {k: tuple(v) for k, v in state["epoch_stats"].items()}
        self.history, self.best = state["history"], state["best"]
        self.earlier_train_seconds = state.get("train_seconds", 0.0)
        if state["world_size"] == self.env.world_size:
            ckpt.set_rng_state(state["rng"][self.env.rank])
        else:
            logger.warning("checkpoint from %d process(es), now %d: batches and dropout will differ from an "
                           "uninterrupted run", state["world_size"], self.env.world_size)
        logger.info("%s", ckpt.resume_marker(path, self.step, self.epoch, self.batch_pos))

    # ------------------------------------------------------------------ final models
    def finish(self) -> Path:
        """Write model.best / model.avg (last ``average_last_k`` epochs) and model (``final_model``)."""
        cfg = self.config
        final = self.out_dir / "model.safetensors"
        if self.env.is_main:
            last = {k: v.detach().cpu().clone() for k, v in self.task.trainable_state_dict(self.model).items()}
            epochs = [e["epoch"] for e in self.history[-cfg.average_last_k:]]
            avg = ckpt.average_states([ckpt.load_snapshot(ckpt.snapshot_path(self.ckpt_dir, e)) for e in epochs])
            best = ckpt.load_snapshot(ckpt.snapshot_path(self.ckpt_dir, self.best["epoch"]))
            logger.info("best epoch %d (%s %.4g); average of epochs %s", self.best["epoch"], cfg.best_metric,
                        self.best["value"], epochs)
            self.task.save_model(self.model, best, self.out_dir, "model.best")
            self.task.save_model(self.model, avg, self.out_dir, "model.avg")
            chosen = {"avg": avg, "best": best, "last": last}[cfg.final_model]
            final = self.task.save_model(self.model, chosen, self.out_dir, "model")
            info = {"model_type": self.task.model_type, **self.param_counts, "train_time_s": self.train_seconds(),
                    "processes": self.env.world_size, "command": shlex.join(sys.argv)}
            atomic_write_text(self.out_dir / "model_info.json", json.dumps(info, indent=1) + "\n")
            logger.info("final model (%s): %s; %.1f min of training", cfg.final_model, final, info["train_time_s"] / 60)
        return final


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "-"
