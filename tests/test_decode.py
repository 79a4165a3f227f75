"""Decoding: greedy and beam search with the LLM key/value cache, against no-cache references and HF generate."""

from __future__ import annotations

import math

import pytest
import torch
from _decode_fixtures import (
    VOCAB,
    full_logprobs,
    pick_eos_ids,
    random_prefixes,
    reference_greedy,
    sequence_logprob,
    tiny_llama,
)

from speechllm_cli.decode.llm_scorer import LLMScorer, PrefixBatch
from speechllm_cli.decode.search import (
    ban_repeated_ngrams,
    beam_search,
    greedy_search,
    max_new_tokens_for,
    normalised_score,
    search,
)

LENGTHS = [9, 4, 13, 6]  # prefix lengths: a left-padded batch


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def prefixes():
    return random_prefixes(LENGTHS)


@pytest.fixture(scope="module")
def eos_ids(model, prefixes):
    # utterance 0 reaches an end token at step 3, utterance 2 at step 8: the batch finishes unevenly
    return pick_eos_ids(model, [prefixes[0], prefixes[2]], [3, 8])


def tokens_of(nbest):
    return [[h.tokens for h in hyps] for hyps in nbest]


def test_greedy_equals_beam_1(model, prefixes, eos_ids):
    scorer = LLMScorer(model)
    greedy = greedy_search(scorer, prefixes, [20] * 4, eos_ids)
    beam1 = beam_search(scorer, prefixes, [20] * 4, eos_ids, beam=1)
    assert tokens_of(greedy) == tokens_of(beam1)
    assert [h[0].ended for h in greedy] == [h[0].ended for h in beam1]
    for g, b in zip(greedy, beam1):
        assert g[0].logprob == pytest.approx(b[0].logprob, abs=1e-4)
    lengths = {len(h[0].tokens) for h in greedy}
    assert len(lengths) > 1 and any(h[0].ended for h in greedy), "fixture should make utterances end unevenly"


def test_cached_greedy_equals_full_recompute(model, prefixes, eos_ids):
    nbest = greedy_search(LLMScorer(model), prefixes, [15] * 4, eos_ids)
    for prefix, hyps in zip(prefixes, nbest):
        reference = reference_greedy(model, prefix, 15, set(eos_ids))
        hyp = hyps[0]
        assert hyp.tokens + ([reference[-1]] if hyp.ended else []) == reference
        assert hyp.logprob == pytest.approx(sequence_logprob(model, prefix, reference), abs=1e-3)


@pytest.mark.parametrize("beam", [1, 4])
def test_batched_equals_one_at_a_time(model, prefixes, eos_ids, beam):
    scorer = LLMScorer(model)
    max_new = [12, 7, 16, 10]
    batched = search(scorer, prefixes, max_new, eos_ids, beam=beam, nbest=beam)
    for i, prefix in enumerate(prefixes):
        alone = search(scorer, [prefix], [max_new[i]], eos_ids, beam=beam, nbest=beam)[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        for a, b in zip(batched[i], alone):
            assert a.score == pytest.approx(b.score, abs=1e-4)
        assert len(batched[i]) == beam


@pytest.mark.parametrize("beam", [1, 3])
def test_length_guard_stops_model_without_eos(prefixes, beam):
    model = tiny_llama()
    eos = 7
    with torch.no_grad():
        model.lm_head.weight[eos] = 0.0  # logit 0: far below the best tokens, never chosen
    max_new = [3, 11, 1, 6]
    nbest = search(LLMScorer(model), prefixes, max_new, [eos], beam=beam, nbest=beam)
    for cap, hyps in zip(max_new, nbest):
        assert hyps, "every utterance gets hypotheses"
        for hyp in hyps:
            assert not hyp.ended and len(hyp.tokens) == cap == hyp.num_tokens and eos not in hyp.tokens


def test_long_outputs_grow_the_cache_and_mask(prefixes):
    """150 steps: the key/value buffers and the step mask grow several times on the way."""
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[7] = 0.0  # never chosen: every output runs to its cap
    pair = [prefixes[1], prefixes[2]]  # 4 and 13 positions: a padded batch
    batched = greedy_search(LLMScorer(model), pair, [150, 140], [7])
    for prefix, cap, hyps in zip(pair, [150, 140], batched):
        assert hyps[0].tokens == reference_greedy(model, prefix, cap, {7})
    beam = beam_search(LLMScorer(model), pair, [150, 140], [7], beam=2, nbest=2)
    for prefix, hyps in zip(pair, beam):
        for h in hyps:
            assert h.logprob == pytest.approx(sequence_logprob(model, prefix, h.tokens), abs=1e-2)


def repeated_ngrams(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("beam", [1, 4])
def test_no_repeat_ngram(model, prefixes, n, beam):
    scorer = LLMScorer(model)
    free = search(scorer, prefixes, [40] * 4, [VOCAB - 1], beam=beam, nbest=beam)
    assert any(repeated_ngrams(h.tokens, n) for hyps in free for h in hyps), "the random model should loop"
    banned = search(scorer, prefixes, [40] * 4, [VOCAB - 1], beam=beam, nbest=beam, no_repeat_ngram=n)
    for hyps in banned:
        for h in hyps:
            assert not repeated_ngrams(h.tokens, n), h.tokens


def test_ban_repeated_ngrams_unit():
    history = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    log_probs = torch.zeros(2, 10)
    ban_repeated_ngrams(log_probs, history, 3)  # row 0 ends "5 6", seen before followed by 7
    assert torch.isinf(log_probs[0, 7]) and torch.isfinite(log_probs[0]).sum() == 9
    assert torch.isfinite(log_probs[1]).all()
    log_probs = torch.zeros(2, 10)
    ban_repeated_ngrams(log_probs, history, 1)
    assert sorted(torch.isinf(log_probs[0]).nonzero().flatten().tolist()) == [5, 6, 7]


def hf_greedy(model, prefixes, max_new, eos_ids):
    total = max(p.shape[0] for p in prefixes)
    inputs = torch.zeros(len(prefixes), total, prefixes[0].shape[1])
    mask = torch.zeros(len(prefixes), total, dtype=torch.long)
    for i, p in enumerate(prefixes):
        inputs[i, total - p.shape[0]:] = p
        mask[i, total - p.shape[0]:] = 1
    out = model.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=list(eos_ids), pad_token_id=0)
    results = []
    for row in out.tolist():  # generated tokens only; after an end token comes padding
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        results.append(row[:ends[0]] if ends else row)
    return results


@pytest.mark.parametrize("batched", [False, True])
def test_greedy_equals_hf_generate(model, prefixes, eos_ids, batched):
    scorer = LLMScorer(model)
    groups = [prefixes] if batched else [[p] for p in prefixes]
    for group in groups:
        ours = [h[0].tokens for h in greedy_search(scorer, group, [14] * len(group), eos_ids)]
        assert ours == hf_greedy(model, group, 14, eos_ids)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_scores_equal_recomputed_logprobs(model, prefixes, eos_ids, length_penalty):
    nbest = beam_search(LLMScorer(model), prefixes, [12] * 4, eos_ids, beam=4, nbest=4,
                        length_penalty=length_penalty)
    for prefix, hyps in zip(prefixes, nbest):
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            tokens = h.tokens + ([h.end_token] if h.ended else [])
            assert h.end_token is None or h.end_token in eos_ids
            assert h.num_tokens == len(tokens)
            assert h.logprob == pytest.approx(sequence_logprob(model, prefix, tokens), abs=1e-3)
            assert h.score == pytest.approx(normalised_score(h.logprob, h.num_tokens, length_penalty))


def test_wide_beam_finds_the_exhaustive_best(model, prefixes, eos_ids):
    """Two output tokens and a beam as wide as the vocabulary: beam search must find the best sequence."""
    prefix = prefixes[1]
    best = beam_search(LLMScorer(model), [prefix], [2], eos_ids, beam=VOCAB, length_penalty=0.0)[0][0]
    first = full_logprobs(model, prefix, [])[0]  # (V,)
    exhaustive = max(
        float(first[t]) if t in eos_ids else float(first[t] + full_logprobs(model, prefix, [t])[1].max())
        for t in range(VOCAB)
    )
    assert best.score == pytest.approx(exhaustive, abs=1e-3)


def test_bidirectional_span_matches_full_recompute(model, prefixes, eos_ids):
    spans = [(2, 7), None, (0, 13), (1, 3)]
    batch = PrefixBatch(prefixes, spans)
    nbest = greedy_search(LLMScorer(model), batch, [10] * 4, eos_ids)
    causal = greedy_search(LLMScorer(model), prefixes, [10] * 4, eos_ids)
    assert tokens_of(nbest) != tokens_of(causal), "the spans should change the outputs"
    for prefix, span, hyps in zip(prefixes, spans, nbest):
        reference = reference_greedy(model, prefix, 10, set(eos_ids), span=span)
        assert hyps[0].tokens == (reference[:-1] if hyps[0].ended else reference)
        alone = greedy_search(LLMScorer(model), PrefixBatch([prefix], [span]), [10], eos_ids)
        assert alone[0][0].tokens == hyps[0].tokens


def test_eager_attention_gives_the_same_outputs(prefixes, eos_ids):
    sdpa = search(LLMScorer(tiny_llama()), prefixes, [10] * 4, eos_ids, beam=3, nbest=3)
    eager = search(LLMScorer(tiny_llama(attn_implementation="eager")), prefixes, [10] * 4, eos_ids, beam=3, nbest=3)
    assert tokens_of(sdpa) == tokens_of(eager)


def test_search_argument_errors(model, prefixes):
    scorer = LLMScorer(model)
    with pytest.raises(ValueError, match="max_new_tokens has 1 entries"):
        search(scorer, prefixes, [5], [1])
    with pytest.raises(ValueError, match="eos_ids is empty"):
        search(scorer, prefixes, [5] * 4, [])
    with pytest.raises(ValueError, match="needs beam >= nbest"):
        search(scorer, prefixes, [5] * 4, [1], beam=2, nbest=3)
    with pytest.raises(ValueError, match="outside its prefix"):
        search(scorer, PrefixBatch(prefixes, [(0, 99), None, None, None]), [5] * 4, [1])


def test_max_new_tokens_for():
    assert max_new_tokens_for([1.0, 10.0], 50) == [50, 50]
    assert max_new_tokens_for([1.0, 10.0, 0.0], 50, a=4.0, b=5.0) == [9, 45, 5]
    assert max_new_tokens_for([100.0], 50, a=4.0, b=5.0) == [50]
    assert max_new_tokens_for([0.01], 50, a=0.5, b=0.0) == [1]
    assert math.ceil(4.0 * 10.0 + 5.0) == 45
