"""The decoder-only model: a random LLaMA from ``speechllm init-llm`` (on a sentencepiece token list, or shaped like
another LLM) trained whole (``train_llm``) behind the frozen compressor and the audio encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from _speech_llm_fixtures import (
    TINY_ADAPTER,
    feats_batch,
    greedy,
    make_model,
    save_tiny_llm,
    tiny_compressor,
    tiny_frontend,
)
from _train_fixtures import SENTENCES, build_corpus, save_random_ctc_dir
from speech_synth import requires_espeak
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.models.llm import load_llm
from speechllm_cli.models.load import load_model
from speechllm_cli.models.model_dir import read_model_record
from speechllm_cli.models.speech_llm import LoraSettings, SpeechLLMConfig
from speechllm_cli.models.speech_llm_io import load_speech_llm, save_speech_llm
from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer
from speechllm_cli.train.speechllm_task import load_experiment, train_speechllm
from speechllm_cli.utils.config import ConfigError

TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True,
              "rope_theta": 10000.0}
PROMPTS = {"st": "translate the audio", "asr": "transcribe the audio"}  # characters the token lists know
TEXTS = [s for lang in ("en", "de") for s in SENTENCES[lang]]
RECIPE_CONF = Path(__file__).resolve().parents[1] / "egs" / "covost2" / "conf"
TARGETS = ["the cat sat on the mat", "good morning to you", "der hund schläft im haus"]


def _init_llm(*args: str) -> None:
    result = CliRunner().invoke(app, ["init-llm", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A unigram token list trained on real sentences and the tiny scratch LLaMA init-llm makes on it."""
    root = tmp_path_factory.mktemp("scratch")
    text = root / "text"
    text.write_text("".join(f"utt{i:03d} {t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    token_dir = train_tokenizer([text], root / "token_list", vocab_size=60, model_type="unigram")
    config = root / "llm.yaml"
    config.write_text(yaml.safe_dump(TINY_LLAMA), encoding="utf-8")
    _init_llm("--out", str(root / "llm"), "--config", str(config), "--tokenizer", str(token_dir), "--seed", "3")
    return token_dir, root / "llm"


@pytest.mark.parametrize("model_type", ["unigram", "char"])
def test_hf_tokenizer_ids_equal_sentencepiece_ids(tmp_path, model_type):
    from speechllm_cli.models.scratch_llm import hf_tokenizer_from_token_list

    text = tmp_path / "text"
    text.write_text("".join(f"utt{i:03d} {t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    token_dir = train_tokenizer([text], tmp_path / "tokens", vocab_size=45, model_type=model_type)
    processor = spm.SentencePieceProcessor(model_file=str(token_dir / "bpe.model"))
    tokenizer = hf_tokenizer_from_token_list(token_dir)
    unseen = ["Der Hund  schläft\tim Haus!", "  a cat by the sea ", "ＡＢＣ ｄｏｇ", "quiz: zebra"]  # spaces, NFKC
    for sentence in TEXTS + unseen:
        assert tokenizer(sentence, add_special_tokens=False).input_ids == processor.encode(sentence), sentence
    for sentence in TEXTS:
        assert tokenizer.decode(processor.encode(sentence), skip_special_tokens=True) == sentence
    pieces = processor.get_piece_size()
    assert [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [pieces, pieces + 1, pieces + 2]
    assert len(tokenizer) == pieces + 3 and tokenizer.unk_token_id == 1
    assert tokenizer.decode([0, *processor.encode("the cat"), pieces + 1], skip_special_tokens=True) == "the cat"


def test_init_llm_from_token_list_loads_as_a_hf_llm(scratch):
    token_dir, llm_dir = scratch
    model, tokenizer = load_llm(llm_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.chat_template is None
    assert model.config.vocab_size == len(tokenizer) == Tokenizer.load(token_dir).vocab_size + 3
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tokenizer("good morning", add_special_tokens=False).input_ids == Tokenizer.load(token_dir).encode(
        "good morning")
    assert "seed 3" in (llm_dir / "SOURCE").read_text()


def test_init_llm_errors(scratch, tmp_path):
    token_dir, _ = scratch
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_LLAMA, "hiden_size": 8}), encoding="utf-8")
    result = CliRunner().invoke(app, ["init-llm", "--out", str(tmp_path / "x"), "--config", str(bad),
                                      "--tokenizer", str(token_dir)])
    assert result.exit_code == 1 and not (tmp_path / "x").exists()
    result = CliRunner().invoke(app, ["init-llm", "--out", str(tmp_path / "x"), "--config", str(bad)])
    assert result.exit_code == 1
    bpe = train_tokenizer([token_dir.parent / "text"], tmp_path / "bpe", vocab_size=45, model_type="bpe")
    from speechllm_cli.models.scratch_llm import hf_tokenizer_from_token_list, llama_config_from_yaml

    with pytest.raises(ValueError, match="hiden_size"):
        llama_config_from_yaml(bad, hf_tokenizer_from_token_list(token_dir))
    with pytest.raises(ValueError, match="model-type unigram"):
        hf_tokenizer_from_token_list(bpe)


def test_init_llm_like_copies_config_and_tokenizer_not_weights(tmp_path):
    source = save_tiny_llm(tmp_path / "source", seed=7)  # init-llm draws with seed 0
    _init_llm("--out", str(tmp_path / "like"), "--like", str(source))
    _init_llm("--out", str(tmp_path / "like_again"), "--like", str(source))
    (original, original_tok), (fresh, fresh_tok) = load_llm(source), load_llm(tmp_path / "like")
    assert type(fresh) is type(original)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id")
    assert {k: getattr(fresh.config, k) for k in keys} == {k: getattr(original.config, k) for k in keys}
    assert fresh_tok.get_vocab() == original_tok.get_vocab() and fresh_tok.chat_template == original_tok.chat_template
    original_params = dict(original.named_parameters())
    for name, param in fresh.named_parameters():
        assert param.shape == original_params[name].shape
        if "norm" not in name:  # RMSNorm weights start at 1 everywhere
            assert not torch.equal(param, original_params[name]), name
    again, _ = load_llm(tmp_path / "like_again")  # same seed, same weights
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), again.parameters()))


# ----------------------------------------------------------------------------- the decoder-only SpeechLLM

def _decoder_only(llm_dir, compressor=None):
    return make_model(llm_dir, compressor=compressor, train_llm=True, lora=LoraSettings(rank=0), prompts=PROMPTS,
                      separator="")


def _batch(model):
    feats, feat_lens = feats_batch()
    return feats, feat_lens, [model.prompt_ids("asr")] * 3, [model.encode_target(t) for t in TARGETS]


@requires_espeak
def test_every_llm_and_adapter_weight_gets_a_gradient_the_frontend_none(scratch):
    model = _decoder_only(scratch[1]).train()
    loss, _ = model(*_batch(model))
    loss.backward()
    llm = dict(model.hf_llm.named_parameters())
    adapter = dict(model.adapter.named_parameters())
    assert llm and adapter
    for name, param in {**llm, **adapter}.items():
        assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.frontend.parameters())
    assert set(model.trainable_state_dict()) == {f"llm.{k}" for k in llm} | {f"adapter.{k}" for k in adapter}


@requires_espeak
def test_save_load_round_trip_restores_the_trained_llm(scratch, tmp_path):
    compressor = tiny_compressor()
    model = _decoder_only(scratch[1], compressor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(model)
    for _ in range(2):
        optimizer.zero_grad()
        model(*batch)[0].backward()
        optimizer.step()
    model.eval()
    out = save_speech_llm(model, tmp_path / "model")
    assert (out / "llm.safetensors").is_file() and not (out / "lora").exists()
    loaded = load_speech_llm(out, frontend=tiny_frontend(compressor))
    initial, _ = load_llm(scratch[1])
    for name, param in loaded.hf_llm.named_parameters():
        assert torch.equal(param, dict(model.hf_llm.named_parameters())[name]), name
    assert not torch.equal(loaded.hf_llm.model.embed_tokens.weight, initial.model.embed_tokens.weight)
    with torch.no_grad():
        assert torch.equal(model(*batch)[0], loaded(*batch)[0])
    feats, feat_lens, _, _ = batch
    assert greedy(loaded, feats, feat_lens, ["asr"] * 3, 6) == greedy(model, feats, feat_lens, ["asr"] * 3, 6)


def test_train_llm_with_lora_is_an_error():
    with pytest.raises(ValueError, match="lora.rank: 0"):
        SpeechLLMConfig(train_llm=True, lora=LoraSettings(rank=2))


# ----------------------------------------------------------------------------- model_type: decoder_only

@pytest.fixture(scope="module")
def corpus_setup(tmp_path_factory, scratch):
    """The tiny real corpus, a CTC compressor dir and a decoder-only experiment config on a scratch LLM."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("decoder_only")
    corpus = build_corpus(root)
    save_random_ctc_dir(root / "ctc", corpus)
    config = {
        "model_type": "decoder_only", "task": "asr", "target": "text.src",
        "model": {"llm": str(scratch[1]), "train_llm": True, "lora": {"rank": 0}, "prompts": PROMPTS,
                  "separator": "", "frontend": {"dir": str(root / "ctc")}, "adapter": TINY_ADAPTER},
        "train": {"batch_frames": 1600, "max_batch_size": 4, "epochs": 1, "lr": 3e-3, "warmup_steps": 1,
                  "scheduler": "constant", "seed": 1, "log_interval": 1},
    }
    config_path = root / "decoder_only.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return corpus, config_path


def test_decoder_only_trains_and_records_its_model_type(corpus_setup, tmp_path):
    corpus, config_path = corpus_setup
    out = tmp_path / "exp"
    model_dir = train_speechllm(config_path, corpus["train"], corpus["dev"], out)
    assert json.loads((out / "model_info.json").read_text())["model_type"] == "decoder_only"
    assert (model_dir / "llm.safetensors").is_file()
    checkpoint = sorted((out / "checkpoints").glob("step*.pt"))[-1]
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert any(k.startswith("llm.model.layers.") for k in saved) and any(k.startswith("adapter.") for k in saved)
    loaded = load_model(model_dir)
    assert loaded.config.train_llm and read_model_record(model_dir)["model_type"] == "decoder_only"


def test_decoder_only_needs_train_llm_and_no_lora(corpus_setup):
    _, config_path = corpus_setup
    with pytest.raises(ConfigError) as error:
        load_experiment(config_path, {"model.train_llm": False, "model.lora.rank": 2})
    assert str(config_path) in str(error.value) and "model.lora.rank: 0" in str(error.value)
    with pytest.raises(ConfigError, match="lora.rank: 0") as error:
        load_experiment(config_path, {"model.lora.rank": 2})
    assert str(config_path) in str(error.value)
    result = CliRunner().invoke(app, ["train", "--config", str(config_path), "--train-data", "x", "--valid-data",
                                      "y", "--out", "z", "--set", "model.lora.rank=2"])
    assert result.exit_code == 1


@pytest.mark.parametrize(("name", "vocab", "millions"), [("llm_scratch_small.yaml", 153, 3.45),
                                                         ("tuning/llm_scratch_paper.yaml", 8003, 152.9)])
def test_shipped_llm_configs_have_the_stated_size(scratch, name, vocab, millions):
    from transformers import LlamaForCausalLM

    from speechllm_cli.models.scratch_llm import hf_tokenizer_from_token_list, llama_config_from_yaml

    config = llama_config_from_yaml(RECIPE_CONF / name, hf_tokenizer_from_token_list(scratch[0]))
    config.vocab_size = vocab  # the recipe's target vocabulary (+ <s> </s> <pad>)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2 if millions < 10 else 1) == millions


def test_shipped_decoder_only_config_is_valid():
    exp = load_experiment(RECIPE_CONF / "train_decoder_only.yaml")
    assert exp.model_type == "decoder_only" and exp.model.train_llm and exp.model.lora.rank == 0
    assert not exp.model.use_chat_template and set(exp.model.prompts) == {"st", "asr"}
