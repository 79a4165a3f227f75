"""Does the speech LLM use its audio: the diagnostics, the CTC label table, and an overfitting check that fails when
the audio path is cut (a tiny real corpus, a saved CTC compressor, a tiny LLaMA)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from _speech_llm_fixtures import feats_batch, make_model, save_tiny_llm, tiny_compressor
from _train_fixtures import build_corpus, save_random_ctc_dir
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.models.audio_use import (
    NOT_LISTENING_GAP,
    audio_dependence,
    listening_warnings,
    mean_pairwise_cosine,
    relative_gap,
    shared_energy,
    utterance_means,
)
from speechllm_cli.models.label_table import LabelTable
from speechllm_cli.train.speechllm_task import train_speechllm


def test_similarity_figures():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert shared_energy(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(opposite) == pytest.approx(-1.0)
    assert shared_energy(opposite) == pytest.approx(0.0)
    assert relative_gap(1.0, 4.0) == pytest.approx(0.75)
    embeds = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])  # the third row is padding
    assert utterance_means(embeds, torch.tensor([2])).tolist() == [[2.0, 2.0]]


def test_label_table_starts_as_the_llm_embeddings_of_each_piece(tmp_path):
    llm = save_tiny_llm(tmp_path / "llm")
    pieces = ["<blank>", "<unk>", "\u2581the", "cat", "\u2581mat"]
    model = make_model(llm, tiny_compressor(vocab_size=len(pieces)), label_pieces=pieces)
    table = model.label_table.weight
    embeddings = model.hf_llm.get_input_embeddings().weight
    assert torch.equal(table[0], torch.zeros_like(table[0])) and torch.equal(table[1], torch.zeros_like(table[1]))
    ids = model.tokenizer(" the", add_special_tokens=False).input_ids
    assert torch.allclose(table[2], embeddings[ids].mean(0))
    # a fresh model hands the LLM exactly the posterior-weighted table rows (its adapter starts at 0)
    assert not model.adapter.output_proj.weight.any()
    feats, lens = feats_batch((0,))
    out = model.frontend(feats, lens, with_posteriors=True)
    embeds, _ = model.encode_audio(feats, lens)
    assert torch.allclose(embeds[0], out.posteriors[0] @ table, atol=1e-6)


def test_listening_warnings():
    deaf = {"loss": 1.5, "loss_rolled": 1.502, "audio_gap": 0.0013, "audio_cosine": 0.9995}
    (warning,) = listening_warnings(deaf)
    assert "audio_gap 0.0013" in warning and "audio_cosine 0.9995" in warning and "train.lr" in warning
    assert listening_warnings({**deaf, "audio_gap": 0.35}) == []
    assert listening_warnings({"loss": 1.0, "acc": 0.5}) == []  # a task without the audio diagnostics


def test_a_text_llm_is_warned_about_its_input_text_not_audio():
    from speechllm_cli.train.speechllm_task import SpeechLLMTask
    from speechllm_cli.train.text_llm_task import TextLLMTask

    deaf = {"loss": 1.5, "loss_rolled": 1.502, "audio_gap": 0.0013}
    (speech,) = SpeechLLMTask.epoch_warnings(object.__new__(SpeechLLMTask), deaf)
    (text,) = TextLLMTask.epoch_warnings(object.__new__(TextLLMTask), deaf)  # the methods read only the metrics
    assert "uses its audio" in speech and "augmented" in speech
    assert "uses its input text" in text and "speechllm text-input" in text and "augmented" not in text


def test_label_table_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 CTC pieces for a label table of 3 rows"):
        LabelTable(3, 4).init_from_pieces(["<blank>", "a"], None, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="CTC label posteriors"):
        LabelTable(0, 4)


def test_audio_dependence_stats_on_a_batch(tmp_path):
    model = make_model(save_tiny_llm(tmp_path / "llm"))
    feats, lens = feats_batch()
    prompts = [model.prompt_ids("asr")] * 3
    targets = [model.encode_target(t) for t in ("hello world", "the cat sat on the mat", "good morning")]
    stats = audio_dependence(model, feats, lens, prompts, targets)
    assert set(stats) == {"loss", "acc", "loss_rolled", "acc_rolled", "loss_noaudio", "acc_noaudio",
                          "audio_norm", "audio_cosine"}
    _, true = model(feats, lens, prompts, targets)
    assert stats["loss"][0] / stats["loss"][1] == pytest.approx(true["loss"], rel=1e-5)
    # the rolled loss is the loss of each utterance's target after the next utterance's audio
    rolled_feats, rolled_lens = feats_batch((1, 2, 0))
    _, rolled = model(rolled_feats, rolled_lens, prompts, targets)
    assert stats["loss_rolled"][0] / stats["loss_rolled"][1] == pytest.approx(rolled["loss"], rel=1e-4)
    assert stats["loss_noaudio"][0] != pytest.approx(stats["loss"][0])
    single = audio_dependence(model, feats[:1], lens[:1], prompts[:1], targets[:1])
    assert "loss_rolled" not in single and "loss_noaudio" in single  # one utterance has no other audio


WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rock", "wind"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("audio_use")
    data = build_corpus(root)
    return data, save_random_ctc_dir(root / "ctc", data), save_tiny_llm(root / "llm")


@pytest.mark.parametrize("label_embeddings", [False, True])
def test_overfitting_a_few_utterances_needs_their_audio(corpus, tmp_path, label_embeddings, caplog):
    """Trained to tell 12 utterances apart, the model's loss with each utterance's own audio falls far below its loss
    with another utterance's: a change that cuts or blurs the audio path makes the two equal and fails here.
    (With a frozen random LLaMA and rank-2 LoRA this tiny model learns one constant soft prompt instead, as
    Speech-LLaMA without the label table does on the recipe: the loss gap stays under 0.1 after 90 steps.)"""
    data, ctc_dir, llm = corpus
    train_dir = tmp_path / "train"  # the training dump dir with one distinct word per utterance as its target:
    shutil.copytree(data["train"], train_dir)  # the LLM alone cannot tell which, so only the audio lowers the loss
    utts = [line.split()[0] for line in (train_dir / "text").read_text(encoding="utf-8").splitlines()]
    (train_dir / "text").write_text("".join(f"{u} {w}\n" for u, w in zip(utts, WORDS)), encoding="utf-8")
    config = {
        "task": "asr", "target": "text",
        "model": {"llm": str(llm), "frontend": {"dir": str(ctc_dir), "compression": "none"},
                  "adapter": {"num_layers": 1, "d_model": 32, "num_heads": 2, "ff_dim": 64, "dropout": 0.0},
                  "label_embeddings": label_embeddings,
                  "lora": {"rank": 0}, "train_llm": True},  # a random tiny LLaMA learns only when it trains
        "train": {"batch_frames": 4000, "max_batch_size": 4, "epochs": 15, "lr": 3e-3, "warmup_steps": 2,
                  "scheduler": "constant", "seed": 0, "log_interval": 10},
    }
    config_path = tmp_path / "overfit.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "exp"
    with caplog.at_level("WARNING", logger="speechllm_cli.train.loop"):
        train_speechllm(config_path, train_dir, train_dir, out)  # validating on the training set itself

    history = json.loads((out / "history.json").read_text())["history"]
    deaf_epochs = [e["epoch"] for e in history if e["valid"]["audio_gap"] < NOT_LISTENING_GAP]
    warned = [int(r.getMessage().split(":")[0].split()[1]) for r in caplog.records if "barely uses" in r.getMessage()]
    assert warned == deaf_epochs  # the loop says so at each epoch the model does not listen, and only then
    first, last = history[0]["valid"], history[-1]["valid"]
    assert last["loss"] < 0.5 * last["loss_rolled"], last
    assert last["audio_gap"] > 0.5 and last["audio_gap"] > first["audio_gap"] + 0.3
    assert last["loss_noaudio"] > 2 * last["loss"]
    assert (out / "images" / "loss.png").is_file() and (out / "images" / "audio_gap.png").is_file()
    assert not (out / "images" / "loss_rolled.png").exists()  # drawn on loss.png

    # the same figures from the saved model, and the distinct hypotheses of a decode: `speechllm diagnose`
    decoded = CliRunner().invoke(app, ["decode", "--model", str(out), "--data", str(train_dir), "--beam", "1",
                                       "--max-new-tokens", "4", "--no-repeat-ngram", "0"])
    assert decoded.exit_code == 0, decoded.output
    result = CliRunner().invoke(app, ["diagnose", "--model", str(out), "--data", str(train_dir), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "audio gap (1 - true/rolled loss)" in result.output
    report = json.loads((out / "diagnose_train.json").read_text())
    tf = report["teacher_forced"]
    assert tf["loss"] < 0.5 * tf["loss_rolled"] and tf["loss_noaudio"] > 2 * tf["loss"]
    assert report["embeddings"]["token_embedding_norm"] > 0 and 0 < report["embeddings"]["audio_embedding_norm"]
    assert set(report["distinct"]) == {"en", "de"}
    assert all(d["distinct_refs"] == 6 and d["distinct_hyps"] >= 3 for d in report["distinct"].values())  # not one
