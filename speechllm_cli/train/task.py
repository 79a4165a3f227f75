"""What a model type gives the shared training loop: a ``Task``.

The loop (loop.py) owns everything generic: batching, optimiser, scheduler, accumulation, clipping,
bf16 autocast, DDP, validation, logging, plots, checkpoints and the final model. A task owns what
is model-specific, in six plain methods (three with defaults):

========================================  =======================================================
``build_model() -> nn.Module``            a fresh model on CPU; frozen parts set requires_grad=False
``collate(examples) -> batch``            dataset examples -> dict of tensors (+ plain lists, e.g.
                                          reference texts); the loop moves tensors to the device
``compute_loss(model, batch)``            -> ``(loss, stats)``; see "Loss and stats" below
``validate_batch(model, batch)``          -> stats; default: compute_loss's stats under no_grad
``derived_metrics(metrics)``              validation means + metrics computed from them (default: as is)
``trainable_state_dict(model)``           what checkpoints and the final model hold (default:
                                          trainable parameters + buffers outside frozen modules)
``load_trainable_state_dict(model, st)``  the reverse (default: strict on the saved keys)
``save_model(model, state, out_dir, n)``  write a final model variant ``n`` ("model", "model.best",
                                          "model.avg"...); default ``<out_dir>/<n>.safetensors``
========================================  =======================================================

Plus ``length_key``: the length each example adds to the batch budget (``DumpDataset.lengths`` key,
``"num_frames"`` by default).

Loss and stats: ``stats`` maps a metric name to ``(sum, count)``, e.g. ``{"loss": (12.6, 4.0),
"cer": (30.0, 211.0)}``; a metric's value is ``sum / count`` over an epoch (all ranks). ``loss`` is
the batch mean ``stats["loss"][0] / stats["loss"][1]`` as a tensor; the loop weights each
micro-batch by ``stats["loss"][1]`` so that a step's gradient is the gradient of the mean over the
whole global batch (every micro-batch on every rank), whatever the split.

``compute_loss`` gets the model as the loop runs it (wrapped in DistributedDataParallel under
torchrun) and must call it (``model(...)``) exactly once; for other methods use ``unwrap(model)``.
``validate_batch`` gets the bare model in eval mode under ``torch.no_grad()``.

Example (a speech-LLM task, sketched)::

    class SpeechLLMTask(Task):
        def __init__(self, config): self.config = config
        def build_model(self): return build_speech_llm(self.config.model)
        def collate(self, examples): ...   # feats (B, T, 80), feat_lens (B,), prompt/target ids
        def compute_loss(self, model, batch):
            loss, s = model(batch["feats"], batch["feat_lens"], batch["prompt_ids"], batch["target_ids"])
            n = s["num_utts"]
            return loss, {"loss": (s["loss"] * n, n), "acc": (s["acc"] * s["num_tokens"], s["num_tokens"])}
        def trainable_state_dict(self, model): return unwrap(model).trainable_state_dict()
        def load_trainable_state_dict(self, model, state): unwrap(model).load_trainable_state_dict(state)
        def save_model(self, model, state, out_dir, name):
            self.load_trainable_state_dict(model, state); save_speech_llm(unwrap(model), out_dir / name)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from speechllm_cli.train.checkpoint import save_snapshot

Stats = dict[str, tuple[float, float]]  # metric name -> (sum, count)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _frozen_prefixes(model: nn.Module) -> list[str]:
    """Names of submodules that have parameters, all of them frozen (their buffers are not saved)."""
    frozen = []
    for name, module in model.named_modules():
        params = list(module.parameters())
        if name and params and not any(p.requires_grad for p in params):
            frozen.append(name + ".")
    return frozen


def default_trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters with requires_grad, plus persistent buffers not inside a fully frozen submodule."""
    model = unwrap(model)
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = _frozen_prefixes(model)
    persistent = set(model.state_dict(keep_vars=True))
    for name, buf in model.named_buffers():
        if name in persistent and not any(name.startswith(prefix) for prefix in frozen):
            state[name] = buf.detach()
    return state


class Task:
    """Base class of the model-specific part of training; subclass and fill in the first three methods."""

    length_key: str = "num_frames"
    model_type: str = "model"  # recorded in model_info.json (the results table's "type" column)

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict:
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def validate_batch(self, model: nn.Module, batch: dict) -> Stats:
        return self.compute_loss(model, batch)[1]

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Validation metrics (means over the set) plus any computed from them (e.g. a ratio of two)."""
        return metrics

    def epoch_warnings(self, metrics: dict[str, float]) -> list[str]:
        """What an epoch's validation metrics say is going wrong (the loop logs each as a warning)."""
        return []

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return default_trainable_state_dict(model)

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model = unwrap(model)
        expected = set(self.trainable_state_dict(model))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"saved state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.load_state_dict(state, strict=False)

    def save_model(self, model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path, name: str) -> Path:
        return save_snapshot(state, Path(out_dir) / f"{name}.safetensors")
