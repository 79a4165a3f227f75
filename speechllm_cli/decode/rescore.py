"""LLM n-best rescoring: re-rank the n-best list of a decode dir with a text-only LLM.

Each hypothesis of an utterance gets the combined score

    (1 - weight) * decoder_logprob + weight * llm_logprob

``decoder_logprob`` is the ``logprob`` column of nbest.txt (the decoder's summed log-prob, end token included).
``llm_logprob`` is the LLM's summed log-prob of the hypothesis text scored as a plain LM sequence
``<bos> text <eos>``: the tokenizer's bos token (its eos token when it has none) is the only context, and the
eos token after the text is scored too, so the LLM also judges whether the text is complete (an empty
hypothesis is ``<bos> <eos>``). With ``length_normalise`` each log-prob is first divided by its own token count
(the decoder's ``num_tokens``; the LLM's text tokens + 1). Hypotheses are sorted by the combined score, ties
keeping the decoder's order. At weight 0 the order is the decoder's logprob (with ``length_normalise``:
logprob / num_tokens, which is the decoder's own ranking under its default length penalty 1).

The output dir is a decode dir that ``speechllm score`` reads: ``hyp.txt`` (the new 1-best); ``ref.txt``,
``utt2lang``, ``utt2spk`` copied from the n-best's dir when there; ``nbest.txt`` re-ranked (score = combined
score); ``rescore.yaml`` (LLM, weight, options, source n-best, command).

Weight tuning (``tune_nbest``): each weight of the grid picks a 1-best on a dev n-best (its dir needs ref.txt and
utt2lang), scored as ``speechllm score`` does: BLEU (tc) over the ST utterances (utt2lang not in ``asr_langs``)
when there are any, so a mixed set is tuned on its ST part; -WER (lc.rm) over all utterances of an ASR-only set.
The best weight (ties: the smaller) rescores the test n-best; the grid goes to ``weight_search.txt``. The dev
hypotheses are scored by the LLM once for the whole grid.

Usage:
    speechllm rescore --nbest exp/seq2seq/decode_test/nbest.txt --llm exp/llm/smollm2_hf --weight 0.3 \\
        --out exp/seq2seq/decode_test_rescore
    speechllm rescore --nbest exp/seq2seq/decode_test/nbest.txt --llm exp/llm/smollm2_hf --length-normalise \\
        --tune-nbest exp/seq2seq/decode_dev/nbest.txt --grid 0:1:0.1 --out exp/seq2seq/decode_test_rescore
    speechllm score exp/seq2seq/decode_test_rescore

Python (the options and their defaults: :class:`speechllm_cli.decode.options.RescoreOptions`)::

    from speechllm_cli.decode.rescore import RescoreOptions, rescore
    rescore("exp/seq2seq/decode_test/nbest.txt", "exp/llm/smollm2_hf", "exp/seq2seq/decode_test_rescore", weight=0.3)
    rescore("exp/seq2seq/decode_test/nbest.txt", "exp/llm/smollm2_hf", "exp/seq2seq/decode_test_rescore",
            RescoreOptions(length_normalise=True, tune_nbest="exp/seq2seq/decode_dev/nbest.txt"))
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from speechllm_cli.data.kaldi_dir import format_table, read_table
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.decode.options import RescoreOptions
from speechllm_cli.score.score import ASR_LANGS, score_group
from speechllm_cli.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

COPIED_TABLES = ("ref.txt", "utt2lang", "utt2spk")


@dataclasses.dataclass(frozen=True)
class LMScore:
    """The LLM's score of one hypothesis text."""

    logprob: float  # sum of the token log-probs, end token included
    num_tokens: int  # tokens scored: the text's tokens + the end token


def read_ranked_nbest(path: str | Path) -> dict[str, list[dict]]:
    """:func:`read_nbest`, each utterance's hypotheses sorted by rank; the ranks must be 1..n, each once."""
    nbest = read_nbest(path)
    if not nbest:
        raise ValueError(f"{path}: no hypotheses; decode with --nbest N to write an n-best list")
    for utt, hyps in nbest.items():
        hyps.sort(key=lambda h: h["rank"])
        ranks = [h["rank"] for h in hyps]
        if ranks != list(range(1, len(hyps) + 1)):
            raise ValueError(f"{path}: utterance '{utt}' has ranks {ranks}; expected 1..{len(hyps)}, each once "
                             "(re-run the decode that wrote it)")
    return nbest


def read_decode_tables(decode_dir: Path, utts: list[str], names: tuple[str, ...],
                       required: bool = False) -> dict[str, dict[str, str]]:
    """The tables ``names`` of ``decode_dir`` restricted to ``utts``; a table that is there must cover them all."""
    tables = {}
    for name in names:
        path = decode_dir / name
        if not path.exists():
            if required:
                raise FileNotFoundError(f"{path}: missing; weight tuning needs the dev decode dir's "
                                        f"{' and '.join(names)} beside its nbest.txt")
            continue
        table = read_table(path)
        missing = [u for u in utts if u not in table]
        if missing:
            raise ValueError(f"{path}: no entry for {len(missing)} utterance(s) of {decode_dir / 'nbest.txt'} "
                             f"(first: '{missing[0]}'); use the tables of the decode that wrote the n-best")
        tables[name] = {u: table[u] for u in utts}
    return tables


def _context_and_end_ids(tokenizer) -> tuple[int, int]:
    end_id = tokenizer.eos_token_id
    if end_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token to end a hypothesis with")
    context_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else end_id
    return context_id, end_id


@torch.no_grad()
def llm_logprobs(model, tokenizer, texts: list[str], batch_size: int = 16) -> dict[str, LMScore]:
    """LLM scores of the distinct ``texts`` as ``<bos> text <eos>``: batches of similar length, right padded,
    one forward each (causal attention: a padded position is never seen by a real one)."""
    unique = sorted(set(texts))
    if not unique:
        return {}
    context_id, end_id = _context_and_end_ids(tokenizer)
    text_ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
    seqs = sorted(((text, [context_id, *ids, end_id]) for text, ids in zip(unique, text_ids)),
                  key=lambda item: len(item[1]))
    device = next(model.parameters()).device
    scores = {}
    with tqdm(total=len(seqs), desc="LLM scoring", unit="hyp", disable=None) as bar:
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start:start + batch_size]
            length = len(batch[-1][1])
            input_ids = torch.full((len(batch), length), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(batch), length, dtype=torch.long)
            for row, (_, ids) in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            targets = input_ids[:, 1:]  # (B, T - 1): each position predicts the next token
            token_logprobs = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
            token_logprobs = token_logprobs.masked_fill(mask[:, 1:] == 0, 0.0)
            for (text, ids), logprob in zip(batch, token_logprobs.sum(1).tolist()):
                scores[text] = LMScore(logprob, len(ids) - 1)
            bar.update(len(batch))
    return scores


def combined_score(hyp: dict, llm: LMScore, weight: float, length_normalise: bool) -> float:
    decoder, lm = hyp["logprob"], llm.logprob
    if length_normalise:
        decoder, lm = decoder / max(hyp["num_tokens"], 1), lm / llm.num_tokens
    return (1 - weight) * decoder + weight * lm


def rerank(hyps: list[dict], llm_scores: dict[str, LMScore], weight: float, length_normalise: bool) -> list[dict]:
    """``hyps`` (in decoder rank order) sorted by the combined score, which replaces ``score``; ranks renumbered."""
    scored = [{**h, "score": combined_score(h, llm_scores[h["text"]], weight, length_normalise)} for h in hyps]
    ranked = sorted(scored, key=lambda h: -h["score"])  # stable: ties keep the decoder's order
    return [{**h, "rank": rank} for rank, h in enumerate(ranked, 1)]


def format_nbest(nbest: dict[str, list[dict]]) -> str:
    """nbest.txt lines (see decode_io.NBEST_FORMAT), by utterance (C order), then rank."""
    return "".join(f"{utt} {h['rank']} {h['score']:.6f} {h['logprob']:.6f} {h['num_tokens']} {int(h['ended'])} "
                   f"{h['text']}\n" for utt in sorted(nbest) for h in nbest[utt])


def parse_grid(spec: str) -> list[float]:
    """``"start:stop:step"`` -> [start, start + step, ..., stop] (stop included when on the grid), all in [0, 1]."""
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"grid {spec!r}: expected start:stop:step, e.g. 0:1:0.1") from None
    if step <= 0 or not 0 <= start <= stop <= 1:
        raise ValueError(f"grid {spec!r}: need 0 <= start <= stop <= 1 and step > 0")
    count = int(round((stop - start) / step, 9)) + 1
    return [round(start + i * step, 10) for i in range(count)]


def tune_weight(nbest: dict[str, list[dict]], llm_scores: dict[str, LMScore], refs: dict[str, str],
                utt2lang: dict[str, str], grid: list[float], length_normalise: bool,
                asr_langs: tuple[str, ...] = ASR_LANGS) -> tuple[float, str]:
    """The grid weight whose 1-best scores best on the dev ``nbest`` (ties: the smaller), and the grid table."""
    st_utts = [u for u in nbest if utt2lang[u] not in asr_langs]
    utts, task, name = (st_utts, "st", "BLEU") if st_utts else (list(nbest), "asr", "-WER")
    rows = []
    for weight in sorted(grid):
        hyps = {u: rerank(nbest[u], llm_scores, weight, length_normalise)[0]["text"] for u in utts}
        result = score_group(utts, refs, hyps, task)
        rows.append((weight, result["bleu"] if task == "st" else 0.0 - result["wer"]))  # 0.0 - x: no "-0.00"
    best_weight, best_value = max(rows, key=lambda row: row[1])  # max keeps the first: the smaller weight
    subset = f"the {len(utts)} ST utterances" if task == "st" else f"all {len(utts)} (ASR) utterances"
    lines = [f"# {name} over {subset}; length_normalise={length_normalise}", f"weight {name:>8}"]
    lines += [f"{weight:<6g} {value:>8.2f}" for weight, value in rows]
    lines.append(f"best weight {best_weight:g}: {name} {best_value:.2f}")
    return best_weight, "\n".join(lines) + "\n"


def decoded_asr_langs(decode_dir: Path) -> tuple[str, ...]:
    """The ASR languages a decode dir was decoded with (its decode.yaml; the model's training choice unless the
    decode said otherwise), else ASR_LANGS."""
    record_path = decode_dir / "decode.yaml"
    record = yaml.safe_load(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    langs = ((record or {}).get("config") or {}).get("asr_langs")
    return tuple(langs) if langs else ASR_LANGS


def rescore(nbest_path: str | Path, llm: str | Path, out_dir: str | Path, options: RescoreOptions | None = None,
            command: str | None = None, **fields) -> float:
    """Re-rank ``nbest_path`` with the LLM ``llm`` into the decode dir ``out_dir`` (see the module docstring), with
    ``options`` (default :class:`RescoreOptions`) and any of its fields set by name (``weight=0.5``). With
    ``tune_nbest`` the weight is tuned over ``grid`` first. Returns the weight used."""
    from speechllm_cli.models.llm import load_llm

    opts = dataclasses.replace(options or RescoreOptions(), **fields)
    weight, tune_nbest = opts.weight, opts.tune_nbest  # the weight is tuned when tune_nbest is given
    nbest_path, out_dir = Path(nbest_path), Path(out_dir)
    if out_dir.resolve() == nbest_path.parent.resolve():
        raise ValueError(f"--out {out_dir} is the n-best's own decode dir; give a new dir (e.g. {out_dir}_rescore)")
    nbest = read_ranked_nbest(nbest_path)
    tables = read_decode_tables(nbest_path.parent, list(nbest), COPIED_TABLES)
    if tune_nbest is not None:
        weights = parse_grid(opts.grid)
        dev_nbest = read_ranked_nbest(tune_nbest)
        dev_tables = read_decode_tables(Path(tune_nbest).parent, list(dev_nbest), ("ref.txt", "utt2lang"),
                                        required=True)
    elif not 0 <= weight <= 1:
        raise ValueError(f"weight {weight}: expected a value in [0, 1]")
    model, tokenizer = load_llm(llm, dtype=opts.dtype, device=opts.device)
    llm_scores: dict[str, LMScore] = {}
    if tune_nbest is not None:
        llm_scores = llm_logprobs(model, tokenizer, [h["text"] for hs in dev_nbest.values() for h in hs],
                                   opts.batch_size)
        opts.asr_langs = opts.asr_langs or decoded_asr_langs(Path(tune_nbest).parent)
        weight, table = tune_weight(dev_nbest, llm_scores, dev_tables["ref.txt"], dev_tables["utt2lang"], weights,
                                    opts.length_normalise, opts.asr_langs)
        atomic_write_text(out_dir / "weight_search.txt", table)
        logger.info("tuned on %s:\n%s", tune_nbest, table)
    texts = [h["text"] for hs in nbest.values() for h in hs if h["text"] not in llm_scores]
    llm_scores |= llm_logprobs(model, tokenizer, texts, opts.batch_size)
    reranked = {utt: rerank(hyps, llm_scores, weight, opts.length_normalise) for utt, hyps in nbest.items()}
    changed = sum(reranked[u][0]["text"] != nbest[u][0]["text"] for u in nbest)
    atomic_write_text(out_dir / "hyp.txt", format_table({u: hyps[0]["text"] for u, hyps in reranked.items()}))
    for name, table in tables.items():
        atomic_write_text(out_dir / name, format_table(table))
    atomic_write_text(out_dir / "nbest.txt", format_nbest(reranked))
    record = {"nbest": str(nbest_path), "llm": str(llm), "weight": weight, "length_normalise": opts.length_normalise,
              "tune_nbest": str(tune_nbest) if tune_nbest is not None else None,
              "grid": opts.grid if tune_nbest is not None else None, "asr_langs": list(opts.asr_langs or ()),
              "llm_sequence": "<bos> text <eos> (eos as context when there is no bos); end token scored",
              "llm_params": sum(p.numel() for p in model.parameters()),
              "num_utts": len(nbest), "changed_1best": changed, "command": command or shlex.join(sys.argv)}
    atomic_write_text(out_dir / "rescore.yaml", yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    logger.info("rescored %d utterances with weight %g: %d 1-best changed; wrote %s", len(nbest), weight, changed,
                out_dir)
    return weight
