"""Which features a dump dir holds: ``<dump>/feats_type``, one line ``<type> <num-mel-bins>``.

``speechllm fbank`` (features/fbank.py) writes it: ``fbank 80`` (Kaldi fbank) or ``whisper_mel 80`` / ``whisper_mel
128`` (Whisper's log-mel). A dump made before the file existed holds 80-dim fbank. Whatever reads the features
checks it, e.g. a Whisper front-end refuses a dump whose type or mel size is not its encoder's.

Example:
    >>> import tempfile
    >>> dump = tempfile.mkdtemp() + "/test"
    >>> read_feats_type(dump)                        # no file: a dump from before feats_type
    ('fbank', 80)
    >>> path = write_feats_type(dump, ("whisper_mel", 128))
    >>> read_feats_type(dump)
    ('whisper_mel', 128)
    >>> check_feats_type(dump, ("whisper_mel", 128), who="exp/whisper_large_v3")
    >>> try:
    ...     check_feats_type(dump, ("whisper_mel", 80), who="exp/whisper_base")
    ... except ValueError as exc:
    ...     print(str(exc).split("`")[1])            # the message ends with the command that makes them
    speechllm fbank data/test dump/whisper_mel/test --type whisper_mel --num-mel-bins 80
"""

from __future__ import annotations

import os
from pathlib import Path

from speechllm_cli.utils.io import atomic_write_text

FEATS_TYPE_FILE = "feats_type"
FEATS_TYPES = ("fbank", "whisper_mel")  # the types `speechllm fbank --type` makes
DEFAULT_FEATS_TYPE = ("fbank", 80)  # what a dump without the file holds


def feats_type_line(feats_type: tuple[str, int]) -> str:
    """The file's line: ``("whisper_mel", 80)`` -> ``"whisper_mel 80"``."""
    name, num_mel_bins = feats_type
    return f"{name} {num_mel_bins}"


def write_feats_type(dump_dir: str | os.PathLike, feats_type: tuple[str, int]) -> Path:
    """Write ``<dump_dir>/feats_type`` atomically (left untouched when it already says the same); return its path."""
    path = Path(dump_dir) / FEATS_TYPE_FILE
    text = feats_type_line(feats_type) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def read_feats_type(dump_dir: str | os.PathLike) -> tuple[str, int]:
    """``(type, num_mel_bins)`` of the features in ``dump_dir``; ``("fbank", 80)`` when there is no feats_type file.

    A file that is not one line ``<type> <num-mel-bins>`` with a known type is a ValueError naming it.
    """
    path = Path(dump_dir) / FEATS_TYPE_FILE
    if not path.exists():
        return DEFAULT_FEATS_TYPE
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    fields = lines[0].split() if len(lines) == 1 else []
    if len(fields) != 2 or fields[0] not in FEATS_TYPES or not fields[1].isdigit() or int(fields[1]) == 0:
        raise ValueError(f"{path}: malformed feats_type {text!r}; expected one line '<type> <num-mel-bins>' with a "
                         f"type of {', '.join(FEATS_TYPES)} (e.g. 'whisper_mel 80'); re-run `speechllm fbank` "
                         f"into {Path(dump_dir)} to rewrite it")
    return fields[0], int(fields[1])


def make_feats_command(dump_dir: str | os.PathLike, feats_type: tuple[str, int]) -> str:
    """The ``speechllm fbank`` command that makes ``feats_type`` features of the set ``dump_dir`` is named after
    (the recipe's layout: ``dump/<set>`` for fbank, ``dump/<type>/<set>`` for other types)."""
    name, num_mel_bins = feats_type
    subset = Path(dump_dir).name
    out = f"dump/{subset}" if name == "fbank" else f"dump/{name}/{subset}"
    return f"speechllm fbank data/{subset} {out} --type {name} --num-mel-bins {num_mel_bins}"


def check_feats_type(dump_dir: str | os.PathLike, expected: tuple[str, int], who: str) -> None:
    """Refuse (ValueError) a dump whose features are not ``expected`` (``(type, num_mel_bins)``), which ``who``
    (the model or stage that will read them) needs; the message says how to make the right ones."""
    expected = (expected[0], int(expected[1]))
    found = read_feats_type(dump_dir)
    if found == expected:
        return
    path = Path(dump_dir) / FEATS_TYPE_FILE
    where = str(path) if path.exists() else f"no {path}: a dump made before feats_type files"
    raise ValueError(f"{dump_dir} holds {feats_type_line(found)} features ({where}) but {who} expects "
                     f"{feats_type_line(expected)}; make them with `{make_feats_command(dump_dir, expected)}` "
                     f"and use that dump dir")
