"""Text dirs: what a text LLM (the text-based family, models/text_llm.py) trains and decodes on.

Usage:
    speechllm text-input --data dump/whisper_mel/train --from-table text.src --out dump/text_src/train
    speechllm text-input --data dump/whisper_mel/test --from-decode exp/whisper_asr/decode_test --out dump/cascade/test
    speechllm text-input --data dump/whisper_mel/train --from-decode exp/fold1/decode_fold2 \\
        --from-decode exp/fold2/decode_fold1 --nbest 5 --out dump/ger/train       # n-best lists, fold by fold

Python::

    from speechllm_cli.decode.text_input import write_text_input
    write_text_input("dump/whisper_mel/test", "dump/cascade/test", decode_dirs=["exp/whisper_asr/decode_test"])

A text dir is a Kaldi-style dir: ``input`` (the text the LLM reads, one line per utterance) and the data dir's
tables (``text``, ``text.src``, ``utt2lang``, ``utt2spk``, ``spk2utt``, ``utt2dur``, ``utt2num_frames``: targets,
tasks, speakers and the audio duration that decoding reports its real-time factor against). The input comes from a
table of the data dir (``text.src``: the gold transcript, to train a cascade's translation step), from the 1-best
``hyp.txt`` of decode dirs (a cascade's ASR output at test time) or from their ``nbest.txt`` (``--nbest N``: the
first N distinct hypotheses joined by `` ||| ``, for generative error correction: beam search can give one text
under several tokenizations). Several decode dirs are merged (k-fold
n-best lists); an utterance of the data dir that none of them decoded is an error naming it, so a text dir never
silently loses part of a set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from speechllm_cli.data.kaldi_dir import NBEST_SEPARATOR, DataDir, DataDirError, read_table
from speechllm_cli.data.kaldi_dir import TEXT_INPUT_TABLE as INPUT_TABLE
from speechllm_cli.decode.decode_io import read_nbest

logger = logging.getLogger(__name__)

COPIED_TABLES = ("text", "text.src", "utt2lang", "utt2spk", "utt2dur", "utt2num_frames")
SOURCE_FILE = "text_input.yaml"  # where the input came from (recorded in the text dir)


def _distinct(texts: list[str]) -> list[str]:
    """``texts`` without repeats, in order (beam search yields one text under several tokenizations)."""
    return list(dict.fromkeys(texts))


def _decoded_inputs(decode_dirs: list[Path], nbest: int) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for decode_dir in decode_dirs:
        if nbest:
            path = decode_dir / "nbest.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: decode with --nbest {nbest} (and --beam >= {nbest})")
            lists = read_nbest(path)
            found = {utt: NBEST_SEPARATOR.join(_distinct([h["text"] for h in hyps])[:nbest])
                     for utt, hyps in lists.items()}
        else:
            path = decode_dir / "hyp.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: {decode_dir} is not a finished decode dir")
            found = dict(read_table(path, allow_empty_value=True))
        twice = sorted(set(found) & set(inputs))
        if twice:
            raise DataDirError(f"{path}: {len(twice)} utterance(s) also in an earlier --from-decode dir (first: "
                               f"{twice[0]}); give each utterance's decode once (k-fold dirs are disjoint)")
        inputs.update(found)
    return inputs


def write_text_input(data_dir: str | os.PathLike, out_dir: str | os.PathLike, from_table: str | None = None,
                     decode_dirs: list[str | os.PathLike] = (), nbest: int = 0) -> dict:
    """Write the text dir ``out_dir`` for the utterances of ``data_dir`` (a data or dump dir), its ``input`` from
    the data dir's table ``from_table`` or from ``decode_dirs`` (their 1-best, or with ``nbest`` their n-best lists).
    Returns what it recorded in ``text_input.yaml``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if (from_table is None) == (not decode_dirs):
        raise ValueError("give the input's source: a table of the data dir (--from-table) or decode dirs "
                         "(--from-decode), one of the two")
    if nbest < 0 or (nbest and from_table):
        raise ValueError("--nbest N (N >= 1) reads the n-best lists of --from-decode dirs")
    data = DataDir.load(data_dir)
    if from_table is not None:
        if from_table not in data.tables:
            raise DataDirError(f"{data_dir / from_table}: missing; name a table of {data_dir} (e.g. text.src)")
        inputs = dict(data.tables[from_table])
    else:
        inputs = _decoded_inputs([Path(d) for d in decode_dirs], nbest)
    missing = [u for u in data.utt_ids if u not in inputs]
    if missing:
        where = from_table or ", ".join(map(str, decode_dirs))
        raise DataDirError(f"{len(missing)} of {len(data.utt_ids)} utterance(s) of {data_dir} have no input in "
                           f"{where} (first: {missing[0]}); decode the whole set first")
    tables = {name: dict(data.tables[name]) for name in COPIED_TABLES if name in data.tables}
    tables[INPUT_TABLE] = {u: inputs[u] for u in data.utt_ids}
    out_dir.mkdir(parents=True, exist_ok=True)
    DataDir(out_dir, tables).save()
    source = {"data_dir": str(data_dir), "from_table": from_table, "decode_dirs": [str(d) for d in decode_dirs],
              "nbest": nbest, "utterances": len(data.utt_ids)}
    (out_dir / SOURCE_FILE).write_text(yaml.safe_dump(source, sort_keys=False), encoding="utf-8")
    logger.info("wrote %s: %d utterances, input from %s", out_dir, len(data.utt_ids),
                from_table or f"{len(decode_dirs)} decode dir(s)" + (f", {nbest}-best" if nbest else ""))
    return source
