"""Audio of a Kaldi data dir: read any ``wav.scp`` entry, down-mix to mono, resample to 16 kHz.

A ``wav.scp`` value is either a file path in any format libsndfile reads (wav, flac, ogg, mp3, ...)
or a Kaldi pipe ``<shell command> |`` whose stdout is such a stream (``sox a.mp3 -t wav - |``).
With a ``segments`` file (``<utt> <recording> <start-s> <end-s>``, end ``-1`` = to the end) each
utterance is a slice of a recording; a recording is decoded once for its consecutive segments.
Resampling uses soxr (high quality); samples are float32 in [-1, 1].

Example:
    >>> samples = load_audio("clips/a.mp3")                       # doctest: +SKIP
    >>> samples.shape, samples.dtype                             # (T,) at 16 kHz
    ((52800,), dtype('float32'))
    >>> samples = load_audio("sox clips/a.mp3 -t wav - |")       # doctest: +SKIP
    >>> for item in iter_data_dir_audio("data/train"):           # doctest: +SKIP
    ...     print(item.utt_id, item.error or item.samples.shape)
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from speechllm_cli.data.kaldi_dir import iter_lines, split_fields

TARGET_RATE = 16000
MAX_SEGMENT_OVERSHOOT_S = 0.5  # a segment may end this far past its recording (Kaldi's extract-segments)


class AudioError(Exception):
    """Audio that cannot be read or used; the message is a one-line reason (for the skipped list)."""


@dataclasses.dataclass
class UttAudio:
    """One utterance's audio: ``samples`` (T,) float32 at the target rate, or ``error`` when unusable."""

    utt_id: str
    samples: np.ndarray | None
    duration: float  # seconds, from the source sample count and rate
    error: str | None = None


def _run_pipe(command: str) -> bytes:
    """stdout of a wav.scp pipe command (run by bash with pipefail), or AudioError naming it."""
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise AudioError(f"pipe '{command}' failed (exit {proc.returncode}): {tail[0]}")
    if not proc.stdout:
        raise AudioError(f"pipe '{command}' wrote no audio to stdout")
    return proc.stdout


def read_entry(entry: str) -> tuple[np.ndarray, int]:
    """Decode a wav.scp value (path or ``cmd |``) to mono float32 samples (T,) and their rate."""
    entry = entry.strip()
    if entry.endswith("|"):
        command = entry[:-1].strip()
        source: str | io.BytesIO = io.BytesIO(_run_pipe(command))
        name = f"pipe '{command}'"
    else:
        if not os.path.isfile(entry):
            raise AudioError(f"missing file {entry}")
        source, name = entry, entry
    try:
        audio, rate = soundfile.read(source, dtype="float32", always_2d=True)  # (T, C)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"cannot decode {name} (corrupt or not audio): {exc}") from exc
    if audio.shape[0] == 0:
        raise AudioError(f"{name} holds no samples")
    samples = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)  # (T,)
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise AudioError(f"{name} holds {bad} NaN or infinite sample(s) (corrupt floating-point audio)")
    return np.ascontiguousarray(samples), int(rate)


def resample(samples: np.ndarray, rate: int, target_rate: int = TARGET_RATE) -> np.ndarray:
    """soxr high-quality resampling of (T,) float32; output length is round(T * target / rate)."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ")


def slice_segment(samples: np.ndarray, rate: int, start: float, end: float) -> np.ndarray:
    """Samples of [start, end) seconds (end <= 0: to the end); AudioError when out of range."""
    total = samples.shape[0]
    first = int(round(start * rate))
    last = total if end <= 0 else int(round(end * rate))
    if last > total:
        if last - total > MAX_SEGMENT_OVERSHOOT_S * rate:
            raise AudioError(f"segment {start}-{end} s ends past the recording ({total / rate:.2f} s)")
        last = total
    if first < 0 or first >= last:
        raise AudioError(f"segment {start}-{end} s is empty or negative (recording {total / rate:.2f} s)")
    return samples[first:last]


def load_audio(entry: str, target_rate: int = TARGET_RATE, start: float = 0.0, end: float = -1.0) -> np.ndarray:
    """Mono float32 samples (T,) of a wav.scp value at ``target_rate``, optionally a [start, end) slice."""
    samples, rate = read_entry(entry)
    if start > 0 or end > 0:
        samples = slice_segment(samples, rate, start, end)
    return resample(samples, rate, target_rate)


def _iter_table(path: Path) -> Iterator[tuple[str, str]]:
    """Stream ``key value`` lines (no dict of the whole table); space or tab end the key, as in Kaldi."""
    for lineno, line, _ in iter_lines(path):
        key, value = split_fields(line.strip())
        if not key:
            continue
        if not value:
            raise AudioError(f"{path}:{lineno}: '{key}' has no value; fix the data dir")
        yield key, value


def count_utterances(data_dir: str | os.PathLike) -> int:
    """Number of utterances a data dir's audio tables list (segments if present, else wav.scp)."""
    data_dir = Path(data_dir)
    table = data_dir / "segments" if (data_dir / "segments").exists() else data_dir / "wav.scp"
    with open(table, "rb") as f:
        return sum(1 for line in f if line.strip())


def iter_data_dir_audio(data_dir: str | os.PathLike, target_rate: int = TARGET_RATE) -> Iterator[UttAudio]:
    """Yield each utterance's audio in table order, one at a time; unusable audio is yielded with
    ``error`` set (missing file, decode failure, failing pipe, bad segment) instead of raising."""
    data_dir = Path(data_dir)
    if not (data_dir / "segments").exists():
        for utt, entry in _iter_table(data_dir / "wav.scp"):
            try:
                samples, rate = read_entry(entry)
            except AudioError as exc:
                yield UttAudio(utt, None, 0.0, str(exc))
                continue
            yield UttAudio(utt, resample(samples, rate, target_rate), samples.shape[0] / rate)
        return
    recordings = dict(_iter_table(data_dir / "wav.scp"))
    cached_id, cached = None, None  # the last decoded recording: (samples, rate) or AudioError
    for utt, value in _iter_table(data_dir / "segments"):
        fields = value.split()
        try:
            if len(fields) != 3:
                raise AudioError(f"segments line must be '<utt> <recording> <start> <end>', got '{utt} {value}'")
            rec_id, start, end = fields[0], float(fields[1]), float(fields[2])
            if rec_id not in recordings:
                raise AudioError(f"recording '{rec_id}' not in {data_dir / 'wav.scp'}")
            if rec_id != cached_id:
                cached_id = rec_id
                try:
                    cached = read_entry(recordings[rec_id])
                except AudioError as exc:
                    cached = exc
            if isinstance(cached, AudioError):
                raise cached
            samples, rate = cached
            piece = slice_segment(samples, rate, start, end)
        except (AudioError, ValueError) as exc:
            yield UttAudio(utt, None, 0.0, str(exc))
            continue
        yield UttAudio(utt, resample(piece, rate, target_rate), piece.shape[0] / rate)
