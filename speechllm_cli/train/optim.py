"""AdamW over the trainable parameters and the learning-rate schedules of ``TrainConfig.scheduler``.

Schedules (``step`` counts optimiser steps from 1; every one peaks at ``lr`` when ``step == warmup``):
  noam           linear warm-up, then ``lr * sqrt(warmup / step)`` (ESPnet's WarmupLR)
  warmup_cosine  linear warm-up, then cosine down to ``lr * min_lr_ratio`` at ``total_steps``
  warmup_linear  linear warm-up, then linear down to ``lr * min_lr_ratio`` at ``total_steps``
  constant       linear warm-up, then ``lr``

Example:
    >>> from speechllm_cli.train.config import TrainConfig
    >>> factor = lr_factor(TrainConfig(scheduler="warmup_linear", warmup_steps=10), total_steps=110)
    >>> [round(factor(s), 2) for s in (1, 10, 60, 110, 500)]
    [0.1, 1.0, 0.5, 0.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from speechllm_cli.train.config import TrainConfig


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of ``config.lr`` at optimiser step ``step`` (1-based)."""
    warmup = config.warmup_steps
    floor = config.min_lr_ratio

    def factor(step: int) -> float:
        step = max(step, 1)
        if warmup and step < warmup:
            return step / warmup
        if config.scheduler == "noam":
            return math.sqrt(max(warmup, 1) / step)
        if config.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(total_steps - warmup, 1))
        if config.scheduler == "warmup_cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)  # warmup_linear

    return factor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters with requires_grad; no weight decay on biases and norm gains (1-d tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (every requires_grad is False)")
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """A LambdaLR stepping once per optimiser step; its first learning rate is that of step 1."""
    factor = lr_factor(config, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: factor(index + 1))
