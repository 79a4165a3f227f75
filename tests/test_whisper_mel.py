"""Whisper log-mel features (``speechllm fbank --type whisper_mel``) on real espeak-ng speech: the values of
transformers' WhisperFeatureExtractor at the clip's real length, short clips, the dump's feats_type file, job
fingerprints across types, the job command line, the CLI and CMVN on a whisper_mel dump."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
from speech_synth import requires_espeak, synth_speech
from transformers import WhisperFeatureExtractor
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import DataDir, read_table, write_split
from speechllm_cli.features.audio import load_audio
from speechllm_cli.features.cmvn import compute_cmvn_stats
from speechllm_cli.features.fbank import (
    FbankConfig,
    fbank_job_argv,
    feats_config,
    job_fingerprint,
    job_paths,
    job_prefix,
    make_fbank,
)
from speechllm_cli.features.feats_type import check_feats_type, read_feats_type
from speechllm_cli.features.whisper_mel import WhisperMelConfig, WhisperMelExtractor

pytestmark = requires_espeak


def write_data_dir(path: Path, wav_scp: dict[str, str]) -> Path:
    """A Kaldi data dir over ``wav_scp`` (utt ids '<spk>-<name>')."""
    path.mkdir(parents=True, exist_ok=True)
    utts = sorted(wav_scp)
    (path / "wav.scp").write_text("".join(f"{u} {wav_scp[u]}\n" for u in utts))
    (path / "text").write_text("".join(f"{u} target of {u}\n" for u in utts))
    (path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in utts))
    return path


def load_all(dump: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in kaldiio.load_scp(str(dump / "feats.scp")).items()}


def whisper_reference(samples: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """transformers' features of ``samples`` (16 kHz), padded to 30 s as Whisper takes them. (3000, D)"""
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return extractor(samples, sampling_rate=16000, return_tensors="np")["input_features"][0].T


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Speech at several rates, a clip cut in its loudest frame, clips of 300 and 100 samples; a whisper_mel dump."""
    root = tmp_path_factory.mktemp("whisper_mel")
    clips = root / "clips"
    synth_speech("The weather is nice today.", "en", clips / "a48.mp3", 48000)
    synth_speech("Where is the train station?", "en-us", clips / "b44.flac", 44100)
    speech = synth_speech("I would like a cup of tea.", "en", clips / "c16.wav", 16000)
    loudest_frame = int(whisper_reference(speech).max(axis=1).argmax())  # the frame centred on sample 160 t
    soundfile.write(clips / "loud_end.wav", speech[:loudest_frame * 160 + 100], 16000)  # its last frame: t - 1
    loudest = int(np.argmax(np.abs(speech)))
    soundfile.write(clips / "short300.wav", speech[loudest - 150:loudest + 150], 16000)  # under one FFT window
    soundfile.write(clips / "short100.wav", speech[loudest:loudest + 100], 16000)  # under one hop
    wav_scp = {"spkA-a48": str(clips / "a48.mp3"), "spkA-b44": str(clips / "b44.flac"),
               "spkA-c16": str(clips / "c16.wav"), "spkB-loud_end": str(clips / "loud_end.wav"),
               "spkB-short100": str(clips / "short100.wav"), "spkB-short300": str(clips / "short300.wav")}
    data = write_data_dir(root / "data" / "train", wav_scp)
    dump = root / "dump" / "whisper_mel" / "train"
    make_fbank(data, dump, nj=2, config=feats_config("whisper_mel", 80))
    return {"root": root, "clips": clips, "data": data, "dump": dump, "wav_scp": wav_scp}


def test_frames_equal_whisper_feature_extractor(corpus):
    feats, num_frames = load_all(corpus["dump"]), read_table(corpus["dump"] / "utt2num_frames")
    assert list(feats) == ["spkA-a48", "spkA-b44", "spkA-c16", "spkB-loud_end", "spkB-short300"]
    for utt, got in feats.items():
        samples = load_audio(corpus["wav_scp"][utt])  # what the job read: 16 kHz mono
        want = whisper_reference(samples)  # (3000, 80)
        frames = len(samples) // 160
        assert got.dtype == np.float32 and got.shape == (frames, 80) and int(num_frames[utt]) == frames, utt
        np.testing.assert_allclose(got, want[:frames], rtol=0, atol=1e-4, err_msg=utt)
        if utt == "spkB-loud_end":
            # The extractor's max (for the floor at max - 8) lies past the clip's frames: in a frame that sees the
            # last samples and the 30 s padding. Ours is taken over those frames too, so the values still match.
            assert want[frames:].max() > want[:frames].max()
        elif utt != "spkB-short300":
            assert want[frames:].max() <= want[:frames].max()  # speech ending in silence: padding lowers nothing


def test_128_bins_and_blockwise_stft_equal_the_extractor(corpus):
    samples = load_audio(corpus["wav_scp"]["spkA-b44"])
    frames = len(samples) // 160
    want = whisper_reference(samples, 128)[:frames]
    whole = WhisperMelExtractor(WhisperMelConfig(num_mel_bins=128))(samples)
    blocks = WhisperMelExtractor(WhisperMelConfig(num_mel_bins=128), chunk_frames=7)(samples)
    assert whole.shape == (frames, 128)
    np.testing.assert_allclose(whole, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-6)  # a float32 ulp or two
    with pytest.raises(ValueError, match="80 or 128"):
        WhisperMelConfig(num_mel_bins=40)


def test_short_clips_give_s_over_160_frames_or_are_skipped(corpus):
    skipped = read_table(corpus["dump"] / "skipped")
    assert list(skipped) == ["spkB-short100"] and "too short for one frame (100 samples" in skipped["spkB-short100"]
    assert load_all(corpus["dump"])["spkB-short300"].shape == (1, 80)  # Kaldi fbank skips it (under 400 samples)
    extractor = WhisperMelExtractor()
    speech = load_audio(corpus["wav_scp"]["spkA-c16"])
    for size in (159, 160, 201, 399, 400, 401):
        clip = speech[8000:8000 + size]
        got = extractor(clip)
        assert got.shape == (size // 160, 80), size
        np.testing.assert_allclose(got, whisper_reference(clip)[:size // 160], rtol=0, atol=1e-4, err_msg=str(size))


def test_feats_type_file_and_type_changes_redo_every_job(corpus, tmp_path):
    clips = corpus["clips"]
    data = write_data_dir(tmp_path / "data" / "dev", {"spkA-1": str(clips / "a48.mp3"),
                                                      "spkB-1": str(clips / "c16.wav")})
    dump = tmp_path / "dump" / "dev"
    whisper80, whisper128 = feats_config("whisper_mel", 80), feats_config("whisper_mel", 128)
    make_fbank(data, dump, nj=2)
    assert (dump / "feats_type").read_text() == "fbank 80\n" and read_feats_type(dump) == ("fbank", 80)
    fbank = load_all(dump)
    fbank_arks = [job_paths(job_prefix(dump, k))["ark"] for k in (1, 2)]
    whisper_arks = [job_paths(job_prefix(dump, k, "whisper_mel"))["ark"] for k in (1, 2)]
    fbank_mtimes = [p.stat().st_mtime_ns for p in fbank_arks]

    make_fbank(data, dump, nj=2, config=whisper80)  # another type: both jobs run
    assert read_feats_type(dump) == ("whisper_mel", 80) and all(p.exists() for p in whisper_arks)
    whisper = load_all(dump)
    for utt, feats in whisper.items():
        samples = load_audio(str(clips / ("a48.mp3" if utt == "spkA-1" else "c16.wav")))
        assert feats.shape == (len(samples) // 160, 80) and fbank[utt].shape == (1 + (len(samples) - 400) // 160, 80)
        np.testing.assert_allclose(feats, whisper_reference(samples)[:len(feats)], rtol=0, atol=1e-4)
    watched = [dump / "feats.scp", *whisper_arks]
    before = [p.stat().st_mtime_ns for p in watched]
    make_fbank(data, dump, nj=2, config=whisper80)  # the same: nothing to do
    assert [p.stat().st_mtime_ns for p in watched] == before

    make_fbank(data, dump, nj=2)  # back to fbank: its jobs are complete, but feats.scp listed whisper_mel
    assert read_feats_type(dump) == ("fbank", 80)
    assert [p.stat().st_mtime_ns for p in fbank_arks] == fbank_mtimes
    for utt, feats in load_all(dump).items():
        np.testing.assert_array_equal(feats, fbank[utt])

    make_fbank(data, dump, nj=2, config=whisper128)  # another mel size: every job again
    assert read_feats_type(dump) == ("whisper_mel", 128)
    assert all(p.stat().st_mtime_ns > t for p, t in zip(whisper_arks, before[1:]))
    assert {feats.shape[1] for feats in load_all(dump).values()} == {128}

    # A dump from before feats_type files: a re-run writes the file and redoes nothing.
    make_fbank(data, dump, nj=2)
    (dump / "feats_type").unlink()
    feats_scp_mtime = (dump / "feats.scp").stat().st_mtime_ns
    make_fbank(data, dump, nj=2)
    assert (dump / "feats_type").read_text() == "fbank 80\n"
    assert (dump / "feats.scp").stat().st_mtime_ns == feats_scp_mtime
    assert [p.stat().st_mtime_ns for p in fbank_arks] == fbank_mtimes


def test_fbank_fingerprint_is_unchanged_and_types_differ(corpus, tmp_path):
    """fbank jobs done before feature types existed stay complete; a type's fingerprint is its own."""
    part = write_split(DataDir.load(corpus["data"]), 1)[0]
    legacy = hashlib.sha256(json.dumps(dataclasses.asdict(FbankConfig()), sort_keys=True).encode())
    legacy.update(b"wav.scp\0" + (part / "wav.scp").read_bytes())
    assert job_fingerprint(part, FbankConfig()) == legacy.hexdigest()
    prints = {job_fingerprint(part, feats_config(t, n)) for t, n in [("fbank", 80), ("whisper_mel", 80),
                                                                       ("whisper_mel", 128), ("fbank", 128)]}
    assert len(prints) == 4


def test_read_feats_type_refuses_a_malformed_file(tmp_path):
    assert read_feats_type(tmp_path / "old_dump") == ("fbank", 80)
    for text, want in [("whisper_mel 128\n", ("whisper_mel", 128)), ("fbank 40", ("fbank", 40))]:
        (tmp_path / "feats_type").write_text(text)
        assert read_feats_type(tmp_path) == want
    for text in ["", "whisper_mel\n", "whisper_mel eighty\n", "mfcc 13\n", "fbank 80\nfbank 80\n", "fbank 0\n",
                 "fbank -80\n", "fbank 80 extra\n"]:
        (tmp_path / "feats_type").write_text(text)
        with pytest.raises(ValueError, match="malformed feats_type") as error:
            read_feats_type(tmp_path)
        assert str(tmp_path / "feats_type") in str(error.value) and "speechllm fbank" in str(error.value)


def test_check_feats_type_names_dump_contents_who_and_the_command(tmp_path):
    dump = tmp_path / "dump" / "train"
    dump.mkdir(parents=True)
    with pytest.raises(ValueError) as error:  # no file: an fbank dump
        check_feats_type(dump, ("whisper_mel", 80), who="the whisper front-end of exp/whisper_base")
    message = str(error.value)
    assert message.startswith(f"{dump} holds fbank 80 features (no {dump / 'feats_type'}")
    assert "the whisper front-end of exp/whisper_base expects whisper_mel 80" in message
    assert "`speechllm fbank data/train dump/whisper_mel/train --type whisper_mel --num-mel-bins 80`" in message
    (dump / "feats_type").write_text("whisper_mel 80\n")
    check_feats_type(dump, ("whisper_mel", 80), who="exp/whisper_base")  # matches: no error
    with pytest.raises(ValueError, match=r"holds whisper_mel 80 features \(.*feats_type\) but exp/large_v3 expects "
                                         r"whisper_mel 128; make them with `speechllm fbank data/train "
                                         r"dump/whisper_mel/train --type whisper_mel --num-mel-bins 128`"):
        check_feats_type(dump, ("whisper_mel", 128), who="exp/large_v3")
    with pytest.raises(ValueError, match="`speechllm fbank data/train dump/train --type fbank --num-mel-bins 80`"):
        check_feats_type(dump, ("fbank", 80), who="the ctc_compressor")


def test_job_command_line_runs_a_whisper_job(corpus, tmp_path):
    data = DataDir.load(corpus["data"]).subset(["spkA-b44"])
    data.path = tmp_path / "data"
    data.save()
    part = write_split(data, 1)[0]
    argv = fbank_job_argv(part, tmp_path / "job", WhisperMelConfig(num_mel_bins=128))
    assert argv[argv.index("--type") + 1] == "whisper_mel" and argv[argv.index("--num-mel-bins") + 1] == "128"
    subprocess.run(argv, check=True, capture_output=True)
    feats = kaldiio.load_scp(str(tmp_path / "job.scp"))["spkA-b44"]
    samples = load_audio(corpus["wav_scp"]["spkA-b44"])
    np.testing.assert_array_equal(feats, WhisperMelExtractor(WhisperMelConfig(num_mel_bins=128))(samples))


def test_cli_makes_whisper_mel_and_compute_cmvn_reads_them(corpus, tmp_path):
    dump = tmp_path / "whisper_mel" / "train"
    runner = CliRunner()
    result = runner.invoke(app, ["fbank", str(corpus["data"]), str(dump), "--type", "whisper_mel",
                                 "--num-mel-bins", "80", "--nj", "2"])
    assert result.exit_code == 0, result.output
    assert (dump / "feats_type").read_text() == "whisper_mel 80\n"
    feats = load_all(dump)
    for utt, want in load_all(corpus["dump"]).items():
        np.testing.assert_array_equal(feats[utt], want)
    result = runner.invoke(app, ["compute-cmvn", str(dump)])
    assert result.exit_code == 0, result.output
    frames = np.concatenate(list(feats.values())).astype(np.float64)  # (N, 80)
    stats = dict(kaldiio.load_ark(str(dump / "cmvn.ark")))["global"]
    np.testing.assert_allclose(stats[0, :-1], frames.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats[1, :-1], (frames ** 2).sum(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(stats, compute_cmvn_stats(dump / "feats.scp"))
    result = runner.invoke(app, ["fbank", str(corpus["data"]), str(tmp_path / "x"), "--type", "whisper_mel",
                                 "--num-mel-bins", "40"])
    assert result.exit_code == 1 and not (tmp_path / "x").exists()
    result = runner.invoke(app, ["fbank", str(corpus["data"]), str(tmp_path / "x"), "--type", "mfcc"])
    assert result.exit_code == 2 and "fbank, whisper_mel" in result.output
