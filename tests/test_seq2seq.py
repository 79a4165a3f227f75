"""The encoder-decoder baseline on a tiny real corpus (espeak-ng speech, fbank, sentencepiece): the hybrid loss falls,
`speechllm train` writes a model dir that `speechllm decode` loads alone, batched beam search equals one utterance at
a time, greedy equals beam 1, CTC prefix scores equal a brute-force sum over alignments, --nj 2 equals --nj 1."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from _train_fixtures import build_corpus
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.decode.ctc_prefix_score import CTCPrefixScorer
from speechllm_cli.decode.decode import decode, pad_feats
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.decode.search import beam_search, greedy_search
from speechllm_cli.decode.seq2seq_scorer import FeatsBatch, Seq2SeqScorer
from speechllm_cli.features.cmvn import read_cmvn_stats
from speechllm_cli.models.model_dir import read_model_record
from speechllm_cli.models.seq2seq_io import load_seq2seq
from speechllm_cli.text.tokenizer import Tokenizer
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.train.seq2seq_task import Seq2SeqExperimentConfig, Seq2SeqTask

TINY_MODEL = {"d_model": 32, "num_heads": 2, "ff_dim": 64, "encoder_layers": 2, "decoder_layers": 1,
              "conv_channels": 16, "dropout": 0.1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    return build_corpus(tmp_path_factory.mktemp("seq2seq_corpus"))  # text == text.src: one char tokenizer for both


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """`speechllm train` on a seq2seq config: 2 epochs of the tiny model; returns the experiment dir."""
    root = tmp_path_factory.mktemp("seq2seq_exp")
    config = {"model_type": "seq2seq", "tokenizer": str(corpus["tokenizer"]), "model": TINY_MODEL,
              "train": {"batch_frames": 1200, "max_batch_size": 4, "epochs": 2, "lr": 2e-3, "warmup_steps": 4,
                        "scheduler": "warmup_cosine", "seed": 1, "log_interval": 2, "average_last_k": 2,
                        "best_metric": "acc", "best_mode": "max"}}
    (root / "conf.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(root / "conf.yaml"), "--train-data",
                                      str(corpus["train"]), "--valid-data", str(corpus["dev"]), "--out",
                                      str(root / "exp"), "--set", "model.label_smoothing=0.1"])
    assert result.exit_code == 0, result.output
    return root / "exp"


def dev_feats(corpus) -> dict[str, np.ndarray]:
    data = DumpDataset(corpus["dev"])
    return {data[i]["utt_id"]: data[i]["feats"] for i in range(len(data))}


# ----- training


def test_loss_falls_on_real_features(corpus):
    tokenizer = Tokenizer.load(corpus["tokenizer"])
    model_config = {**TINY_MODEL, "dropout": 0.0, "num_freq_masks": 0, "num_time_masks": 0,
                    "vocab_size": tokenizer.vocab_size + 1}
    from speechllm_cli.models.seq2seq import Seq2SeqConfig

    config = Seq2SeqExperimentConfig(tokenizer=str(corpus["tokenizer"]), model=Seq2SeqConfig(**model_config))
    task = Seq2SeqTask(config, tokenizer, read_cmvn_stats(corpus["train"] / "cmvn.ark"))
    torch.manual_seed(0)
    model = task.build_model()
    data = DumpDataset(corpus["train"])
    batch = task.collate([data[i] for i in range(4)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, stats = task.compute_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(stats) == {"loss", "loss_att", "loss_ctc", "acc"}
    assert stats["acc"][1] == sum(len(tokenizer.encode(data[i]["text"])) + 1 for i in range(4))  # tokens + <eos>
    assert losses[-1] < 0.75 * losses[0] and losses[-1] == min(losses), losses


def test_train_cli_writes_a_self_contained_model_dir(trained, corpus):
    info = json.loads((trained / "model_info.json").read_text())
    assert info["model_type"] == "seq2seq" and info["params_trained"] == info["params_total"] > 0
    history = json.loads((trained / "history.json").read_text())["history"]
    assert len(history) == 2 and {"loss", "loss_att", "loss_ctc", "acc"} <= set(history[-1]["valid"])
    for name in ("model", "model.best", "model.avg"):
        assert read_model_record(trained / name)["model_type"] == "seq2seq"
        assert sorted(p.name for p in (trained / name / "tokenizer").iterdir()) == ["bpe.model", "tokens.txt"]
    model, tokenizer = load_seq2seq(trained / "model")
    assert model.config.vocab_size == tokenizer.vocab_size + 1 == model.eos_id + 1
    stats = read_cmvn_stats(corpus["train"] / "cmvn.ark")
    assert model.cmvn.mean.numpy() == pytest.approx(stats[0, :-1] / stats[0, -1], rel=1e-5)


def test_train_cli_rejects_an_unknown_model_type(tmp_path, corpus):
    (tmp_path / "conf.yaml").write_text("model_type: rnnt\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "conf.yaml"), "--train-data",
                                      str(corpus["train"]), "--valid-data", str(corpus["dev"]), "--out",
                                      str(tmp_path / "exp")])
    assert result.exit_code == 1 and not (tmp_path / "exp").exists()


# ----- search


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_batched_beam_search_equals_one_at_a_time(trained, corpus, ctc_weight):
    model, _ = load_seq2seq(trained / "model")
    scorer = Seq2SeqScorer(model, ctc_weight)
    feats = list(dev_feats(corpus).values())
    assert len({len(f) for f in feats}) == len(feats)  # different lengths: a padded batch
    caps = [6, 8, 5, 7]
    batched = beam_search(scorer, FeatsBatch(*pad_feats(feats, "cpu")), caps, [model.eos_id], beam=3, nbest=3)
    for f, cap, hyps in zip(feats, caps, batched, strict=True):
        alone = beam_search(scorer, FeatsBatch(*pad_feats([f], "cpu")), [cap], [model.eos_id], beam=3, nbest=3)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_greedy_equals_beam_1(trained, corpus):
    model, _ = load_seq2seq(trained / "model")
    scorer = Seq2SeqScorer(model, ctc_weight=0.3)
    batch = FeatsBatch(*pad_feats(list(dev_feats(corpus).values()), "cpu"))
    greedy = greedy_search(scorer, batch, [8] * 4, [model.eos_id])
    beam = beam_search(scorer, batch, [8] * 4, [model.eos_id], beam=1)
    for g, b in zip(greedy, beam, strict=True):
        assert g[0].tokens == b[0].tokens and g[0].logprob == pytest.approx(b[0].logprob, abs=1e-4)


def collapse(path: tuple[int, ...], blank: int) -> list[int]:
    return [label for i, label in enumerate(path) if label != blank and (i == 0 or label != path[i - 1])]


def brute_force(log_probs: np.ndarray, prefix: list[int], blank: int, exact: bool) -> float:
    """log P(the CTC output starts with prefix) (or is exactly prefix), summed over every alignment."""
    frames, vocab = log_probs.shape
    total = []
    for path in itertools.product(range(vocab), repeat=frames):
        output = collapse(path, blank)
        if output == prefix if exact else output[: len(prefix)] == prefix:
            total.append(sum(log_probs[t, label] for t, label in enumerate(path)))
    return float(np.logaddexp.reduce(total)) if total else -math.inf


def test_ctc_prefix_scores_match_brute_force():
    blank, eos, vocab = 0, 3, 4
    torch.manual_seed(0)
    log_probs = torch.randn(2, 6, vocab, dtype=torch.float64).log_softmax(-1)  # (R, T, V)
    lens = torch.tensor([6, 4])
    ctc = CTCPrefixScorer(blank, eos)
    state = ctc.init(log_probs, lens)
    prefixes = [[], []]
    for step_tokens in ([1, 2], [1, 2], [2, 1]):  # row 0: 1 1 2 (a repeat), row 1: 2 2 1
        scores = ctc.scores(state) + state.psi[:, None]  # (R, V) psi(g + c)
        for row, prefix in enumerate(prefixes):
            x = log_probs[row, : lens[row]].numpy()
            for c in (1, 2):
                assert scores[row, c].item() == pytest.approx(brute_force(x, prefix + [c], blank, False), abs=1e-9)
            assert scores[row, eos].item() == pytest.approx(brute_force(x, prefix, blank, True), abs=1e-9)
            assert scores[row, blank].item() == -math.inf
        state = ctc.advance(state, torch.tensor(step_tokens))
        prefixes = [p + [t] for p, t in zip(prefixes, step_tokens)]
    state = ctc.select(state, torch.tensor([1, 1, 0]))  # rows reordered and repeated
    assert state.psi.tolist() == pytest.approx([brute_force(log_probs[i, : lens[i]].numpy(), prefixes[i], blank, False)
                                                for i in (1, 1, 0)], abs=1e-9)


# ----- speechllm decode


def test_decode_cli_writes_every_utterance_and_nj_2_equals_nj_1(trained, corpus, tmp_path):
    out = tmp_path / "decode_dev"
    result = CliRunner().invoke(app, ["decode", "--model", str(trained), "--data", str(corpus["dev"]), "--out",
                                      str(out), "--beam", "4", "--nbest", "4", "--max-new-tokens", "8",
                                      "--ctc-weight", "0.3"])
    assert result.exit_code == 0, result.output
    utts = sorted(read_table(corpus["dev"] / "text"))
    hyps = read_table(out / "hyp.txt", allow_empty_value=True)
    assert list(hyps) == utts and list(read_table(out / "ref.txt")) == utts
    nbest = read_nbest(out / "nbest.txt")
    assert list(nbest) == utts and all(len(entries) == 4 for entries in nbest.values())
    assert all(nbest[u][0]["text"] == hyps[u] for u in utts)
    assert "ctc_weight: 0.3" in (out / "decode.yaml").read_text() and (out / "stats.yaml").is_file()
    # what the search gives, turned into text with the seq2seq tokenizer
    model, tokenizer = load_seq2seq(trained / "model")
    feats = dev_feats(corpus)
    for utt in utts[:2]:
        best = beam_search(Seq2SeqScorer(model, 0.3), FeatsBatch(*pad_feats([feats[utt]], "cpu")), [8],
                           [model.eos_id], beam=4)[0][0]
        assert hyps[utt] == " ".join(tokenizer.decode(best.tokens).split())
    common = {"beam": 2, "nbest": 2, "max_new_tokens": 6, "batch_size": 2}
    one = decode(trained / "model", corpus["dev"], tmp_path / "nj1", nj=1, **common)
    two = decode(trained / "model", corpus["dev"], tmp_path / "nj2", nj=2, **common)
    for name in ("hyp.txt", "ref.txt"):
        assert (one / name).read_text() == (two / name).read_text(), name
    nbest_one, nbest_two = read_nbest(one / "nbest.txt"), read_nbest(two / "nbest.txt")
    for utt in utts:
        for a, b in zip(nbest_one[utt], nbest_two[utt], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4) and a["text"] == b["text"]
    assert "num_jobs: 2" in (two / "stats.yaml").read_text()
