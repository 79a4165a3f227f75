"""One saved-model format: every model type saves a dir with model.yaml and comes back through load_model."""

from __future__ import annotations

import pytest
import torch
from _speech_llm_fixtures import TINY_ADAPTER, feats_batch, save_tiny_llm
from _train_fixtures import save_ctc_dir
from speech_synth import requires_espeak

from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor
from speechllm_cli.models.load import load_model
from speechllm_cli.models.model_dir import read_model_record
from speechllm_cli.models.seq2seq import Seq2SeqConfig, Seq2SeqModel
from speechllm_cli.models.seq2seq_io import save_seq2seq
from speechllm_cli.models.speech_llm import LoraSettings, SpeechLLMConfig
from speechllm_cli.models.speech_llm_io import build_speech_llm, save_speech_llm
from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer
from speechllm_cli.utils.config import dump_config


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    (root / "text").write_text("the cat sat on the mat\nhello world\ngood morning to you\n", encoding="utf-8")
    return train_tokenizer([root / "text"], root / "token_list", vocab_size=20, model_type="char")


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory, token_dir):
    torch.manual_seed(0)
    config = CTCCompressorConfig(d_model=32, num_heads=2, ff_dim=64, num_layers=1, dropout=0.0,
                                 vocab_size=Tokenizer.load(token_dir).vocab_size)
    return save_ctc_dir(tmp_path_factory.mktemp("ctc") / "ctc", CTCCompressor(config).eval(), token_dir)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ctc_compressor_round_trip(ctc_dir, token_dir, tmp_path):
    model = load_model(ctc_dir)
    assert read_model_record(ctc_dir)["model_type"] == "ctc_compressor"
    assert not model.training and model.tokenizer.tokens == Tokenizer.load(token_dir).tokens
    # a dir written before model.yaml (config.yaml with the experiment's model section) still loads
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes((ctc_dir / "model.safetensors").read_bytes())
    dump_config(legacy / "config.yaml", {"tokenizer": str(token_dir), "model": read_model_record(ctc_dir)["config"]})
    assert _same_state(load_ctc_compressor(legacy)[0], model)


def test_seq2seq_round_trip(token_dir, tmp_path):
    torch.manual_seed(0)
    config = Seq2SeqConfig(d_model=32, num_heads=2, ff_dim=64, encoder_layers=1, decoder_layers=1,
                           vocab_size=Tokenizer.load(token_dir).vocab_size + 1)
    model = Seq2SeqModel(config)
    out = save_seq2seq(model, token_dir, {"model": config.__dict__}, tmp_path / "model")
    loaded = load_model(out)
    assert read_model_record(out)["model_type"] == "seq2seq" and _same_state(loaded, model)
    assert loaded.tokenizer.vocab_size + 1 == loaded.config.vocab_size


@requires_espeak
@pytest.mark.parametrize("model_type", ["speech_llm", "decoder_only"])
def test_speech_llm_round_trip(ctc_dir, tmp_path, model_type):
    llm = save_tiny_llm(tmp_path / "llm")
    train_llm = model_type == "decoder_only"
    config = SpeechLLMConfig(llm=str(llm), frontend={"dir": str(ctc_dir)}, label_embeddings=True,
                             adapter={**TINY_ADAPTER, "type": "transformer"}, train_llm=train_llm,
                             lora=LoraSettings(rank=0 if train_llm else 2, dropout=0.0))
    model = build_speech_llm(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))  # "trained": every trainable weight moved
    out = save_speech_llm(model, tmp_path / "model", training={"task": "asr", "asr_langs": ["en", "de"]},
                          model_type=model_type)
    loaded = load_model(out)
    record = read_model_record(out)
    assert record["model_type"] == model_type and record["frontend_hash"] == model.frontend_hash
    assert loaded.config == model.config and loaded.training_choice == {"task": "asr", "asr_langs": ["en", "de"]}
    assert _same_state(loaded, model)
    feats, lens = feats_batch()
    with torch.no_grad():
        assert torch.equal(loaded.encode_audio(feats, lens)[0], model.encode_audio(feats, lens)[0])


def test_a_dir_without_model_yaml_says_what_it_is_not(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved model dir"):
        load_model(tmp_path)
    (tmp_path / "speech_llm.yaml").write_text("config: {}\n")
    with pytest.raises(FileNotFoundError, match="speech_llm.yaml was written by an older speechllm"):
        load_model(tmp_path)
    (tmp_path / "model.yaml").write_text("model_type: nonsense\n")
    with pytest.raises(ValueError, match="model_type 'nonsense' where one of"):
        load_model(tmp_path)
