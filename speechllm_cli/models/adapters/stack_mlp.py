"""SLAM-ASR's projector as an adapter: ``stack`` consecutive frames concatenated -> Linear -> GELU -> Linear.

Example::

    import torch
    from speechllm_cli.models.adapters.stack_mlp import StackMLPAdapter, StackMLPAdapterConfig

    adapter = StackMLPAdapter(StackMLPAdapterConfig(stack=4), input_dim=256, llm_dim=576)
    embeds, lens = adapter(torch.randn(2, 30, 256), torch.tensor([30, 17]))
    print(embeds.shape, lens)        # torch.Size([2, 8, 576]) tensor([8, 5]); one vector per 4 input frames

Frames past an utterance's length are zeroed before stacking and the last partial window is zero-padded, so a
valid output never depends on the batch padding. With 40 ms front-end frames, stack 4 gives one vector per 0.16 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.adapters.base import check_config, num_windows, pad_to_windows, window_mean


@dataclass
class StackMLPAdapterConfig:
    type: str = "stack_mlp"
    stack: int = 4
    hidden_dim: int = 1024
    dropout: float = 0.1


class StackMLPAdapter(nn.Module):
    """(B, T, D_in) -> stack k frames (B, ceil(T/k), k*D_in) -> Linear -> GELU -> dropout -> Linear(-> llm_dim)."""

    def __init__(self, config: StackMLPAdapterConfig, input_dim: int, llm_dim: int):
        super().__init__()
        check_config(config, positive=("stack", "hidden_dim"))
        self.config = config
        self.input_proj = nn.Linear(config.stack * input_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.output_proj = nn.Linear(config.hidden_dim, llm_dim)

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return num_windows(lens, self.config.stack)

    def pool(self, values: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return window_mean(values, lens, self.config.stack)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, D_in) float, lens: (B,) -> (B, ceil(T/stack), llm_dim) (junk past out_lens), out_lens."""
        stacked = pad_to_windows(x, lens.to(x.device), self.config.stack).flatten(2)  # (B, W, stack*D_in)
        hidden = self.dropout(F.gelu(self.input_proj(stacked)))
        return self.output_proj(hidden), self.output_lengths(lens)
