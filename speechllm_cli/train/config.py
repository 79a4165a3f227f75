"""The shared training loop's settings: ``TrainConfig``, the ``train:`` section of every experiment config.

Reading, checking and writing configs lives in speechllm_cli.utils.config (load_dataclass, read_yaml, ...).

Example:
    >>> from speechllm_cli.utils.config import load_dataclass
    >>> config = load_dataclass(TrainConfig, {"lr": 1e-3, "epochs": 2}, source="conf/x.yaml")
    >>> (config.lr, config.epochs, config.scheduler)
    (0.001, 2, 'noam')
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from speechllm_cli.features.augment import AugmentConfig
from speechllm_cli.utils.config import ConfigError


@dataclasses.dataclass
class TrainConfig:
    """The shared training loop's settings (the ``train:`` section of an experiment config)."""

    batch_frames: int = 20000  # budget per batch: longest example x number of examples (padded frames)
    max_batch_size: int = 64  # at most this many examples per batch
    bucket_size: int = 2000  # examples per length bucket (shuffled, then sorted by length within)
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (None: run all epochs)
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 1000
    scheduler: Literal["noam", "warmup_cosine", "warmup_linear", "constant"] = "noam"
    min_lr_ratio: float = 0.0  # cosine/linear decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: float = 5.0  # max global gradient norm (0: no clipping)
    accum_grad: int = 1  # micro-batches per optimiser step
    bf16: bool = False  # bfloat16 autocast for forward and loss
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
    keep_last_checkpoints: int = 2
    average_last_k: int = 1  # final model = average of the last K epoch snapshots
    final_model: Literal["avg", "best", "last"] = "avg"  # which variant model.safetensors holds
    best_metric: str = "loss"  # validation metric that picks the best epoch
    best_mode: Literal["min", "max"] = "min"
    log_interval: int = 20  # optimiser steps between train.log lines
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)  # noise / reverberation on the fly

    def __post_init__(self):
        positive = ("batch_frames", "max_batch_size", "bucket_size", "epochs", "accum_grad", "log_interval",
                    "keep_last_checkpoints", "average_last_k")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.checkpoint_every_steps < 0 or self.num_workers < 0:
            raise ConfigError("train.warmup_steps, checkpoint_every_steps and num_workers must be >= 0")
