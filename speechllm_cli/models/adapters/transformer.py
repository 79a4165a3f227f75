"""The Speech-LLaMA audio encoder as an adapter: Linear -> positions -> N Transformer layers -> LayerNorm -> Linear.

Example::

    import torch
    from speechllm_cli.models.adapters.transformer import TransformerAdapter, TransformerAdapterConfig

    adapter = TransformerAdapter(TransformerAdapterConfig(num_layers=2), input_dim=256, llm_dim=576)
    embeds, lens = adapter(torch.randn(2, 30, 256), torch.tensor([30, 17]))
    print(embeds.shape, lens)        # torch.Size([2, 30, 576]) tensor([30, 17]); one vector per input frame

Layers are pre-LayerNorm ``nn.TransformerEncoderLayer``s with sinusoidal positions added after the input
projection. Attention is non-causal by default (``causal: true`` masks future frames); padded frames are
never attended to. The frame rate is the front-end's (with CTC compression: one vector per label).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechllm_cli.models.adapters.base import check_config
from speechllm_cli.models.subsampling import sinusoidal_positions


@dataclass
class TransformerAdapterConfig:
    type: str = "transformer"
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    causal: bool = False


class TransformerAdapter(nn.Module):
    """Linear(D_in -> d_model) + positions -> N Transformer layers -> LayerNorm -> Linear(d_model -> llm_dim)."""

    def __init__(self, config: TransformerAdapterConfig, input_dim: int, llm_dim: int):
        super().__init__()
        check_config(config, positive=("num_layers", "d_model", "num_heads", "ff_dim"))
        self.config = config
        self.input_proj = nn.Linear(input_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.d_model, config.num_heads, config.ff_dim, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model)
        self.output_proj = nn.Linear(config.d_model, llm_dim)

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return lens

    def pool(self, values: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return values  # one output per input frame

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, D_in) float, lens: (B,) -> (B, T, llm_dim) (junk at t >= lens[b]), lens."""
        _, frames, _ = x.shape
        hidden = self.input_proj(x) + sinusoidal_positions(frames, self.config.d_model, x.device)  # (B, T, D)
        hidden = self.dropout(hidden)
        frame_idx = torch.arange(frames, device=x.device)
        # an utterance with 0 frames keeps frame 0 visible so no attention row is empty (its output is unused)
        padding = frame_idx[None, :] >= lens.to(x.device).clamp(min=1)[:, None]  # (B, T) True = padded
        causal = frame_idx[None, :] > frame_idx[:, None] if self.config.causal else None  # (T, T) True = future
        for layer in self.layers:
            hidden = layer(hidden, src_mask=causal, src_key_padding_mask=padding, is_causal=False)
        return self.output_proj(self.final_norm(hidden)), lens
