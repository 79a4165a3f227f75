"""What every adapter is: front-end frames (B, T, D_in) + lengths -> LLM input vectors (B, T_out, llm_dim) + lengths.

Example::

    import torch
    from speechllm_cli.models.adapters.base import window_mean

    values = torch.arange(5.0)[None, :, None]             # (B=1, T=5, C=1)
    window_mean(values, torch.tensor([5]), window=2)      # [[0.5], [2.5], [4.0]]: the last window holds 1 frame

An adapter is an ``nn.Module`` with

- ``forward(frames, lens) -> (embeds, out_lens)``: frames (B, T, D_in) float, zero or junk past ``lens``;
  embeds (B, T_out, llm_dim), junk past ``out_lens``. Padding never changes a valid output: an utterance decoded
  alone or in a padded batch gives the same vectors.
- ``output_lengths(lens) -> out_lens`` without running it (the LLM sequence lengths, e.g. for context checks).
- ``pool(values, lens) -> (B, T_out, C)``: ``values`` (B, T, C) per input frame, averaged over the input frames each
  output position reads (the speech LLM pools the CTC label posteriors this way for its label table).
- ``output_proj``: its last ``nn.Linear`` into the LLM width; a speech LLM with a label table zeroes it at the start,
  so the adapter begins as a residual on the table.

Register a new one in ``speechllm_cli/models/adapters/__init__.py`` (one line: type name -> config class, class).
"""

from __future__ import annotations

import math

import torch


def check_config(config, positive: tuple[str, ...]) -> None:
    """ValueError naming the ``model.adapter`` key to fix: the ``positive`` fields must be positive ints, ``dropout``
    in [0, 1), and ``d_model`` (where there is one) divisible by ``num_heads``."""
    for key in positive:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.adapter.{key} must be a positive int, got {value!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"model.adapter.dropout must be in [0, 1), got {config.dropout!r}")
    if hasattr(config, "num_heads") and config.d_model % config.num_heads:
        raise ValueError(f"model.adapter.d_model {config.d_model} is not divisible by num_heads {config.num_heads}")


def num_windows(lens: torch.Tensor, window: int) -> torch.Tensor:
    """ceil(lens / window), at least 1 (an empty utterance still gives one output position)."""
    return ((lens + window - 1) // window).clamp(min=1)


def valid_mask(lens: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T) bool, True at frames before each length."""
    return torch.arange(frames, device=lens.device)[None, :] < lens[:, None]


def pad_to_windows(values: torch.Tensor, lens: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, C) -> (B, W, window, C) with W = ceil(T / window); frames at or past a length are zeroed."""
    batch, frames, channels = values.shape
    windows = max(1, math.ceil(frames / window))
    values = values.masked_fill(~valid_mask(lens.to(values.device), frames)[..., None], 0.0)
    padded = values.new_zeros(batch, windows * window, channels)
    padded[:, :frames] = values
    return padded.view(batch, windows, window, channels)


def window_mean(values: torch.Tensor, lens: torch.Tensor, window: int, repeat: int = 1) -> torch.Tensor:
    """(B, T, C) -> (B, W * repeat, C): the mean of the valid frames of each window of ``window`` frames, each
    repeated ``repeat`` times (one per output position of that window); an empty window gives 0."""
    lens = lens.to(values.device)
    grouped = pad_to_windows(values, lens, window)  # (B, W, window, C)
    counts = pad_to_windows(torch.ones_like(values[..., :1]), lens, window).sum(2)  # (B, W, 1)
    means = grouped.sum(2) / counts.clamp(min=1)  # (B, W, C)
    return means.repeat_interleave(repeat, dim=1)
