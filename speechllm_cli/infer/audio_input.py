"""Audio input of ``speechllm infer``: which recordings to run on, their samples, and pause-aligned pieces.

An input item is an audio file (any format libsndfile reads), a directory (searched recursively for
``AUDIO_SUFFIXES``), a Kaldi data dir (``wav.scp``, optionally ``segments``: one input per utterance) or
``-`` (one such item per line of stdin). Problems (a missing path, a directory without audio, a key listed
twice) are collected, never raised, so one bad path does not stop a run over many; unreadable audio
raises ``AudioError`` with a one-line reason when it is loaded. Long recordings are cut at pauses into
pieces of at most ``max_seconds``.

Example:
    >>> import sys
    >>> inputs, problems = collect_inputs(["talk.mp3", "recordings/", "data/test", "-"], sys.stdin)  # doctest: +SKIP
    >>> for key, reason in problems:                                                 # doctest: +SKIP
    ...     print(f"skipped {key}: {reason}")
    >>> for item in inputs:                                                          # doctest: +SKIP
    ...     try:
    ...         samples = load_input(item)                   # (T,) float32, mono, 16 kHz
    ...     except AudioError as exc:
    ...         print(f"skipped {item.key}: {exc}")
    ...         continue
    ...     pieces = [samples[a:b] for a, b in split_at_pauses(samples)]  # each <= 30 s, cut at pauses
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TextIO

import numpy as np

from speechllm_cli.data.kaldi_dir import DataDirError, iter_lines, split_fields
from speechllm_cli.features.audio import AudioError, read_entry, resample, slice_segment

__all__ = ["AUDIO_SUFFIXES", "AudioError", "InputAudio", "collect_inputs", "load_input", "split_at_pauses"]

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")  # read by libsndfile; matched case-insensitively
QUIET_MARGIN_DB = 6.0  # a frame within this much of the window's quietest frame counts as a pause
_ENERGY_FLOOR = 1e-10  # mean square added before the log: digital silence is -100 dB, not -inf


@dataclasses.dataclass
class InputAudio:
    """One recording (or Kaldi segment) to run on.

    ``key`` names it in the output (the path as given or as found in a directory, or the Kaldi utterance id);
    ``source`` is a file path or a wav.scp value (``cmd |`` pipes included); ``start``/``end`` are a
    ``segments`` slice in seconds (``end`` -1: to the end of the recording); ``language`` its source language when
    known (a Kaldi data dir's ``utt2lang``).
    """

    key: str
    source: str
    start: float = 0.0
    end: float = -1.0
    language: str | None = None


def _read_pairs(path: Path, problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(key, value)`` lines of a Kaldi table in file order; blank lines are skipped, a key without a value
    is a problem. A malformed file (not UTF-8, a byte order mark, carriage returns) raises DataDirError."""
    pairs = []
    for lineno, line, _ in iter_lines(path):
        if not line.strip():
            continue
        key, value = split_fields(line.strip())
        if not value:
            problems.append((key, f"{path}:{lineno}: no value"))
            continue
        pairs.append((key, value))
    return pairs


def _data_dir_inputs(data_dir: Path, problems: list[tuple[str, str]]) -> list[InputAudio]:
    """One input per utterance of a Kaldi data dir (per ``segments`` line when it has one, else per wav.scp line)."""
    try:
        recordings = _read_pairs(data_dir / "wav.scp", problems)
        segments = _read_pairs(data_dir / "segments", problems) if (data_dir / "segments").is_file() else None
        languages = dict(_read_pairs(data_dir / "utt2lang", problems)) if (data_dir / "utt2lang").is_file() else {}
    except (DataDirError, OSError) as exc:
        problems.append((str(data_dir), str(exc)))
        return []
    if segments is None:
        return [InputAudio(key, value, language=languages.get(key)) for key, value in recordings]
    sources: dict[str, str] = {}
    for rec_id, value in recordings:
        sources.setdefault(rec_id, value)  # a second line of the same recording is reported as a duplicate later
    inputs = []
    for utt, value in segments:
        fields = value.split()
        try:
            if len(fields) != 3:
                raise ValueError(f"expected '<utt> <recording> <start> <end>', got '{utt} {value}'")
            rec_id, start, end = fields[0], float(fields[1]), float(fields[2])
        except ValueError as exc:
            problems.append((utt, f"{data_dir / 'segments'}: {exc}"))
            continue
        if rec_id not in sources:
            problems.append((utt, f"recording '{rec_id}' is not in {data_dir / 'wav.scp'}"))
        elif start < 0 or (end > 0 and end <= start):
            problems.append((utt, f"{data_dir / 'segments'}: segment {start}-{end} s is empty or negative"))
        else:
            inputs.append(InputAudio(utt, sources[rec_id], start, end, languages.get(utt)))
    return inputs


def _walk_audio(directory: Path, problems: list[tuple[str, str]]) -> list[InputAudio]:
    """Audio files under ``directory`` (recursive, symlinked directories not followed), sorted by path."""
    found: list[tuple[tuple[str, ...], Path]] = []

    def on_error(exc: OSError) -> None:
        problems.append((str(exc.filename or directory), exc.strerror or str(exc)))

    for root, dirs, files in os.walk(directory, onerror=on_error):
        dirs.sort()
        for name in files:
            if name.lower().endswith(AUDIO_SUFFIXES):
                path = Path(root) / name
                found.append((path.relative_to(directory).parts, path))
    if not found:
        problems.append((str(directory), f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in this directory"))
    return [InputAudio(str(path), str(path)) for _, path in sorted(found)]


def _expand(item: str, stdin: TextIO | None, problems: list[tuple[str, str]], from_stdin: bool) -> list[InputAudio]:
    """The inputs one command-line item (or one stdin line) stands for; problems are appended, not raised."""
    if item == "-":
        if from_stdin:
            problems.append(("-", "'-' inside the list read from stdin; list paths only"))
            return []
        if stdin is None:
            problems.append(("-", "'-' given but no stdin to read paths from"))
            return []
        inputs = []
        for line in stdin:
            if line.strip():
                inputs += _expand(line.strip(), stdin, problems, from_stdin=True)
        return inputs
    if not item.strip():
        problems.append((item, "empty path"))  # Path("") is the current directory: never walk it by accident
        return []
    path = Path(item)
    if path.is_dir():
        if (path / "wav.scp").is_file():
            return _data_dir_inputs(path, problems)
        return _walk_audio(path, problems)
    if os.path.exists(item):
        return [InputAudio(item, item)]
    problems.append((item, "no such file or directory"))
    return []


def collect_inputs(items: list[str], stdin: TextIO | None = None) -> tuple[list[InputAudio], list[tuple[str, str]]]:
    """Expand command-line items into the recordings to run on, in order, and the problems met on the way.

    Each item is ``-`` (one item per non-empty line of ``stdin``), a Kaldi data dir (a directory holding
    ``wav.scp``: one input per utterance, ``segments`` slices when present), any other directory (its audio
    files, ``AUDIO_SUFFIXES`` in any case, recursively, sorted) or a file (any suffix: a file that is not
    audio fails in ``load_input``). Returns ``(inputs, problems)``; a problem is ``(key or path, reason)``:
    a missing path, a directory without audio, a malformed data dir line, or a key listed twice (the first
    is kept). Nothing is raised for a bad path.
    """
    problems: list[tuple[str, str]] = []
    inputs: list[InputAudio] = []
    seen: set[str] = set()
    for item in items:
        for found in _expand(item, stdin, problems, from_stdin=False):
            if found.key in seen:
                problems.append((found.key, "listed twice; the first one is used"))
                continue
            seen.add(found.key)
            inputs.append(found)
    return inputs, problems


def load_input(item: InputAudio, target_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples (T,) of ``item`` at ``target_rate`` (channels averaged, soxr resampling,
    the ``segments`` slice applied). Raises AudioError with a one-line reason for a missing, empty,
    corrupt or non-audio file, a failing pipe or a segment outside its recording."""
    source = item.source.strip()
    if not source.endswith("|") and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise AudioError(f"{source} is empty (0 bytes)")
    samples, rate = read_entry(source)
    if item.start > 0 or item.end > 0:
        samples = slice_segment(samples, rate, item.start, item.end)
    return resample(samples, rate, target_rate)


def _frame_energy_db(samples: np.ndarray, frame: int) -> np.ndarray:
    """RMS in dB of each full, non-overlapping frame of ``frame`` samples (a trailing partial frame is left out)."""
    count = samples.shape[0] // frame
    frames = samples[: count * frame].reshape(count, frame).astype(np.float64)
    return 10.0 * np.log10(np.einsum("ij,ij->i", frames, frames) / frame + _ENERGY_FLOOR)


def _pause_cut(energy: np.ndarray, frame: int, low: int, high: int) -> int | None:
    """Sample index in the middle of the longest quiet run of the frames inside [low, high) samples
    (latest on ties), or None when no whole frame fits in that window."""
    first, last = -(-low // frame), high // frame  # frames first..last-1 lie inside the window
    if last <= first:
        return None
    window = energy[first:last]
    quiet = np.concatenate(([False], window <= window.min() + QUIET_MARGIN_DB, [False]))
    edges = np.flatnonzero(quiet[1:] != quiet[:-1])  # alternating run starts and ends (end exclusive)
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    best = len(lengths) - 1 - int(np.argmax(lengths[::-1]))  # the latest of the longest runs
    return (first + int(starts[best])) * frame + int(lengths[best]) * frame // 2


def split_at_pauses(
    samples: np.ndarray, rate: int = 16000, max_seconds: float = 30.0, frame_seconds: float = 0.02,
    min_seconds: float | None = None,
) -> list[tuple[int, int]]:
    """Cut a recording into contiguous sample ranges ``[start, end)`` of at most ``max_seconds``, at pauses.

    The ranges cover all of ``samples`` in order (none for an empty signal). While more than ``max_seconds``
    remain after ``start``, the next cut goes in the middle of the longest run of frames (``frame_seconds``,
    RMS in dB) within 6 dB of the quietest frame of the window ``start + min_seconds`` ..
    ``start + max_seconds`` (``min_seconds`` default ``max_seconds / 2``; the latest such run on ties); a hard cut
    at ``max_seconds`` when no frame fits.
    """
    if samples.ndim != 1:
        raise ValueError(f"split_at_pauses takes mono samples (T,), got shape {samples.shape}")
    if rate <= 0 or max_seconds <= 0 or frame_seconds <= 0:
        raise ValueError(f"rate, max_seconds and frame_seconds must be positive, got {rate}, {max_seconds}, "
                         f"{frame_seconds}")
    total = samples.shape[0]
    max_len = max(1, int(max_seconds * rate + 1e-6))  # floor: never longer
    frame = max(1, int(round(frame_seconds * rate)))
    min_len = max_len // 2 if min_seconds is None else min(max_len - 1, max(0, int(min_seconds * rate)))
    energy = _frame_energy_db(samples, frame) if total > max_len else np.empty(0)
    ranges = []
    start = 0
    while total - start > max_len:
        cut = _pause_cut(energy, frame, start + min_len, start + max_len)
        if cut is None or cut <= start:
            cut = start + max_len
        ranges.append((start, cut))
        start = cut
    if total > start:
        ranges.append((start, total))
    return ranges


def segment_at_pauses(samples: np.ndarray, rate: int = 16000, max_seconds: float = 30.0, min_pause_seconds: float = 0.3,
                      min_piece_seconds: float = 1.0, frame_seconds: float = 0.02) -> list[tuple[int, int]]:
    """Cut a recording at every pause (an utterance per piece, as a model trained on single sentences expects).

    A pause is a run of at least ``min_pause_seconds`` of frames quieter than ``max(quietest + 6 dB, loudest - 30
    dB)`` (the 95th percentile as the loudest); cuts go in the middle of pauses. A piece shorter than
    ``min_piece_seconds`` joins the next one (the last joins the one before), and a piece longer than ``max_seconds``
    is cut further by :func:`split_at_pauses`. Returns contiguous ``[start, end)`` ranges covering ``samples``.
    """
    total = samples.shape[0]
    frame = max(1, int(round(frame_seconds * rate)))
    if total < 2 * frame:
        return [(0, total)] if total else []
    energy = _frame_energy_db(samples, frame)
    threshold = max(energy.min() + QUIET_MARGIN_DB, float(np.percentile(energy, 95)) - 30.0)
    quiet = np.concatenate(([False], energy <= threshold, [False]))
    edges = np.flatnonzero(quiet[1:] != quiet[:-1])
    min_run = max(1, int(round(min_pause_seconds / frame_seconds)))
    cuts = [int((a + b) * frame // 2) for a, b in zip(edges[0::2], edges[1::2]) if b - a >= min_run and a > 0
            and b < len(energy)]
    bounds = [0, *(c for c in cuts if 0 < c < total), total]
    pieces = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    merged: list[tuple[int, int]] = []
    min_piece = int(min_piece_seconds * rate)
    for start, end in pieces:
        if merged and merged[-1][1] - merged[-1][0] < min_piece:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    if len(merged) > 1 and merged[-1][1] - merged[-1][0] < min_piece:
        last = merged.pop()
        merged[-1] = (merged[-1][0], last[1])
    ranges = []
    for start, end in merged:
        ranges += [(start + a, start + b) for a, b in split_at_pauses(samples[start:end], rate, max_seconds,
                                                                       frame_seconds, min_seconds=max_seconds / 4)]
    return ranges
