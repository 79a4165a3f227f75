"""Real speech for tests: espeak-ng, resampled and written the way corpora ship it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

requires_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make install)")


def synth_speech(text: str, voice: str, path: Path, sample_rate: int = 48000, fmt: str | None = None) -> np.ndarray:
    """Speak ``text`` with espeak-ng, resample to ``sample_rate`` and write ``path`` (format from
    its suffix, e.g. .mp3/.wav/.flac). Returns the written samples (float, mono)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        audio, rate = soundfile.read(wav, dtype="float32")
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, sample_rate, format=fmt or path.suffix.lstrip(".").upper())
    return audio
