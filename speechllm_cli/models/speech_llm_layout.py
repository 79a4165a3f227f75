"""Sequence-layout helpers of SpeechLLM: the prefix-LM attention mask and the decoding prefix (PrefixBatch).

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
class PrefixBatch:
    """What decoding continues from (``SpeechLLM.decoding_prefix``, the input of decode's ``LLMScorer``): one prefix
    per utterance."""

    embeds: list[torch.Tensor]  # each (P_i, H), in the LLM's embedding space
    bidirectional_spans: list[tuple[int, int] | None] | None = None  # per utterance, or None: all causal
    audio_lengths: list[int] | None = None  # audio positions per prefix (reported in decode statistics only)
    text_ids: list[tuple[list[int], list[int]]] | None = None  # per prefix: token ids before and after the audio
    # (the rest of the prefix is audio); lets an engine feed text as tokens (decode/llamacpp_scorer.py)


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
