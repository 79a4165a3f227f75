"""Whisper (``model_type: whisper``, zero-shot or fine-tuned) as a scorer for :mod:`speechllm_cli.decode.search`.

``init`` encodes the batch once and runs the decoder over each utterance's prefix
``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` (all four tokens long, so no padding) into the key/value
cache; each step feeds one token per row. Scores are log-probabilities over the tokens a transcript may hold: the
generation config's ``suppress_tokens`` (non-speech symbols) are banned at every step, its
``begin_suppress_tokens`` (a bare space, <|endoftext|>) at the first, and every special token after <|endoftext|>
(language, task and timestamp tokens) always, so <|endoftext|> is the only special token an output holds. Rows of
a real-length batch cross-attend to their own clip's frames only (models/whisper/finetuned.py), so an utterance
decodes the same in any batch.

The cross-attention keys and values are the bulk of the cache (1500 frames per layer at 30 s) and are the same for
every row of one utterance, so ``select`` copies them only when the rows' utterances change (a beam search's
steady state reorders beams within utterances and leaves them alone).

Example::

    from speechllm_cli.decode.search import search
    from speechllm_cli.decode.whisper_scorer import WhisperBatch, WhisperScorer
    from speechllm_cli.models.whisper.finetuned import load_whisper

    model = load_whisper("exp/whisper/base")
    batch = WhisperBatch(feats, feat_lens, [model.prefix_ids("de", "st"), model.prefix_ids("en", "asr")])
    nbest = search(WhisperScorer(model), batch, [60, 60], [model.eot], beam=4)
    text = model.decode_text(nbest[0][0].tokens)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from speechllm_cli.models.whisper.finetuned import WhisperSeq2Seq


@dataclasses.dataclass
class WhisperBatch:
    """The search input for :class:`WhisperScorer`."""

    feats: torch.Tensor  # (B, T, n_mels) dumped Whisper log-mel, zero-padded
    feat_lens: torch.Tensor  # (B,)
    prefix_ids: list[list[int]]  # per utterance: <|startoftranscript|><|lang|><|task|><|notimestamps|>

    @property
    def prefix_lengths(self) -> list[int]:
        return [len(p) for p in self.prefix_ids]


@dataclasses.dataclass
class WhisperState:
    """Scorer state; rows are hypotheses. Updated in place by step/select."""

    cache: Any  # transformers EncoderDecoderCache, batch dim = rows
    hidden: torch.Tensor  # (R, S, D) encoder output of each row's utterance
    hidden_lens: torch.Tensor  # (R,) its valid frames
    row_utt: torch.Tensor  # (R,) the utterance of each row (rows of one utterance share cross-attention keys)


class WhisperScorer:
    """Scorer over a :class:`WhisperSeq2Seq` (eval mode); see the module docstring."""

    def __init__(self, model: WhisperSeq2Seq):
        self.model = model
        self.device = model.device
        vocab = model.whisper.proj_out.out_features
        banned = torch.zeros(vocab, dtype=torch.bool)
        banned[model.eot + 1:] = True  # language, task, timestamp tokens: never part of a transcript
        banned[[i for i in model.suppress_ids if i < vocab]] = True
        first = banned.clone()
        first[[i for i in model.begin_suppress_ids if i < vocab]] = True
        self.banned, self.banned_first = banned.to(self.device), first.to(self.device)

    def _logprobs(self, logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float().masked_fill(banned, float("-inf")), dim=-1)  # (R, V)

    def init(self, batch: WhisperBatch) -> tuple[torch.Tensor, WhisperState]:
        """Encode the batch and its prefixes; return the first next-token log-probs (B, V) and the state."""
        lengths = set(batch.prefix_lengths)
        if len(lengths) != 1:
            raise ValueError(f"prefixes of unequal lengths {sorted(lengths)}: Whisper's are 4 tokens each")
        hidden, hidden_lens = self.model.encode(batch.feats.to(self.device), batch.feat_lens.to(self.device))
        prefix = torch.tensor(batch.prefix_ids, dtype=torch.long, device=self.device)  # (B, 4)
        cache = self.model.new_cache()
        logits = self.model.decoder_logits(prefix, hidden, hidden_lens, cache, last_only=True)
        row_utt = torch.arange(prefix.shape[0], device=self.device)
        return self._logprobs(logits, self.banned_first), WhisperState(cache, hidden, hidden_lens, row_utt)

    def step(self, state: WhisperState, tokens: torch.Tensor) -> tuple[torch.Tensor, WhisperState]:
        """Feed one token per row (R,); return the next-token log-probs (R, V)."""
        logits = self.model.decoder_logits(tokens.to(self.device)[:, None], state.hidden, state.hidden_lens,
                                           state.cache, last_only=True)
        return self._logprobs(logits, self.banned), state

    def select(self, state: WhisperState, rows: torch.Tensor) -> WhisperState:
        """Keep/reorder/repeat rows (R',) of the state."""
        rows = rows.to(self.device)
        state.cache.self_attention_cache.batch_select_indices(rows)
        row_utt = state.row_utt[rows]
        if not torch.equal(row_utt, state.row_utt):  # other utterances per row: move the per-utterance parts
            state.cache.cross_attention_cache.batch_select_indices(rows)
            state.hidden, state.hidden_lens = state.hidden[rows], state.hidden_lens[rows]
        state.row_utt = row_utt
        return state
