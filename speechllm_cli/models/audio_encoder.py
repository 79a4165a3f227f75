"""Audio encoder: compressed CTC-compressor states -> Transformer layers -> vectors in the LLM embedding space.

Example::

    import torch
    from speechllm_cli.models.audio_encoder import AudioEncoder, AudioEncoderConfig

    encoder = AudioEncoder(AudioEncoderConfig(num_layers=2), input_dim=256, llm_dim=576)
    hidden = torch.randn(2, 30, 256)                  # (B, T, Din) compressed compressor states
    audio_embeds = encoder(hidden, torch.tensor([30, 17]))
    print(audio_embeds.shape)                         # torch.Size([2, 30, 576]); frames past a length are junk

Layers are pre-LayerNorm ``nn.TransformerEncoderLayer``s with sinusoidal positions added after the input
projection. Attention is non-causal by default (``causal=True`` masks future frames); padded frames are
never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechllm_cli.models.subsampling import sinusoidal_positions


@dataclass
class AudioEncoderConfig:
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    causal: bool = False


class AudioEncoder(nn.Module):
    """Linear(Din -> d_model) + positions -> N Transformer layers -> LayerNorm -> Linear(d_model -> llm_dim)."""

    def __init__(self, config: AudioEncoderConfig, input_dim: int, llm_dim: int):
        super().__init__()
        if config.d_model % config.num_heads:
            raise ValueError(f"audio encoder d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
        self.config = config
        self.input_proj = nn.Linear(input_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model,
                config.num_heads,
                config.ff_dim,
                config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model)
        self.output_proj = nn.Linear(config.d_model, llm_dim)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """x: (B, T, Din) float, lens: (B,) valid frames -> (B, T, llm_dim); frames at t >= lens[b] are junk."""
        batch, frames, _ = x.shape
        hidden = self.input_proj(x) + sinusoidal_positions(frames, self.config.d_model, x.device)  # (B, T, D)
        hidden = self.dropout(hidden)
        frame_idx = torch.arange(frames, device=x.device)
        # an utterance with 0 frames keeps frame 0 visible so no attention row is empty (its output is unused)
        padding = frame_idx[None, :] >= lens.to(x.device).clamp(min=1)[:, None]  # (B, T) True = padded
        causal = None
        if self.config.causal:
            causal = frame_idx[None, :] > frame_idx[:, None]  # (T, T) True = masked (future)
        for layer in self.layers:
            hidden = layer(hidden, src_mask=causal, src_key_padding_mask=padding, is_causal=False)
        return self.output_proj(self.final_norm(hidden))
