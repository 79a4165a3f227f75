"""Audio input of `speechllm infer` on real speech (espeak-ng): formats, rates and channels loaded alike,
inputs collected from files, directories, stdin and Kaldi data dirs, unreadable files reported, and long
recordings cut at pauses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
from speech_synth import requires_espeak, synth_speech

from speechllm_cli.infer.audio_input import (
    AUDIO_SUFFIXES,
    AudioError,
    InputAudio,
    collect_inputs,
    load_input,
    segment_at_pauses,
    split_at_pauses,
)

RATE = 16000
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
SENTENCES = [
    "The committee will meet again next Tuesday to review the budget for the coming year and decide on new projects.",
    "Yesterday afternoon a small boat drifted across the harbour while the fishermen were mending their nets.",
    "Please remember to switch off the lights and lock the back door before you leave the office tonight.",
    "Scientists have discovered a new species of frog living high in the mountains of the southern region.",
    "My grandmother used to bake fresh bread every Sunday morning and the whole house smelled wonderful.",
    "The train to the city was delayed by almost an hour because of a signal failure near the bridge.",
    "Reading a good book on a rainy evening is one of the simplest pleasures that anyone can enjoy.",
    "The orchestra played the final movement so beautifully that the audience stood up and cheered loudly.",
    "Our neighbours are planning to build a wooden fence around their garden before the summer arrives.",
    "Learning a second language takes patience, practice and a willingness to make many small mistakes.",
    "The museum opens its new exhibition of ancient maps and navigation instruments on the first of May.",
    "After the storm passed, the children ran outside to jump in the puddles and look for rainbows.",
    "A reliable internet connection has become essential for students who attend their classes from home.",
]
GAP_S = 0.6


def _write_stereo(mono_path: Path, path: Path) -> None:
    """A two-channel file of ``mono_path``'s audio (the second channel at half level)."""
    mono, rate = soundfile.read(mono_path, dtype="float32")
    soundfile.write(path, np.stack([mono, 0.5 * mono], axis=1), rate)


@requires_espeak
def test_formats_rates_and_channels_load_alike(tmp_path):
    files = []
    for name, rate in [("a.wav", 16000), ("a.flac", 44100), ("a.ogg", 22050), ("a.mp3", 48000)]:
        synth_speech(SENTENCE, "en-us", tmp_path / name, rate)
        files.append(tmp_path / name)
    synth_speech(SENTENCE, "en-us", tmp_path / "mono8k.wav", 8000)
    _write_stereo(tmp_path / "mono8k.wav", tmp_path / "stereo8k.wav")
    assert soundfile.info(tmp_path / "stereo8k.wav").channels == 2
    files.append(tmp_path / "stereo8k.wav")

    inputs, problems = collect_inputs([str(f) for f in files])
    assert problems == [] and [i.key for i in inputs] == [str(f) for f in files]
    durations = {}
    for item in inputs:
        samples = load_input(item)
        assert samples.ndim == 1 and samples.dtype == np.float32 and np.isfinite(samples).all()
        assert np.abs(samples).max() > 0.05  # speech, not silence
        durations[Path(item.key).name] = samples.shape[0] / RATE
    reference = durations["a.wav"]
    assert reference > 2.0
    for name, duration in durations.items():
        # mp3 may add codec padding (encoder delay, a last partial frame): up to ~50 ms more
        slack = 0.05 if name.endswith(".mp3") else 0.0
        assert abs(duration - reference) <= 0.02 * reference + slack, (name, duration, reference)
    assert load_input(inputs[0], target_rate=8000).shape[0] == pytest.approx(reference * 8000, abs=2)


def test_collect_walks_directories_sorted_and_skips_non_audio(tmp_path):
    tree = tmp_path / "recs"
    for rel in ["b.wav", "a/z.FLAC", "a/sub/c.mp3", "a/notes.txt", "d.Opus", "e.ogg", "README"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"x")
    (tmp_path / "empty_dir" / "deeper").mkdir(parents=True)
    (tmp_path / "empty_dir" / "deeper" / "notes.txt").write_text("no audio here\n")

    inputs, problems = collect_inputs([str(tree) + "/", str(tmp_path / "empty_dir")])
    expected = [str(tree / rel) for rel in ["a/sub/c.mp3", "a/z.FLAC", "b.wav", "d.Opus", "e.ogg"]]
    assert [i.key for i in inputs] == expected
    assert all(i.source == i.key and i.start == 0.0 and i.end == -1.0 for i in inputs)
    assert len(problems) == 1 and problems[0][0] == str(tmp_path / "empty_dir") and "no audio files" in problems[0][1]
    assert ".wav" in AUDIO_SUFFIXES and ".txt" not in AUDIO_SUFFIXES


def test_collect_reads_stdin_reports_missing_and_duplicates(tmp_path):
    a, b, text = tmp_path / "a.wav", tmp_path / "b.flac", tmp_path / "notes.txt"
    for path in (a, b, text):
        path.write_bytes(b"x")
    stdin = io.StringIO(f"{b}\n\n  \n{tmp_path / 'gone.wav'}\n-\n{a}\n")
    inputs, problems = collect_inputs([str(a), "-", str(text), str(b)], stdin=stdin)
    # a file given by name is taken whatever its suffix; only the directory walk filters by suffix
    assert [i.key for i in inputs] == [str(a), str(b), str(text)]
    assert problems == [
        (str(tmp_path / "gone.wav"), "no such file or directory"),
        ("-", "'-' inside the list read from stdin; list paths only"),
        (str(a), "listed twice; the first one is used"),
        (str(b), "listed twice; the first one is used"),
    ]
    _, problems = collect_inputs(["-"])
    assert problems == [("-", "'-' given but no stdin to read paths from")]
    assert collect_inputs([""]) == ([], [("", "empty path")])  # not the current directory


@requires_espeak
def test_kaldi_data_dirs_with_segments_and_pipes(tmp_path):
    rec = tmp_path / "rec1.wav"
    synth_speech(SENTENCE, "en-us", rec, 16000)
    total = soundfile.info(rec).frames
    with_segments = tmp_path / "data" / "test"
    with_segments.mkdir(parents=True)
    (with_segments / "wav.scp").write_text(f"rec1 {rec}\n")
    (with_segments / "segments").write_text(
        "spk1-utt1 rec1 0.5 1.5\nspk1-utt2 rec1 1.5 -1\nspk1-utt3 rec9 0 1\nspk1-utt4 rec1 zero 1\n"
    )
    (with_segments / "text").write_text("spk1-utt1 a\n")  # other tables are not read
    piped = tmp_path / "data" / "piped"
    piped.mkdir()
    (piped / "wav.scp").write_text(f"spk2-utt1 cat {rec} |\nspk2-utt2 {rec}\n")

    inputs, problems = collect_inputs([str(with_segments), str(piped)])
    assert inputs == [
        InputAudio("spk1-utt1", str(rec), 0.5, 1.5),
        InputAudio("spk1-utt2", str(rec), 1.5, -1.0),
        InputAudio("spk2-utt1", f"cat {rec} |"),
        InputAudio("spk2-utt2", str(rec)),
    ]
    assert [key for key, _ in problems] == ["spk1-utt3", "spk1-utt4"]
    assert "recording 'rec9' is not in" in problems[0][1] and "segments" in problems[1][1]

    lengths = [load_input(item).shape[0] for item in inputs]
    assert lengths == [RATE, total - int(1.5 * RATE), total, total]
    assert np.array_equal(load_input(inputs[2]), load_input(inputs[3]))  # the pipe decodes the same audio
    assert np.array_equal(load_input(inputs[0]), load_input(inputs[3])[int(0.5 * RATE): int(1.5 * RATE)])


@requires_espeak
def test_unreadable_files_raise_a_reason_while_good_ones_load(tmp_path):
    synth_speech(SENTENCE, "en-us", tmp_path / "good.wav", 16000)
    synth_speech(SENTENCE, "en-us", tmp_path / "good.flac", 44100)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "random.wav").write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / "notes.txt").write_text("these are meeting notes, not audio\n")
    flac = (tmp_path / "good.flac").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    names = ["good.wav", "empty.wav", "random.wav", "notes.txt", "truncated.flac", "good.flac"]

    inputs, problems = collect_inputs([str(tmp_path / n) for n in names])
    assert problems == [] and len(inputs) == len(names)
    loaded, errors = {}, {}
    for item in inputs:
        try:
            loaded[Path(item.key).name] = load_input(item)
        except AudioError as exc:
            errors[Path(item.key).name] = str(exc)
    assert sorted(loaded) == ["good.flac", "good.wav"]
    assert abs(loaded["good.flac"].shape[0] - loaded["good.wav"].shape[0]) <= 2
    assert errors["empty.wav"] == f"{tmp_path / 'empty.wav'} is empty (0 bytes)"
    for name in ("random.wav", "notes.txt", "truncated.flac"):
        assert str(tmp_path / name) in errors[name] and "corrupt or not audio" in errors[name], errors[name]
        assert "\n" not in errors[name]
    with pytest.raises(AudioError, match="missing file"):
        load_input(InputAudio("gone", str(tmp_path / "gone.wav")))


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """~70 s of different sentences with 0.6 s pauses between them and a -60 dBFS noise floor throughout;
    returns the samples and the [start, end) sample spans of the inserted pauses."""
    tmp = tmp_path_factory.mktemp("long")
    gap = int(GAP_S * RATE)
    pieces, pauses, position = [], [], 0
    for i, sentence in enumerate(SENTENCES):
        speech = synth_speech(sentence, "en-us", tmp / f"s{i}.wav", RATE).astype(np.float32)
        voiced = np.flatnonzero(np.abs(speech) > 1e-3)
        speech = speech[voiced[0]: voiced[-1] + 1]  # espeak's own leading and trailing silence removed
        if i:
            pieces.append(np.zeros(gap, np.float32))
            pauses.append((position, position + gap))
            position += gap
        pieces.append(speech)
        position += speech.shape[0]
    samples = np.concatenate(pieces)
    samples += np.random.default_rng(0).normal(0.0, 1e-3, samples.shape[0]).astype(np.float32)
    return samples, pauses


@requires_espeak
def test_long_recording_is_cut_inside_pauses(long_recording):
    samples, pauses = long_recording
    assert 60 * RATE <= samples.shape[0] <= 80 * RATE
    ranges = split_at_pauses(samples, RATE)
    assert len(ranges) >= 3
    assert ranges[0][0] == 0 and ranges[-1][1] == samples.shape[0]
    assert all(prev[1] == cur[0] for prev, cur in zip(ranges, ranges[1:]))
    assert all(0 < end - start <= 30 * RATE for start, end in ranges)
    for _, cut in ranges[:-1]:
        assert any(lo < cut < hi for lo, hi in pauses), (cut / RATE, [(lo / RATE, hi / RATE) for lo, hi in pauses])
    assert split_at_pauses(samples, RATE) == ranges
    # shorter pieces also land in pauses
    for _, cut in split_at_pauses(samples, RATE, max_seconds=12.0)[:-1]:
        assert any(lo < cut < hi for lo, hi in pauses)


@requires_espeak
def test_segments_at_every_pause_give_a_sentence_each(long_recording):
    samples, pauses = long_recording
    ranges = segment_at_pauses(samples, RATE, max_seconds=30.0)
    assert len(ranges) == len(SENTENCES)  # one cut in each inserted pause, none inside a sentence
    assert ranges[0][0] == 0 and ranges[-1][1] == samples.shape[0]
    assert all(prev[1] == cur[0] for prev, cur in zip(ranges, ranges[1:]))
    for (_, cut), (lo, hi) in zip(ranges[:-1], pauses):
        assert lo < cut < hi
    short = segment_at_pauses(samples, RATE, max_seconds=3.0)  # sentences over 3 s are cut further
    assert len(short) > len(SENTENCES) and all(end - start <= 3 * RATE for start, end in short)
    merged = segment_at_pauses(samples, RATE, min_piece_seconds=12.0)  # short pieces join the next
    assert len(merged) < len(SENTENCES) and all(end - start >= 12 * RATE for start, end in merged)


def test_short_signal_and_noise_without_pauses():
    rng = np.random.default_rng(1)
    ten_s = rng.normal(0.0, 0.1, 10 * RATE).astype(np.float32)
    assert split_at_pauses(ten_s, RATE) == [(0, 10 * RATE)]
    assert split_at_pauses(ten_s[: 30 * RATE], RATE, max_seconds=10.0) == [(0, 10 * RATE)]
    assert split_at_pauses(np.zeros(0, np.float32), RATE) == []

    noise = rng.normal(0.0, 0.1, 65 * RATE).astype(np.float32)
    ranges = split_at_pauses(noise, RATE)
    assert ranges[0][0] == 0 and ranges[-1][1] == noise.shape[0] and len(ranges) >= 3
    assert all(prev[1] == cur[0] for prev, cur in zip(ranges, ranges[1:]))
    assert all(0 < end - start <= 30 * RATE for start, end in ranges)
    assert split_at_pauses(noise, RATE) == ranges

    silence = np.zeros(61 * RATE, np.float32)  # all frames equally quiet: cut in the middle of each window
    assert split_at_pauses(silence, RATE) == [(0, 22 * RATE + RATE // 2), (22 * RATE + RATE // 2, 45 * RATE),
                                              (45 * RATE, 61 * RATE)]
    with pytest.raises(ValueError, match="mono"):
        split_at_pauses(np.zeros((RATE, 2), np.float32), RATE)


def test_cut_goes_to_the_longest_pause_and_the_latest_of_equal_ones():
    noise = np.random.default_rng(2).normal(0.0, 0.1, 40 * RATE).astype(np.float32)
    equal = noise.copy()
    equal[18 * RATE: 19 * RATE] = 0.0
    equal[25 * RATE: 26 * RATE] = 0.0
    assert split_at_pauses(equal, RATE)[0] == (0, 25 * RATE + RATE // 2)
    longer_first = noise.copy()
    longer_first[18 * RATE: 19 * RATE] = 0.0
    longer_first[25 * RATE: 25 * RATE + RATE // 2] = 0.0
    assert split_at_pauses(longer_first, RATE)[0] == (0, 18 * RATE + RATE // 2)
    # a pause before the window (start + 15 s) is not used; no whole frame in the window: a hard cut
    early = noise.copy()
    early[5 * RATE: 8 * RATE] = 0.0
    assert not 5 * RATE <= split_at_pauses(early, RATE)[0][1] <= 8 * RATE
    assert split_at_pauses(noise[:100], 1000, max_seconds=0.03, frame_seconds=0.02)[0] == (0, 30)
