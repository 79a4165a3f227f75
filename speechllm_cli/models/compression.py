"""Shorten CTC-compressor states with their greedy CTC labels: blank removal or frame averaging.

Example::

    import torch
    from speechllm_cli.models.compression import compress

    hidden = torch.arange(6.0)[None, :, None]            # (B=1, T=6, D=1): frames 0..5
    labels = torch.tensor([[0, 3, 3, 0, 3, 5]])          # greedy labels, 0 = blank
    lens = torch.tensor([6])
    compress(hidden, lens, labels, "blank_remove")       # frames 1, 2, 4, 5      -> [[1, 2, 4, 5]], lens [4]
    compress(hidden, lens, labels, "frame_average")      # runs (1,2), (4), (5)   -> [[1.5, 4, 5]], lens [3]

Modes:
- ``blank_remove``: keep every frame whose label is not blank, in order.
- ``frame_average``: drop blank frames and replace each run of consecutive frames with the same
  label by their mean. Runs are taken on the original frame sequence, so a blank ends a run:
  ``x x`` is one run, ``x blank x`` two (as CTC reads them: two ``x`` tokens).
- ``none``: ``hidden`` and ``lens`` unchanged.

In both shortening modes an utterance whose valid frames are all blank keeps one vector, the
mean of its valid frames (a zero vector when its length is 0), so no output is empty. Frames at
or past an utterance's length never contribute, whatever their labels. Outputs are zero-padded
and differentiable with respect to ``hidden``; sums are accumulated in at least float32.
"""

from __future__ import annotations

import torch

from speechllm_cli.text.tokenizer import BLANK_ID

MODES = ("blank_remove", "frame_average", "none")


def compress(
    hidden: torch.Tensor, lens: torch.Tensor, labels: torch.Tensor, mode: str, blank_id: int = BLANK_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, D), lens (B,), labels (B, T) -> compressed (B, T'', D) zero-padded, compressed_lens (B,)."""
    if mode not in MODES:
        raise ValueError(f"compression mode {mode!r} is not one of {MODES}")
    if mode == "none":
        return hidden, lens
    batch, frames, dim = hidden.shape
    if labels.shape != (batch, frames):
        raise ValueError(f"labels have shape {tuple(labels.shape)}; hidden has (B, T) = {(batch, frames)}")
    device = hidden.device
    lens = lens.to(device)
    labels = labels.to(device)

    valid = torch.arange(frames, device=device) < lens[:, None]  # (B, T)
    speech = valid & (labels != blank_id)  # (B, T) frames that are kept
    if mode == "blank_remove":
        starts = speech  # every kept frame is its own segment
    else:
        previous = torch.cat([labels.new_full((batch, 1), blank_id), labels], dim=1)[:, :frames]  # (B, T)
        starts = speech & (labels != previous)  # first frame of a run (a frame after a blank starts one)
    segment = starts.long().cumsum(dim=1) - 1  # (B, T) index of the output vector each kept frame joins
    num_segments = starts.sum(dim=1)  # (B,)

    # all-blank utterances: every valid frame joins segment 0
    has_speech = num_segments > 0  # (B,)
    contributes = torch.where(has_speech[:, None], speech, valid)  # (B, T)
    segment = torch.where(has_speech[:, None], segment, torch.zeros_like(segment))
    compressed_lens = torch.where(has_speech, num_segments, torch.ones_like(num_segments))  # (B,)

    max_len = int(compressed_lens.max()) if batch else 0
    # flat slot b * max_len + segment; frames that do not contribute go to one extra slot that is dropped
    dump_slot = batch * max_len
    rows = torch.arange(batch, device=device)[:, None] * max_len  # (B, 1)
    slot = torch.where(contributes, rows + segment, torch.full_like(segment, dump_slot)).reshape(-1)  # (B*T,)

    acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
    sums = hidden.new_zeros(dump_slot + 1, dim, dtype=acc_dtype)  # (B*T''+1, D)
    sums.index_add_(0, slot, hidden.reshape(-1, dim).to(acc_dtype))  # in place: no copy; autograd still flows
    counts = torch.zeros(dump_slot + 1, device=device, dtype=acc_dtype)  # (B*T''+1,)
    counts.index_add_(0, slot, torch.ones(batch * frames, device=device, dtype=acc_dtype))
    means = sums[:dump_slot] / counts[:dump_slot, None].clamp(min=1)  # empty slots stay 0
    return means.reshape(batch, max_len, dim).to(hidden.dtype), compressed_lens
