"""Speed perturbation (data/perturb.py, `speechllm perturb-speed`) on real espeak-ng speech: wav, flac and mp3 files
and a sox pipe, with and without segments, read back through the project's own audio reader."""

from __future__ import annotations

import logging
import math
import shutil

import numpy as np
import pytest
import soundfile
import soxr
from speech_synth import synth_speech
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import DataDir, read_table, validate_data_dir
from speechllm_cli.data.perturb import PerturbError, check_factors, parse_factors, perturb_speed
from speechllm_cli.features.audio import TARGET_RATE, iter_data_dir_audio

FACTORS = (0.9, 1.0, 1.1)


def _write(path, rows: dict[str, str]) -> None:
    path.write_text("".join(f"{k} {v}\n" for k, v in sorted(rows.items())), encoding="utf-8")


def _lengths(data_dir) -> dict[str, int]:
    """utt -> samples at 16 kHz, read by features/audio.py (the reader stage 2 uses); fails on unreadable audio."""
    lengths = {}
    for item in iter_data_dir_audio(data_dir):
        assert item.error is None, f"{item.utt_id}: {item.error}"
        lengths[item.utt_id] = item.samples.shape[0]
    return lengths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``plain``: 4 utterances of 2 speakers (a 16 kHz wav, a 48 kHz mp3, a 44.1 kHz flac whose name holds a space,
    a sox pipe), with text, text.src, utt2lang, utt2dur and a stale feats.scp; ``segmented``: 2 recordings (a wav
    file and a pipe) cut into 3 segments, one running to the end (-1)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make install)")
    root = tmp_path_factory.mktemp("perturb")
    clips = root / "clips"
    synth_speech("the cat sat on the mat", "en", clips / "a.wav", sample_rate=16000)
    # long (about 8 s) so that what the two mp3 decoders disagree on stays well under 1% of the length: sox keeps the
    # encoder's delay and padding (whole 1152-sample frames), libsndfile strips them (45 ms here)
    synth_speech("the quick brown fox jumps over the lazy dog near the river in the morning, and then it runs "
                 "back home across the green fields before the sun goes down", "en", clips / "b.mp3", sample_rate=48000)
    synth_speech("guten morgen, das wetter ist heute schön", "de", clips / "c three.flac", sample_rate=44100)
    synth_speech("wir gehen nach hause", "de", clips / "d.wav", sample_rate=22050)
    plain = root / "plain"
    plain.mkdir()
    wav = {"spkA-u1": str(clips / "a.wav"), "spkA-u2": str(clips / "b.mp3"), "spkB-u3": str(clips / "c three.flac"),
           "spkB-u4": f"sox {clips / 'd.wav'} -t wav - |"}
    _write(plain / "wav.scp", wav)
    _write(plain / "utt2spk", {u: u.split("-")[0] for u in wav})
    _write(plain / "text", {u: f"target {u}" for u in wav})
    _write(plain / "text.src", {u: f"source {u}" for u in wav})
    _write(plain / "utt2lang", {"spkA-u1": "en", "spkA-u2": "en", "spkB-u3": "de", "spkB-u4": "de"})
    durations = {item.utt_id: item.duration for item in iter_data_dir_audio(plain)}
    _write(plain / "utt2dur", {u: f"{d:.3f}" for u, d in durations.items()})
    _write(plain / "feats.scp", {u: f"feats.ark:{i}" for i, u in enumerate(sorted(wav))})
    DataDir.load(plain).save()  # spk2utt
    (plain / "text_norm").write_text("tc\n", encoding="utf-8")

    speech = soundfile.read(clips / "a.wav", dtype="float32")[0]
    soundfile.write(clips / "long.wav", np.concatenate([speech, speech]), 16000)
    segmented = root / "segmented"
    segmented.mkdir()
    _write(segmented / "wav.scp", {"recA": str(clips / "long.wav"), "recB": f"sox {clips / 'a.wav'} -t wav - |"})
    segments = {"spkA-s1": "recA 0.20 1.50", "spkA-s2": "recA 1.50 -1", "spkB-s3": "recB 0.10 1.20"}
    _write(segmented / "segments", segments)
    _write(segmented / "utt2spk", {u: u.split("-")[0] for u in segments})
    _write(segmented / "text", {u: f"text {u}" for u in segments})
    DataDir.load(segmented).save()
    return {"plain": plain, "segmented": segmented, "clips": clips, "root": root}


@pytest.fixture(scope="module")
def perturbed(corpus):
    return perturb_speed(corpus["plain"], corpus["root"] / "plain_sp", FACTORS).path


def test_perturbed_dir_validates_with_prefixed_ids(corpus, perturbed):
    validate_data_dir(perturbed)
    utt2spk = read_table(perturbed / "utt2spk")
    originals = list(read_table(corpus["plain"] / "utt2spk"))
    assert sorted(utt2spk) == sorted(f"{p}{u}" for p in ("", "sp0.9-", "sp1.1-") for u in originals)
    assert utt2spk["sp0.9-spkA-u1"] == "sp0.9-spkA" and utt2spk["sp1.1-spkB-u4"] == "sp1.1-spkB"
    assert utt2spk["spkA-u1"] == "spkA"  # factor 1.0 keeps the original ids
    spk2utt = {line.split()[0]: line.split()[1:] for line in (perturbed / "spk2utt").read_text().splitlines()}
    assert spk2utt["sp1.1-spkA"] == ["sp1.1-spkA-u1", "sp1.1-spkA-u2"]
    for name in ("text", "text.src", "utt2lang"):
        source, copied = read_table(corpus["plain"] / name), read_table(perturbed / name)
        assert all(copied[f"{p}{u}"] == v for u, v in source.items() for p in ("", "sp0.9-", "sp1.1-"))
    wav = read_table(perturbed / "wav.scp")
    assert wav["spkA-u1"] == str(corpus["clips"] / "a.wav")
    assert wav["sp0.9-spkA-u1"] == f"sox -D {corpus['clips'] / 'a.wav'} -t wav - speed 0.9 |"
    assert wav["sp1.1-spkB-u3"] == f"sox -D '{corpus['clips'] / 'c three.flac'}' -t wav - speed 1.1 |"
    assert wav["sp1.1-spkB-u4"] == f"sox {corpus['clips'] / 'd.wav'} -t wav - | sox -D -t wav - -t wav - speed 1.1 |"
    dur, new_dur = read_table(corpus["plain"] / "utt2dur"), read_table(perturbed / "utt2dur")
    for utt, value in dur.items():
        assert new_dur[utt] == value
        for factor in (0.9, 1.1):
            assert float(new_dur[f"sp{factor:g}-{utt}"]) == pytest.approx(float(value) / factor, abs=1e-4)
    assert not (perturbed / "feats.scp").exists()  # features describe the old audio
    assert (perturbed / "text_norm").read_text() == "tc\n"


def test_perturbed_audio_lasts_one_over_factor(corpus, perturbed):
    original, speeds = _lengths(corpus["plain"]), _lengths(perturbed)
    assert set(speeds) == set(read_table(perturbed / "utt2spk"))
    for utt, length in original.items():
        assert speeds[utt] == length
        for factor in (0.9, 1.1):
            assert speeds[f"sp{factor:g}-{utt}"] == pytest.approx(length / factor, rel=0.01), (utt, factor)
    # and it is the same speech played faster: sox's speed f equals reading the samples at f times their rate
    audio = next(i.samples for i in iter_data_dir_audio(perturbed) if i.utt_id == "sp1.1-spkA-u1")
    expected = soxr.resample(next(i.samples for i in iter_data_dir_audio(corpus["plain"]) if i.utt_id == "spkA-u1"),
                             TARGET_RATE * 1.1, TARGET_RATE)
    n = min(len(audio), len(expected))
    assert np.corrcoef(audio[:n], expected[:n])[0, 1] > 0.95


def test_digital_silence_stays_silent(tmp_path):
    """sox dithers 16-bit output after an effect unless told not to: the perturbed copies of a clip padded with digital
    silence (as synthetic speech is) must keep exact zeros there, as the original and the test sets do."""
    rate = 16000
    speech = synth_speech("hallo welt", "de", tmp_path / "s.wav", sample_rate=rate)
    silence = np.zeros(rate // 2, np.float32)
    soundfile.write(tmp_path / "padded.wav", np.concatenate([silence, speech, silence]), rate, subtype="PCM_16")
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "wav.scp", {"spk-u1": str(tmp_path / "padded.wav")})
    _write(data / "utt2spk", {"spk-u1": "spk"})
    _write(data / "text", {"spk-u1": "hallo welt"})
    perturb_speed(data, tmp_path / "sp", factors=(0.9, 1.1))
    for item in iter_data_dir_audio(tmp_path / "sp"):
        lead = item.samples[: int(0.4 * TARGET_RATE)]  # well inside the half second of silence at any speed
        assert np.all(lead == 0), (item.utt_id, np.abs(lead).max())


def test_segments_times_scale(corpus, tmp_path):
    out = perturb_speed(corpus["segmented"], tmp_path / "seg_sp", (1.1, 1.0, 0.9)).path
    validate_data_dir(out)
    segments = read_table(out / "segments")
    assert segments["spkA-s1"] == "recA 0.20 1.50"
    assert segments["sp0.9-spkA-s1"] == "sp0.9-recA 0.2222 1.6667"
    assert segments["sp1.1-spkA-s2"] == "sp1.1-recA 1.3636 -1"  # -1, to the end, stays
    assert segments["sp1.1-spkB-s3"] == "sp1.1-recB 0.0909 1.0909"
    assert sorted(read_table(out / "wav.scp")) == ["recA", "recB", "sp0.9-recA", "sp0.9-recB", "sp1.1-recA",
                                                   "sp1.1-recB"]
    original, speeds = _lengths(corpus["segmented"]), _lengths(out)
    for utt, length in original.items():
        for factor in (0.9, 1.1):
            assert speeds[f"sp{factor:g}-{utt}"] == pytest.approx(length / factor, rel=0.01), (utt, factor)


def test_bad_factors_are_refused(corpus, tmp_path):
    for factors, message in (((0.9, 0.0), "must be a positive number"), ((-1.1,), "must be a positive number"),
                             ((math.nan,), "must be a positive number"), ((), "no speed factors"),
                             ((0.9, 1.0, 0.90), "given twice")):
        with pytest.raises(PerturbError, match=message):
            perturb_speed(corpus["plain"], tmp_path / "out", factors)
    assert not (tmp_path / "out").exists()
    with pytest.raises(PerturbError, match="expected numbers"):
        parse_factors("0.9 fast")
    assert parse_factors("0.9,1.0 1.1") == check_factors([0.9, 1, 1.1]) == FACTORS
    with pytest.raises(PerturbError, match="the output dir is the input dir"):
        perturb_speed(corpus["plain"], corpus["plain"], FACTORS)


def test_missing_sox_is_named_with_its_install(corpus, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PerturbError, match=r"needs sox.*make install.*apt-get install sox"):
        perturb_speed(corpus["plain"], tmp_path / "out", FACTORS)
    assert not (tmp_path / "out").exists()


def test_sox_that_cannot_read_a_file_is_named(corpus, tmp_path):
    odd = corpus["root"] / "odd"
    shutil.copytree(corpus["plain"], odd)
    shutil.copy(corpus["clips"] / "b.mp3", corpus["clips"] / "b.notaudio")
    wav = read_table(odd / "wav.scp")
    wav["spkA-u2"] = str(corpus["clips"] / "b.notaudio")
    _write(odd / "wav.scp", wav)
    with pytest.raises(PerturbError, match=r"cannot read .*b\.notaudio"):
        perturb_speed(odd, tmp_path / "out", FACTORS)


def test_cli_perturb_speed_end_to_end(corpus, tmp_path, caplog):
    out = tmp_path / "train_sp"
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(app, ["perturb-speed", str(corpus["plain"]), str(out), "--factors", "0.9 1.1"])
    assert result.exit_code == 0, result.output
    assert "8 utterances (4 at speed 0.9, 4 at speed 1.1)" in caplog.text
    assert CliRunner().invoke(app, ["validate-data", str(out)]).exit_code == 0
    assert sorted(read_table(out / "utt2spk")) == sorted(f"sp{f}-{u}" for f in ("0.9", "1.1")
                                                         for u in read_table(corpus["plain"] / "utt2spk"))
    assert len(_lengths(out)) == 8
    result = CliRunner().invoke(app, ["perturb-speed", str(corpus["plain"]), str(out), "--factors", "0.9 -1"])
    assert result.exit_code == 1 and "must be a positive number" in caplog.text
