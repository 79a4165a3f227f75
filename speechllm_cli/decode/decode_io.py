"""Decode-dir files: the resumable partial output, the n-best format, the final tables and job merging.

A decode dir ``exp/<model>/decode_<set>/`` ends up with::

    hyp.txt ref.txt        Kaldi ``utt text`` tables, sorted (ref.txt from the data dir's ``text``)
    utt2lang utt2spk       copies from the data dir (scoring groups by language)
    nbest.txt              with --nbest N: N lines per utterance, see NBEST_FORMAT
    decode.yaml            the decode options, the model dir and its fingerprint, the data dir, the command line
    stats.yaml             utterances, audio seconds, decode seconds, RTF, output tokens/s

While decoding runs, each finished batch is appended to ``.partial/hyp`` (and ``.partial/nbest``,
written first); ``.partial/config.json`` holds the options. A re-run with the same options skips the
utterances in ``.partial/hyp``; other options (or another model) start over.

Example::

    partial = PartialOutput(Path("exp/m/decode_test"), {"beam": 4})
    todo = [u for u in utts if u not in partial.done]
    partial.append({"spk1-u1": "hello"}, ["spk1-u1 1 -0.21 -2.10 10 1 hello"])
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from speechllm_cli.data.kaldi_dir import format_table, read_table
from speechllm_cli.decode.search import Hypothesis
from speechllm_cli.utils.io import atomic_write_text

NBEST_FORMAT = (
    "nbest.txt: one line per hypothesis, '<utt> <rank> <score> <logprob> <num_tokens> <ended> <text>'; "
    "rank 1 = best; score = logprob / num_tokens ** length_penalty (the search's ranking score); "
    "logprob = sum of the model's token log-probs (natural log, end token included); num_tokens = output "
    "tokens scored (end token included); ended = 1 if an end token closed it, 0 if cut at the length cap; "
    "text = the decoded text (may be empty)"
)


def one_line(text: str) -> str:
    """Kaldi tables hold one line per utterance: collapse every whitespace run (newlines too) to a space."""
    return " ".join(text.split())


def nbest_line(utt: str, rank: int, hyp: Hypothesis, text: str) -> str:
    return f"{utt} {rank} {hyp.score:.6f} {hyp.logprob:.6f} {hyp.num_tokens} {int(hyp.ended)} {one_line(text)}"


def read_nbest(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Parse nbest.txt into {utt: [{rank, score, logprob, num_tokens, ended, text}, ...]} in file order."""
    out: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split(" ", 6)
            if len(fields) < 6:
                raise ValueError(f"{path}:{lineno}: expected {NBEST_FORMAT}")
            text = fields[6] if len(fields) == 7 else ""
            try:
                hyp = {"rank": int(fields[1]), "score": float(fields[2]), "logprob": float(fields[3]),
                       "num_tokens": int(fields[4]), "ended": fields[5] == "1", "text": text}
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}; expected {NBEST_FORMAT}") from exc
            out.setdefault(fields[0], []).append(hyp)
    return out


class PartialOutput:
    """Hypotheses of finished batches, kept on disk so that an interrupted decode resumes."""

    def __init__(self, out_dir: Path, config: dict):
        self.dir = out_dir / ".partial"
        self.hyp_path, self.nbest_path = self.dir / "hyp", self.dir / "nbest"
        self.done: dict[str, str] = {}
        config_path = self.dir / "config.json"
        config_text = json.dumps(config, sort_keys=True)
        if self.dir.exists() and (not config_path.exists() or config_path.read_text(encoding="utf-8") != config_text):
            shutil.rmtree(self.dir)  # other options: nothing to reuse
        self.dir.mkdir(parents=True, exist_ok=True)
        if not config_path.exists():
            atomic_write_text(config_path, config_text)
        self.done = self._read_complete_lines(self.hyp_path)
        # keep the n-best lines of committed utterances only (the hyp line is written last)
        nbest_lines = [line for line in self._lines(self.nbest_path) if line.split(" ", 1)[0] in self.done]
        atomic_write_text(self.nbest_path, "".join(f"{line}\n" for line in nbest_lines))
        atomic_write_text(self.hyp_path, format_table(self.done))

    @staticmethod
    def _lines(path: Path) -> list[str]:
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        return [line for line in lines[:-1] if line]  # the last piece has no newline: cut off mid-write

    def _read_complete_lines(self, path: Path) -> dict[str, str]:
        table = {}
        for line in self._lines(path):
            utt, _, text = line.partition(" ")
            table[utt] = text
        return table

    def append(self, hyps: dict[str, str], nbest_lines: list[str]) -> None:
        """Commit one batch: n-best lines first, then the hypotheses (the commit marker)."""
        for path, lines in ((self.nbest_path, nbest_lines), (self.hyp_path, [f"{u} {t}" for u, t in hyps.items()])):
            if lines:
                with open(path, "a", encoding="utf-8") as f:
                    f.write("".join(f"{line}\n" for line in lines))
                    f.flush()
                    os.fsync(f.fileno())
        self.done.update(hyps)

    def nbest_lines(self) -> list[str]:
        return self._lines(self.nbest_path)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def sorted_nbest(lines: list[str]) -> str:
    """n-best lines sorted by utterance (C order), then rank."""
    def key(line: str):
        utt, rank, _ = line.split(" ", 2)
        return utt, int(rank)
    return "".join(f"{line}\n" for line in sorted(lines, key=key))


def write_decode_dir(out_dir: Path, hyps: dict[str, str], data_tables: dict[str, dict[str, str]],
                     nbest_lines: list[str] | None, record: dict, stats: dict) -> None:
    """Write the final tables (sorted, atomically), then decode.yaml and stats.yaml."""
    atomic_write_text(out_dir / "hyp.txt", format_table(hyps))
    for name, out_name in (("text", "ref.txt"), ("utt2lang", "utt2lang"), ("utt2spk", "utt2spk")):
        if name in data_tables:
            atomic_write_text(out_dir / out_name, format_table({u: data_tables[name][u] for u in hyps}))
    if nbest_lines is not None:
        atomic_write_text(out_dir / "nbest.txt", sorted_nbest(nbest_lines))
    atomic_write_text(out_dir / "stats.yaml", yaml.safe_dump(stats, sort_keys=False))
    atomic_write_text(out_dir / "decode.yaml", yaml.safe_dump(record, sort_keys=False, allow_unicode=True))

def finished_decode(out_dir: Path, identity: dict, utts: list[str]) -> bool:
    """True when ``out_dir`` already holds a decode of ``utts`` whose decode.yaml agrees with every key of
    ``identity`` (the options, the model fingerprint, the data dir)."""
    record_path, hyp_path = out_dir / "decode.yaml", out_dir / "hyp.txt"
    if not (record_path.exists() and hyp_path.exists()):
        return False
    record = yaml.safe_load(record_path.read_text(encoding="utf-8")) or {}
    if any(record.get(key) != value for key, value in identity.items()):
        return False
    return set(read_table(hyp_path, allow_empty_value=True)) == set(utts)


def merge_stats(parts: list[dict], wall_seconds: float) -> dict:
    """Sum the per-job statistics; ``rtf`` uses the summed job time, ``wall_rtf`` the elapsed time."""
    keys = ("num_utts", "audio_seconds", "decode_seconds", "output_tokens", "audio_positions")
    total = {key: sum(p.get(key, 0) for p in parts) for key in keys}
    return finish_stats(total, wall_seconds)


def finish_stats(stats: dict, wall_seconds: float | None = None) -> dict:
    audio, seconds = stats["audio_seconds"], stats["decode_seconds"]
    stats["rtf"] = round(seconds / audio, 4) if audio else None
    stats["tokens_per_second"] = round(stats["output_tokens"] / seconds, 2) if seconds else None
    positions = stats.get("audio_positions", 0)  # LLM input positions that hold audio (speech-LLMs)
    stats["audio_positions_per_second"] = round(positions / audio, 2) if audio and positions else None
    if wall_seconds is not None:
        stats["wall_seconds"] = round(wall_seconds, 3)
        stats["wall_rtf"] = round(wall_seconds / audio, 4) if audio else None
    return stats
