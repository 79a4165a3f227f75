"""Fbank features and CMVN on real espeak-ng speech: frame counts, Kaldi values, pipes, skipped
audio, interrupted jobs, nj invariance, global CMVN stats."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import kaldi_native_fbank as knf
import kaldiio
import numpy as np
import pytest
import soundfile
import soxr
from speech_synth import requires_espeak, synth_speech

from speechllm_cli.data.kaldi_dir import DataDir, read_table, validate_data_dir, write_split
from speechllm_cli.features.audio import iter_data_dir_audio, load_audio
from speechllm_cli.features.cmvn import apply_cmvn, compute_cmvn, compute_cmvn_stats, read_cmvn
from speechllm_cli.features.fbank import (
    FbankConfig,
    compute_fbank_job,
    fbank_job_argv,
    job_paths,
    job_prefix,
    make_fbank,
)

pytestmark = requires_espeak


def write_data_dir(path: Path, wav_scp: dict[str, str], segments: dict[str, str] | None = None) -> Path:
    """A Kaldi data dir over ``wav_scp`` (utt ids '<spk>-<name>')."""
    path.mkdir(parents=True, exist_ok=True)
    utts = sorted(segments or wav_scp)
    (path / "wav.scp").write_text("".join(f"{k} {wav_scp[k]}\n" for k in sorted(wav_scp)))
    if segments:
        (path / "segments").write_text("".join(f"{u} {segments[u]}\n" for u in utts))
    (path / "text").write_text("".join(f"{u} target of {u}\n" for u in utts))
    (path / "text.src").write_text("".join(f"{u} source of {u}\n" for u in utts))
    (path / "utt2lang").write_text("".join(f"{u} en\n" for u in utts))
    (path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in utts))
    return path


def kaldi_fbank(samples_16k: np.ndarray) -> np.ndarray:
    """Kaldi fbank straight from kaldi-native-fbank: 16-bit scale, dither 0, 80 bins. (T, 80)"""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples_16k * 32768.0)
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def expected_frames(num_samples: int, rate: int) -> int:
    return 1 + (round(num_samples * 16000 / rate) - 400) // 160


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Clips in several rates/formats, a sox pipe, a stereo file, and unusable entries, as a data dir."""
    root = tmp_path_factory.mktemp("features")
    clips = root / "clips"
    synth_speech("The weather is nice today.", "en", clips / "a48.mp3", 48000)
    synth_speech("Where is the train station?", "en-us", clips / "b44.flac", 44100)
    synth_speech("I would like a cup of tea.", "en", clips / "c16.wav", 16000)
    left = synth_speech("Good morning everybody.", "en", clips / "mono.wav", 44100)
    soundfile.write(clips / "d_stereo.wav", np.stack([left, 0.5 * left], axis=1), 44100)
    soundfile.write(clips / "short.wav", np.zeros(300, np.float32) + 0.1, 16000)
    (clips / "corrupt.mp3").write_bytes(b"this is not audio at all\n" * 200)
    wav_scp = {
        "spkA-a48": str(clips / "a48.mp3"),
        "spkA-b44": str(clips / "b44.flac"),
        "spkA-c16": str(clips / "c16.wav"),
        "spkA-d_stereo": str(clips / "d_stereo.wav"),
        "spkB-corrupt": str(clips / "corrupt.mp3"),
        "spkB-missing": str(clips / "no_such_clip.mp3"),
        "spkB-pipe": f"sox {clips / 'a48.mp3'} -t wav - |",
        "spkB-short": str(clips / "short.wav"),
    }
    data = write_data_dir(root / "data", wav_scp)
    make_fbank(data, root / "dump_nj2", nj=2)
    make_fbank(data, root / "dump_nj1", nj=1)
    return {"root": root, "clips": clips, "data": data, "wav_scp": wav_scp}


def load_all(dump: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in kaldiio.load_scp(str(dump / "feats.scp")).items()}


def test_frame_counts_and_values_match_kaldi(corpus):
    feats = load_all(corpus["root"] / "dump_nj2")
    num_frames = read_table(corpus["root"] / "dump_nj2" / "utt2num_frames")
    utt2dur = read_table(corpus["root"] / "dump_nj2" / "utt2dur")
    for utt in ("spkA-a48", "spkA-b44", "spkA-c16", "spkA-d_stereo"):
        audio, rate = soundfile.read(corpus["wav_scp"][utt], dtype="float32")
        mono = audio if audio.ndim == 1 else audio.mean(axis=1)
        samples_16k = mono if rate == 16000 else soxr.resample(mono, rate, 16000)
        assert feats[utt].dtype == np.float32 and feats[utt].shape == (expected_frames(len(mono), rate), 80), utt
        assert int(num_frames[utt]) == feats[utt].shape[0]
        assert float(utt2dur[utt]) == pytest.approx(len(mono) / rate, abs=1e-3)
        np.testing.assert_array_equal(feats[utt], kaldi_fbank(samples_16k), err_msg=utt)
    # 10 ms shift: frames track the duration
    for utt in ("spkA-a48", "spkA-b44", "spkA-c16"):
        assert abs(feats[utt].shape[0] - float(utt2dur[utt]) * 100) <= 3


def test_pipe_entry_reads_command_stdout(corpus):
    wav_bytes = subprocess.run(["sox", str(corpus["clips"] / "a48.mp3"), "-t", "wav", "-"],
                               capture_output=True, check=True).stdout
    pipe_path = corpus["root"] / "pipe_out.wav"
    pipe_path.write_bytes(wav_bytes)
    audio, rate = soundfile.read(pipe_path, dtype="float32")
    feats = load_all(corpus["root"] / "dump_nj2")["spkB-pipe"]
    np.testing.assert_array_equal(feats, kaldi_fbank(soxr.resample(audio, rate, 16000)))
    np.testing.assert_array_equal(load_audio(corpus["wav_scp"]["spkB-pipe"]), load_audio(str(pipe_path)))


def test_unusable_audio_is_skipped_and_listed(corpus):
    dump = corpus["root"] / "dump_nj2"
    skipped = read_table(dump / "skipped")
    assert sorted(skipped) == ["spkB-corrupt", "spkB-missing", "spkB-short"]
    assert "missing file" in skipped["spkB-missing"]
    assert "cannot decode" in skipped["spkB-corrupt"]
    assert "too short" in skipped["spkB-short"]
    kept = ["spkA-a48", "spkA-b44", "spkA-c16", "spkA-d_stereo", "spkB-pipe"]
    assert list(read_table(dump / "feats.scp")) == kept
    for name in ("text", "text.src", "utt2spk", "utt2lang", "utt2num_frames", "utt2dur", "wav.scp"):
        assert list(read_table(dump / name)) == kept, name
    validate_data_dir(dump)  # the dump dir is a consistent Kaldi dir (spk2utt included)


def test_nj2_equals_nj1(corpus):
    one, two = load_all(corpus["root"] / "dump_nj1"), load_all(corpus["root"] / "dump_nj2")
    assert list(one) == list(two)
    for utt in one:
        np.testing.assert_array_equal(one[utt], two[utt])
    assert len(list((corpus["root"] / "dump_nj2" / "data").glob("*.ark"))) == 2


def test_rerun_after_success_does_nothing(corpus):
    dump = corpus["root"] / "dump_nj2"
    watched = [dump / "feats.scp", dump / "log" / "fbank.1.log", *sorted((dump / "data").glob("*.ark"))]
    before = [p.stat().st_mtime_ns for p in watched]
    summary = make_fbank(corpus["data"], dump, nj=2)
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert (summary.utterances, summary.skipped) == (5, 3)


def test_killed_job_leaves_no_scp_and_rerun_completes(corpus, tmp_path):
    clips, release = corpus["clips"], tmp_path / "release"
    pid_file = tmp_path / "job.pid"
    # spkB's second utterance blocks in its pipe until released; $PPID there is the job process.
    blocking = (f"{{ echo $PPID > {pid_file}; for i in $(seq 1200); do [ -e {release} ] && break; sleep 0.05; done; "
                f"cat {clips / 'c16.wav'}; }} |")
    wav_scp = {"spkA-1": str(clips / "a48.mp3"), "spkA-2": str(clips / "b44.flac"),
               "spkB-1": str(clips / "d_stereo.wav"), "spkB-2": blocking}
    data = write_data_dir(tmp_path / "data", wav_scp)
    dump = tmp_path / "dump"
    release.touch()
    make_fbank(data, dump, nj=2)
    reference = load_all(dump)
    job1, job2 = job_paths(job_prefix(dump, 1)), job_paths(job_prefix(dump, 2))
    job1_mtime = job1["ark"].stat().st_mtime_ns
    # Job 2 must run again (its scp is gone) and is killed while its ark is half written.
    release.unlink()
    pid_file.unlink()
    job2["scp"].unlink()
    errors = []
    thread = threading.Thread(target=lambda: _catch(errors, make_fbank, data, dump, nj=2), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "job 2 never reached the blocking utterance"
            time.sleep(0.05)
        assert not (dump / "feats.scp").exists()  # removed before any ark is rewritten
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the job process our make_fbank started
    finally:
        release.touch()  # lets the orphaned pipe (or, on failure, the job) finish
        thread.join(60)
    assert errors and isinstance(errors[0], RuntimeError)
    assert job1["scp"].exists() and not job2["scp"].exists()
    assert job2["ark"].with_name(job2["ark"].name + ".tmp").stat().st_size > 0  # torn ark, never referenced
    assert not (dump / "feats.scp").exists()

    make_fbank(data, dump, nj=2)  # redoes job 2 only
    assert job1["ark"].stat().st_mtime_ns == job1_mtime
    _assert_same_dump(dump, reference)

    # A torn ark without its scp (as if killed while renaming) is redone too.
    job1["scp"].unlink()
    with open(job1["ark"], "r+b") as f:
        f.truncate(job1["ark"].stat().st_size // 2)
    make_fbank(data, dump, nj=2)
    _assert_same_dump(dump, reference)

    # Other options change the job fingerprint: every job is redone.
    make_fbank(data, dump, nj=2, config=FbankConfig(num_mel_bins=40))
    assert {m.shape[1] for m in load_all(dump).values()} == {40}


def _catch(errors: list, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed to the test thread
        errors.append(exc)


def _assert_same_dump(dump: Path, want: dict[str, np.ndarray]) -> None:
    got = load_all(dump)
    assert list(got) == list(want)
    for utt in want:
        np.testing.assert_array_equal(got[utt], want[utt])
    for line in (dump / "feats.scp").read_text().splitlines():
        assert line.split()[1].split(":")[0].endswith(".ark"), line


def test_segments_slice_recordings(corpus, tmp_path):
    clips = corpus["clips"]
    wav_scp = {"rec1": str(clips / "b44.flac"), "rec2": f"sox {clips / 'c16.wav'} -t wav - |"}
    segments = {"spkA-s1": "rec1 0.10 0.80", "spkA-s2": "rec1 0.50 -1", "spkB-s1": "rec2 0.0 0.5",
                "spkB-s2": "rec2 5.0 9.0"}
    data = write_data_dir(tmp_path / "data", wav_scp, segments)
    summary = compute_fbank_job(data, tmp_path / "out" / "job")
    assert (summary.utterances, summary.skipped) == (3, 1)
    feats = {k: np.array(v) for k, v in kaldiio.load_scp(str(tmp_path / "out" / "job.scp")).items()}
    audio, rate = soundfile.read(clips / "b44.flac", dtype="float32")
    np.testing.assert_array_equal(feats["spkA-s1"], kaldi_fbank(soxr.resample(audio[4410:35280], rate, 16000)))
    np.testing.assert_array_equal(feats["spkA-s2"], kaldi_fbank(soxr.resample(audio[22050:], rate, 16000)))
    audio16, _ = soundfile.read(clips / "c16.wav", dtype="float32")
    np.testing.assert_array_equal(feats["spkB-s1"], kaldi_fbank(audio16[:8000]))
    assert "spkB-s2" in (tmp_path / "out" / "job.skipped").read_text()
    assert [item.utt_id for item in iter_data_dir_audio(data)] == sorted(segments)


def test_job_argv_runs_a_job(corpus, tmp_path):
    data = DataDir.load(corpus["data"]).subset(["spkA-c16"])
    data.path = tmp_path / "data"
    data.save()
    part = write_split(data, 1)[0]
    subprocess.run(fbank_job_argv(part, tmp_path / "job", FbankConfig(num_mel_bins=40)), check=True,
                   capture_output=True)
    feats = kaldiio.load_scp(str(tmp_path / "job.scp"))["spkA-c16"]
    assert feats.shape[1] == 40


def test_cmvn_stats_equal_numpy_sums(corpus, tmp_path):
    dump = corpus["root"] / "dump_nj2"
    frames = np.concatenate(list(load_all(dump).values())).astype(np.float64)  # (N, 80)
    stats = compute_cmvn_stats(dump / "feats.scp")
    assert stats.shape == (2, 81) and stats.dtype == np.float64
    np.testing.assert_allclose(stats[0, :-1], frames.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats[1, :-1], (frames**2).sum(axis=0), rtol=1e-10)
    assert stats[0, -1] == frames.shape[0] and stats[1, -1] == 0
    out = compute_cmvn(dump, tmp_path / "cmvn.ark")
    read_back = dict(kaldiio.load_ark(str(out)))
    assert list(read_back) == ["global"]
    np.testing.assert_array_equal(read_back["global"], stats)
    mean, std = read_cmvn(out)
    np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-4)
    normed = apply_cmvn(frames.astype(np.float32), mean, std)
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(normed.std(axis=0), 1, atol=1e-3)
    kaldiio.save_mat(str(tmp_path / "plain.mat"), stats)  # Kaldi's plain-matrix form reads the same
    np.testing.assert_array_equal(read_cmvn(tmp_path / "plain.mat")[0], mean)
