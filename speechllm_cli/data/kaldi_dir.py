"""Kaldi data directories: read, write, validate, split and filter.

A data dir holds one ``<utt-id> <value>`` table per file (``wav.scp``, ``text``, ``text.src``,
``utt2spk``, ``utt2lang``, optional ``segments``), plus ``spk2utt``. Tables are sorted in C
byte order (Python's code-point order on UTF-8 equals it) and speaker ids prefix utterance ids.
As in Kaldi, a space or a tab ends the id. Files are read as bytes and must be UTF-8 without a byte order
mark or carriage returns; ``text`` and ``text.src`` also follow Kaldi's ``validate_text.pl`` (no whitespace but
space and tab, a newline after the last line). Every error names the file, the line and the fix.

Example:
    >>> d = DataDir.load("data/train")            # doctest: +SKIP
    >>> d.validate()                              # raises DataDirError naming file and line
    >>> parts = split_by_speaker(d, 4)            # for --nj 4
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import os
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from speechllm_cli.utils.io import atomic_write_text

# Per-utterance tables a data dir may hold; wav.scp is keyed by recording id when segments exist.
UTT_TABLES = ("text", "text.src", "utt2spk", "utt2lang", "utt2dur", "utt2num_frames", "input")
TEXT_INPUT_TABLE = "input"  # a text dir's input for a text LLM (decode/text_input.py); may be empty
NBEST_SEPARATOR = " ||| "  # between the hypotheses of a text dir's n-best input (Moses' n-best convention)
REQUIRED_TABLES = ("wav.scp", "text", "utt2spk")
TEXT_TABLES = ("text", "text.src")
MAX_DROP = 0.1  # fix-data refuses to remove a larger share of the utterances unless told to
_KEY_VALUE = re.compile(r"([^ \t]*)[ \t]*(.*)", re.DOTALL)
# whitespace that Kaldi's validate_text.pl rejects in text: every Unicode space but space, tab and newline
_DISALLOWED_SPACE = re.compile(r"[^\S \t\n]")

logger = logging.getLogger(__name__)


class DataDirError(ValueError):
    """A data dir file is malformed; the message names the file, the line and the fix."""


def split_fields(line: str) -> tuple[str, str]:
    """``(key, value)`` of a table line as Kaldi's tools read it: the key ends at the first space or tab
    (both separate fields), the value is the rest without surrounding whitespace."""
    match = _KEY_VALUE.match(line)
    return match.group(1), match.group(2).strip()


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, bool]]:
    """``(line number, text without its newline, ended by a newline)`` for each line of a UTF-8 table.

    Reads bytes, so no line end is translated: a UTF-8 byte order mark, bytes that are not UTF-8 and
    carriage returns (Windows line ends) raise DataDirError naming the file, the line and the fix.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            ended = raw.endswith(b"\n")
            raw = raw[:-1] if ended else raw
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raise DataDirError(f"{path}:1: starts with a UTF-8 byte order mark (BOM), which Kaldi takes as part "
                                   f"of the first id; remove it: sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataDirError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    f"convert the file from its encoding, e.g. iconv -f latin1 -t utf-8 {path} > {path}.utf8 "
                    f"&& mv {path}.utf8 {path}"
                ) from None
            if "\r" in line:
                raise DataDirError(f"{path}:{lineno}: contains a carriage return (\\r, a Windows line end), which "
                                   f"Kaldi's validate_text.pl rejects; strip them: sed -i 's/\\r//g' {path}")
            yield lineno, line, ended


def read_table(path: str | os.PathLike, allow_empty_value: bool = False) -> OrderedDict[str, str]:
    """Read a Kaldi ``key value`` table into an ordered dict (file order kept); space or tab separate the key.

    Raises DataDirError on a duplicate key, an empty line, bytes that are not UTF-8, a byte order mark, a
    carriage return or, unless ``allow_empty_value``, a key with no value.
    """
    path = Path(path)
    table: OrderedDict[str, str] = OrderedDict()
    for lineno, line, _ in iter_lines(path):
        if not line.strip():
            raise DataDirError(f"{path}:{lineno}: empty line; remove it")
        key, value = split_fields(line)
        if not key:
            raise DataDirError(f"{path}:{lineno}: starts with whitespace; each line is '<id> <value>'")
        if key in table:
            raise DataDirError(f"{path}:{lineno}: duplicate key '{key}'; each id must appear once")
        if not value and not allow_empty_value:
            raise DataDirError(f"{path}:{lineno}: '{key}' has no value; fill it in or drop the utterance")
        table[key] = value
    return table


def format_table(table: dict[str, str]) -> str:
    return "".join(f"{key} {table[key]}\n" for key in sorted(table))


def write_table(path: str | os.PathLike, table: dict[str, str]) -> None:
    """Write a table sorted by key (C order), atomically."""
    atomic_write_text(path, format_table(table))


def spk2utt_from_utt2spk(utt2spk: dict[str, str]) -> OrderedDict[str, list[str]]:
    spk2utt: OrderedDict[str, list[str]] = OrderedDict()
    for utt in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return OrderedDict(sorted(spk2utt.items()))


@dataclasses.dataclass
class DataDir:
    """The tables of one data dir, in memory. ``tables`` maps file name -> {key: value}."""

    path: Path
    tables: dict[str, OrderedDict[str, str]]

    @classmethod
    def load(cls, path: str | os.PathLike) -> DataDir:
        path = Path(path)
        if not path.is_dir():
            raise DataDirError(f"{path}: no such data dir; run data preparation (stage 1) first")
        tables = {}
        for name in ("wav.scp", "segments", *UTT_TABLES, "feats.scp"):
            if (path / name).exists():
                tables[name] = read_table(path / name, allow_empty_value=name in (*TEXT_TABLES, TEXT_INPUT_TABLE))
        return cls(path, tables)

    @property
    def utt_ids(self) -> list[str]:
        return sorted(self.tables["utt2spk"])

    @property
    def utt2spk(self) -> OrderedDict[str, str]:
        return self.tables["utt2spk"]

    def save(self, path: str | os.PathLike | None = None) -> DataDir:
        """Write every table (sorted) and a spk2utt derived from utt2spk; return the saved dir."""
        out = Path(path) if path is not None else self.path
        out.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            write_table(out / name, table)
        spk2utt = spk2utt_from_utt2spk(self.utt2spk)
        atomic_write_text(out / "spk2utt", "".join(f"{s} {' '.join(u)}\n" for s, u in spk2utt.items()))
        return DataDir(out, self.tables)

    def subset(self, keep_utts: set[str] | list[str]) -> DataDir:
        """A new in-memory DataDir restricted to ``keep_utts`` (recordings follow segments)."""
        keep = set(keep_utts)
        tables = {}
        for name, table in self.tables.items():
            if name == "wav.scp" and "segments" in self.tables:
                recordings = {self.tables["segments"][u].split()[0] for u in keep if u in self.tables["segments"]}
                tables[name] = OrderedDict((k, v) for k, v in table.items() if k in recordings)
            else:
                tables[name] = OrderedDict((k, v) for k, v in table.items() if k in keep)
        return DataDir(self.path, tables)

    def validate(self) -> None:
        """Check the dir with the rules of Kaldi's ``validate_data_dir.sh``; raise DataDirError."""
        validate_data_dir(self.path)


def _check_sorted_file(path: Path) -> list[str]:
    keys = []
    for lineno, line, _ in iter_lines(path):
        key = split_fields(line)[0]
        if not key:
            raise DataDirError(f"{path}:{lineno}: empty line or leading whitespace; each line is '<id> <value>'")
        if keys and key <= keys[-1]:
            problem = "duplicate" if key == keys[-1] else "not sorted"
            raise DataDirError(
                f"{path}:{lineno}: '{key}' is {problem} (C order, unique keys); "
                f"fix with `speechllm fix-data {path.parent}` or `LC_ALL=C sort -u`"
            )
        keys.append(key)
    return keys


def check_text_file(path: str | os.PathLike) -> None:
    """Kaldi's ``validate_text.pl`` rules for a ``text`` table: every line ends with a newline and holds no
    whitespace but space and tab (no carriage return, no-break space, line separator...); UTF-8 throughout."""
    path = Path(path)
    for lineno, line, ended in iter_lines(path):
        if not ended:
            raise DataDirError(f"{path}:{lineno}: the last line has no newline at its end; add one: echo >> {path}")
        bad = _DISALLOWED_SPACE.search(line)
        if bad:
            char = bad.group()
            name = unicodedata.name(char, "a control character")
            raise DataDirError(
                f"{path}:{lineno}: '{split_fields(line)[0]}' holds U+{ord(char):04X} ({name}) at column "
                f"{bad.start() + 1}, a whitespace Kaldi's validate_text.pl rejects; replace it with a plain space "
                "(`speechllm prepare-covost2` normalises it)"
            )


def validate_data_dir(path: str | os.PathLike) -> None:
    """Kaldi's validation rules: required files, sorted and unique keys, every table covers the
    same utterances, speaker ids prefix utterance ids, spk2utt matches utt2spk, no empty text."""
    path = Path(path)
    if not path.is_dir():
        raise DataDirError(f"{path}: no such data dir")
    for name in REQUIRED_TABLES:
        if not (path / name).exists():
            raise DataDirError(f"{path / name}: missing; every data dir needs {', '.join(REQUIRED_TABLES)}")
    for name in ("wav.scp", "segments", *UTT_TABLES, "feats.scp", "spk2utt"):
        if (path / name).exists():
            _check_sorted_file(path / name)
    for name in TEXT_TABLES:
        if (path / name).exists():
            check_text_file(path / name)
    data = DataDir.load(path)
    utts = set(data.utt2spk)
    for utt, spk in data.utt2spk.items():
        if not spk or " " in spk:
            raise DataDirError(f"{path / 'utt2spk'}: '{utt}' needs exactly one speaker id")
        if not utt.startswith(spk):
            raise DataDirError(
                f"{path / 'utt2spk'}: utterance '{utt}' does not start with its speaker id '{spk}'; "
                "prefix utterance ids with the speaker id so sorting keeps speakers together"
            )
    for name in ("text", "text.src", "utt2lang", "utt2dur", "utt2num_frames", TEXT_INPUT_TABLE, "feats.scp",
                 "segments"):
        if name not in data.tables:
            continue
        keys = set(data.tables[name])
        if keys != utts:
            extra, missing = sorted(keys - utts), sorted(utts - keys)
            raise DataDirError(
                f"{path / name}: covers other utterances than utt2spk "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}); run `speechllm fix-data {path}`"
            )
    for name in TEXT_TABLES:
        for utt, value in data.tables.get(name, {}).items():
            if not value.strip():
                raise DataDirError(f"{path / name}: '{utt}' has empty text; drop it with `speechllm fix-data {path}`")
    recordings = set(data.tables["wav.scp"])
    if "segments" in data.tables:
        for utt, value in data.tables["segments"].items():
            fields = value.split()
            if len(fields) != 3 or fields[0] not in recordings:
                raise DataDirError(f"{path / 'segments'}: '{utt}' must be '<utt> <recording> <start> <end>' "
                                   "with a recording listed in wav.scp")
    elif recordings != utts:
        raise DataDirError(f"{path / 'wav.scp'}: covers other utterances than utt2spk; run `speechllm fix-data {path}`")
    if (path / "spk2utt").exists():
        expected = spk2utt_from_utt2spk(data.utt2spk)
        found = OrderedDict((line.split()[0], line.split()[1:]) for _, line, _ in iter_lines(path / "spk2utt")
                            if line.strip())
        if found != expected:
            raise DataDirError(f"{path / 'spk2utt'}: does not match utt2spk; run `speechllm fix-data {path}`")


def fix_data_dir(path: str | os.PathLike, max_drop: float = MAX_DROP) -> dict[str, str]:
    """Keep only utterances present in every table with non-empty text; sort and rewrite (Kaldi's
    ``fix_data_dir.sh``; the old tables are kept in ``<dir>/.backup/``).

    Returns the removed utterance ids with the reason of each (also written to ``<dir>/.backup/removed``
    as ``utt reason`` lines). Removing more than ``max_drop`` of the utterances (a share, 0..1) is taken as a
    sign of a malformed table, not of bad utterances: DataDirError, and nothing is written.
    """
    path = Path(path)
    tables = {}
    for name in ("wav.scp", "segments", *UTT_TABLES, "feats.scp"):
        if (path / name).exists():
            tables[name] = _read_lenient(path / name)
    if "utt2spk" not in tables:
        raise DataDirError(f"{path / 'utt2spk'}: missing; fix-data keeps the utterances of utt2spk")
    removed = _removal_reasons(tables)
    total = len(tables["utt2spk"])
    if removed and len(removed) > max_drop * total:
        examples = "; ".join(f"{u}: {r}" for u, r in list(removed.items())[:3])
        raise DataDirError(
            f"{path}: fix-data would remove {len(removed)} of {total} utterances ({100 * len(removed) / total:.0f}%, "
            f"more than --max-drop {max_drop:g}), e.g. {examples}. Such a share points at one malformed table "
            "(another id scheme, a wrong separator); nothing was changed. Fix that table, or pass --max-drop 1 "
            "to remove them anyway"
        )
    for name in tables:
        atomic_write_text(path / ".backup" / name, (path / name).read_text(encoding="utf-8"))
    data = DataDir(path, tables).subset(set(tables["utt2spk"]) - set(removed))
    data.save()
    atomic_write_text(path / ".backup" / "removed", "".join(f"{u} {r}\n" for u, r in removed.items()))
    for utt, reason in list(removed.items())[:20]:
        logger.warning("%s: removed %s: %s", path, utt, reason)
    if len(removed) > 20:
        logger.warning("%s: ... and %d more, each listed with its reason in %s", path, len(removed) - 20,
                       path / ".backup" / "removed")
    return removed


def _removal_reasons(tables: dict[str, OrderedDict[str, str]]) -> dict[str, str]:
    """utt -> why fix-data removes it (the tables that lack it, or its empty texts), in C order."""
    reasons = {}
    for utt in sorted(tables["utt2spk"]):
        why = [f"not in {name}" for name, table in tables.items()
               if (name != "wav.scp" or "segments" not in tables) and utt not in table]
        if "segments" in tables and "wav.scp" in tables and utt in tables["segments"]:
            recording = (tables["segments"][utt].split() or [""])[0]
            if recording not in tables["wav.scp"]:
                why.append(f"its recording '{recording}' is not in wav.scp")
        why += [f"empty {name}" for name in TEXT_TABLES if utt in tables.get(name, {}) and not tables[name][utt]]
        if why:
            reasons[utt] = ", ".join(why)
    return reasons


def _read_lenient(path: Path) -> OrderedDict[str, str]:
    """Read a table keeping the first of duplicate keys and empty values (used by fix-data)."""
    table: OrderedDict[str, str] = OrderedDict()
    for _, line, _ in iter_lines(path):
        if line.strip():
            key, value = split_fields(line)
            table.setdefault(key, value)
    return table


def split_by_speaker(data: DataDir, num_parts: int) -> list[DataDir]:
    """Split into ``num_parts`` in-memory dirs, whole speakers per part, balanced by utterance
    count (Kaldi's ``split_data.sh``). Fewer speakers than parts is an error."""
    spk2utt = spk2utt_from_utt2spk(data.utt2spk)
    if num_parts < 1:
        raise ValueError("num_parts must be >= 1")
    if len(spk2utt) < num_parts:
        raise DataDirError(f"{data.path}: {len(spk2utt)} speakers cannot be split into {num_parts} parts; lower --nj")
    total = sum(len(u) for u in spk2utt.values())
    parts: list[list[str]] = [[] for _ in range(num_parts)]
    speakers = list(spk2utt)
    # Contiguous speaker ranges, cut where the cumulative count crosses each part's share.
    count, part = 0, 0
    for i, spk in enumerate(speakers):
        remaining_speakers = len(speakers) - i
        remaining_parts = num_parts - part
        if parts[part] and (count >= total * (part + 1) / num_parts or remaining_speakers < remaining_parts):
            part += 1
        parts[part].extend(spk2utt[spk])
        count += len(spk2utt[spk])
    return [data.subset(p) for p in parts]


def write_split(data: DataDir, num_parts: int) -> list[Path]:
    """Write ``<dir>/split<N>/<1..N>`` (reused when already up to date) and return the part dirs."""
    split_root = data.path / f"split{num_parts}"
    part_dirs = [split_root / str(i + 1) for i in range(num_parts)]
    source_mtime = max((data.path / n).stat().st_mtime for n in data.tables if (data.path / n).exists())
    if all((d / "utt2spk").exists() and (d / "utt2spk").stat().st_mtime >= source_mtime for d in part_dirs):
        return part_dirs
    for part_dir, part in zip(part_dirs, split_by_speaker(data, num_parts)):
        part.save(part_dir)
    return part_dirs


@dataclasses.dataclass
class FilterReport:
    kept: int
    removed: dict[str, str]  # utt id -> reason


def filter_data_dir(
    data: DataDir,
    utt2dur: dict[str, float],
    min_dur: float = 0.1,
    max_dur: float = 20.0,
) -> tuple[DataDir, FilterReport]:
    """Drop utterances shorter than ``min_dur`` or longer than ``max_dur`` seconds, or with empty
    target text. Returns the filtered dir (in memory) and the removed ids with their reasons."""
    removed: dict[str, str] = {}
    for utt in data.utt_ids:
        dur = utt2dur.get(utt)
        if dur is None:
            removed[utt] = "no duration"
        elif dur < min_dur:
            removed[utt] = f"too short ({dur:.2f} s < {min_dur} s)"
        elif dur > max_dur:
            removed[utt] = f"too long ({dur:.2f} s > {max_dur} s)"
        elif not data.tables.get("text", {}).get(utt, "x").strip():
            removed[utt] = "empty text"
    kept = [u for u in data.utt_ids if u not in removed]
    return data.subset(kept), FilterReport(kept=len(kept), removed=removed)
