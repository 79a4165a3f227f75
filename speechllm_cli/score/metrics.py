"""Corpus metrics: BLEU and chrF (sacrebleu) for translation, WER and CER for recognition.

Example:
    >>> wer = error_rate([["the", "cat"]], [["the", "hat"]])
    >>> (wer.errors, wer.ref_len, round(wer.rate, 1))
    (1, 2, 50.0)
"""

from __future__ import annotations

import dataclasses

import sacrebleu


@dataclasses.dataclass
class ErrorCounts:
    """Edit-distance totals over a corpus: substitutions, deletions, insertions, reference length."""

    sub: int = 0
    dele: int = 0
    ins: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """Errors per 100 reference units."""
        return 100.0 * self.errors / max(self.ref_len, 1)


def align_counts(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum edit-distance alignment."""
    # Each cell holds (total, sub, del, ins); ties prefer substitutions, as sclite does.
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            d = prev[j - 1]
            same = ref[i - 1] == hyp[j - 1]
            diag = (d[0] + (not same), d[1] + (not same), d[2], d[3])
            up = (prev[j][0] + 1, prev[j][1], prev[j][2] + 1, prev[j][3])
            left = (cur[j - 1][0] + 1, cur[j - 1][1], cur[j - 1][2], cur[j - 1][3] + 1)
            cur.append(min(diag, up, left, key=lambda c: c[0]))
        prev = cur
    _, sub, dele, ins = prev[-1]
    return sub, dele, ins


def error_rate(refs: list[list[str]], hyps: list[list[str]]) -> ErrorCounts:
    """Corpus-level error counts over token lists (words for WER, characters for CER)."""
    total = ErrorCounts()
    for ref, hyp in zip(refs, hyps, strict=True):
        sub, dele, ins = align_counts(ref, hyp)
        total.sub += sub
        total.dele += dele
        total.ins += ins
        total.ref_len += len(ref)
    return total


def wer(refs: list[str], hyps: list[str]) -> ErrorCounts:
    return error_rate([r.split() for r in refs], [h.split() for h in hyps])


def cer(refs: list[str], hyps: list[str]) -> ErrorCounts:
    """Character error rate, spaces excluded (as ESPnet's CER)."""
    return error_rate([list(r.replace(" ", "")) for r in refs], [list(h.replace(" ", "")) for h in hyps])


def bleu(refs: list[str], hyps: list[str]) -> tuple[float, str]:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, case-sensitive) and its signature."""
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hyps, [refs])
    return score.score, str(metric.get_signature())


def chrf(refs: list[str], hyps: list[str]) -> tuple[float, str]:
    metric = sacrebleu.metrics.CHRF()
    score = metric.corpus_score(hyps, [refs])
    return score.score, str(metric.get_signature())
