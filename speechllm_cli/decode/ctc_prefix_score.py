"""CTC prefix scores for joint CTC/attention decoding (Watanabe et al. 2017, ESPnet's CTCPrefixScore), batched over
hypotheses and vectorised over the vocabulary.

For a hypothesis prefix ``g`` and every next token ``c``, ``psi(g + c)`` is the log-probability that the CTC
output *starts with* ``g + c`` (summed over every alignment of the utterance), and ``psi(g + <eos>)`` the
log-probability that it *is* ``g``. A search adds ``psi(g + c) - psi(g)`` to the attention score of ``c``. The
forward variables of ``g`` over the frames, ``r[t] = (log P(g, path ends in a label at t), log P(g, path ends in a
blank at t))``, give every ``psi(g + c)`` in one pass over the frames::

    phi[t]    = logaddexp(r_label[t], r_blank[t])     (only r_blank[t] when c repeats g's last token)
    r_label'[t] = logaddexp(r_label'[t-1], phi[t-1]) + x[t, c]
    r_blank'[t] = logaddexp(r_label'[t-1], r_blank'[t-1]) + x[t, blank]
    psi(g + c)  = logsumexp_t (phi[t-1] + x[t, c])    (+ x[0, c] when g is empty)

Example::

    from speechllm_cli.decode.ctc_prefix_score import CTCPrefixScorer

    ctc = CTCPrefixScorer(blank_id=0, eos_id=vocab - 1)
    state = ctc.init(ctc_log_probs, enc_lens)          # (R, T, V) log-softmax of the CTC head, (R,)
    scores = ctc.scores(state)                          # (R, V): psi(g + c) - psi(g) for the empty prefixes
    state = ctc.advance(state, torch.tensor([5, 7]))    # extend each row's prefix by one token
"""

from __future__ import annotations

import dataclasses

import torch

NEG_INF = float("-inf")


@dataclasses.dataclass
class CTCPrefixState:
    """Rows are hypotheses; ``candidates`` holds the forward variables of every one-token extension."""

    log_probs: torch.Tensor  # (R, T, V) CTC log-probs per frame
    lens: torch.Tensor  # (R,) valid frames
    r: torch.Tensor  # (R, T, 2) forward variables of the prefix (label-ending, blank-ending), log
    psi: torch.Tensor  # (R,) prefix score of the prefix
    last: torch.Tensor  # (R,) last token of the prefix, -1 when empty
    candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # r_label, r_blank (R, T, V), psi (R, V)


class CTCPrefixScorer:
    """CTC prefix scoring over the full vocabulary; see the module docstring."""

    def __init__(self, blank_id: int, eos_id: int):
        self.blank_id, self.eos_id = blank_id, eos_id

    def init(self, log_probs: torch.Tensor, lens: torch.Tensor) -> CTCPrefixState:
        """The state of the empty prefix for CTC log-probs (R, T, V) with ``lens`` (R,) valid frames."""
        rows, frames, _ = log_probs.shape
        r = log_probs.new_full((rows, frames, 2), NEG_INF)
        r[:, :, 1] = log_probs[:, :, self.blank_id].cumsum(1)  # all blanks so far
        return CTCPrefixState(log_probs, lens.to(log_probs.device), r, log_probs.new_zeros(rows),
                              torch.full((rows,), -1, dtype=torch.long, device=log_probs.device))

    def scores(self, state: CTCPrefixState) -> torch.Tensor:
        """(R, V) ``psi(g + c) - psi(g)`` for every token c (``<eos>``: g is the whole output; blank: -inf)."""
        x = state.log_probs  # (R, T, V)
        rows, frames, vocab = x.shape
        row_index = torch.arange(rows, device=x.device)
        r_sum = torch.logaddexp(state.r[:, :, 0], state.r[:, :, 1])  # (R, T)
        phi = r_sum[:, :, None].repeat(1, 1, vocab)  # (R, T, V)
        repeats = state.last >= 0
        phi[row_index[repeats], :, state.last[repeats]] = state.r[repeats, :, 1]  # a repeat needs a blank between
        r_label, r_blank = torch.full_like(x, NEG_INF), torch.full_like(x, NEG_INF)
        empty = (state.last < 0)[:, None]  # (R, 1)
        r_label[:, 0] = torch.where(empty, x[:, 0], NEG_INF)
        psi = r_label[:, 0].clone()  # (R, V)
        inside = torch.arange(frames, device=x.device)[None, :] < state.lens[:, None]  # (R, T)
        for t in range(1, frames):
            r_label[:, t] = torch.logaddexp(r_label[:, t - 1], phi[:, t - 1]) + x[:, t]
            r_blank[:, t] = torch.logaddexp(r_label[:, t - 1], r_blank[:, t - 1]) + x[:, t, self.blank_id, None]
            step = torch.where(inside[:, t, None], phi[:, t - 1] + x[:, t], NEG_INF)
            psi = torch.logaddexp(psi, step)
        psi[:, self.eos_id] = r_sum[row_index, state.lens - 1]
        psi[:, self.blank_id] = NEG_INF
        state.candidates = (r_label, r_blank, psi)
        return psi - state.psi[:, None]

    def advance(self, state: CTCPrefixState, tokens: torch.Tensor) -> CTCPrefixState:
        """Extend row i's prefix by ``tokens[i]`` (R,), after :meth:`scores` on the same rows."""
        if state.candidates is None:
            raise RuntimeError("CTCPrefixScorer.advance needs scores() on the same state first")
        r_label, r_blank, psi = state.candidates
        rows = torch.arange(len(tokens), device=tokens.device)
        state.r = torch.stack([r_label[rows, :, tokens], r_blank[rows, :, tokens]], dim=-1)  # (R, T, 2)
        state.psi, state.last, state.candidates = psi[rows, tokens], tokens, None
        return state

    def select(self, state: CTCPrefixState, rows: torch.Tensor) -> CTCPrefixState:
        """Keep/reorder/repeat rows (R',) of the state (candidates included)."""
        state.log_probs, state.lens, state.r = state.log_probs[rows], state.lens[rows], state.r[rows]
        state.psi, state.last = state.psi[rows], state.last[rows]
        if state.candidates is not None:
            state.candidates = tuple(c[rows] for c in state.candidates)
        return state
