"""Whisper as a peer system (``model_type: whisper``): zero-shot decoding through ``speechllm decode`` with our own
search, and fine-tuning through ``speechllm train``, on a tiny random Whisper (d_model 32, 2 + 2 layers) with the
real multilingual tokenizer of the embedded Whisper base, fed with real espeak-ng speech as Whisper log-mel.

The slow test exports the real Whisper base (``speechllm export-whisper``, ~9 s) and transcribes English speech.
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from speech_synth import requires_espeak, synth_speech
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import DataDir, read_table
from speechllm_cli.decode.decode import load_decode_model, pad_feats
from speechllm_cli.decode.search import beam_search, greedy_search, search
from speechllm_cli.decode.whisper_scorer import WhisperBatch, WhisperScorer
from speechllm_cli.features.feats_type import write_feats_type
from speechllm_cli.models.load import load_model
from speechllm_cli.models.whisper.encoder import padded_input
from speechllm_cli.models.whisper.finetuned import load_whisper

pytestmark = requires_espeak

SOT, EOT, NO_TIMESTAMPS = 50258, 50257, 50363
LANG_IDS = {"en": 50259, "de": 50261, "es": 50262, "fr": 50265}
TRANSCRIBE, TRANSLATE = 50359, 50358
VOICES = {"en": "en", "de": "de", "fr": "fr", "es": "es"}
SENTENCES = [  # (lang, source text, English target)
    ("en", "the cat sat on the mat", "the cat sat on the mat"),
    ("en", "good morning to you", "good morning to you"),
    ("en", "open the door please", "open the door please"),
    ("de", "der hund schläft im haus", "the dog sleeps in the house"),
    ("de", "ich trinke kaffee", "i drink coffee"),
    ("fr", "le chat est petit", "the cat is small"),
    ("fr", "nous mangeons du pain", "we eat bread"),
    ("es", "el perro corre rapido", "the dog runs fast"),
]


# ----- fixtures: real speech as Whisper log-mel, a tiny random Whisper dir

def whisper_mel(samples: np.ndarray) -> np.ndarray:
    """Whisper's log-mel at the clip's real length, as the whisper_mel dump holds it: (S // 160, 80)."""
    from transformers import WhisperFeatureExtractor

    full = WhisperFeatureExtractor(feature_size=80)(samples, sampling_rate=16000, return_tensors="np").input_features
    return np.ascontiguousarray(full[0, :, : len(samples) // 160].T, dtype=np.float32)  # (T, 80)


def write_dump(dump: Path, utts: dict[str, tuple[str, str, np.ndarray]]) -> Path:
    """A whisper_mel dump dir from {utt: (lang, target text, feats)}."""
    dump.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{dump}/feats.ark,{dump}/feats.scp") as writer:
        for utt in sorted(utts):
            writer(utt, utts[utt][2])
    tables = {"text": {u: t for u, (_, t, _) in utts.items()},
              "utt2lang": {u: lang for u, (lang, _, _) in utts.items()},
              "utt2spk": {u: u.split("-")[0] for u in utts},
              "utt2num_frames": {u: str(len(f)) for u, (_, _, f) in utts.items()},
              "feats.scp": dict(read_table(dump / "feats.scp"))}
    DataDir(dump, tables).save()
    write_feats_type(dump, ("whisper_mel", 80))
    return dump


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, tuple[str, str, np.ndarray, np.ndarray]]:
    """{utt: (lang, English target, samples 16 kHz, whisper_mel (T, 80))} of the espeak-ng sentences."""
    tmp = tmp_path_factory.mktemp("speech")
    out = {}
    for i, (lang, text, target) in enumerate(SENTENCES):
        samples = synth_speech(text, VOICES[lang], tmp / "utt.wav", sample_rate=16000)
        out[f"spk{lang}-{lang}{i:02d}"] = (lang, target, samples, whisper_mel(samples))
    return out


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, speech) -> dict[str, Path]:
    """dump/{train,dev,test}: train = every sentence, dev = two of them, test = one per language."""
    root = tmp_path_factory.mktemp("dump")
    table = {u: (lang, target, feats) for u, (lang, target, _, feats) in speech.items()}
    test = {u: table[u] for u in ("spken-en00", "spkde-de03", "spkfr-fr05", "spkes-es07")}
    return {"train": write_dump(root / "train", table),
            "dev": write_dump(root / "dev", {u: table[u] for u in ("spken-en01", "spkde-de04")}),
            "test": write_dump(root / "test", test)}


def save_tiny_whisper(out: Path, seed: int = 0) -> Path:
    """A random Whisper (d_model 32, 2 + 2 layers, 30 s input) with the embedded Whisper base's tokenizer and
    generation settings, saved as `speechllm export-whisper` saves one (model.yaml: model_type whisper)."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    from speechllm_cli.models.llm import llm_content_hash
    from speechllm_cli.models.model_dir import write_model_record
    from speechllm_cli.models.whisper.export import find_embedded_whisper

    data_dir, _ = find_embedded_whisper()
    ct2 = json.loads((data_dir / "config.json").read_text())
    tokenizer = WhisperTokenizer(tokenizer_file=str(data_dir / "tokenizer.json"))
    config = WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=448,
                           pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT, decoder_start_token_id=SOT,
                           suppress_tokens=ct2["suppress_ids"], begin_suppress_tokens=ct2["suppress_ids_begin"],
                           init_std=0.2)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT, is_multilingual=True,
        lang_to_id={tokenizer.convert_ids_to_tokens(i): i for i in ct2["lang_ids"]},
        task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE}, no_timestamps_token_id=NO_TIMESTAMPS,
        suppress_tokens=ct2["suppress_ids"], begin_suppress_tokens=ct2["suppress_ids_begin"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    write_model_record(out, "whisper", source="tiny random (tests)", hash=llm_content_hash(out), num_mel_bins=80)
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


def batch_of(model, speech, utts, tasks=None) -> WhisperBatch:
    feats, feat_lens = pad_feats([speech[u][3] for u in utts], "cpu")
    tasks = tasks or ["asr" if speech[u][0] == "en" else "st" for u in utts]
    return WhisperBatch(feats, feat_lens, [model.prefix_ids(speech[u][0], t) for u, t in zip(utts, tasks)])


# ----- the zero-shot input and the prefix

def test_padded_input_is_the_feature_extractors_30s_input(speech):
    """The dumped log-mel padded with the clip's log-mel of silence is what WhisperFeatureExtractor gives for the clip
    padded with zero samples to 30 s. A clip cut mid-word differs in the two frames after it, whose windows still
    hold the clip's last samples: the dump, at the real length, does not have them."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    _, _, samples, _ = speech["spkde-de03"]
    for clip, differing in ((samples, 0), (samples[: int(len(samples) * 0.6)], 2)):  # ends in silence / mid-word
        reference = extractor(clip, sampling_rate=16000, return_tensors="np").input_features[0].T  # (3000, 80)
        ours = padded_input(torch.from_numpy(whisper_mel(clip))).numpy()
        num_frames = len(clip) // 160
        diff = np.abs(ours - reference).max(axis=1)  # (3000,)
        assert ours.shape == reference.shape == (3000, 80)
        assert np.flatnonzero(diff > 1e-5).tolist() == list(range(num_frames, num_frames + differing))


def test_prefix_tokens_per_language_and_task(tiny_dir, dumps):
    model = load_whisper(tiny_dir)
    assert model.prefix_ids("en", "asr") == [SOT, LANG_IDS["en"], TRANSCRIBE, NO_TIMESTAMPS]
    assert model.prefix_ids("de", "st") == [SOT, LANG_IDS["de"], TRANSLATE, NO_TIMESTAMPS]
    assert model.prefix_ids("zh-CN", "st")[1] == model.lang_to_id["<|zh|>"]
    with pytest.raises(ValueError, match="xx"):
        model.prefix_ids("xx", "st")
    # what `speechllm decode` feeds: the language of utt2lang, transcribe for English, translate otherwise
    decoder = load_decode_model(tiny_dir)
    data = DataDir.load(dumps["test"])
    utts = data.utt_ids
    langs = [data.tables["utt2lang"][u] for u in utts]
    tasks = ["asr" if lang == "en" else "st" for lang in langs]
    batch = decoder.inputs([np.zeros((50, 80), np.float32)] * len(utts), tasks, langs)
    assert [p[1:3] for p in batch.prefix_ids] == [
        [LANG_IDS[lang], TRANSCRIBE if lang == "en" else TRANSLATE] for lang in langs]


# ----- the scorer and the search

def test_greedy_equals_beam_1_and_scores_match_a_full_forward(tiny_dir, speech):
    model = load_whisper(tiny_dir)
    scorer = WhisperScorer(model)
    utts = sorted(speech)[:4]
    batch = batch_of(model, speech, utts)
    greedy = greedy_search(scorer, batch, [12] * 4, [EOT])
    beam1 = beam_search(scorer, batch, [12] * 4, [EOT], beam=1)
    assert [h[0].tokens for h in greedy] == [h[0].tokens for h in beam1]
    assert [h[0].logprob for h in greedy] == pytest.approx([h[0].logprob for h in beam1], abs=1e-4)
    # beam search with the cache (rows reordered, cross-attention shared) scores what one forward pass scores
    nbest = beam_search(scorer, batch, [10] * 4, [EOT], beam=3, nbest=3)
    with torch.inference_mode():
        hidden, hidden_lens = model.encode(batch.feats, batch.feat_lens)
        for i, hyps in enumerate(nbest):
            assert len(hyps) == 3
            for hyp in hyps:
                tokens = hyp.tokens + ([hyp.end_token] if hyp.ended else [])
                ids = torch.tensor([batch.prefix_ids[i] + tokens])
                logits = model.decoder_logits(ids, hidden[i:i + 1], hidden_lens[i:i + 1])[0, 3:]  # (len, V)
                logprobs = [scorer._logprobs(logits[t], scorer.banned_first if t == 0 else scorer.banned)
                            for t in range(len(tokens))]
                assert hyp.logprob == pytest.approx(sum(float(lp[tok]) for lp, tok in zip(logprobs, tokens)),
                                                    abs=1e-3)


def test_special_tokens_are_suppressed(tiny_dir, speech):
    model = load_whisper(tiny_dir)
    scorer = WhisperScorer(model)
    batch = batch_of(model, speech, sorted(speech)[:2])
    first, state = scorer.init(batch)
    for banned in (model.begin_suppress_ids, model.suppress_ids, [SOT, LANG_IDS["de"], TRANSLATE, NO_TIMESTAMPS,
                                                                    NO_TIMESTAMPS + 1, 51864]):
        assert torch.isinf(first[:, banned]).all()
    later, _ = scorer.step(state, first.argmax(-1))
    assert torch.isinf(later[:, model.suppress_ids]).all() and torch.isfinite(later[:, EOT]).all()
    assert torch.isfinite(later[:, 220]).all(), "a space is banned at the first step only"


@pytest.mark.parametrize("input_mode", ["real_length", "padded_30s"])
def test_hypotheses_do_not_depend_on_the_batch(tiny_dir, speech, input_mode):
    """Utterances of different lengths in one batch decode as they do alone (beam 1 and 3)."""
    model = load_whisper(tiny_dir, input_mode=input_mode)
    scorer = WhisperScorer(model)
    utts = sorted(speech, key=lambda u: len(speech[u][3]))[::2]  # 4 clips of different lengths
    assert len({len(speech[u][3]) for u in utts}) == 4
    for beam in (1, 3):
        together = search(scorer, batch_of(model, speech, utts), [10] * 4, [EOT], beam=beam, nbest=beam)
        for utt, hyps in zip(utts, together):
            alone = search(scorer, batch_of(model, speech, [utt]), [10], [EOT], beam=beam, nbest=beam)[0]
            assert [h.tokens for h in hyps] == [h.tokens for h in alone]
            assert [h.logprob for h in hyps] == pytest.approx([h.logprob for h in alone], abs=1e-4)


def test_cross_attention_sees_only_its_clip(tiny_dir, speech):
    """Without the key mask a short clip's decoder would attend to the padding of the batch's longest clip."""
    model = load_whisper(tiny_dir, input_mode="real_length")
    utts = sorted(speech, key=lambda u: len(speech[u][3]))[::7]  # the shortest and the longest
    batch = batch_of(model, speech, utts)
    with torch.inference_mode():
        hidden, hidden_lens = model.encode(batch.feats, batch.feat_lens)
        ids = torch.tensor(batch.prefix_ids)
        masked = model.decoder_logits(ids, hidden, hidden_lens)
        alone = model.decoder_logits(ids[:1], hidden[:1, : int(hidden_lens[0])], hidden_lens[:1])
        unmasked = model.decoder_logits(ids, hidden, torch.full_like(hidden_lens, hidden.shape[1]))
    assert int(hidden_lens[0]) < hidden.shape[1]
    assert torch.allclose(masked[0], alone[0], atol=1e-4)
    assert not torch.allclose(unmasked[0], alone[0], atol=1e-2)


# ----- `speechllm decode` end to end

def test_speechllm_decode_on_a_whisper_dir(tiny_dir, dumps, tmp_path):
    """`speechllm decode` in two jobs (a speaker-split dump) writes what the search gives on the model."""
    out = tmp_path / "decode"
    result = CliRunner().invoke(app, ["decode", "--model", str(tiny_dir), "--data", str(dumps["test"]), "--out",
                                      str(out), "--max-new-tokens", "8", "--beam", "2", "--nbest", "2", "--nj", "2"])
    assert result.exit_code == 0, result.output
    hyps = read_table(out / "hyp.txt", allow_empty_value=True)
    assert list(hyps) == sorted(read_table(dumps["test"] / "utt2lang"))
    assert read_table(out / "ref.txt")["spkde-de03"] == "the dog sleeps in the house"
    model = load_whisper(tiny_dir)
    utts = list(hyps)
    feats = [kaldiio.load_mat(read_table(dumps["test"] / "feats.scp")[u]) for u in utts]
    langs = read_table(dumps["test"] / "utt2lang")
    batch = WhisperBatch(*pad_feats(feats, "cpu"), [model.prefix_ids(langs[u], "asr" if langs[u] == "en" else "st")
                                                      for u in utts])
    expected = search(WhisperScorer(model), batch, [8] * len(utts), [EOT], beam=2, nbest=2)
    assert [hyps[u] for u in utts] == [" ".join(model.decode_text(h[0].tokens).split()) for h in expected]
    assert all("<|" not in text for text in hyps.values())
    assert len((out / "nbest.txt").read_text().splitlines()) == 2 * len(utts)


def test_decode_refuses_a_dump_of_other_features(tiny_dir, dumps, tmp_path, caplog):
    fbank = tmp_path / "fbank"
    fbank.mkdir()
    for name in ("feats.scp", "utt2spk", "utt2lang", "text", "utt2num_frames"):
        (fbank / name).write_text((dumps["test"] / name).read_text())
    result = CliRunner().invoke(app, ["decode", "--model", str(tiny_dir), "--data", str(fbank), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code != 0 and "expects whisper_mel 80" in caplog.text


# ----- fine-tuning with `speechllm train`

def write_train_config(path: Path, whisper_dir: Path, **train) -> Path:
    config = {"model_type": "whisper", "whisper": str(whisper_dir), "task": "auto", "asr_langs": ["en"],
              "target": "text",
              "train": {"finetune": "decoder", "batch_frames": 1200, "max_batch_size": 4, "epochs": 2, "lr": 3e-3,
                        "warmup_steps": 2, "scheduler": "constant", "log_interval": 1, **train}}
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, dumps: dict, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--train-data", str(dumps["train"]),
                                      "--valid-data", str(dumps["dev"]), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_dir, dumps) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    out = root / "exp"
    train(write_train_config(root / "conf.yaml", tiny_dir), dumps, out)
    return out


def test_finetune_decoder_saves_a_whisper_dir(finetuned, tiny_dir):
    model_dir = finetuned / "model"
    record = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert record["model_type"] == "whisper" and record["input"] == "real_length"
    base_hash = yaml.safe_load((tiny_dir / "model.yaml").read_text())["hash"]
    assert record["base"] == {"path": str(tiny_dir), "hash": base_hash}
    assert record["training"]["finetune"] == "decoder" and record["training"]["asr_langs"] == ["en"]
    assert not list(model_dir.glob("*.bin")) and "speechllm" not in (model_dir / "config.json").read_text()
    history = json.loads((finetuned / "history.json").read_text())["history"]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    # the decoder trained; the encoder and the (tied) token embedding did not
    base, tuned = tensors(tiny_dir / "model.safetensors"), tensors(model_dir / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("model.decoder.") for k in changed)
    assert "model.decoder.embed_tokens.weight" not in changed
    assert any(k.startswith("model.decoder.layers.0.encoder_attn") for k in changed)


def test_finetuned_whisper_decodes_at_real_length(finetuned, dumps, tmp_path):
    model = load_model(finetuned / "model")
    assert model.input_mode == "real_length" and model.tokenizer is not None
    out = tmp_path / "decode"
    result = CliRunner().invoke(app, ["decode", "--model", str(finetuned), "--data", str(dumps["test"]), "--out",
                                      str(out), "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert set(read_table(out / "hyp.txt", allow_empty_value=True)) == set(read_table(dumps["test"] / "text"))


def test_finetune_all_trains_the_encoder_layers(tmp_path, tiny_dir, dumps):
    out = tmp_path / "exp"
    train(write_train_config(tmp_path / "conf.yaml", tiny_dir, finetune="all", epochs=1, max_steps=2), dumps, out)
    base, tuned = tensors(tiny_dir / "model.safetensors"), tensors(out / "model" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert any(k.startswith("model.encoder.layers.") for k in changed)
    assert not any(k.startswith("model.encoder.conv") for k in changed)


def test_resume_continues_exactly(tmp_path, tiny_dir, dumps, finetuned):
    """One epoch, then --resume to two: the same model as the two-epoch run of the fixture (a constant learning
    rate, so that the first run's shorter schedule does not matter)."""
    out = tmp_path / "exp"
    config = write_train_config(tmp_path / "conf.yaml", tiny_dir)
    train(config, dumps, out, "--set", "train.epochs=1")
    train(config, dumps, out, "--resume")
    assert "resumed from" in (out / "train.log").read_text()
    resumed, uninterrupted = tensors(out / "model" / "model.safetensors"), tensors(finetuned / "model" /
                                                                                  "model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


# ----- the real Whisper base

@pytest.fixture(scope="session")
def whisper_base(tmp_path_factory) -> Path:
    from speechllm_cli.models.whisper.export import export_whisper

    return export_whisper(None, tmp_path_factory.mktemp("whisper_base") / "base")


@pytest.mark.slow
def test_whisper_base_transcribes_english_speech(whisper_base, speech, tmp_path):
    """The real Whisper base, zero-shot through `speechllm decode` + `speechllm score`, on espeak-ng English: robotic
    but clear speech, so a WER bound well under that of a model that does not listen (100 %)."""
    english = {u: v for u, v in speech.items() if v[0] == "en"}
    dump = write_dump(tmp_path / "dump", {u: (lang, target, feats) for u, (lang, target, _, feats) in english.items()})
    out = tmp_path / "decode"
    result = CliRunner().invoke(app, ["decode", "--model", str(whisper_base), "--data", str(dump), "--out", str(out),
                                      "--beam", "4", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["score", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "result.json").read_text())["groups"]["en"]
    assert scores["wer"] < 35.0, read_table(out / "hyp.txt", allow_empty_value=True)
