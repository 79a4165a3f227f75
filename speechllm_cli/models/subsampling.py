"""4x time subsampling with two strided Conv2d layers, and sinusoidal positions.

Example::

    import torch
    from speechllm_cli.models.subsampling import Conv2dSubsampling, subsampled_lengths

    sub = Conv2dSubsampling(input_dim=80, d_model=256)
    hidden, hidden_lens = sub(torch.randn(2, 100, 80), torch.tensor([100, 37]))
    print(hidden.shape, hidden_lens)        # torch.Size([2, 24, 256]) tensor([24, 8])
    print(subsampled_lengths(torch.tensor([6, 7, 10, 11, 14, 15])))   # tensor([1, 1, 1, 2, 2, 3])

Each conv has a 3x3 kernel, stride 2 and no padding, so output frame t of the second conv sees
input frames 4t .. 4t + 6 and the output length is ((T - 1) // 2 - 1) // 2. An output frame inside
an utterance's length therefore never sees a padding frame. Utterances shorter than 7 frames
(70 ms) would give no output frame; they get one, computed over the zero padding that follows them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_FRAMES = 7  # input frames needed for one output frame


def subsampled_lengths(feat_lens: torch.Tensor) -> torch.Tensor:
    """Output lengths of Conv2dSubsampling for input lengths ``feat_lens`` (B,): at least 1."""
    return (((feat_lens - 1) // 2 - 1) // 2).clamp(min=1)


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) sine (even dims) / cosine (odd dims) position table (Vaswani et al. 2017)."""
    positions = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(positions * inv_freq)
    table[:, 1::2] = torch.cos(positions * inv_freq[: dim // 2])
    return table


class PositionalEncoding(nn.Module):
    """x * sqrt(d_model) + sinusoidal positions, then dropout (ESPnet's absolute positional encoding)."""

    def __init__(self, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.d_model = d_model
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        positions = sinusoidal_positions(x.shape[1], self.d_model, x.device).to(x.dtype)  # (T, D)
        return self.dropout(x * self.scale + positions)


class Conv2dSubsampling(nn.Module):
    """(B, T, input_dim) -> Conv2d 3x3/2 + ReLU -> Conv2d 3x3/2 + ReLU -> Linear -> (B, T', d_model)."""

    def __init__(self, input_dim: int, d_model: int, channels: int | None = None):
        super().__init__()
        if input_dim < MIN_FRAMES:
            raise ValueError(f"Conv2dSubsampling needs at least {MIN_FRAMES} feature dims, got {input_dim}")
        channels = channels or d_model
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq_out = ((input_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq_out, d_model)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, input_dim), feat_lens (B,) -> hidden (B, T', d_model), hidden_lens (B,)."""
        if feats.shape[1] < MIN_FRAMES:
            feats = F.pad(feats, (0, 0, 0, MIN_FRAMES - feats.shape[1]))  # zeros, like the batch padding
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        batch, channels, frames, freq = x.shape
        hidden = self.out(x.transpose(1, 2).reshape(batch, frames, channels * freq))  # (B, T', d_model)
        return hidden, subsampled_lengths(feat_lens)
