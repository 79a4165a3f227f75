"""``speechllm decode``: decode a dump dir with a trained speech-LLM or seq2seq baseline into a decode dir.

Usage:
    python -m speechllm_cli.decode.decode --model-dir exp/speechllm/model --data-dir dump/test \\
        --out-dir exp/speechllm/decode_test --beam 4 --max-len-a 8 --max-len-b 10 --nj 2
    python -m speechllm_cli.decode.decode --model-dir exp/seq2seq/model --data-dir dump/test \\
        --out-dir exp/seq2seq/decode_test --beam 4 --ctc-weight 0.3

The model dir's record says its type: ``speech_llm.yaml`` (a speech-LLM) or ``model.json`` with
``"model_type": "seq2seq"`` (the encoder-decoder baseline); :func:`load_decode_model` turns either into a
:class:`DecodeModel` (scorer, search input, end tokens, text), so the rest is the same for both.
For a speech-LLM the task of an utterance is recognition (ASR) when its ``utt2lang`` is an ASR language
(``en``) and translation (ST) otherwise; the model knows the prompt of each task. A seq2seq model has one
task and ignores utt2lang; ``--ctc-weight`` adds its CTC prefix scores. Utterances are decoded in
batches sorted by length (longest first), each batch as one search (greedy for beam 1, beam search
otherwise; see :mod:`speechllm_cli.decode.search`). The output cap of an utterance is
``min(max_new_tokens, ceil(max_len_a * seconds + max_len_b))`` (``max_len_a = 0``: max_new_tokens),
with seconds = frames * 0.01; for a speech-LLM it is lowered further so that prompt + audio + output fit the LLM's
context (``max_position_embeddings``), with a warning naming the utterance. Outputs are listed in
:mod:`speechllm_cli.decode.decode_io`; decoding
resumes where it stopped, and a finished decode dir with the same options is left alone.
``--nj J`` splits the data dir by speaker and runs J jobs through run.pl/slurm.pl (``--cmd``).
A speech-LLM is decoded with the task choice it was trained with (its record's ``task`` and ``asr_langs``)
unless ``--task`` / ``--asr-langs`` say otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from speechllm_cli.data.kaldi_dir import DataDir, DataDirError, read_table, write_split
from speechllm_cli.decode.decode_io import (
    PartialOutput,
    finish_stats,
    finished_decode,
    merge_stats,
    model_fingerprint,
    nbest_line,
    one_line,
    write_decode_dir,
)
from speechllm_cli.decode.llm_scorer import LLMScorer, PrefixBatch, eos_ids_for
from speechllm_cli.decode.search import Scorer, cap_to_context, max_new_tokens_for, search
from speechllm_cli.features.feats_reader import FeatsReader
from speechllm_cli.models.llm import llm_context_length
from speechllm_cli.utils.jobs import run_jobs

logger = logging.getLogger(__name__)

FRAME_SHIFT = 0.01  # seconds per fbank frame


@dataclasses.dataclass
class DecodeOptions:
    """Options that decide the outputs (recorded in decode.yaml; a re-run with other ones starts over)."""

    beam: int = 1
    max_new_tokens: int = 200  # global cap on output tokens (end token included)
    max_len_a: float = 0.0  # per-utterance cap: ceil(a * seconds + b); 0 = the global cap only
    max_len_b: float = 10.0
    no_repeat_ngram: int = 0  # ban repeating n-grams of this size (0: off)
    length_penalty: float = 1.0  # rank by logprob / num_tokens ** length_penalty
    nbest: int = 0  # write nbest.txt with this many hypotheses per utterance (<= beam; 0: no file)
    asr_langs: tuple[str, ...] = ("en",)  # utt2lang values decoded as ASR; every other language is ST
    task: str | None = None  # "asr" or "st" for every utterance, whatever utt2lang says
    ctc_weight: float = 0.0  # seq2seq models: weight of the CTC prefix scores (0: attention only)

    def validate(self) -> None:
        if self.beam < 1 or self.max_new_tokens < 1:
            raise ValueError(f"beam ({self.beam}) and max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ValueError(f"--ctc-weight must be in [0, 1), got {self.ctc_weight}")
        if self.nbest > self.beam:
            raise ValueError(f"--nbest {self.nbest} needs --beam >= {self.nbest} (beam is {self.beam})")
        if self.task not in (None, "asr", "st"):
            raise ValueError(f"--task must be 'asr' or 'st', not {self.task!r}")

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        out["asr_langs"] = list(self.asr_langs)
        return out


@dataclasses.dataclass
class DecodeModel:
    """What decoding needs from a model, whatever its type."""

    scorer: Scorer  # the search talks to it (speechllm_cli.decode.search)
    inputs: Callable[[list[np.ndarray], list[str] | None], Any]  # raw fbank per utterance, tasks -> scorer.init's batch
    eos_ids: list[int]  # tokens that end an output
    to_text: Callable[[list[int]], str]  # output ids (end token left out) -> text
    needs_task: bool = False  # ``inputs`` needs the task (asr/st) of each utterance
    ctc_weight: float = 0.0  # the scorer's CTC prefix score weight (must equal DecodeOptions.ctc_weight)
    context_length: int | None = None  # positions the LLM takes (prefix + output); None: no limit


def _record_names() -> tuple[str, str]:
    from speechllm_cli.models import seq2seq_io, speech_llm_io

    return speech_llm_io.RECORD_NAME, seq2seq_io.RECORD_NAME


def resolve_model_dir(path: str | Path) -> Path:
    """The saved model dir of ``path``: itself when it holds a model record (``speech_llm.yaml`` or
    ``model.json``), else ``path/model`` (an experiment dir as training writes it)."""
    path = Path(path)
    names = _record_names()
    for candidate in (path, path / "model"):
        if any((candidate / name).is_file() for name in names):
            return candidate
    raise FileNotFoundError(f"{path}: neither it nor {path / 'model'} holds {' or '.join(names)}; "
                            "give a trained experiment dir (speechllm train --out) or its model dir")


def pad_feats(feats: list[np.ndarray], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw fbank per utterance -> zero-padded (B, T, 80) and lengths (B,) on ``device``."""
    lens = torch.tensor([len(f) for f in feats], device=device)
    padded = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1], device=device)  # (B, T, 80)
    for i, f in enumerate(feats):
        padded[i, : len(f)] = torch.tensor(f, device=device)
    return padded, lens


def speech_prefixes(model, feats: list[np.ndarray], tasks: list[str]) -> PrefixBatch:
    """Prompt + audio (+ separator / assistant header) embeddings per utterance, for the LLM scorer.

    ``model`` is a SpeechLLM (speechllm_cli.models.speech_llm; its compressor applies the global CMVN
    saved with it, so ``feats`` are the raw dump-dir fbank); bidirectional audio attention becomes a
    bidirectional span over each utterance's audio positions.
    """
    padded, lens = pad_feats(feats, next(model.encoder.parameters()).device)
    prompt_ids = [model.prompt_ids(task) for task in tasks]
    with torch.inference_mode():
        audio_embeds, audio_lens = model.encode_audio(padded, lens)  # (B, A, H), (B,)
        inputs = model.build_inputs(audio_embeds, audio_lens, prompt_ids, None)
    audio_lens = [int(a) for a in audio_lens]
    lengths = [len(p) + a + len(model.post_audio_ids) for p, a in zip(prompt_ids, audio_lens)]
    embeds = [inputs["inputs_embeds"][i, :n] for i, n in enumerate(lengths)]  # each (P_i, H)
    spans = None
    if model.config.audio_attention == "bidirectional":
        spans = [(len(p), len(p) + a) for p, a in zip(prompt_ids, audio_lens)]
    return PrefixBatch(embeds, spans, audio_lens)


def speech_llm_decode_model(model) -> DecodeModel:
    """A loaded SpeechLLM for decoding: the LLM scorer over prompt + audio prefixes."""
    model.eval()
    return DecodeModel(scorer=LLMScorer(model.hf_llm), inputs=lambda feats, tasks: speech_prefixes(model, feats, tasks),
                       eos_ids=sorted(set(eos_ids_for(model.tokenizer)) | {int(model.end_id)}),
                       to_text=model.decode_target, needs_task=True, context_length=llm_context_length(model.hf_llm))


def seq2seq_decode_model(model, tokenizer, ctc_weight: float = 0.0) -> DecodeModel:
    """A loaded Seq2SeqModel (and its target tokenizer) for decoding, with CTC prefix scores at ``ctc_weight``."""
    from speechllm_cli.decode.seq2seq_scorer import FeatsBatch, Seq2SeqScorer

    model.eval()
    device = next(model.parameters()).device
    eos = model.eos_id
    return DecodeModel(scorer=Seq2SeqScorer(model, ctc_weight),
                       inputs=lambda feats, _: FeatsBatch(*pad_feats(feats, device)),
                       eos_ids=[eos], to_text=lambda ids: tokenizer.decode([i for i in ids if i != eos]),
                       ctc_weight=ctc_weight)


def load_decode_model(model_dir: str | Path, device: str = "cpu", llm_path: str | Path | None = None,
                      ctc_weight: float = 0.0) -> DecodeModel:
    """The model saved in ``model_dir`` (a speech-LLM or a seq2seq model, after its record) ready to decode."""
    model_dir = Path(model_dir)
    speech_llm_record, model_record = _record_names()
    if (model_dir / speech_llm_record).is_file():
        from speechllm_cli.models.speech_llm_io import load_speech_llm

        if ctc_weight > 0:
            raise ValueError(f"--ctc-weight is for seq2seq models; {model_dir} is a speech-LLM (it has no CTC head)")
        return speech_llm_decode_model(load_speech_llm(model_dir, device=device, llm_path=llm_path))
    from speechllm_cli.models.seq2seq_io import MODEL_TYPE, load_seq2seq, read_model_type

    model_type = read_model_type(model_dir)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{model_dir / model_record}: model_type {model_type!r} cannot be decoded; "
                         f"known types: speech_llm ({speech_llm_record}), {MODEL_TYPE}")
    return seq2seq_decode_model(*load_seq2seq(model_dir, device), ctc_weight=ctc_weight)


def trained_task_choice(model_dir: str | Path, task: str | None, asr_langs: Sequence[str] | None
                        ) -> tuple[str | None, tuple[str, ...]]:
    """``task`` and ``asr_langs`` for decoding: the given ones, else what a speech-LLM was trained with (its record's
    ``task``, unless "auto", and ``asr_langs``), else per-utterance from utt2lang with English as ASR."""
    speech_llm_record, _ = _record_names()
    trained = {}
    if (Path(model_dir) / speech_llm_record).is_file():
        from speechllm_cli.models.speech_llm_io import read_record

        trained = read_record(model_dir).get("extra") or {}
    if task is None and trained.get("task", "auto") != "auto":
        task = trained["task"]
    if asr_langs is None:
        asr_langs = trained.get("asr_langs", ("en",))
    return task, tuple(asr_langs)


def _num_frames(data: DataDir, feats_scp: FeatsReader) -> dict[str, int]:
    if "utt2num_frames" in data.tables:
        return {u: int(n) for u, n in data.tables["utt2num_frames"].items()}
    return {u: int(feats_scp[u].shape[0]) for u in data.utt_ids}


def _tasks(data: DataDir, utts: list[str], options: DecodeOptions) -> list[str]:
    if options.task is not None:
        return [options.task] * len(utts)
    if "utt2lang" not in data.tables:
        raise DataDirError(f"{data.path / 'utt2lang'}: missing, so the task (ASR or ST) of each utterance is "
                           "unknown; add utt2lang or pass --task asr|st")
    utt2lang = data.tables["utt2lang"]
    return ["asr" if utt2lang[u] in options.asr_langs else "st" for u in utts]


def _identity(options: DecodeOptions, model_dir, data_dir) -> dict:
    """What makes two decodes the same: options, model (dir + fingerprint), data dir."""
    return {"config": options.record(), "model_dir": str(model_dir) if model_dir else None,
            "model_fingerprint": model_fingerprint(model_dir), "data_dir": str(Path(data_dir).resolve())}


def decode_data_dir(model, data_dir: str | Path, out_dir: str | Path, options: DecodeOptions,
                    batch_size: int = 8, command: str | None = None, model_dir: str | None = None) -> dict:
    """Decode every utterance of the dump dir ``data_dir`` with ``model`` (a DecodeModel, or a loaded SpeechLLM)
    into ``out_dir`` (resuming from a partial run). Returns the statistics written to stats.yaml."""
    options.validate()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    data = DataDir.load(data_dir)
    if "feats.scp" not in data.tables:
        raise DataDirError(f"{data_dir / 'feats.scp'}: missing; decode a dump dir (run the fbank stage)")
    utts = data.utt_ids
    identity = _identity(options, model_dir, data_dir)
    if finished_decode(out_dir, identity, utts):
        logger.info("%s already holds a decode of %s with these options and model; nothing to do", out_dir, data_dir)
        return yaml.safe_load((out_dir / "stats.yaml").read_text(encoding="utf-8"))
    record = {**identity, "command": command or shlex.join(sys.argv)}
    feats_scp = FeatsReader(data_dir / "feats.scp", entries=data.tables["feats.scp"])
    num_frames = _num_frames(data, feats_scp)
    partial = PartialOutput(out_dir, identity)
    todo = sorted((u for u in utts if u not in partial.done), key=lambda u: (-num_frames[u], u))
    if partial.done:
        logger.info("resuming: %d of %d utterances already decoded in %s", len(partial.done), len(utts), out_dir)
    decoder = model if isinstance(model, DecodeModel) else speech_llm_decode_model(model)
    if decoder.ctc_weight != options.ctc_weight:
        raise ValueError(f"the model decodes with CTC weight {decoder.ctc_weight}, "
                         f"the options say {options.ctc_weight}")
    stats = {"num_utts": 0, "audio_seconds": 0.0, "decode_seconds": 0.0, "output_tokens": 0, "audio_positions": 0}
    with tqdm(total=len(todo), desc=f"decode {data_dir.name}", unit="utt", disable=None) as bar:
        for start in range(0, len(todo), batch_size):
            batch_utts = todo[start:start + batch_size]
            begin = time.perf_counter()
            feats = [feats_scp[utt] for utt in batch_utts]  # FeatsReadError names utterance, ark, offset, fix
            seconds = [len(f) * FRAME_SHIFT for f in feats]
            caps = max_new_tokens_for(seconds, options.max_new_tokens, options.max_len_a, options.max_len_b)
            tasks = _tasks(data, batch_utts, options) if decoder.needs_task else None
            inputs = decoder.inputs(feats, tasks)
            if isinstance(inputs, PrefixBatch):  # an LLM: prompt + audio + output must fit its context
                caps = cap_to_context(caps, [len(e) for e in inputs.embeds], decoder.context_length, batch_utts, logger)
            stats["audio_positions"] += sum(getattr(inputs, "audio_lengths", None) or [])  # speech-LLM: LLM inputs
            nbest = search(decoder.scorer, inputs, caps, decoder.eos_ids, beam=options.beam,
                           nbest=max(options.nbest, 1), length_penalty=options.length_penalty,
                           no_repeat_ngram=options.no_repeat_ngram)
            hyps, lines = {}, []
            for utt, hyp_list in zip(batch_utts, nbest):
                texts = [one_line(decoder.to_text(h.tokens)) for h in hyp_list]
                hyps[utt] = texts[0]
                lines += [nbest_line(utt, rank, h, t) for rank, (h, t) in enumerate(zip(hyp_list, texts), 1)]
                stats["output_tokens"] += hyp_list[0].num_tokens
            partial.append(hyps, lines if options.nbest else [])
            stats["decode_seconds"] += time.perf_counter() - begin
            stats["audio_seconds"] += sum(seconds)
            stats["num_utts"] += len(batch_utts)
            bar.update(len(batch_utts))
    stats = finish_stats(stats)
    if stats["num_utts"]:
        logger.info("decoded %d utterances (%.1f s of audio) in %.1f s: RTF %.3f, %.1f output tokens/s",
                    stats["num_utts"], stats["audio_seconds"], stats["decode_seconds"], stats["rtf"] or 0.0,
                    stats["tokens_per_second"] or 0.0)
    write_decode_dir(out_dir, partial.done, data.tables, partial.nbest_lines() if options.nbest else None,
                     record, stats)
    partial.remove()
    return stats


def decode(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    beam: int = 1,
    batch_size: int = 8,
    max_new_tokens: int = 200,
    max_len_a: float = 0.0,
    max_len_b: float = 10.0,
    no_repeat_ngram: int = 0,
    length_penalty: float = 1.0,
    nbest: int = 0,
    task: str | None = None,
    asr_langs: tuple[str, ...] | None = None,
    nj: int = 1,
    cmd: str = "run.pl",
    device: str = "cpu",
    llm_path: str | Path | None = None,
    num_threads: int = 0,
    ctc_weight: float = 0.0,
) -> Path:
    """Decode the dump dir ``data_dir`` with the model (speech-LLM or seq2seq) saved in ``model_dir`` into ``out_dir``.

    See the module docstring; ``nj > 1`` runs ``nj`` jobs (split by speaker) through ``cmd``, each with
    ``num_threads`` torch threads (0: this machine's cores divided among the jobs). Returns ``out_dir``.
    """
    task, asr_langs = trained_task_choice(model_dir, task, asr_langs)
    options = DecodeOptions(beam=beam, max_new_tokens=max_new_tokens, max_len_a=max_len_a, max_len_b=max_len_b,
                            no_repeat_ngram=no_repeat_ngram, length_penalty=length_penalty, nbest=nbest, task=task,
                            asr_langs=asr_langs, ctc_weight=ctc_weight)
    options.validate()
    out_dir = Path(out_dir)
    command = shlex.join(sys.argv)
    if nj <= 1:
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        model = load_decode_model(model_dir, device=device, llm_path=llm_path, ctc_weight=ctc_weight)
        decode_data_dir(model, data_dir, out_dir, options, batch_size, command, str(model_dir))
        return out_dir
    data = DataDir.load(data_dir)
    identity = _identity(options, model_dir, data_dir)
    if finished_decode(out_dir, identity, data.utt_ids):
        logger.info("%s already holds a decode of %s with these options and model; nothing to do", out_dir, data_dir)
        return out_dir
    record = {**identity, "command": command}
    start = time.perf_counter()
    write_split(data, nj)
    split = f"split{nj}"
    argv = [sys.executable, "-m", "speechllm_cli.decode.decode", "--model-dir", str(model_dir),
            "--data-dir", str(Path(data_dir) / split / "JOB"), "--out-dir", str(out_dir / split / "JOB"),
            "--beam", str(beam), "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens),
            "--max-len-a", str(max_len_a), "--max-len-b", str(max_len_b), "--no-repeat-ngram", str(no_repeat_ngram),
            "--length-penalty", str(length_penalty), "--nbest", str(nbest), "--ctc-weight", str(ctc_weight),
            "--device", device, "--asr-langs", " ".join(asr_langs),
            "--num-threads", str(num_threads or max(1, (os.cpu_count() or 1) // nj))]
    for flag, value in (("--task", task), ("--llm-path", llm_path)):
        if value:
            argv += [flag, str(value)]
    run_jobs(cmd, nj, out_dir / "log" / "decode.JOB.log", argv)
    hyps: dict[str, str] = {}
    nbest_lines: list[str] = []
    parts = []
    for job in range(1, nj + 1):
        job_dir = out_dir / split / str(job)
        hyps.update(read_table(job_dir / "hyp.txt", allow_empty_value=True))
        if nbest:
            nbest_lines += [line for line in (job_dir / "nbest.txt").read_text(encoding="utf-8").split("\n") if line]
        parts.append(yaml.safe_load((job_dir / "stats.yaml").read_text(encoding="utf-8")))
    missing = sorted(set(data.utt_ids) - set(hyps))
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) of {data_dir} missing from the job outputs "
                           f"(first: {missing[0]}); see {out_dir / 'log'}")
    stats = merge_stats(parts, time.perf_counter() - start)
    stats["num_jobs"] = nj
    write_decode_dir(out_dir, hyps, data.tables, nbest_lines if nbest else None, record, stats)
    logger.info("decoded %d utterances with %d jobs: RTF %.3f (job time / audio), %.1f output tokens/s per job",
                stats["num_utts"], nj, stats["rtf"] or 0.0, stats["tokens_per_second"] or 0.0)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Command line of one decoding job (also what ``--nj`` runs)."""
    from speechllm_cli.utils.logging import setup_logging

    parser = argparse.ArgumentParser(description="Decode a dump dir with a speech-LLM or a seq2seq model.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--max-len-a", type=float, default=0.0)
    parser.add_argument("--max-len-b", type=float, default=10.0)
    parser.add_argument("--no-repeat-ngram", type=int, default=0)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--nbest", type=int, default=0)
    parser.add_argument("--task", choices=["asr", "st"], default=None)
    parser.add_argument("--asr-langs", type=lambda text: tuple(text.split()), default=None,
                        help="space-separated languages decoded as ASR (default: the model's training choice)")
    parser.add_argument("--ctc-weight", type=float, default=0.0, help="seq2seq: CTC prefix score weight")
    parser.add_argument("--nj", type=int, default=1)
    parser.add_argument("--cmd", default="run.pl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--llm-path", default=None)
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    setup_logging()
    decode(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
