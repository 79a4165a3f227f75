"""Fixtures for the decoding tests: a tiny random LLaMA, random prefixes, and no-cache references."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HIDDEN = 64
VOCAB = 300


def tiny_llama(seed: int = 0, attn_implementation: str = "sdpa", logit_scale: float = 3.0) -> LlamaForCausalLM:
    """A 2-layer LLaMA (hidden 64, 4 heads, 2 kv heads, vocab 300); larger weights than the default init
    make the prefix matter and the next-token distributions peaky (about -1.7 nats per greedy token)."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512,
                         tie_word_embeddings=False, attn_implementation=attn_implementation, initializer_range=0.1)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)  # peakier distributions: clearer argmax, n-gram loops
    return model


def random_prefixes(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, HIDDEN, generator=gen) for n in lengths]


def prefix_lm_mask(length: int, span: tuple[int, int] | None) -> torch.Tensor:
    """(1, 1, L, L) bool: causal, plus both ways inside ``span``."""
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    if span is not None:
        mask[span[0]:span[1], span[0]:span[1]] = True
    return mask[None, None]


@torch.no_grad()
def full_logprobs(model, prefix: torch.Tensor, tokens: list[int], span=None) -> torch.Tensor:
    """Log-probs (len(tokens) + 1, V) after the prefix and after each token, from one forward without cache."""
    token_embeds = model.get_input_embeddings()(torch.tensor(tokens, dtype=torch.long)).reshape(len(tokens), HIDDEN)
    inputs = torch.cat([prefix, token_embeds])[None]  # (1, P + T, H)
    mask = prefix_lm_mask(inputs.shape[1], span) if span is not None else None
    logits = model(inputs_embeds=inputs, attention_mask=mask, use_cache=False).logits[0]
    return torch.log_softmax(logits[prefix.shape[0] - 1:].float(), dim=-1)


def sequence_logprob(model, prefix: torch.Tensor, tokens: list[int], span=None) -> float:
    """Sum of the log-probs of ``tokens`` after ``prefix`` (no cache)."""
    logprobs = full_logprobs(model, prefix, tokens, span)
    return float(sum(logprobs[i, t] for i, t in enumerate(tokens)))


@torch.no_grad()
def reference_greedy(model, prefix: torch.Tensor, max_new: int, eos_ids: set[int], span=None) -> list[int]:
    """Greedy decoding that re-runs the whole sequence each step (no cache); eos included when emitted."""
    tokens: list[int] = []
    while len(tokens) < max_new:
        token = int(full_logprobs(model, prefix, tokens, span)[-1].argmax())
        tokens.append(token)
        if token in eos_ids:
            break
    return tokens


def pick_eos_ids(model, prefixes: list[torch.Tensor], positions: list[int]) -> list[int]:
    """End tokens that greedy decoding reaches at the given step for the given prefixes, so that
    utterances of one batch finish at different steps."""
    ids = []
    for prefix, pos in zip(prefixes, positions):
        ids.append(reference_greedy(model, prefix, pos + 1, set())[pos])
    return sorted(set(ids))
