"""A strided 1-D convolution as an adapter: Conv1d(kernel, stride) over frames -> GELU -> Linear.

Example::

    import torch
    from speechllm_cli.models.adapters.conv import ConvAdapter, ConvAdapterConfig

    adapter = ConvAdapter(ConvAdapterConfig(stride=4, kernel=6), input_dim=256, llm_dim=576)
    embeds, lens = adapter(torch.randn(2, 30, 256), torch.tensor([30, 17]))
    print(embeds.shape, lens)        # torch.Size([2, 8, 576]) tensor([8, 5]); one vector per 4 input frames

Output i reads input frames [i*stride, i*stride + kernel). Frames past an utterance's length are zeroed and the
input is right-padded with zeros to give exactly ceil(T / stride) outputs, so the last outputs of an utterance see
zeros past its length whether it is decoded alone or in a padded batch: padding never changes a valid output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.adapters.base import check_config, num_windows, valid_mask, window_mean


@dataclass
class ConvAdapterConfig:
    type: str = "conv"
    stride: int = 4
    kernel: int = 4
    channels: int = 512
    dropout: float = 0.1


class ConvAdapter(nn.Module):
    """(B, T, D_in) -> Conv1d(D_in -> channels, kernel, stride) -> GELU -> dropout -> Linear(-> llm_dim)."""

    def __init__(self, config: ConvAdapterConfig, input_dim: int, llm_dim: int):
        super().__init__()
        check_config(config, positive=("stride", "kernel", "channels"))
        if config.kernel < config.stride:
            raise ValueError(f"model.adapter.kernel {config.kernel} must be >= stride {config.stride} "
                             "(a smaller kernel would skip input frames)")
        self.config = config
        self.conv = nn.Conv1d(input_dim, config.channels, config.kernel, config.stride)
        self.dropout = nn.Dropout(config.dropout)
        self.output_proj = nn.Linear(config.channels, llm_dim)

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return num_windows(lens, self.config.stride)

    def pool(self, values: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return window_mean(values, lens, self.config.stride)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, D_in) float, lens: (B,) -> (B, ceil(T/stride), llm_dim) (junk past out_lens), out_lens."""
        frames, stride, kernel = x.shape[1], self.config.stride, self.config.kernel
        outputs = max(1, math.ceil(frames / stride))
        x = x.masked_fill(~valid_mask(lens.to(x.device), frames)[..., None], 0.0)
        x = F.pad(x, (0, 0, 0, (outputs - 1) * stride + kernel - frames))  # exactly `outputs` conv positions
        hidden = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, outputs, channels)
        return self.output_proj(self.dropout(F.gelu(hidden))), self.output_lengths(lens)
