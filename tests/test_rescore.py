"""``speechllm rescore``: n-best lists re-ranked with a real tiny random LLaMA (real BPE tokenizer)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.decode.rescore import llm_logprobs, parse_grid, read_ranked_nbest, rescore, tune_weight
from speechllm_cli.score.score import score_decode_dir, score_group

# (utt, lang, ref, [(text, decoder logprob, num_tokens), ...] in decoder rank order: by logprob / num_tokens)
TEST_SET = [
    ("spkA-u1", "fr", "the cat sat on the mat", [("the cat sat on the mat", -2.0, 8), ("the cat sat on a mat", -2.4, 8),
                                                 ("the cat sat", -1.8, 4), ("", -1.5, 1)]),
    ("spkA-u2", "de", "hello world, this is a small test", [("hello world, this is a small test", -3.0, 10),
                                                            ("hello world this is a test", -3.1, 8)]),
    ("spkB-u3", "en", "good morning, how are you today?", [("good morning, how are you today?", -1.2, 9),
                                                           ("good morning how are you", -1.0, 6),
                                                           ("good morning, how are you?", -1.6, 8)]),
]


def nbest_text(utt_hyps) -> str:
    """nbest.txt lines, rank by logprob / num_tokens (the decoder's default length penalty 1)."""
    lines = []
    for utt, hyps in utt_hyps:
        ranked = sorted(hyps, key=lambda h: -h[1] / h[2])
        lines += [f"{utt} {rank} {lp / n:.6f} {lp:.6f} {n} 1 {text}" for rank, (text, lp, n) in enumerate(ranked, 1)]
    return "".join(f"{line}\n" for line in lines)


def write_decode_dir(path: Path, rows) -> Path:
    path.mkdir(parents=True)
    (path / "nbest.txt").write_text(nbest_text([(utt, hyps) for utt, _, _, hyps in rows]))
    (path / "ref.txt").write_text("".join(f"{utt} {ref}\n" for utt, _, ref, _ in rows))
    (path / "utt2lang").write_text("".join(f"{utt} {lang}\n" for utt, lang, _, _ in rows))
    (path / "utt2spk").write_text("".join(f"{utt} {utt.split('-')[0]}\n" for utt, _, _, _ in rows))
    return path


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    from _speech_llm_fixtures import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "llm")


@pytest.fixture(scope="module")
def llm(llm_dir):
    from speechllm_cli.models.llm import load_llm

    return load_llm(llm_dir)


@pytest.fixture
def test_dir(tmp_path):
    return write_decode_dir(tmp_path / "decode_test", TEST_SET)


@torch.no_grad()
def reference_logprob(model, tokenizer, text: str) -> float:
    """log p(text <eos> | <bos>) from one unpadded forward over the whole sequence."""
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(logprobs[i, t] for i, t in enumerate(ids[1:])))


def all_texts(rows) -> list[str]:
    return [text for _, _, _, hyps in rows for text, _, _ in hyps]


def test_batched_llm_scores_equal_one_at_a_time(llm):
    model, tokenizer = llm
    texts = all_texts(TEST_SET) + ["the cat sat on the mat"]  # a duplicate is scored once
    batched = llm_logprobs(model, tokenizer, texts, batch_size=4)
    single = llm_logprobs(model, tokenizer, texts, batch_size=1)
    assert set(batched) == set(texts)
    for text in texts:
        assert batched[text].logprob == pytest.approx(single[text].logprob, abs=1e-4)
        assert batched[text].logprob == pytest.approx(reference_logprob(model, tokenizer, text), abs=1e-4)
        assert batched[text].num_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    assert batched[""].num_tokens == 1  # an empty hypothesis: log p(<eos> | <bos>)


def test_weight_zero_keeps_the_decoder_ranking(llm_dir, test_dir, tmp_path):
    decoder = read_ranked_nbest(test_dir / "nbest.txt")
    out = tmp_path / "normalised"
    rescore(test_dir / "nbest.txt", llm_dir, out, weight=0.0, length_normalise=True)
    rescored = read_ranked_nbest(out / "nbest.txt")
    for utt, hyps in decoder.items():  # logprob / num_tokens is the decoder's own ranking score here
        assert [h["text"] for h in rescored[utt]] == [h["text"] for h in hyps]
    assert read_table(out / "hyp.txt", allow_empty_value=True) == {u: hyps[0]["text"] for u, hyps in decoder.items()}

    out = tmp_path / "plain"  # without length normalisation, weight 0 ranks by the decoder's summed logprob
    rescore(test_dir / "nbest.txt", llm_dir, out, weight=0.0)
    for utt, hyps in read_ranked_nbest(out / "nbest.txt").items():
        assert [h["text"] for h in hyps] == [h["text"] for h in sorted(decoder[utt], key=lambda h: -h["logprob"])]
        assert [h["score"] for h in hyps] == pytest.approx([h["logprob"] for h in hyps], abs=1e-5)


def test_weight_one_ranks_by_the_llm(llm, llm_dir, test_dir, tmp_path):
    model, tokenizer = llm
    out = tmp_path / "rescored"
    rescore(test_dir / "nbest.txt", llm_dir, out, weight=1.0, batch_size=3)
    rescored = read_ranked_nbest(out / "nbest.txt")
    hyp = read_table(out / "hyp.txt", allow_empty_value=True)
    for utt, _, _, hyps in TEST_SET:
        reference = {text: reference_logprob(model, tokenizer, text) for text, _, _ in hyps}
        assert hyp[utt] == max(reference, key=reference.get)
        assert [h["text"] for h in rescored[utt]] == sorted(reference, key=lambda t: -reference[t])
        assert [h["score"] for h in rescored[utt]] == pytest.approx([reference[h["text"]] for h in rescored[utt]],
                                                                    abs=1e-4)
    record = yaml.safe_load((out / "rescore.yaml").read_text())
    assert record["weight"] == 1.0 and record["llm"] == str(llm_dir) and record["nbest"] == str(test_dir / "nbest.txt")


def test_malformed_nbest_names_file_and_line(llm_dir, test_dir, tmp_path):
    lines = (test_dir / "nbest.txt").read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*lines[:2], "spkA-u1 3 -0.5 minus-two 4 1 the cat sat", *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}:3: .*minus-two"):
        read_nbest(bad)
    bad.write_text("\n".join([*lines[:4], "spkA-u2 1 -0.3", *lines[5:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}:5: expected"):
        rescore(bad, llm_dir, tmp_path / "out", weight=0.5)
    bad.write_text("".join(f"{line}\n" for line in lines if not line.startswith("spkA-u1 2 ")))
    with pytest.raises(ValueError, match=r"'spkA-u1' has ranks \[1, 3, 4\]"):
        rescore(bad, llm_dir, tmp_path / "out", weight=0.5)


def test_parse_grid():
    assert parse_grid("0:1:0.1") == [round(0.1 * i, 10) for i in range(11)]
    assert parse_grid("0.2:0.5:0.3") == [0.2, 0.5]
    with pytest.raises(ValueError, match="start:stop:step"):
        parse_grid("0:1")


def test_tuned_weight_on_dev_then_score(llm, llm_dir, test_dir, tmp_path):
    from typer.testing import CliRunner

    from speechllm_cli.cli import app

    model, tokenizer = llm
    # dev: the reference is the LLM's favourite hypothesis, ranked last by the decoder, so a large weight helps
    candidates = {"spkC-u1": ("fr", ["the cat sat on the mat today", "the cat sat on a mat today"]),
                  "spkC-u2": ("de", ["hello world, this is a small test", "hello world this is a small test",
                                     "hello world, this is the small test"]),
                  "spkD-u3": ("en", ["good morning, how are you today?", "good morning how are you"])}
    dev_rows = []
    for utt, (lang, texts) in candidates.items():
        by_llm = sorted(texts, key=lambda t: reference_logprob(model, tokenizer, t))  # LLM's favourite last
        hyps = [(text, -2.0 - 0.5 * i, 8) for i, text in enumerate(by_llm)]  # decoder: favourite last
        dev_rows.append((utt, lang, by_llm[-1], hyps))
    dev_dir = write_decode_dir(tmp_path / "decode_dev", dev_rows)
    refs, utt2lang = read_table(dev_dir / "ref.txt"), read_table(dev_dir / "utt2lang")
    st_utts = ["spkC-u1", "spkC-u2"]  # a mixed dev set is tuned on BLEU over its ST utterances
    baseline_bleu = score_group(st_utts, refs, {u: hyps[0][0] for u, _, _, hyps in dev_rows}, "st")["bleu"]
    assert baseline_bleu < 100 and set(utt2lang.values()) == {"fr", "de", "en"}

    out = tmp_path / "decode_test_rescore"
    result = CliRunner().invoke(app, ["rescore", "--nbest", str(test_dir / "nbest.txt"), "--llm", str(llm_dir),
                                      "--out", str(out), "--tune-nbest", str(dev_dir / "nbest.txt"),
                                      "--grid", "0:1:0.25", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    table = (out / "weight_search.txt").read_text().splitlines()
    assert table[0].startswith("# BLEU over the 2 ST utterances")
    rows = [(float(w), float(v)) for w, v in (line.split() for line in table[2:-1])]
    assert [w for w, _ in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[0][1] == pytest.approx(baseline_bleu, abs=0.01) and rows[-1][1] == pytest.approx(100.0)
    best = min(w for w, v in rows if v == max(v for _, v in rows))
    assert table[-1] == f"best weight {best:g}: BLEU 100.00" and best > 0
    assert yaml.safe_load((out / "rescore.yaml").read_text())["weight"] == best

    asr_only = {u: hyps for u, hyps in read_ranked_nbest(dev_dir / "nbest.txt").items() if utt2lang[u] == "en"}
    scores = llm_logprobs(model, tokenizer, [h["text"] for hyps in asr_only.values() for h in hyps])
    weight, asr_table = tune_weight(asr_only, scores, refs, utt2lang, [1.0, 0.0, 0.5], length_normalise=False)
    lines = asr_table.splitlines()  # an ASR-only dev set is tuned on -WER
    assert lines[0].startswith("# -WER over all 1 (ASR) utterances")
    baseline_wer = score_group(["spkD-u3"], refs, {"spkD-u3": asr_only["spkD-u3"][0]["text"]}, "asr")["wer"]
    assert baseline_wer > 0
    asr_rows = [(float(w), float(v)) for w, v in (line.split() for line in lines[2:-1])]
    assert asr_rows[0] == (0.0, pytest.approx(-baseline_wer, abs=0.01)) and asr_rows[-1] == (1.0, 0.0)
    assert weight == min(w for w, v in asr_rows if v == 0.0) and lines[-1] == f"best weight {weight:g}: -WER 0.00"

    for name in ("ref.txt", "utt2lang", "utt2spk"):
        assert (out / name).read_text() == (test_dir / name).read_text()
    scored = score_decode_dir(out)
    assert set(scored["groups"]) == {"all_st", "all_asr", "de", "en", "fr"}
    assert (out / "result.txt").exists()

    # a dev n-best decoded by a model trained to recognise German too: tuning follows its decode.yaml
    (dev_dir / "decode.yaml").write_text(yaml.safe_dump({"config": {"asr_langs": ["en", "de"]}}))
    rescore(test_dir / "nbest.txt", llm_dir, tmp_path / "by_record", tune_nbest=str(dev_dir / "nbest.txt"),
            grid="0:1:0.5")
    assert (tmp_path / "by_record" / "weight_search.txt").read_text().startswith("# BLEU over the 1 ST utterances")
    assert yaml.safe_load((tmp_path / "by_record" / "rescore.yaml").read_text())["asr_langs"] == ["en", "de"]


def test_tuning_needs_dev_refs(llm_dir, test_dir, tmp_path):
    dev_dir = tmp_path / "decode_dev"
    dev_dir.mkdir()
    (dev_dir / "nbest.txt").write_text((test_dir / "nbest.txt").read_text())
    with pytest.raises(FileNotFoundError, match="ref.txt: missing"):
        rescore(test_dir / "nbest.txt", llm_dir, tmp_path / "out", tune_nbest=dev_dir / "nbest.txt")
    (dev_dir / "ref.txt").write_text("spkA-u1 the cat sat on the mat\n")
    (dev_dir / "utt2lang").write_text((test_dir / "utt2lang").read_text())
    with pytest.raises(ValueError, match=r"ref.txt: no entry for 2 utterance\(s\).*first: 'spkA-u2'"):
        rescore(test_dir / "nbest.txt", llm_dir, tmp_path / "out", tune_nbest=dev_dir / "nbest.txt")
