"""``speechllm infer``, the Python API (SpeechModel) and ``speechllm package`` on real audio (espeak-ng) with a tiny
LLaMA speech model: the same hypotheses as ``speechllm decode`` on the equivalent Kaldi dir, long recordings split at
pauses, unreadable files reported per file, and a packaged model that loads from anywhere."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from _speech_llm_fixtures import save_speech_llm_dir, save_tiny_llm
from speech_synth import requires_espeak, synth_speech
from typer.testing import CliRunner

from speechllm_cli import SpeechModel
from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import DataDir, read_table
from speechllm_cli.decode.decode import decode
from speechllm_cli.features.fbank import make_fbank
from speechllm_cli.infer.package import package_model
from speechllm_cli.models.speech_llm_io import LLMMismatchError

pytestmark = requires_espeak

# (file name, voice, sentence, sample rate, channels)
CLIPS = [("a.wav", "en", "hello world, how are you", 16000, 1),
         ("b.flac", "fr", "the cat sat on the mat", 44100, 1),
         ("c.ogg", "de", "good morning to you all", 22050, 1),
         ("d.mp3", "en-us", "a quiet evening by the sea", 48000, 1),
         ("e.wav", "es", "where is the train station", 8000, 2)]


def _write_clips(folder: Path) -> list[Path]:
    paths = []
    for name, voice, text, rate, channels in CLIPS:
        path = folder / name
        samples = synth_speech(text, voice, path, sample_rate=rate)
        if channels == 2:  # a stereo file: the speech left, quieter speech right
            soundfile.write(path, np.stack([samples, 0.5 * samples], axis=1), rate)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    model_dir = save_speech_llm_dir(root)
    clips = _write_clips(root / "clips")
    return model_dir, clips


def _infer(*args: str):
    return CliRunner().invoke(app, ["infer", *args])


def test_infer_equals_decode_on_the_equivalent_kaldi_dir(setup, tmp_path):
    model_dir, clips = setup
    data = tmp_path / "data"
    utts = {f"spk{i}-u{i}": clip for i, clip in enumerate(clips)}
    DataDir(data, {"wav.scp": {u: str(c) for u, c in utts.items()}, "utt2spk": {u: u.split("-")[0] for u in utts},
                   "text": {u: "x" for u in utts}, "utt2lang": {u: "en" for u in utts}}).save()
    make_fbank(data, tmp_path / "dump")
    decoded = read_table(decode(model_dir, tmp_path / "dump", tmp_path / "decode", task="asr", max_new_tokens=8,
                                beam=2) / "hyp.txt", allow_empty_value=True)
    result = _infer("--model", str(model_dir), "--task", "asr", "--beam", "2", "--max-new-tokens", "8",
                    "--format", "jsonl", *[str(c) for c in clips])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["key"] for line in lines] == [str(c) for c in clips]  # input order
    by_path = {line["key"]: line for line in lines}
    for utt, clip in utts.items():
        assert by_path[str(clip)]["text"] == decoded[utt], clip.name
        assert by_path[str(clip)]["error"] is None and by_path[str(clip)]["duration"] > 1.0
    # the Kaldi data dir itself is an input too, keyed by utterance id
    result = _infer("--model", str(model_dir), "--task", "asr", "--beam", "2", "--max-new-tokens", "8",
                    "--format", "kaldi", str(data))
    assert result.exit_code == 0, result.output
    hyps = dict(line.split(" ", 1) if " " in line else (line, "") for line in result.stdout.splitlines()
                if line.startswith("spk"))
    assert hyps == decoded


def test_a_mixed_language_data_dir_takes_each_utterances_task_from_utt2lang(setup, tmp_path):
    model_dir, clips = setup
    data = tmp_path / "data"
    langs = ["en", "fr", "de", "en", "es"]
    utts = {f"spk{i}-u{i}": clip for i, clip in enumerate(clips)}
    DataDir(data, {"wav.scp": {u: str(c) for u, c in utts.items()}, "utt2spk": {u: u.split("-")[0] for u in utts},
                   "text": {u: "x" for u in utts}, "utt2lang": dict(zip(utts, langs))}).save()
    make_fbank(data, tmp_path / "dump")
    decoded = read_table(decode(model_dir, tmp_path / "dump", tmp_path / "decode", max_new_tokens=8)
                         / "hyp.txt", allow_empty_value=True)  # ASR for en, ST for the others
    result = _infer("--model", str(model_dir), "--max-new-tokens", "8", "--format", "jsonl", str(data))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {line["key"]: line["text"] for line in lines} == decoded
    assert [line["task"] for line in lines] == ["asr", "st", "st", "asr", "st"]
    assert [line["language"] for line in lines] == langs


def test_python_api_batches_and_arrays(setup):
    model_dir, clips = setup
    model = SpeechModel.load(model_dir.parent, max_new_tokens=8)  # the experiment dir works too
    batch = model.transcribe_batch(clips[:3])
    assert [r.key for r in batch] == [str(c) for c in clips[:3]] and all(r.task == "asr" for r in batch)
    one = model.transcribe(clips[0])
    assert one.text == batch[0].text and one.num_tokens == batch[0].num_tokens
    samples, rate = soundfile.read(clips[0], dtype="float32")
    assert model.transcribe(samples, sample_rate=rate).text == one.text  # samples in memory, same output
    stereo, rate = soundfile.read(clips[4], dtype="float32")  # (T, 2) at 8 kHz
    assert stereo.ndim == 2 and model.transcribe(stereo, sample_rate=rate).text == model.transcribe(clips[4]).text
    translated = model.translate(clips[1], source_language="fr")
    assert translated.task == "st" and translated.language == "fr"


def test_a_60_second_recording_is_split_at_pauses_and_joined(setup, tmp_path):
    model_dir, _ = setup
    parts = []
    for i in range(15):
        speech = synth_speech(f"this is sentence number {i} of a long recording about the weather", "en",
                              tmp_path / f"s{i}.wav", sample_rate=16000)
        parts += [speech, np.zeros(int(0.8 * 16000), dtype=np.float32)]
    long = np.concatenate(parts)
    assert len(long) / 16000 > 55  # about a minute
    soundfile.write(tmp_path / "long.wav", long, 16000, subtype="FLOAT")  # the same samples as the array
    model = SpeechModel.load(model_dir, max_new_tokens=6)
    result = model.transcribe(tmp_path / "long.wav")
    ranges = model.split(long)
    assert result.parts == len(ranges) >= 2 and result.error is None
    pieces = [model.transcribe(long[first:last]).text for first, last in ranges]
    assert result.text == " ".join(p for p in pieces if p)


def test_unreadable_files_are_reported_while_the_rest_decode(setup, tmp_path, caplog):
    model_dir, clips = setup
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("this is not audio\n")
    (tmp_path / "noise.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    bad = [tmp_path / "empty.wav", tmp_path / "notes.wav", tmp_path / "noise.flac"]
    with caplog.at_level(logging.WARNING):
        result = _infer("--model", str(model_dir), "--max-new-tokens", "4", "--format", "jsonl", str(clips[0]),
                        *map(str, bad), str(tmp_path / "missing.wav"), str(clips[1]))
    assert result.exit_code == 0, result.output
    lines = {json.loads(line)["key"]: json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")}
    assert lines[str(clips[0])]["error"] is None and lines[str(clips[1])]["error"] is None
    for path in bad:
        assert lines[str(path)]["error"] and lines[str(path)]["text"] == ""
    assert "missing.wav" in caplog.text and "3 of 5 recording(s) could not be decoded" in caplog.text
    only_bad = _infer("--model", str(model_dir), *map(str, bad))
    assert only_bad.exit_code == 1


def test_a_packaged_model_loads_from_another_folder(tmp_path):
    model_dir = save_speech_llm_dir(tmp_path / "exp")
    clips = _write_clips(tmp_path / "clips")[:2]
    before = [r.text for r in SpeechModel.load(model_dir, max_new_tokens=8).transcribe_batch(clips)]
    package_model(model_dir.parent, tmp_path / "pkg", with_llm=True)
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert "SpeechModel.load" in card and "## Config" in card
    moved = tmp_path / "elsewhere" / "mymodel"
    shutil.copytree(tmp_path / "pkg", moved)
    shutil.rmtree(tmp_path / "exp")  # the original model, its front-end and its LLM are gone
    shutil.rmtree(tmp_path / "pkg")
    after = [r.text for r in SpeechModel.load(moved, max_new_tokens=8).transcribe_batch(clips)]
    assert after == before
    package_model(moved, tmp_path / "again", with_llm=True)  # a package packaged again stays whole
    assert [r.text for r in SpeechModel.load(tmp_path / "again", max_new_tokens=8).transcribe_batch(clips)] == before


def test_a_package_without_the_llm_needs_the_same_llm(tmp_path):
    model_dir = save_speech_llm_dir(tmp_path / "exp")
    result = CliRunner().invoke(app, ["package", "--model", str(model_dir.parent), "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "pkg" / "llm").exists() and (tmp_path / "pkg" / "frontend").is_dir()
    shutil.move(tmp_path / "exp" / "llm", tmp_path / "llm_moved")
    with pytest.raises(FileNotFoundError, match="llm_path"):
        SpeechModel.load(tmp_path / "pkg")
    SpeechModel.load(tmp_path / "pkg", llm_path=tmp_path / "llm_moved")
    other = save_tiny_llm(tmp_path / "other_llm", seed=5)
    with pytest.raises(LLMMismatchError, match="content hash"):
        SpeechModel.load(tmp_path / "pkg", llm_path=other)
