"""One comparison table of whole systems, each possibly several models in a row (a cascade, a corrector on a first
pass): the survey's integration families on the same test set (``local/run_families.sh``).

Example::

    speechllm results exp --systems conf/families/systems.yaml --sets test --out exp/FAMILIES.md

``systems.yaml`` lists the rows: ``family``, ``system``, ``decode`` (the scored decode dir of the system's output,
``{set}`` standing for each test set), ``stages`` (decode dirs of its earlier steps), ``trained_parts`` (experiments
whose weights it holds without decoding, e.g. its CTC compressor) and ``train_only`` (experiments trained only to make
its data, e.g. k-fold models). Columns: BLEU per X->en language and over all X->en utterances (corpus BLEU), English
WER (from the output's ``result.json``); trained / total parameters and training time summed over the experiments
of the output's and the stages' decode dirs (``model_info.json``), plus the trained parameters and training time
of ``trained_parts`` and the training time of ``train_only`` (a k-means dir: its fit time); the LLM input positions
per second of audio
(the output step's ``stats.yaml``: audio embeddings, units or input-text tokens the LLM read); and the decoding
real-time factor, decoding time summed over the steps divided by the audio duration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import yaml

from speechllm_cli.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class System:
    family: str
    system: str
    decode: str  # "{set}" stands for the test set
    stages: list[str] = dataclasses.field(default_factory=list)
    trained_parts: list[str] = dataclasses.field(default_factory=list)
    train_only: list[str] = dataclasses.field(default_factory=list)


def read_systems(path: str | os.PathLike) -> list[System]:
    from speechllm_cli.utils.config import load_dataclass

    try:
        entries = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or []
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc}); quote a value holding {{set}} inside [...]") from exc
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of systems (family, system, decode, stages, train_only)")
    return [load_dataclass(System, entry, source=f"{path} (system {i + 1})") for i, entry in enumerate(entries)]


def _read(path: Path, loader) -> dict:
    return loader(path.read_text(encoding="utf-8")) or {} if path.is_file() else {}


def _training(exp_dir: Path) -> tuple[int | None, int | None, float | None]:
    """(trained params, total params, training seconds) of an experiment dir (a k-means dir: its fit time)."""
    info = _read(exp_dir / "model_info.json", json.loads)
    if info:
        return info.get("params_trained"), info.get("params_total"), info.get("train_time_s")
    record = _read(exp_dir / "model.yaml", yaml.safe_load)
    return None, None, (record.get("stats") or {}).get("seconds")


def _add(total, value):
    return None if total is None or value is None else total + value


def system_row(system: System, dset: str) -> dict | None:
    """The table row of ``system`` on ``dset``; None when its output is not decoded and scored yet."""
    out_dir = Path(system.decode.format(set=dset))
    result = _read(out_dir / "result.json", json.loads)
    if not result:
        logger.warning("%s: no result.json (decode and score it); %s left out", out_dir, system.system)
        return None
    steps = [Path(d.format(set=dset)) for d in system.stages] + [out_dir]
    trained, total, seconds, decode_seconds = 0, 0, 0.0, 0.0
    for step in steps:
        stats = _read(step / "stats.yaml", yaml.safe_load)
        decode_seconds = _add(decode_seconds, stats.get("decode_seconds"))
        step_trained, step_total, step_seconds = _training(step.parent)
        trained, total, seconds = _add(trained, step_trained), _add(total, step_total), _add(seconds, step_seconds)
    for exp_dir in system.trained_parts:  # inside the system: already in its total, trained for it
        part_trained, _, part_seconds = _training(Path(exp_dir))
        trained, seconds = _add(trained, part_trained), _add(seconds, part_seconds)
    for exp_dir in system.train_only:
        seconds = _add(seconds, _training(Path(exp_dir))[2])
    stats = _read(out_dir / "stats.yaml", yaml.safe_load)
    audio = stats.get("audio_seconds")
    groups = result["groups"]
    return {
        "family": system.family, "system": system.system, "set": dset,
        "bleu": {lang: g.get("bleu") for lang, g in groups.items() if g["task"] == "st"},
        "wer": {lang: g.get("wer") for lang, g in groups.items() if g["task"] == "asr"},
        "params_trained": trained, "params_total": total, "train_seconds": seconds,
        "positions_per_second": stats.get("audio_positions_per_second"),
        "rtf": decode_seconds / audio if decode_seconds is not None and audio else None,
    }


def _num(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """Markdown: one line per system and set."""
    st_langs = sorted({lang for r in rows for lang in r["bleu"] if not lang.startswith("all_")})
    asr_langs = sorted({lang for r in rows for lang in r["wer"] if not lang.startswith("all_")})
    header = (["family", "system", "set"] + [f"{lang} BLEU" for lang in st_langs] + ["X->en BLEU"]
              + [f"{lang} WER" for lang in asr_langs]
              + ["trained / total params", "train time", "LLM inputs / s of audio", "decode RTF"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        params = ("" if r["params_trained"] is None
                  else f"{r['params_trained'] / 1e6:.2f}M / {r['params_total'] / 1e6:.2f}M")
        minutes = "" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        cells = ([r["family"], r["system"], r["set"]] + [_num(r["bleu"].get(lang)) for lang in st_langs]
                 + [_num(r["bleu"].get("all_st"))] + [_num(r["wer"].get(lang)) for lang in asr_langs]
                 + [params, minutes, _num(r["positions_per_second"]), _num(r["rtf"], 3)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_families_table(systems_file: str | os.PathLike, sets: list[str], out: str | os.PathLike) -> Path:
    rows = [row for dset in sets for system in read_systems(systems_file) if (row := system_row(system, dset))]
    if not rows:
        raise FileNotFoundError(f"no system of {systems_file} is decoded and scored on {sets}")
    out = Path(out)
    atomic_write_text(out, f"# Systems ({systems_file})\n\n" + format_table(rows))
    logger.info("wrote %s (%d rows)", out, len(rows))
    return out
