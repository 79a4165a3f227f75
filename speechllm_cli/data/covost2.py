"""CoVoST2 preparation: Common Voice clips + CoVoST2 tables -> Kaldi data dirs.

Inputs, in the real corpus layout:
    <cv_root>/<lang>/clips/*.mp3
    <cv_root>/<lang>/validated.tsv           columns client_id, path, sentence, ...
    <covost_dir>/covost_v2.<lang>_en.tsv     columns path, translation, split, ...
English speech (ASR) reads ``covost_v2.en_en.tsv`` when present (its translation is the
transcript), else the split of any ``covost_v2.en_*.tsv`` with the sentence as target.

Outputs: ``<out>/{train,dev,test}_<lang>`` per language and combined ``<out>/{train,dev,test}``
(``text`` = English target, ``text.src`` = source sentence, ``utt2lang``, ``utt2dur``,
``text_norm``); rows with an empty translation or sentence, clips that are missing or unreadable and
utterances out of the duration range are listed in ``<set>/skipped`` (``utt reason``).

Speaker ids are the Common Voice client ids themselves (as Kaldi's Common Voice recipe has them): two
clients never share one, whichever languages or runs a data dir comes from. Utterance ids are
``<client id>-<clip name>``, so speaker ids prefix them (long ids, but collision-free).

Example:
    prepare_covost2(Path("cv"), Path("covost"), ["de", "fr"], Path("data"), norm="tc")
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
import sys
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
from tqdm import tqdm

from speechllm_cli.data.kaldi_dir import DataDir, filter_data_dir
from speechllm_cli.text.normalize import normalize
from speechllm_cli.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

_SPEAKER_RE = re.compile(r"[A-Za-z0-9_]+")
SPLITS = {"train": "train", "train_covost": "train", "dev": "dev", "test": "test"}
TARGET_LANG = "en"


class CorpusError(ValueError):
    """The corpus files are not in the expected layout; the message says which file and why."""


@dataclasses.dataclass
class Utterance:
    client_id: str
    lang: str
    split: str
    clip: Path
    source: str
    target: str
    speaker: str = ""  # the client id, checked (set by assign_ids)
    utt_id: str = ""
    skip: str = ""  # why the row is listed in ``skipped`` instead of used (empty translation...)


def read_tsv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Read a tab-separated table by column name with quoting off (sentences contain quotes)."""
    if not path.exists():
        raise CorpusError(f"{path}: not found; check --cv-root/--covost-dir (db.sh)")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(f"{path}: header lacks column(s) {missing}; found {reader.fieldnames}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            if None in row or any(row[c] is None for c in required):
                raise CorpusError(f"{path}:{lineno}: wrong number of tab-separated fields")
            rows.append(row)
    return rows


def covost_table(covost_dir: Path, lang: str) -> tuple[Path, bool]:
    """The CoVoST2 table for ``lang``, and whether its translation column is the target."""
    table = covost_dir / f"covost_v2.{lang}_{TARGET_LANG}.tsv"
    if table.exists() or lang != TARGET_LANG:
        return table, True
    others = sorted(covost_dir.glob(f"covost_v2.{TARGET_LANG}_*.tsv"))
    if not others:
        raise CorpusError(f"{covost_dir}: no covost_v2.en_*.tsv to take the English split from")
    return others[0], False


def speaker_id(client_id: str) -> str:
    """The Kaldi speaker id of a Common Voice client: the client id itself (unique by construction), which must
    be letters, digits and ``_`` (Common Voice's are hex digests) so that ``<speaker>-<clip>`` utterance ids sort
    with their speaker (C order)."""
    if not _SPEAKER_RE.fullmatch(client_id):
        raise CorpusError(f"client_id {client_id!r} is not made of letters, digits and '_' only, so it cannot be "
                          "a Kaldi speaker id; check validated.tsv's client_id column")
    return client_id


def load_language(cv_root: Path, covost_dir: Path, lang: str, norm: str) -> tuple[list[Utterance], Counter]:
    """Join one language's CoVoST2 table with Common Voice's validated.tsv. Rows with an empty translation or
    sentence come back with ``skip`` set (they go to the ``skipped`` lists); rows that cannot become an utterance
    at all (unknown split, clip not in validated.tsv) are only counted."""
    validated = read_tsv(cv_root / lang / "validated.tsv", ("client_id", "path", "sentence"))
    by_path = {row["path"]: row for row in validated}
    table_path, use_translation = covost_table(covost_dir, lang)
    counts: Counter = Counter()
    utterances = []
    for row in read_tsv(table_path, ("path", "translation", "split") if use_translation else ("path", "split")):
        split = SPLITS.get(row["split"].strip())
        cv_row = by_path.get(row["path"])
        if split is None:
            counts[f"split '{row['split']}' ignored"] += 1
            continue
        if cv_row is None:
            counts["not in validated.tsv"] += 1
            continue
        target = row["translation"] if use_translation else cv_row["sentence"]
        skip = ""
        if not target.strip():
            skip = f"empty translation in {table_path.name}"
        elif not cv_row["sentence"].strip():
            skip = "empty sentence in validated.tsv"
        clip = (cv_root / lang / "clips" / row["path"]).resolve()
        utterances.append(Utterance(client_id=cv_row["client_id"], lang=lang, split=split, clip=clip,
                                    source=normalize(cv_row["sentence"], "tc", lang=lang),
                                    target=normalize(target, norm, lang=TARGET_LANG), skip=skip))
    return utterances, counts


def assign_ids(utterances: list[Utterance]) -> None:
    """Speaker = client id; utt id = speaker + clip name."""
    for u in utterances:
        u.speaker = speaker_id(u.client_id)
        u.utt_id = f"{u.speaker}-{u.clip.stem}"


def probe_clip(clip: Path) -> tuple[float | None, str]:
    """Duration of a clip from its header, or (None, reason) when it is missing or unreadable."""
    if not clip.exists():
        return None, "missing clip"
    try:
        info = soundfile.info(str(clip))
    except Exception as exc:  # soundfile raises several types for broken files
        return None, f"not decodable ({type(exc).__name__})"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "not decodable (no audio frames)"
    return info.frames / info.samplerate, ""


def build_data_dir(utterances: list[Utterance], durations: dict[str, float]) -> DataDir:
    tables = {name: OrderedDict() for name in ("wav.scp", "text", "text.src", "utt2spk", "utt2lang", "utt2dur")}
    for u in sorted(utterances, key=lambda u: u.utt_id):
        tables["wav.scp"][u.utt_id] = str(u.clip)
        tables["text"][u.utt_id] = u.target
        tables["text.src"][u.utt_id] = u.source
        tables["utt2spk"][u.utt_id] = u.speaker
        tables["utt2lang"][u.utt_id] = u.lang
        tables["utt2dur"][u.utt_id] = f"{durations[u.utt_id]:.3f}"
    return DataDir(Path("."), tables)


def write_set(out_dir: Path, utterances: list[Utterance], durations: dict[str, float],
              skipped: dict[str, str], norm: str, min_dur: float, max_dur: float) -> int:
    """Write one data dir (filtered by duration) with its ``skipped`` list; return its size."""
    usable = [u for u in utterances if u.utt_id in durations]
    data, report = filter_data_dir(build_data_dir(usable, durations), durations, min_dur, max_dur)
    reasons = {u.utt_id: skipped[u.utt_id] for u in utterances if u.utt_id in skipped}
    reasons.update(report.removed)
    data.save(out_dir)
    atomic_write_text(out_dir / "skipped", "".join(f"{u} {r}\n" for u, r in sorted(reasons.items())))
    atomic_write_text(out_dir / "text_norm", f"{norm}\n")
    if reasons:
        logger.warning("%s: skipped %d utterance(s), listed in %s", out_dir, len(reasons), out_dir / "skipped")
    return report.kept


def prepare_covost2(cv_root: Path, covost_dir: Path, src_langs: list[str], out_dir: Path, norm: str = "tc",
                    min_dur: float = 0.1, max_dur: float = 20.0, jobs: int = 8) -> dict[str, int]:
    """Write per-language and combined train/dev/test data dirs; return utterances per set."""
    normalize("", norm)  # fail fast on an unknown convention
    all_utts: list[Utterance] = []
    for lang in src_langs:
        utterances, counts = load_language(cv_root, covost_dir, lang, norm)
        for reason, n in sorted(counts.items()):
            logger.warning("%s: %d row(s) skipped: %s", lang, n, reason)
        all_utts.extend(utterances)
    if not all_utts:
        raise CorpusError(f"no usable rows for languages {src_langs} under {cv_root} and {covost_dir}")
    assign_ids(all_utts)
    durations: dict[str, float] = {}
    skipped: dict[str, str] = {}
    skipped.update({u.utt_id: u.skip for u in all_utts if u.skip})
    to_probe = [u for u in all_utts if not u.skip]
    with ThreadPoolExecutor(jobs) as pool:
        probes = pool.map(probe_clip, [u.clip for u in to_probe])
        for u, (dur, reason) in tqdm(zip(to_probe, probes), total=len(to_probe), desc="probe clips", unit="clip"):
            if dur is None:
                skipped[u.utt_id] = reason
            else:
                durations[u.utt_id] = dur
    sizes = {}
    for split in ("train", "dev", "test"):
        for lang in src_langs:
            subset = [u for u in all_utts if u.split == split and u.lang == lang]
            if subset:
                name = f"{split}_{lang}"
                sizes[name] = write_set(out_dir / name, subset, durations, skipped, norm, min_dur, max_dur)
        subset = [u for u in all_utts if u.split == split]
        if subset:
            sizes[split] = write_set(out_dir / split, subset, durations, skipped, norm, min_dur, max_dur)
    logger.info("prepared %s (%d clip(s) skipped)", ", ".join(f"{k}: {v}" for k, v in sizes.items()), len(skipped))
    return sizes
