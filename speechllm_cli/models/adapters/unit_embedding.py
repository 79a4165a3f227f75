"""Adapter ``unit_embedding``: one trained LLM input embedding per discrete unit (new vocabulary rows).

Example::

    import torch
    from speechllm_cli.models.adapters.unit_embedding import UnitEmbeddingAdapter, UnitEmbeddingAdapterConfig

    adapter = UnitEmbeddingAdapter(UnitEmbeddingAdapterConfig(), input_dim=500, llm_dim=576)
    one_hot = torch.nn.functional.one_hot(torch.tensor([[3, 7, 7]]), 500).float()   # (B=1, U=3, K=500)
    embeds, lens = adapter(one_hot, torch.tensor([3]))     # (1, 3, 576): rows 3, 7, 7 of the table

With the ``kmeans_units`` front-end (one-hot frames) this is the audio-token family's extended vocabulary: K new
token embeddings (``output_proj.weight.T``, K x H) trained while LoRA adapts the frozen LLM; the LLM's own rows are
untouched, so the LLM file (and its GGUF export) stays the same and unit tokens are fed as embeddings. The rows start
like new tokens of a resized vocabulary: drawn around the mean of the LLM's token embeddings with their per-dimension
spread (``init_from_token_embeddings``, called by the speech LLM). One position out per unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class UnitEmbeddingAdapterConfig:
    type: str = "unit_embedding"
    init_scale: float = 1.0  # the new rows' spread, times the LLM embeddings' per-dimension standard deviation


class UnitEmbeddingAdapter(nn.Module):
    """(B, U, K) one-hot (or soft) units -> (B, U, llm_dim) = units @ table; lengths unchanged."""

    def __init__(self, config: UnitEmbeddingAdapterConfig, input_dim: int, llm_dim: int):
        super().__init__()
        if config.init_scale <= 0:
            raise ValueError(f"model.adapter.init_scale must be positive, got {config.init_scale!r}")
        self.config = config
        self.output_proj = nn.Linear(input_dim, llm_dim, bias=False)  # weight (H, K): column k is unit k's embedding

    def init_from_token_embeddings(self, embeddings: torch.Tensor) -> None:
        """Draw each unit's row from N(mean, (init_scale * std)^2) of the LLM's token embeddings (V, H), per dim."""
        embeddings = embeddings.detach().float()
        mean, std = embeddings.mean(0), embeddings.std(0) * self.config.init_scale  # (H,), (H,)
        rows = mean + std * torch.randn(self.output_proj.weight.shape[1], embeddings.shape[1])  # (K, H)
        with torch.no_grad():
            self.output_proj.weight.copy_(rows.T.to(self.output_proj.weight.dtype))

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return lens

    def pool(self, values: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return values

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.output_proj(x), lens
