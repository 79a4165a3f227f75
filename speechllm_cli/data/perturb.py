"""Speed perturbation of a training data dir, as Kaldi's ``utils/data/perturb_data_dir_speed.sh`` (and its 3-way
variant): one combined data dir holding a copy of every utterance per factor.

For a factor ``f`` other than 1 every id gets the prefix ``sp<f>-`` (utterances, speakers and recordings, so a
speaker id still prefixes its utterance ids and each copy has speakers of its own); factor 1 keeps the original
ids. A perturbed copy's ``wav.scp`` entry is a pipe through sox's ``speed`` effect,
which changes tempo and pitch together and keeps the sample rate, so the audio lasts ``1/f`` as long:

    sp0.9-spkA-u1 sox -D clips/u1.mp3 -t wav - speed 0.9 |                   # a file: sox reads its type from the name
    sp0.9-spkA-u2 sox u2.sph -t wav - | sox -D -t wav - -t wav - speed 0.9 |   # a pipe: it must write wav, as in Kaldi

(Kaldi's script also passes ``-t wav`` for files; here files may be mp3 or flac, as the CoVoST2 clips are.) ``-D``
turns off sox's dither: by default sox adds +-1 LSB noise when it writes 16 bits after an effect, which turns digital
silence (synthetic speech, padded clips) into a noise floor that the unperturbed copy and the test sets lack, so the
copies would differ from the originals in more than their speed.

``segments`` times and ``utt2dur`` are divided by ``f``; ``text``, ``text.src``, ``utt2lang`` (and a text dir's
``input``) are copied under the new ids; ``feats.scp`` and ``utt2num_frames`` are dropped (features come from the
new audio in stage 2) and ``spk2utt`` is derived again. The features then read the pipes like any other entry
(speechllm_cli/features/audio.py). Only a training set is perturbed; dev and test sets keep their audio.

Example:
    >>> perturb_speed("data/train", "data/train_sp", factors=(0.9, 1.0, 1.1))   # doctest: +SKIP
    >>> # command line: speechllm perturb-speed data/train data/train_sp --factors "0.9 1.0 1.1"
    >>> # recipe: ./run.sh --speed-perturb-factors "0.9 1.0 1.1"
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path

from speechllm_cli.data.kaldi_dir import UTT_TABLES, DataDir, DataDirError, validate_data_dir
from speechllm_cli.utils.io import atomic_write_text

DEFAULT_FACTORS = (0.9, 1.0, 1.1)
DROPPED_TABLES = ("feats.scp", "utt2num_frames")  # they describe the old audio; stage 2 makes them anew
SCALED_TABLES = ("utt2dur",)  # seconds, divided by the factor
KEPT_FILES = ("text_norm",)  # not tables: copied as they are
Tables = dict[str, OrderedDict[str, str]]  # file name -> {id: value}, as DataDir.tables
SOX_INSTALL = "install sox: `make install` (tools/install_system.sh) or `sudo apt-get install sox libsox-fmt-mp3`"

logger = logging.getLogger(__name__)


class PerturbError(ValueError):
    """Bad factors, a missing sox, or an output dir that would overwrite the input; the message says what to do."""


def factor_label(factor: float) -> str:
    """The factor as Kaldi's recipes write it in ids: ``0.9``, ``1.1``, ``0.95`` (no trailing zeros)."""
    return f"{factor:g}"


def parse_factors(text: str) -> tuple[float, ...]:
    """``"0.9 1.0 1.1"`` (spaces or commas) -> ``(0.9, 1.0, 1.1)``; PerturbError on a word that is not a number."""
    words = text.replace(",", " ").split()
    try:
        return tuple(float(w) for w in words)
    except ValueError:
        raise PerturbError(f"--factors '{text}': expected numbers separated by spaces, e.g. \"0.9 1.0 1.1\"") from None


def check_factors(factors: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """The factors as a tuple; PerturbError when there are none, one is not a positive finite number, or two give
    the same id prefix (a duplicate)."""
    factors = tuple(float(f) for f in factors)
    if not factors:
        raise PerturbError("no speed factors given; pass e.g. --factors \"0.9 1.0 1.1\"")
    seen: dict[str, float] = {}
    for factor in factors:
        if not math.isfinite(factor) or factor <= 0:
            raise PerturbError(f"speed factor {factor:g} must be a positive number (e.g. 0.9 slows down by 10%)")
        label = factor_label(factor)
        if label in seen:
            raise PerturbError(f"speed factor {label} is given twice in {[factor_label(f) for f in factors]}; "
                               "each factor makes one copy of the data, list it once")
        seen[label] = factor
    return factors


def check_sox(paths: list[str] | tuple[str, ...] = ()) -> str:
    """The path of ``sox``; PerturbError naming the install command when it is missing, or when it cannot read the
    header of one existing file of each suffix among ``paths`` (mp3 needs libsox-fmt-mp3)."""
    sox = shutil.which("sox")
    if sox is None:
        raise PerturbError(f"speed perturbation needs sox, which is not on PATH; {SOX_INSTALL}")
    probes: dict[str, str] = {}  # suffix -> the first existing file with it
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix not in probes and os.path.isfile(path):
            probes[suffix] = path
    for path in probes.values():
        proc = subprocess.run([sox, "--info", "-t", path], capture_output=True, text=True)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise PerturbError(f"{sox} cannot read {path} ({reason}); install its format handlers: "
                               "`sudo apt-get install libsox-fmt-mp3` (or libsox-fmt-all), or convert the audio")
    return sox


def speed_entry(entry: str, factor: float) -> str:
    """A wav.scp value (a file path or a ``cmd |`` pipe) sped up by ``factor``, as a pipe through sox."""
    entry = entry.strip()
    speed = f"-t wav - speed {factor_label(factor)} |"
    if entry.endswith("|"):
        return f"{entry} sox -D -t wav - {speed}"
    return f"sox -D {shlex.quote(entry)} {speed}"


def _seconds(value: float) -> str:
    """Seconds with at most 4 decimals and no trailing zeros (``3.2522``, ``2``)."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _number(path: Path, utt: str, value: str) -> float:
    """A time in seconds of table ``path``; DataDirError naming the file and the utterance when not a number."""
    try:
        return float(value)
    except ValueError:
        raise DataDirError(f"{path}: '{utt}' has '{value}' where a time in seconds belongs; fix or drop it") from None


def _scale_segment(path: Path, utt: str, value: str, recording: str, factor: float) -> str:
    """``<recording> <start> <end>`` with both times divided by ``factor`` (an end <= 0, "to the end", kept)."""
    _, start, end = value.split()
    start_s, end_s = _number(path, utt, start), _number(path, utt, end)
    return f"{recording} {_seconds(start_s / factor)} {end if end_s <= 0 else _seconds(end_s / factor)}"


def perturb_tables(data: DataDir, factors: tuple[float, ...]) -> tuple[Tables, dict[str, int]]:
    """The combined tables of every factor's copy, and the number of utterances per factor label ("1" = original)."""
    src = data.tables
    tables: Tables = {name: OrderedDict() for name in src if name not in DROPPED_TABLES}
    counts = {}
    for factor in factors:
        prefix = "" if factor == 1.0 else f"sp{factor_label(factor)}-"
        for key, entry in src["wav.scp"].items():  # keyed by recording when segments exist, else by utterance
            tables["wav.scp"][prefix + key] = speed_entry(entry, factor) if prefix else entry
        for utt, value in src.get("segments", {}).items():
            recording = prefix + value.split()[0]
            tables["segments"][prefix + utt] = (_scale_segment(data.path / "segments", utt, value, recording, factor)
                                                if prefix else value)
        for utt, spk in src["utt2spk"].items():
            tables["utt2spk"][prefix + utt] = prefix + spk
        for name in UTT_TABLES:
            if name in tables and name != "utt2spk":
                scale = name in SCALED_TABLES and bool(prefix)
                for utt, value in src[name].items():
                    tables[name][prefix + utt] = (_seconds(_number(data.path / name, utt, value) / factor)
                                                   if scale else value)
        counts[factor_label(factor)] = len(src["utt2spk"])
    return tables, counts


def perturb_speed(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  factors: tuple[float, ...] | list[float] = DEFAULT_FACTORS) -> DataDir:
    """Write ``out_dir``: ``data_dir`` once per speed factor (ids ``sp<f>-<id>`` for f != 1), validated as Kaldi's
    validate_data_dir.sh would; return it. PerturbError on bad factors, a missing sox or ``out_dir == data_dir``;
    DataDirError when ``data_dir`` does not validate."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    factors = check_factors(factors)
    if out_dir.resolve() == data_dir.resolve():
        raise PerturbError(f"{out_dir}: the output dir is the input dir; write the copies elsewhere, "
                           f"e.g. {data_dir.parent / (data_dir.name + '_sp')}")
    validate_data_dir(data_dir)
    data = DataDir.load(data_dir)
    if any(f != 1.0 for f in factors):
        check_sox([e for e in data.tables["wav.scp"].values() if not e.strip().endswith("|")])
    tables, counts = perturb_tables(data, factors)
    for name in ("segments", *UTT_TABLES, *DROPPED_TABLES, *KEPT_FILES):  # tables a former run left there
        if name not in tables and (out_dir / name).exists():
            (out_dir / name).unlink()
    out = DataDir(out_dir, tables).save()
    for name in KEPT_FILES:
        if (data_dir / name).exists():
            atomic_write_text(out_dir / name, (data_dir / name).read_text(encoding="utf-8"))
    validate_data_dir(out_dir)
    dropped = [name for name in DROPPED_TABLES if name in data.tables]
    summary = ", ".join(f"{n} at speed {label}" for label, n in counts.items())
    logger.info("%s: %d utterances (%s) from %s%s", out_dir, len(tables["utt2spk"]), summary, data_dir,
                f"; dropped {', '.join(dropped)} (stage 2 computes them from the new audio)" if dropped else "")
    return out
