"""Build the mini corpus: seeded sentences spoken by espeak-ng, in the Common Voice + CoVoST2 layout.

Writes, for each language ``<lang>``:
    <out>/<lang>/clips/common_voice_<lang>_<8 digits>.mp3   48 kHz mono mp3
    <out>/<lang>/validated.tsv       client_id path sentence up_votes down_votes age gender accent locale segment
    <out>/covost_v2.<lang>_en.tsv    path sentence translation client_id split (train/train_covost/dev/test)
English (``en``) is the ASR language: its table is ``covost_v2.en_en.tsv`` with translation = sentence.
The real CoVoST2 preparation reads it as ``prepare_covost2(out, out, langs, data_dir)``.

Speakers are disjoint between splits (:mod:`.speakers`), every English translation is used
once in the whole corpus and source sentences are unique per language (:mod:`.grammar`).
Clips are written atomically and kept on a re-run; the tables are rewritten atomically at the
end and depend only on (size, seed, langs), not on the audio.

Example:
    >>> counts = make_mini_corpus(Path("mini"), size=0.02, langs=("de", "en"))  # doctest: +SKIP
    >>> counts["de"]  # doctest: +SKIP
    {'train': 5, 'dev': 1, 'test': 1}
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile
import soxr
from tqdm import tqdm

from speechllm_cli.data.mini_corpus.grammar import LANGS, generate_pairs
from speechllm_cli.data.mini_corpus.speakers import Speaker, choose_speakers
from speechllm_cli.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
SPLIT_SIZES = {"train": 240, "dev": 30, "test": 30}  # utterances per language at size 1.0
UTTS_PER_SPEAKER = {"train": 20, "dev": 10, "test": 10}
WIDE_UTTS_PER_SPEAKER = 4  # voices="wide" train, voices="unheard" test: 60 / 8 speakers per language at size 1.0
TRAIN_COVOST_EVERY = 20  # every 20th train row is labelled "train_covost", as some real rows are
VALIDATED_COLUMNS = ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent",
                     "locale", "segment")
COVOST_COLUMNS = ("path", "sentence", "translation", "client_id", "split")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One planned utterance."""

    lang: str
    split: str  # train | dev | test
    covost_split: str  # the label in the CoVoST2 table (train_covost for a few train rows)
    speaker: Speaker
    sentence: str
    translation: str
    name: str  # clip file name


def split_counts(size: float) -> dict[str, int]:
    """Utterances per split for one language at ``size`` (at least one each)."""
    if not size > 0:
        raise ValueError(f"--size must be > 0, got {size}")
    return {split: max(1, round(n * size)) for split, n in SPLIT_SIZES.items()}


def clip_name(lang: str, speaker: Speaker, sentence: str, taken: set[str]) -> str:
    """A Common Voice-like clip name derived from its content (a changed sentence gets a new file)."""
    digest = hashlib.sha256(f"{lang}\t{speaker.client_id}\t{sentence}".encode()).digest()
    number = 10_000_000 + int.from_bytes(digest[:8], "big") % 90_000_000
    while f"common_voice_{lang}_{number}.mp3" in taken:
        number = 10_000_000 + (number - 10_000_000 + 1) % 90_000_000
    name = f"common_voice_{lang}_{number}.mp3"
    taken.add(name)
    return name


def plan_language(lang: str, size: float = 1.0, seed: int = 0, voices: str = "classic") -> list[Clip]:
    """Sentences, speakers and clip names of one language, in the order the tables list them. ``voices="wide"``
    changes the train speakers only, ``voices="unheard"`` the test speakers only (:func:`.speakers.choose_speakers`);
    the sentences are the same."""
    counts = split_counts(size)
    pairs = generate_pairs(lang, sum(counts.values()), seed)
    changed = {"wide": "train", "unheard": "test"}.get(voices)
    per_speaker = dict(UTTS_PER_SPEAKER, **({changed: WIDE_UTTS_PER_SPEAKER} if changed else {}))
    speakers = choose_speakers(lang, {s: math.ceil(n / per_speaker[s]) for s, n in counts.items()}, seed, voices,
                               wide_train_count=math.ceil(counts["train"] / WIDE_UTTS_PER_SPEAKER))
    clips, taken, start = [], set(), 0
    for split in ("test", "dev", "train"):  # test and dev first: they stay put when size grows
        for i, (sentence, english) in enumerate(pairs[start:start + counts[split]]):
            speaker = speakers[split][i % len(speakers[split])]
            label = "train_covost" if split == "train" and i % TRAIN_COVOST_EVERY == TRAIN_COVOST_EVERY - 1 else split
            name = clip_name(lang, speaker, sentence, taken)
            clips.append(Clip(lang, split, label, speaker, sentence, english, name))
        start += counts[split]
    random.Random(f"mini-corpus-order\t{lang}\t{seed}").shuffle(clips)
    return clips


def tsv(columns: Sequence[str], rows: list[Sequence[str]]) -> str:
    for row in rows:
        if any("\t" in v or "\n" in v for v in row):
            raise ValueError(f"a field holds a tab or newline and would break the table: {row}")
    return "".join("\t".join(r) + "\n" for r in [tuple(columns), *rows])


def validated_rows(clips: list[Clip]) -> list[tuple[str, ...]]:
    rows = []
    for c in clips:
        votes = int(hashlib.sha256(c.name.encode()).hexdigest()[:4], 16)
        rows.append((c.speaker.client_id, c.name, c.sentence, str(2 + votes % 3), str(votes // 3 % 2),
                     c.speaker.age, c.speaker.gender, c.speaker.accent, c.lang, ""))
    return rows


def covost_rows(clips: list[Clip]) -> list[tuple[str, ...]]:
    return [(c.name, c.sentence, c.translation, c.speaker.client_id, c.covost_split) for c in clips]


def synthesize(text: str, speaker: Speaker, path: Path) -> None:
    """Speak ``text`` with espeak-ng, resample 22.05 kHz -> 48 kHz (soxr), write ``path`` as mp3 atomically."""
    with tempfile.TemporaryDirectory(prefix="mini_corpus_") as tmp:
        wav = Path(tmp) / "espeak.wav"
        cmd = ["espeak-ng", "-v", speaker.voice, "-s", str(speaker.rate), "-p", str(speaker.pitch),
               "-w", str(wav), text]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav.exists():
            raise RuntimeError(f"{path.name}: espeak-ng failed (exit {proc.returncode}) on {text!r}: "
                               f"{proc.stderr.strip()}; check `espeak-ng --voices` lists {speaker.voice}")
        audio, rate = soundfile.read(wav, dtype="float32")  # (T,)
    if audio.ndim != 1 or audio.size == 0:
        raise RuntimeError(f"{path.name}: espeak-ng wrote no mono audio for {text!r}")
    audio = np.clip(soxr.resample(audio, rate, SAMPLE_RATE), -1.0, 1.0)  # (T * 48000 / rate,)
    with atomic_path(path) as tmp_path:
        soundfile.write(tmp_path, audio, SAMPLE_RATE, format="MP3")


def synthesize_missing(clips: list[Clip], out_dir: Path, jobs: int) -> int:
    """Speak every clip not already on disk with ``jobs`` workers; return how many were written."""
    todo = [c for c in clips if not (out_dir / c.lang / "clips" / c.name).exists()]
    if not todo:
        return 0
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(synthesize, c.sentence, c.speaker, out_dir / c.lang / "clips" / c.name) for c in todo]
        for future in tqdm(as_completed(futures), total=len(futures), desc="synthesise clips", unit="clip"):
            future.result()
    return len(todo)


def remove_stale_temps(clips_dir: Path) -> None:
    """Delete temporary files left by an interrupted run (atomic_path names them .<name>.*.tmp)."""
    for tmp in clips_dir.glob(".common_voice_*.tmp"):
        tmp.unlink(missing_ok=True)


def durations(clips: list[Clip], out_dir: Path) -> np.ndarray:
    """Clip durations in seconds, read from the mp3 headers."""
    return np.array([soundfile.info(str(out_dir / c.lang / "clips" / c.name)).duration for c in clips])


def make_mini_corpus(out_dir: Path, size: float = 1.0, seed: int = 0,
                     langs: Sequence[str] = ("de", "fr", "es", "en"), jobs: int = 2,
                     voices: str = "classic") -> dict[str, dict[str, int]]:
    """Write the mini corpus under ``out_dir``; return utterances per language and split.

    ``size`` scales the 240/30/30 train/dev/test utterances per language; ``seed`` picks the
    sentences and speakers; ``jobs`` clips are synthesised at once; ``voices="wide"`` speaks the train set with
    60 speakers per language of every human-sounding espeak-ng variant (dev and test unchanged), ``voices="unheard"``
    the test set with 8 speakers per language of variants no train set uses. Re-running keeps clips already
    written, so an interrupted build resumes.
    """
    out_dir = Path(out_dir)
    langs = list(dict.fromkeys(langs))
    unknown = [lang for lang in langs if lang not in LANGS]
    if unknown or not langs:
        raise ValueError(f"unknown language(s) {unknown or langs}; the mini corpus has {', '.join(LANGS)}")
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng not found on PATH; install it (apt-get install espeak-ng, or make install)")
    plans = {lang: plan_language(lang, size, seed, voices) for lang in langs}
    for lang in langs:
        (out_dir / lang / "clips").mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir / lang / "clips")
    all_clips = [c for lang in langs for c in plans[lang]]
    written = synthesize_missing(all_clips, out_dir, jobs)
    logger.info("synthesised %d clip(s), kept %d already on disk", written, len(all_clips) - written)
    counts: dict[str, dict[str, int]] = {}
    for lang, clips in plans.items():
        atomic_write_text(out_dir / lang / "validated.tsv", tsv(VALIDATED_COLUMNS, validated_rows(clips)))
        atomic_write_text(out_dir / f"covost_v2.{lang}_en.tsv", tsv(COVOST_COLUMNS, covost_rows(clips)))
        counts[lang] = {split: sum(c.split == split for c in clips) for split in ("train", "dev", "test")}
        secs = durations(clips, out_dir)
        n_spk = {split: len({c.speaker for c in clips if c.split == split}) for split in ("train", "dev", "test")}
        logger.info("%s: %s utterances, %s speakers, %.2f h (%.1f-%.1f s, mean %.1f s)", lang, counts[lang],
                    n_spk, secs.sum() / 3600, secs.min(), secs.max(), secs.mean())
    logger.info("mini corpus in %s: %d utterances in %d language(s)", out_dir, len(all_clips), len(langs))
    return counts
