"""Scoring: BLEU/chrF equal sacrebleu's command line on the same files, WER/CER equal a plain
edit-distance reference, per-language grouping, sclite files, and the results table."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechllm_cli.score.metrics import cer, wer
from speechllm_cli.score.results import write_results
from speechllm_cli.score.score import score_decode_dir
from speechllm_cli.text.normalize import lowercase_remove_punctuation

SACREBLEU = [sys.executable, "-m", "sacrebleu"]


def reference_edit_distance(a: list[str], b: list[str]) -> int:
    """Plain Levenshtein distance, the textbook recursion with memo rows."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        new = [i]
        for j, y in enumerate(b, 1):
            new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (x != y)))
        row = new
    return row[-1]


def random_sentences(rng: random.Random, n: int) -> list[str]:
    words = "the a cat dog sees big small house at seven o'clock in garden is not".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(n)]


def test_wer_cer_equal_plain_edit_distance():
    rng = random.Random(0)
    refs, hyps = random_sentences(rng, 200), random_sentences(rng, 200)
    w = wer(refs, hyps)
    assert w.errors == sum(reference_edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    assert w.ref_len == sum(len(r.split()) for r in refs)
    c = cer(refs, hyps)
    assert c.errors == sum(reference_edit_distance(list(r.replace(" ", "")), list(h.replace(" ", "")))
                           for r, h in zip(refs, hyps))


def write_decode_dir(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.mkdir(parents=True)
    for name, col in (("ref.txt", 2), ("hyp.txt", 3), ("utt2lang", 1)):
        (path / name).write_text("".join(f"{r[0]} {r[col]}\n" for r in sorted(rows)))
    return path


ROWS = [
    ("s1-de1", "de", "The cat sleeps in the garden.", "The cat sleeps in a garden."),
    ("s1-de2", "de", "Where is the big dog?", "Where is the dog?"),
    ("s2-fr1", "fr", "I do not see the house.", "I don't see the house."),
    ("s2-fr2", "fr", "We eat at seven o'clock.", "We eat at seven o'clock."),
    ("s3-en1", "en", "The dog runs home.", "the dog run home"),
    ("s3-en2", "en", "It is not here.", "It is here, not."),
]


def test_scores_match_sacrebleu_cli(tmp_path):
    d = write_decode_dir(tmp_path / "decode_test", ROWS)
    result = score_decode_dir(d)
    groups = result["groups"]
    assert set(groups) == {"all_st", "all_asr", "de", "fr", "en"}
    for group, rows in (("de", ROWS[:2]), ("all_st", ROWS[:4])):
        (tmp_path / "r").write_text("".join(r[2] + "\n" for r in rows))
        (tmp_path / "h").write_text("".join(r[3] + "\n" for r in rows))
        cli = subprocess.run([*SACREBLEU, str(tmp_path / "r"), "-i", str(tmp_path / "h"), "-m", "bleu", "chrf",
                              "-b", "-w", "6", "-f", "text"], capture_output=True, text=True, check=True).stdout.split()
        assert groups[group]["bleu"] == pytest.approx(float(cli[0]), abs=1e-5)
        assert groups[group]["chrf"] == pytest.approx(float(cli[1]), abs=1e-5)
        (tmp_path / "r").write_text("".join(lowercase_remove_punctuation(r[2]) + "\n" for r in rows))
        (tmp_path / "h").write_text("".join(lowercase_remove_punctuation(r[3]) + "\n" for r in rows))
        cli = subprocess.run([*SACREBLEU, str(tmp_path / "r"), "-i", str(tmp_path / "h"), "-b", "-w", "6",
                              "-f", "text"], capture_output=True, text=True, check=True).stdout.split()
        assert groups[group]["bleu_lc_rm"] == pytest.approx(float(cli[0]), abs=1e-5)
    assert groups["en"]["wer"] == pytest.approx(100 * 3 / 8)  # run/runs, then 2 edits for the moved word
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in groups["de"]["bleu_signature"]
    text = (d / "result.txt").read_text()
    assert "sacrebleu BLEU signature" in text and "all_asr" in text
    assert (d / "ref.trn").read_text().splitlines()[0] == "the dog runs home (s3-en1)"


def test_score_cli_needs_every_hypothesis(tmp_path):
    d = write_decode_dir(tmp_path / "decode_x", ROWS)
    (d / "hyp.txt").write_text("s1-de1 hello\n")
    result = subprocess.run([sys.executable, "-m", "speechllm_cli.cli", "score", str(d)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "no hypothesis for 5 utterance(s)" in result.stderr


def test_results_table(tmp_path):
    d = write_decode_dir(tmp_path / "exp" / "speechllm" / "decode_test", ROWS)
    score_decode_dir(d)
    (d.parent / "model_info.json").write_text(json.dumps({
        "model_type": "speech_llm", "params_trained": 1_500_000, "params_total": 136_000_000,
        "train_time_s": 600, "command": "speechllm train --config conf/train_speechllm.yaml"}))
    (d / "decode.yaml").write_text("command: speechllm decode --model exp/speechllm --data dump/test\n")
    (d.parent / "history.json").write_text(json.dumps({  # the best epoch's audio gap goes in the summary
        "history": [{"epoch": 1, "valid": {"audio_gap": 0.1}}, {"epoch": 2, "valid": {"audio_gap": 0.42}}],
        "best": {"epoch": 2}}))
    table = write_results(tmp_path / "exp").read_text()
    assert "| speechllm | speech_llm | test | de | 2 |" in table
    assert "1.50M / 136.00M | 10.0 min |" in table
    assert table.splitlines()[4].endswith("| 100% | 0.42 |")  # summary row: distinct hyps, audio gap
    assert "decode: `speechllm decode --model exp/speechllm --data dump/test`" in table


def test_distinct_hypotheses_per_language(tmp_path):
    rows = [("s1-de1", "de", "A cat.", "The dog sleeps."), ("s1-de2", "de", "A dog.", "The dog sleeps."),
            ("s1-de3", "de", "A cow.", "A cow."), ("s3-en1", "en", "The dog runs home.", "the dog run home")]
    result = score_decode_dir(write_decode_dir(tmp_path / "decode_test", rows))
    assert (result["groups"]["de"]["distinct_hyps"], result["groups"]["de"]["distinct_refs"]) == (2, 3)
    assert "2/3" in (tmp_path / "decode_test" / "result.txt").read_text()
    exp = tmp_path / "exp" / "m"
    shutil.copytree(tmp_path / "decode_test", exp / "decode_test")
    assert "| 67% |" in write_results(tmp_path / "exp").read_text()  # the lowest share over languages


def test_results_table_labels_rescored_decodes(tmp_path):
    d = write_decode_dir(tmp_path / "exp" / "seq2seq" / "decode_test_llm_rescore", ROWS)
    score_decode_dir(d)
    (d.parent / "model_info.json").write_text(json.dumps({
        "model_type": "seq2seq", "params_trained": 2_000_000, "params_total": 2_000_000, "train_time_s": 60}))
    (d / "rescore.yaml").write_text("llm_params: 134500000\ncommand: speechllm rescore --weight 0.3\n")
    table = write_results(tmp_path / "exp").read_text()
    assert "| seq2seq + LLM rescoring | seq2seq | test_llm_rescore | de | 2 |" in table
    assert "2.00M / 136.50M | 1.0 min |" in table
    assert "decode: `speechllm rescore --weight 0.3`" in table
