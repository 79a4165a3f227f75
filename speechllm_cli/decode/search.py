"""Batched greedy and beam search over any incremental *scorer* (an LLM with a key/value cache first).

The search knows nothing about models. It talks to a scorer through three calls:

* ``scorer.init(batch) -> (log_probs, state)``: encode the batch's inputs once (for an LLM: the
  prompt + audio prefix embeddings) and return the next-token log-probabilities of each of the
  ``B`` utterances, ``log_probs`` ``(B, V)`` float, and an opaque state with one row per utterance.
* ``scorer.step(state, tokens) -> (log_probs, state)``: feed one token per state row,
  ``tokens`` ``(R,)`` long, and return ``(R, V)`` log-probabilities of the token after it.
* ``scorer.select(state, rows) -> state``: keep (and reorder, repeat) state rows, ``rows``
  ``(R',)`` long indices into the current rows. This drops finished hypotheses and utterances,
  so they cost no more compute, and reorders beams after each step.

A state may be updated in place: after ``step`` or ``select`` only the returned state is valid.
:class:`~speechllm_cli.decode.llm_scorer.LLMScorer` implements this for a Hugging Face causal LM;
an encoder-decoder or a decoder-only model trained from scratch only needs the same three calls.

Rules shared by both searches:

* ``max_new_tokens[i]`` caps utterance ``i``'s output, the end token included: a hypothesis that
  reaches it without an end token is closed there (``Hypothesis.ended`` is False).
* ``eos_ids`` is a set: any of them ends a hypothesis (``Hypothesis.tokens`` leaves it out, its
  log-probability counts in the score).
* ``no_repeat_ngram=n`` bans, for each hypothesis, every token that would make an n-gram of its
  output tokens appear twice (the prefix is embeddings, not tokens, so only outputs count).
* Scores: ``logprob`` is the sum of the model's log-probabilities of the output tokens (end token
  included); the ranking score is ``logprob / length ** length_penalty`` with ``length`` the number
  of output tokens, end token included (``length_penalty=0``: plain sum, 1: per-token average).

Beam search keeps, per utterance, the ``beam`` best expansions of its running hypotheses at each
step (ESPnet's scheme): expansions that end (end token or length cap) leave the beam for the
finished list, the others run on. An utterance stops when no hypothesis runs, or when it has
``beam`` finished hypotheses and the best running one, scored at its current length, is below the
worst of them (the Hugging Face ``early_stopping=False`` rule). With ``beam=1`` this is greedy
search exactly; :func:`greedy_search` is the same search without beam bookkeeping.

Example (``model`` a Hugging Face causal LM, ``embeds`` a list of ``(P_i, H)`` prefix tensors)::

    from speechllm_cli.decode.llm_scorer import LLMScorer, eos_ids_for
    from speechllm_cli.decode.search import search

    scorer = LLMScorer(model)
    nbest = search(scorer, embeds, max_new_tokens=[40] * len(embeds), eos_ids=eos_ids_for(tokenizer), beam=4)
    text = tokenizer.decode(nbest[0][0].tokens, skip_special_tokens=True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch


class Scorer(Protocol):
    """What a search needs from a model (see the module docstring)."""

    def init(self, batch: Any) -> tuple[torch.Tensor, Any]: ...

    def step(self, state: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def select(self, state: Any, rows: torch.Tensor) -> Any: ...


@dataclasses.dataclass
class Hypothesis:
    """One output of the search."""

    tokens: list[int]  # output token ids, end token left out
    logprob: float  # sum of the token log-probabilities, end token included
    score: float  # logprob / num_tokens ** length_penalty: the ranking score
    num_tokens: int  # output tokens scored, end token included
    end_token: int | None  # the end token that closed it; None: cut at max_new_tokens

    @property
    def ended(self) -> bool:
        return self.end_token is not None


def normalised_score(logprob: float, num_tokens: int, length_penalty: float) -> float:
    """The ranking score of a hypothesis: ``logprob / num_tokens ** length_penalty``."""
    return logprob / max(num_tokens, 1) ** length_penalty


def ban_repeated_ngrams(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Set to -inf, in place, each token that would repeat an n-gram of ``history``.

    log_probs: (R, V) next-token scores; history: (R, t) output tokens so far.
    """
    num_rows, length = history.shape
    if n <= 0 or length < n:
        return
    windows = history.unfold(1, n, 1)  # (R, t - n + 1, n): every n-gram so far
    if n > 1:
        current = history[:, length - n + 1:]  # (R, n - 1): the n-gram the next token would complete
        matches = (windows[:, :, :-1] == current[:, None, :]).all(-1)  # (R, t - n + 1)
    else:
        matches = torch.ones(windows.shape[:2], dtype=torch.bool, device=history.device)
    vocab = log_probs.shape[1]
    banned = torch.where(matches, windows[:, :, -1], vocab)  # (R, t - n + 1); ``vocab`` = nothing to ban
    ban_mask = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=log_probs.device)
    ban_mask.scatter_(1, banned, True)
    log_probs.masked_fill_(ban_mask[:, :vocab], float("-inf"))


def _eos_table(eos_ids: Sequence[int], vocab: int, device: torch.device) -> torch.Tensor:
    if not eos_ids:
        raise ValueError("eos_ids is empty: give the tokenizer's end token(s) (see llm_scorer.eos_ids_for)")
    bad = [i for i in eos_ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"end token ids {bad} are outside the model's vocabulary of {vocab}")
    table = torch.zeros(vocab, dtype=torch.bool, device=device)
    table[list(eos_ids)] = True
    return table


def _check_lengths(max_new_tokens: Sequence[int], batch_size: int) -> torch.Tensor:
    if len(max_new_tokens) != batch_size:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for a batch of {batch_size} utterances")
    if min(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1 for every utterance, got {list(max_new_tokens)}")
    return torch.tensor(list(max_new_tokens), dtype=torch.long)


def _make_hypothesis(tokens: list[int], token: int, logprob: float, num_tokens: int, ended: bool,
                     length_penalty: float) -> Hypothesis:
    out = tokens if ended else [*tokens, token]
    return Hypothesis(out, logprob, normalised_score(logprob, num_tokens, length_penalty), num_tokens,
                      token if ended else None)


@torch.inference_mode()
def greedy_search(
    scorer: Scorer,
    batch: Any,
    max_new_tokens: Sequence[int],
    eos_ids: Sequence[int],
    no_repeat_ngram: int = 0,
    length_penalty: float = 1.0,
) -> list[list[Hypothesis]]:
    """Pick the most likely token at each step; one hypothesis per utterance (a 1-best list).

    Finished utterances leave the batch (their scorer rows are dropped) once they are half of its rows:
    dropping a row copies the whole key/value cache, and a step over a few idle rows costs about the same
    as one without them (decoding one token is bound by reading the weights), so rows are compacted in bulk.
    """
    log_probs, state = scorer.init(batch)  # (B, V)
    batch_size, vocab = log_probs.shape
    device = log_probs.device
    max_new = _check_lengths(max_new_tokens, batch_size).to(device)  # (B,)
    is_eos = _eos_table(eos_ids, vocab, device)
    row_utt = torch.arange(batch_size, device=device)  # (R,) utterance of each row
    live = torch.ones(batch_size, dtype=torch.bool, device=device)  # (R,) rows still decoding
    history = torch.zeros(batch_size, int(max_new.max()), dtype=torch.long, device=device)  # (R, T)
    logprob = torch.zeros(batch_size, dtype=torch.float32, device=device)  # (R,)
    results: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    length = 0
    while True:
        if no_repeat_ngram > 0:
            ban_repeated_ngrams(log_probs, history[:, :length], no_repeat_ngram)
        token_logprob, token = log_probs.max(dim=-1)  # (R,), (R,)
        history[:, length] = token
        logprob += token_logprob.float()
        length += 1
        done = live & (is_eos[token] | (max_new <= length))  # (R,) rows that finish now
        if bool(done.any()):
            done_rows = done.nonzero().flatten()
            for utt, tokens, total, ended in zip(row_utt[done_rows].tolist(), history[done_rows, :length].tolist(),
                                                 logprob[done_rows].tolist(), is_eos[token[done_rows]].tolist()):
                results[utt] = [_make_hypothesis(tokens[:-1], tokens[-1], total, length, ended, length_penalty)]
            live &= ~done
            num_live = int(live.sum())
            if num_live == 0:
                return results
            if 2 * num_live <= live.numel():  # compact: drop the finished rows
                keep = live.nonzero().flatten()
                state = scorer.select(state, keep)
                row_utt, history, logprob, max_new, token, live = (
                    t[keep] for t in (row_utt, history, logprob, max_new, token, live))
        log_probs, state = scorer.step(state, token)


@torch.inference_mode()
def beam_search(
    scorer: Scorer,
    batch: Any,
    max_new_tokens: Sequence[int],
    eos_ids: Sequence[int],
    beam: int = 4,
    nbest: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Per-utterance beam search over a batch; returns up to ``nbest`` hypotheses per utterance, best first.

    Rows of finished hypotheses and of finished utterances are dropped from the scorer state.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    log_probs, state = scorer.init(batch)  # (B, V)
    batch_size, vocab = log_probs.shape
    device = log_probs.device
    max_new = _check_lengths(max_new_tokens, batch_size).to(device)  # (U,) per live utterance
    is_eos = _eos_table(eos_ids, vocab, device)
    live_utts = torch.arange(batch_size, device=device)  # (U,) original index of each live utterance
    row_utt = torch.arange(batch_size, device=device)  # (R,) live-utterance index of each state row
    row_slot = torch.zeros(batch_size, dtype=torch.long, device=device)  # (R,) beam slot 0..beam-1
    row_logprob = torch.zeros(batch_size, dtype=torch.float32, device=device)  # (R,)
    history = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (R, t)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    worst_kept = torch.full((batch_size,), float("-inf"), device=device)  # (B,) beam-th best finished score
    length = 0
    while True:
        num_live, num_rows = live_utts.numel(), row_utt.numel()
        if no_repeat_ngram > 0:
            ban_repeated_ngrams(log_probs, history, no_repeat_ngram)
        candidates = row_logprob[:, None] + log_probs.float()  # (R, V)
        slot_index = row_utt * beam + row_slot  # (R,) position in the (U * beam) grid
        grid = candidates.new_full((num_live * beam, vocab), float("-inf"))
        grid[slot_index] = candidates
        slot_to_row = torch.zeros(num_live * beam, dtype=torch.long, device=device)
        slot_to_row[slot_index] = torch.arange(num_rows, device=device)
        top_logprob, top_index = grid.view(num_live, beam * vocab).topk(beam, dim=1)  # (U, beam), best first
        src_row = slot_to_row[torch.arange(num_live, device=device)[:, None] * beam + top_index // vocab]  # (U, beam)
        token = top_index % vocab  # (U, beam)
        length += 1
        valid = top_logprob > float("-inf")
        ends = valid & is_eos[token]
        closes = valid & (ends | (max_new <= length)[:, None])
        running = valid & ~closes
        if bool(closes.any()):
            utt_idx, slot_idx = closes.nonzero(as_tuple=True)
            rows = src_row[utt_idx, slot_idx]
            for utt, tokens, tok, total, ended in zip(live_utts[utt_idx].tolist(), history[rows].tolist(),
                                                      token[utt_idx, slot_idx].tolist(),
                                                      top_logprob[utt_idx, slot_idx].tolist(),
                                                      ends[utt_idx, slot_idx].tolist()):
                finished[utt].append(_make_hypothesis(tokens, tok, total, length, ended, length_penalty))
                if len(finished[utt]) >= beam:
                    worst_kept[utt] = sorted(h.score for h in finished[utt])[-beam]
        best_running = torch.where(running, top_logprob, float("-inf")).max(dim=1).values  # (U,)
        done = ~running.any(dim=1) | (best_running / length**length_penalty < worst_kept[live_utts])  # (U,)
        keep = running & ~done[:, None]
        utt_idx, slot_idx = keep.nonzero(as_tuple=True)
        if utt_idx.numel() == 0:
            break
        rows = src_row[utt_idx, slot_idx]
        new_token = token[utt_idx, slot_idx]
        row_logprob = top_logprob[utt_idx, slot_idx]
        row_utt = (torch.cumsum(~done, 0) - 1)[utt_idx]
        row_slot = slot_idx
        history = torch.cat([history[rows], new_token[:, None]], dim=1)
        live_utts, max_new = live_utts[~done], max_new[~done]
        state = scorer.select(state, rows)
        log_probs, state = scorer.step(state, new_token)
    return [sorted(hyps, key=lambda h: -h.score)[:nbest] for hyps in finished]


def search(
    scorer: Scorer,
    batch: Any,
    max_new_tokens: Sequence[int],
    eos_ids: Sequence[int],
    beam: int = 1,
    nbest: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Greedy search for ``beam == 1``, beam search otherwise (``nbest`` <= ``beam``)."""
    if nbest > beam:
        raise ValueError(f"nbest={nbest} needs beam >= nbest (beam={beam})")
    if beam == 1:
        return greedy_search(scorer, batch, max_new_tokens, eos_ids, no_repeat_ngram, length_penalty)
    return beam_search(scorer, batch, max_new_tokens, eos_ids, beam, nbest, length_penalty, no_repeat_ngram)


def max_new_tokens_for(audio_seconds: Sequence[float], max_new_tokens: int, a: float = 0.0,
                       b: float = 0.0) -> list[int]:
    """Per-utterance output caps: ``min(max_new_tokens, ceil(a * seconds + b))``; ``a = 0`` means the global cap.

    Each cap is at least 1.
    """
    if a <= 0:
        return [max_new_tokens] * len(audio_seconds)
    return [max(1, min(max_new_tokens, math.ceil(a * s + b))) for s in audio_seconds]


def cap_to_context(max_new_tokens: Sequence[int], prefix_lengths: Sequence[int], context: int | None,
                   utt_ids: Sequence[str], logger=None) -> list[int]:
    """Output caps that keep prefix + output within ``context`` positions (the LLM's ``max_position_embeddings``):
    ``min(cap, context - prefix)`` per utterance, with a warning naming each utterance whose cap shrinks.

    ``context=None`` (a model without a position limit) leaves the caps alone. A prefix that leaves no room for
    one output token is an error naming the utterance.
    """
    if context is None:
        return list(max_new_tokens)
    caps = []
    for utt, cap, prefix in zip(utt_ids, max_new_tokens, prefix_lengths):
        room = context - int(prefix)
        if room < 1:
            raise ValueError(f"utterance '{utt}': its prompt + audio take {prefix} positions, the LLM's context is "
                             f"{context} (max_position_embeddings), so no output fits; drop it from the set (a "
                             "lower --max-dur at data preparation) or use an LLM with a longer context")
        if room < cap:
            if logger is not None:
                logger.warning("utterance '%s': prompt + audio take %d of the LLM's %d positions: output capped at "
                               "%d tokens instead of %d", utt, prefix, context, room, cap)
            cap = room
        caps.append(cap)
    return caps
