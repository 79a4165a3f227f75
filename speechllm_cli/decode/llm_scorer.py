"""A Hugging Face causal LM as an incremental scorer for :mod:`speechllm_cli.decode.search`.

Each utterance starts from a *prefix* of embeddings (the prompt and the audio embeddings,
``(P_i, H)``, lengths differing). The prefixes are left-padded to a common length and encoded once
into the key/value cache; then each step feeds one token per hypothesis. Position ids count real
positions only (``cumsum(mask) - 1``, 0 on padding), as ``generate`` does, so a padded utterance
scores exactly as it would alone.

An utterance may ask for a bidirectional span ``(start, end)`` (end exclusive, in its unpadded
prefix): the positions inside it see each other both ways (prefix-LM attention over the audio),
every other position stays causal. This needs the ``sdpa`` or ``eager`` attention of transformers
(which take a ready 4D mask); other implementations get a 2D padding mask and no spans.

Example::

    from speechllm_cli.decode.llm_scorer import LLMScorer, PrefixBatch, eos_ids_for
    from speechllm_cli.decode.search import beam_search

    scorer = LLMScorer(model)                           # any transformers causal LM (LLaMA family first)
    batch = PrefixBatch(embeds=[e1, e2], bidirectional_spans=[(5, 30), (5, 22)])
    nbest = beam_search(scorer, batch, max_new_tokens=[40, 30], eos_ids=eos_ids_for(tokenizer), beam=4)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from speechllm_cli.models.llm import cache_kwarg
from speechllm_cli.models.speech_llm_layout import PrefixBatch, as_llm_mask, prefix_lm_mask

# tokens that end an answer in common chat templates (looked up in the tokenizer when present)
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<end_of_turn>")
MASK_GROWTH = 64  # key-mask columns added at a time


@dataclasses.dataclass
class LLMState:
    """Scorer state; rows are hypotheses. Updated in place by step/select."""

    cache: Any  # transformers Cache, batch dim = rows
    key_mask: torch.Tensor | None  # (R, 1, 1, L_buf) bool/float, or (R, L_buf) long for 2D; None: no padding
    positions: torch.Tensor  # (R,) position id of the next token
    length: int  # key positions held in the cache


def eos_ids_for(tokenizer) -> list[int]:
    """End-of-output token ids: the tokenizer's eos plus the chat-template end tokens it knows."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for token in END_TOKENS:
        if token in vocab:
            ids.add(int(vocab[token]))
    if not ids:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no end token; give eos_ids explicitly")
    return sorted(ids)


_LAYER_CLASS = None


def _preallocated_layer_class():
    """A transformers ``DynamicLayer`` that keeps keys/values in buffers with spare room at the end, so a
    decoding step writes its one position in place instead of concatenating the whole cache (about a tenth
    of a CPU step with SmolLM2 at batch 8). ``keys``/``values`` are views of the filled part."""
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self.key_buffer = self.value_buffer = None  # (R, H, capacity, D)
            self.filled = 0

        def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
            capacity = needed + max(MASK_GROWTH, needed // 2)
            buffers = []
            for old, new in ((self.key_buffer, key_states), (self.value_buffer, value_states)):
                buffer = new.new_empty(new.shape[0], new.shape[1], capacity, new.shape[3])
                if old is not None:
                    buffer[:, :, : self.filled] = old[:, :, : self.filled]
                buffers.append(buffer)
            self.key_buffer, self.value_buffer = buffers

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.filled + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:
                self._grow(key_states, value_states, end)
            self.key_buffer[:, :, self.filled:end] = key_states
            self.value_buffer[:, :, self.filled:end] = value_states
            self.filled = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized and self.key_buffer is not None:
                self.key_buffer = self.key_buffer[indices]
                self.value_buffer = self.value_buffer[indices]
                self.keys, self.values = self.key_buffer[:, :, : self.filled], self.value_buffer[:, :, : self.filled]

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx.to(self.device))

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self.key_buffer is not None:
                self.batch_select_indices(torch.arange(self.key_buffer.shape[0], device=self.device)
                                          .repeat_interleave(repeats))

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("the decoding cache is never cropped")

        def reset(self) -> None:
            super().reset()
            self.key_buffer = self.value_buffer = None
            self.filled = 0

    _LAYER_CLASS = PreallocatedLayer
    return _LAYER_CLASS


def _base_model(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_params(model) -> set[str]:
    return set(inspect.signature(_base_model(model).forward).parameters)


class LLMScorer:
    """Scorer over a frozen (or LoRA-wrapped) transformers causal LM; see the module docstring."""

    def __init__(self, model):
        self.model = model
        params = _forward_params(model)
        self.cache_arg = cache_kwarg(_base_model(model).forward)
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        self.mask_kind = {"sdpa": "bool", "eager": "float"}.get(implementation, "2d")
        embedding = model.get_input_embeddings().weight
        self.dtype, self.device = embedding.dtype, embedding.device

    def _new_cache(self):
        """A DynamicCache whose plain full-attention layers write into buffers with spare room (PreallocatedLayer)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        if not cache.layers and cache.layer_class_to_replicate is DynamicLayer:
            cache.layer_class_to_replicate = _preallocated_layer_class()
        elif cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
            cache.layers = [_preallocated_layer_class()() for _ in cache.layers]
        return cache  # other layer types (sliding window, linear attention) stay as transformers made them

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[:, -1].float(), dim=-1)  # (R, V)

    def _prefix_mask(self, pad: torch.Tensor, total: int, spans: Sequence[tuple[int, int] | None] | None):
        """The prefill mask (B, 1, P, P) of a left-padded batch: causal, no padded keys, plus bidirectional spans."""
        pos = torch.arange(total, device=self.device)
        real = pos[None, :] >= pad[:, None]  # (B, P)
        in_span = torch.zeros_like(real)
        for i, span in enumerate(spans or []):
            if span is not None:
                in_span[i, int(pad[i]) + span[0] : int(pad[i]) + span[1]] = True
        return as_llm_mask(prefix_lm_mask(real, in_span), "sdpa" if self.mask_kind == "bool" else "eager", self.dtype)

    def _key_mask(self, pad: torch.Tensor, columns: int) -> torch.Tensor:
        """Per-row valid keys for the 1-token steps; columns past the prefix are valid already."""
        valid = torch.arange(columns, device=self.device)[None, :] >= pad[:, None]  # (B, L_buf)
        if self.mask_kind == "2d":
            return valid.long()
        if self.mask_kind == "bool":
            return valid[:, None, None, :]
        return torch.zeros(valid.shape, dtype=self.dtype, device=self.device).masked_fill_(
            ~valid, torch.finfo(self.dtype).min)[:, None, None, :]

    def init(self, batch: PrefixBatch | list[torch.Tensor]) -> tuple[torch.Tensor, LLMState]:
        """Encode the prefixes once; return the first next-token log-probs (B, V) and the state."""
        if not isinstance(batch, PrefixBatch):
            batch = PrefixBatch(list(batch))
        embeds, spans = batch.embeds, batch.bidirectional_spans
        if not embeds:
            raise ValueError("empty batch: no prefixes to decode")
        lengths = [int(e.shape[0]) for e in embeds]
        if min(lengths) < 1:
            raise ValueError(f"every prefix needs at least one position, got lengths {lengths}")
        if spans is not None:
            if len(spans) != len(embeds):
                raise ValueError(f"{len(spans)} bidirectional spans for {len(embeds)} prefixes")
            for i, span in enumerate(spans):
                if span is not None and not 0 <= span[0] <= span[1] <= lengths[i]:
                    raise ValueError(f"bidirectional span {span} of utterance {i} is outside its prefix "
                                     f"of {lengths[i]} positions")
            if all(s is None for s in spans):
                spans = None
        if spans is not None and self.mask_kind == "2d":
            raise ValueError(f"bidirectional spans need attn_implementation 'sdpa' or 'eager', "
                             f"not {self.model.config._attn_implementation!r}; reload the LLM with one of them")
        total = max(lengths)
        pad = torch.tensor([total - n for n in lengths], device=self.device)  # (B,) left padding
        inputs = torch.zeros(len(embeds), total, embeds[0].shape[-1], dtype=self.dtype, device=self.device)
        for i, e in enumerate(embeds):
            inputs[i, pad[i]:] = e.to(device=self.device, dtype=self.dtype)
        positions = (torch.arange(total, device=self.device)[None, :] - pad[:, None]).clamp(min=0)  # (B, P)
        padded = bool(pad.any())
        if padded or spans is not None:
            mask = (self._prefix_mask(pad, total, spans) if self.mask_kind != "2d"
                    else self._key_mask(pad, total))
        else:
            mask = None
        cache = self._new_cache()
        out = self.model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_arg: cache}, **self.extra)
        key_mask = self._key_mask(pad, total + MASK_GROWTH) if padded else None
        state = LLMState(cache, key_mask, torch.tensor(lengths, device=self.device), total)
        return self._logprobs(out.logits), state

    def step(self, state: LLMState, tokens: torch.Tensor) -> tuple[torch.Tensor, LLMState]:
        """Feed one token per row (R,); return next-token log-probs (R, V)."""
        mask = None
        if state.key_mask is not None:
            if state.key_mask.shape[-1] < state.length + 1:  # grow: new columns are valid keys
                extra = torch.ones if self.mask_kind != "float" else torch.zeros
                grow = extra((*state.key_mask.shape[:-1], MASK_GROWTH), dtype=state.key_mask.dtype, device=self.device)
                state.key_mask = torch.cat([state.key_mask, grow], dim=-1)
            mask = state.key_mask[..., : state.length + 1]
        out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=state.positions[:, None],
                         use_cache=True, **{self.cache_arg: state.cache}, **self.extra)
        state.positions = state.positions + 1
        state.length += 1
        return self._logprobs(out.logits), state

    def select(self, state: LLMState, rows: torch.Tensor) -> LLMState:
        """Keep/reorder/repeat rows (R',) of the state."""
        rows = rows.to(self.device)
        state.cache.batch_select_indices(rows)
        if state.key_mask is not None:
            state.key_mask = state.key_mask[rows]
        state.positions = state.positions[rows]
        return state
