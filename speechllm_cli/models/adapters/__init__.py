"""Adapters: front-end frames -> the LLM's embedding space, chosen by ``type:`` in the ``model.adapter`` section.

Example::

    from speechllm_cli.models.adapters import adapter_config, build_adapter

    config = adapter_config({"type": "stack_mlp", "stack": 4})          # -> StackMLPAdapterConfig
    adapter = build_adapter(config, input_dim=256, llm_dim=576)
    embeds, lens = adapter(frames, frame_lens)                           # (B, T_out, 576), (B,)

The interface every adapter keeps is in ``base.py``. To add one: write its module (a config dataclass whose first
field is ``type``, and the ``nn.Module``), add one line to ``ADAPTERS`` and a ``conf/tuning/adapter_<type>.yaml``.
"""

from __future__ import annotations

from torch import nn

from speechllm_cli.models.adapters.conv import ConvAdapter, ConvAdapterConfig
from speechllm_cli.models.adapters.qformer import QFormerAdapter, QFormerAdapterConfig
from speechllm_cli.models.adapters.stack_mlp import StackMLPAdapter, StackMLPAdapterConfig
from speechllm_cli.models.adapters.transformer import TransformerAdapter, TransformerAdapterConfig
from speechllm_cli.models.adapters.unit_embedding import UnitEmbeddingAdapter, UnitEmbeddingAdapterConfig
from speechllm_cli.models.component import Registry

ADAPTERS = Registry("adapter", {
    "transformer": (TransformerAdapterConfig, TransformerAdapter),  # Speech-LLaMA's audio encoder
    "stack_mlp": (StackMLPAdapterConfig, StackMLPAdapter),  # SLAM-ASR: k frames concatenated -> 2-layer MLP
    "conv": (ConvAdapterConfig, ConvAdapter),  # strided 1-D convolution -> linear
    "qformer": (QFormerAdapterConfig, QFormerAdapter),  # window-level Q-Former (SALMONN, Granite Speech)
    "unit_embedding": (UnitEmbeddingAdapterConfig, UnitEmbeddingAdapter),  # discrete units -> new token rows
})


def adapter_config(section):
    """The typed config of a ``model.adapter`` section (a mapping with ``type``, or a config already built)."""
    return ADAPTERS.config(section)


def build_adapter(config, input_dim: int, llm_dim: int) -> nn.Module:
    return ADAPTERS.cls(config)(config, input_dim, llm_dim)
