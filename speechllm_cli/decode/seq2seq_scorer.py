"""The encoder-decoder baseline as a scorer for :mod:`speechllm_cli.decode.search`, optionally with CTC prefix scores.

``init`` encodes the batch once; each step runs the decoder over every row's whole token prefix (``<sos>`` first)
and keeps the last position: no key/value cache, simple and fast enough for the baseline's small decoder. With
``ctc_weight = w > 0`` a token's score is ``(1 - w) * attention log-prob + w * CTC prefix score increment``
(ESPnet's joint decoding; see :mod:`speechllm_cli.decode.ctc_prefix_score`), so the search's ``logprob`` is that
joint score. ``<blank>`` is never proposed.

Example::

    from speechllm_cli.decode.search import beam_search
    from speechllm_cli.decode.seq2seq_scorer import FeatsBatch, Seq2SeqScorer
    from speechllm_cli.models.seq2seq_io import load_seq2seq

    model, tokenizer = load_seq2seq("exp/seq2seq/model")
    scorer = Seq2SeqScorer(model, ctc_weight=0.3)
    nbest = beam_search(scorer, FeatsBatch(feats, feat_lens), [40, 40], [model.eos_id], beam=4)  # feats (B, T, 80)
    text = tokenizer.decode(nbest[0][0].tokens)
"""

from __future__ import annotations

import dataclasses

import torch

from speechllm_cli.decode.ctc_prefix_score import CTCPrefixScorer, CTCPrefixState
from speechllm_cli.models.seq2seq import Seq2SeqModel


@dataclasses.dataclass
class FeatsBatch:
    """The search input for :class:`Seq2SeqScorer`."""

    feats: torch.Tensor  # (B, T, 80) raw fbank, zero-padded
    feat_lens: torch.Tensor  # (B,)


@dataclasses.dataclass
class Seq2SeqState:
    """Scorer state; rows are hypotheses."""

    enc: torch.Tensor  # (R, T', D) encoder output
    enc_lens: torch.Tensor  # (R,)
    tokens: torch.Tensor  # (R, L) decoder input so far: <sos> + output tokens
    ctc: CTCPrefixState | None  # None without CTC prefix scoring


class Seq2SeqScorer:
    """Scorer over a :class:`Seq2SeqModel` (eval mode); see the module docstring."""

    def __init__(self, model: Seq2SeqModel, ctc_weight: float = 0.0):
        if not 0.0 <= ctc_weight < 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1), got {ctc_weight}")
        self.model, self.ctc_weight = model, ctc_weight
        self.ctc = CTCPrefixScorer(model.blank_id, model.eos_id) if ctc_weight > 0 else None
        self.device = next(model.parameters()).device

    def _scores(self, state: Seq2SeqState) -> torch.Tensor:
        scores = self.model.decode_step(state.tokens, state.enc, state.enc_lens)  # (R, V)
        scores[:, self.model.blank_id] = float("-inf")
        if self.ctc is not None:
            scores = (1 - self.ctc_weight) * scores + self.ctc_weight * self.ctc.scores(state.ctc)
        return scores

    def init(self, batch: FeatsBatch) -> tuple[torch.Tensor, Seq2SeqState]:
        """Encode the batch; return the first next-token scores (B, V) and the state."""
        enc, enc_lens = self.model.encode(batch.feats.to(self.device), batch.feat_lens.to(self.device))
        tokens = torch.full((enc.shape[0], 1), self.model.sos_id, dtype=torch.long, device=self.device)
        ctc = None
        if self.ctc is not None:
            ctc = self.ctc.init(self.model.ctc_logits(enc).float().log_softmax(-1), enc_lens)
        state = Seq2SeqState(enc, enc_lens, tokens, ctc)
        return self._scores(state), state

    def step(self, state: Seq2SeqState, tokens: torch.Tensor) -> tuple[torch.Tensor, Seq2SeqState]:
        """Append one token per row (R,); return the next-token scores (R, V)."""
        tokens = tokens.to(self.device)
        state.tokens = torch.cat([state.tokens, tokens[:, None]], dim=1)
        if state.ctc is not None:
            state.ctc = self.ctc.advance(state.ctc, tokens)
        return self._scores(state), state

    def select(self, state: Seq2SeqState, rows: torch.Tensor) -> Seq2SeqState:
        """Keep/reorder/repeat rows (R',) of the state."""
        rows = rows.to(self.device)
        state.enc, state.enc_lens, state.tokens = state.enc[rows], state.enc_lens[rows], state.tokens[rows]
        if state.ctc is not None:
            state.ctc = self.ctc.select(state.ctc, rows)
        return state
