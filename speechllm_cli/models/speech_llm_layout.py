"""Sequence-layout helpers of SpeechLLM: the prefix-LM attention mask and the decoding prefix.

Example::

    import torch
    from speechllm_cli.models.speech_llm_layout import as_llm_mask, prefix_lm_mask

    padding = torch.tensor([[1, 1, 1, 1, 0]])                      # (B, L) 1 = real position
    audio = torch.tensor([[0, 1, 1, 0, 0]], dtype=torch.bool)      # (B, L) audio span
    allowed = prefix_lm_mask(padding, audio)                       # (B, 1, L, L) bool
    print(allowed[0, 0].int())                                     # row 1 sees position 2: bidirectional audio
    mask = as_llm_mask(allowed, "eager", torch.float32)            # additive form for eager attention
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Prefix:
    """Everything before the target for a batch: run ``llm_inputs`` once, then one token per step.

    The first prediction is at ``lengths - 1`` of the prefix run; step ``s`` (0-based) then feeds one new
    token per utterance with ``step_inputs(s, token_embeds)``: position ``lengths + s`` and the 2D mask
    ``cat([padding_mask, ones(B, s + 1)], 1)`` (the prefix's padded slots stay masked in the cache).
    """

    llm_inputs: dict  # inputs_embeds (B, L, H), attention_mask (2D or 4D), position_ids (B, L)
    padding_mask: torch.Tensor  # (B, L) long, 1 = real position
    lengths: torch.Tensor  # (B,) prefix length per utterance

    def step_inputs(self, step: int, token_embeds: torch.Tensor) -> dict:
        """LLM inputs for decoding step ``step`` (0-based); token_embeds (B, 1, H) embeds the new tokens."""
        batch = self.padding_mask.shape[0]
        ones = torch.ones(batch, step + 1, dtype=self.padding_mask.dtype, device=self.padding_mask.device)
        return {
            "inputs_embeds": token_embeds,
            "attention_mask": torch.cat([self.padding_mask, ones], 1),  # (B, L + s + 1)
            "position_ids": (self.lengths + step)[:, None],  # (B, 1)
        }


def prefix_lm_mask(padding_mask: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) padding and audio masks -> (B, 1, L, L) bool, True = query may attend key.

    Causal, plus audio positions see every audio position of their utterance; padded keys are never seen, but
    every position sees itself, so no row is empty (a padded query of a left-padded batch has no real key before
    it). Right-padded (training) and left-padded (decoding) batches alike.
    """
    length = padding_mask.shape[1]
    idx = torch.arange(length, device=padding_mask.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L) [query, key]
    both_audio = audio_mask[:, :, None] & audio_mask[:, None, :]  # (B, L, L)
    allowed = (causal[None] | both_audio) & padding_mask.bool()[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=padding_mask.device)
    return allowed[:, None]


def as_llm_mask(allowed: torch.Tensor, attn_implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
    """Bool (B, 1, L, L) -> the 4D mask form transformers' attention takes as-is (bool for sdpa, additive for eager).

    transformers passes a 4D ``attention_mask`` straight to the attention function (masking_utils returns it
    unchanged); sdpa reads True as "attend", eager adds the mask to the scores.
    """
    impl = attn_implementation or "eager"
    if impl == "sdpa":
        return allowed
    if impl == "eager":
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return additive.masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"audio_attention='bidirectional' needs attn_implementation 'sdpa' or 'eager', the LLM uses {impl!r}; "
        "set attn_implementation in the speech-LLM config or use audio_attention='causal'"
    )
