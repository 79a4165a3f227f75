"""Collect every scored decode under an experiment folder into one Markdown table (RESULTS.md).

The first table has one line per model and decoded set (BLEU per language and their mean, WER, sizes, training
time, LLM input positions per audio second from the decode's stats.yaml); the second one line per language.
Each ``exp/<model>/decode_<set>/result.json`` (from ``speechllm score``) gives a row per language;
``exp/<model>/model_info.json`` (written by training) gives parameter counts and training time,
and ``decode_<set>/decode.yaml`` the decoding command. A decode dir written by ``speechllm rescore``
(``rescore.yaml``) is listed as "<model> + LLM rescoring", its LLM's parameters added to the total.

Example:
    speechllm results exp/ --out RESULTS.md
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from speechllm_cli.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


def _millions(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _read_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}


def collect_rows(exp_dir: Path) -> list[dict]:
    rows = []
    for result_path in sorted(Path(exp_dir).glob("*/decode_*/result.json")):
        decode_dir = result_path.parent
        model_dir = decode_dir.parent
        result = json.loads(result_path.read_text())
        info_path = model_dir / "model_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        model_name, params_total = model_dir.name, info.get("params_total")
        rescore = _read_yaml(decode_dir / "rescore.yaml")
        if rescore:
            model_name += " + LLM rescoring"
            if params_total is not None and rescore.get("llm_params"):
                params_total += rescore["llm_params"]
        command = (rescore or _read_yaml(decode_dir / "decode.yaml")).get("command", "")
        positions_per_second = _read_yaml(decode_dir / "stats.yaml").get("audio_positions_per_second")
        audio_gap = _best_epoch_valid(model_dir).get("audio_gap")
        for group, r in result["groups"].items():
            rows.append({
                "model": model_name, "model_type": info.get("model_type", ""),
                "set": decode_dir.name.removeprefix("decode_"), "lang": group, "task": r["task"],
                "num_utts": r["num_utts"], "bleu": r.get("bleu"), "bleu_lc_rm": r.get("bleu_lc_rm"),
                "chrf": r.get("chrf"), "wer": r.get("wer"),
                "params_trained": info.get("params_trained"), "params_total": params_total,
                "train_time_s": info.get("train_time_s"), "train_command": info.get("command", ""),
                "decode_command": command, "audio_positions_per_second": positions_per_second,
                "distinct_hyps": r.get("distinct_hyps"), "distinct_refs": r.get("distinct_refs"),
                "audio_gap": audio_gap,
            })
    return rows


def _best_epoch_valid(model_dir: Path) -> dict:
    """Validation metrics of the best epoch in ``model_dir/history.json`` (training writes it); {} without one."""
    path = model_dir / "history.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    by_epoch = {e["epoch"]: e.get("valid", {}) for e in saved.get("history", [])}
    return by_epoch.get((saved.get("best") or {}).get("epoch"), {})


def _distinct_share(by_lang: dict[str, dict]) -> str:
    """The lowest share, over languages, of distinct hypotheses to distinct references (in %)."""
    shares = [r["distinct_hyps"] / r["distinct_refs"] for lang, r in by_lang.items()
              if not lang.startswith("all_") and r.get("distinct_refs")]
    return f"{100 * min(shares):.0f}%" if shares else ""


def format_summary(rows: list[dict]) -> list[str]:
    """One line per (model, set): BLEU (tc) per ST language and their mean, WER per ASR language, sizes, time,
    the LLM input positions per second of audio (speech-LLMs), and whether the model listens: the lowest share of
    distinct hypotheses to distinct references over languages, and the dev audio gap (1 - loss with the true audio
    / loss with another utterance's) of the epoch kept."""
    st_langs = sorted({r["lang"] for r in rows if r["task"] == "st" and not r["lang"].startswith("all_")})
    asr_langs = sorted({r["lang"] for r in rows if r["task"] == "asr" and not r["lang"].startswith("all_")})
    header = (["model", "set"] + [f"{lang} BLEU" for lang in st_langs] + ["mean BLEU"]
              + [f"{lang} WER" for lang in asr_langs] + ["trained / total params", "train time", "LLM inputs / s",
                                                          "distinct hyps", "audio gap"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    systems: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        systems.setdefault((r["model"], r["set"]), {})[r["lang"]] = r
    for (model, dset), by_lang in systems.items():
        first = next(iter(by_lang.values()))
        bleus = [by_lang[lang]["bleu"] if lang in by_lang else None for lang in st_langs]
        known = [b for b in bleus if b is not None]
        wers = [by_lang[lang]["wer"] if lang in by_lang else None for lang in asr_langs]
        cells = ([model, dset] + [_cell(b) for b in bleus] + [_cell(sum(known) / len(known) if known else None)]
                 + [_cell(w) for w in wers]
                 + [f"{_millions(first['params_trained'])} / {_millions(first['params_total'])}",
                    _minutes(first["train_time_s"]), _cell(first["audio_positions_per_second"]),
                    _distinct_share(by_lang), _cell(first["audio_gap"])])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f} min"


def format_results(rows: list[dict]) -> str:
    header = ("| model | type | set | lang | #utt | BLEU | BLEU lc.rm | chrF | WER | trained / total params "
              "| train time |")
    lines = ["# Results", "", *format_summary(rows), "", "## Per language", "", header, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['model_type']} | {r['set']} | {r['lang']} | {r['num_utts']} "
                     f"| {_cell(r['bleu'])} | {_cell(r['bleu_lc_rm'])} | {_cell(r['chrf'])} | {_cell(r['wer'])} "
                     f"| {_millions(r['params_trained'])} / {_millions(r['params_total'])} "
                     f"| {_minutes(r['train_time_s'])} |")
    commands = {}
    for r in rows:
        commands.setdefault(r["model"], (r["train_command"], set()))[1].add(r["decode_command"])
    lines += ["", "## Commands", ""]
    for model, (train_cmd, decode_cmds) in commands.items():
        lines.append(f"- **{model}**")
        if train_cmd:
            lines.append(f"  - train: `{train_cmd}`")
        for cmd in sorted(c for c in decode_cmds if c):
            lines.append(f"  - decode: `{cmd}`")
    return "\n".join(lines) + "\n"


def write_results(exp_dir: Path, out: Path | None = None) -> Path:
    rows = collect_rows(exp_dir)
    if not rows:
        raise FileNotFoundError(f"{exp_dir}: no */decode_*/result.json; run `speechllm score` on a decode dir first")
    out = out or Path(exp_dir) / "RESULTS.md"
    atomic_write_text(out, format_results(rows))
    logger.info("wrote %s (%d rows)", out, len(rows))
    return out
