"""``speechllm decode``: decode a dump dir with a trained speech-LLM, seq2seq baseline or Whisper into a decode dir.

Usage:
    speechllm decode --model exp/speechllm --data dump/test --beam 4 --max-len-a 8 --max-len-b 10 --nj 2
    speechllm decode --model exp/whisper/base --data dump/whisper_mel/test --out exp/whisper/base/decode_test --beam 4
    speechllm decode --model exp/speechllm_whisper --data dump/whisper_mel/test --engine llamacpp --batch-size 16
    python -m speechllm_cli.decode.decode --options conf/decode.yaml --model-dir exp/seq2seq/model \\
        --data-dir dump/test --out-dir exp/seq2seq/decode_test       # one job, as ``--nj`` runs each

Python::

    decode("exp/seq2seq/model", "dump/test", "exp/seq2seq/decode_test", beam=4, ctc_weight=0.3, nj=2)
    decode("exp/seq2seq/model", "dump/test", "exp/seq2seq/decode_test", DecodeOptions(beam=4), DecodeRun(nj=2))

The model dir's ``model.yaml`` says its type (speech_llm, decoder_only, seq2seq: the encoder-decoder baseline,
whisper: an exported Whisper zero-shot or a fine-tuned one, on a ``whisper_mel`` dump, or text_llm: an LLM reading
a text dir's ``input`` table, made by ``speechllm text-input``, whose ``copy_langs`` utterances are copied through);
:func:`load_decode_model` turns any of them into a :class:`DecodeModel` (scorer, search input, end tokens, text), so
the rest is the same for all.
For a speech-LLM the task of an utterance is recognition (ASR) when its ``utt2lang`` is an ASR language
(``en``) and translation (ST) otherwise; the model knows the prompt of each task. A seq2seq model has one
task and ignores utt2lang; ``--ctc-weight`` adds its CTC prefix scores. Whisper transcribes (ASR languages) or
translates into English (the others) after its language token from utt2lang (decode/whisper_scorer.py).
Utterances are decoded in batches sorted by length (longest first), each batch as one search (greedy for beam 1,
beam search otherwise; see :mod:`speechllm_cli.decode.search`). The output cap of an utterance is
``min(max_new_tokens, ceil(max_len_a * seconds + max_len_b))`` (``max_len_a = 0``: max_new_tokens),
with seconds = frames * 0.01; for a speech-LLM it is lowered further so that prompt + audio + output fit the LLM's
context (``max_position_embeddings``), with a warning naming the utterance. Outputs are listed in
:mod:`speechllm_cli.decode.decode_io`; decoding
resumes where it stopped, and a finished decode dir with the same options is left alone.
``--nj J`` splits the data dir by speaker and runs J jobs through run.pl/slurm.pl (``--cmd``), each reading the
resolved options from ``<out>/log/options.yaml``. The defaults are those of :class:`DecodeOptions` and
:class:`DecodeRun` (speechllm_cli/decode/options.py), for the command line, :func:`decode` and the jobs alike.
A speech-LLM is decoded with the task choice it was trained with (its record's ``task`` and ``asr_langs``)
unless ``--task`` / ``--asr-langs`` say otherwise.
Engines: ``--engine pytorch`` (the default, any model) runs the LLM in transformers; ``--engine llamacpp`` runs a
speech-LLM's LLM (LoRA merged, exported once to ``<model>/gguf/llm-f16.gguf``, or ``--gguf FILE`` from
``speechllm export-gguf``) in llama.cpp, its audio side in PyTorch, with the same search (decode/llamacpp_scorer.py).
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

from speechllm_cli.data.kaldi_dir import TEXT_INPUT_TABLE, DataDir, DataDirError, read_table, write_split
from speechllm_cli.decode.decode_io import (
    PartialOutput,
    finish_stats,
    finished_decode,
    merge_stats,
    nbest_line,
    one_line,
    write_decode_dir,
)
from speechllm_cli.decode.llm_scorer import LLMScorer, PrefixBatch, eos_ids_for
from speechllm_cli.decode.options import DecodeOptions, DecodeRun
from speechllm_cli.decode.search import Hypothesis, Scorer, cap_to_context, max_new_tokens_for, search
from speechllm_cli.features.feats_reader import FeatsReader
from speechllm_cli.models.frontends.base import pad_feats  # noqa: F401 (decode's callers use it from here)
from speechllm_cli.models.llm import llm_context_length
from speechllm_cli.models.load import load_model
from speechllm_cli.models.model_dir import SPEECH_LLM_TYPES, is_model_dir, model_fingerprint, read_model_record
from speechllm_cli.utils.jobs import run_jobs
from speechllm_cli.utils.options import read_options, split_fields, write_options

logger = logging.getLogger(__name__)

FRAME_SHIFT = 0.01  # seconds per fbank frame
JOB_OPTIONS = "log/options.yaml"  # in the decode dir, beside the job logs: the resolved options every job reads


@dataclasses.dataclass
class DecodeModel:
    """What decoding needs from a model, whatever its type."""

    scorer: Scorer  # the search talks to it (speechllm_cli.decode.search)
    inputs: Callable[[list[np.ndarray], list[str] | None], Any]  # raw fbank per utterance, tasks -> scorer.init's batch
    eos_ids: list[int]  # tokens that end an output
    to_text: Callable[[list[int]], str]  # output ids (end token left out) -> text
    needs_task: bool = False  # ``inputs`` needs the task (asr/st) of each utterance
    needs_lang: bool = False  # ``inputs`` takes a third argument: the utt2lang code of each utterance
    feats_type: tuple[str, int] | None = None  # the dump's feats_type it needs (features/feats_type.py); None: any
    ctc_weight: float = 0.0  # the scorer's CTC prefix score weight (must equal DecodeOptions.ctc_weight)
    context_length: int | None = None  # positions the LLM takes (prefix + output); None: no limit
    input_table: str | None = None  # a text model reads this data-dir table (e.g. "input"), not feats.scp
    copy_langs: tuple[str, ...] = ()  # a text model's languages whose input is the output (a cascade's ASR langs)


def resolve_model_dir(path: str | Path) -> Path:
    """The saved model dir of ``path``: itself when it holds ``model.yaml``, else ``path/model`` (an experiment dir
    as training writes it)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if is_model_dir(candidate):
            return candidate
    raise FileNotFoundError(f"{path}: neither it nor {path / 'model'} holds model.yaml; "
                            "give a trained experiment dir (speechllm train --out) or its model dir")


def speech_llm_decode_model(model, gguf: str | Path | None = None, num_threads: int = 0) -> DecodeModel:
    """A loaded SpeechLLM for decoding: the LLM scorer over prompt + audio prefixes; with ``gguf``, its LLM (exported
    by export-gguf) runs in llama.cpp (``num_threads`` threads, 0: torch's) and only the audio side in PyTorch."""
    model.eval()
    device = next(model.adapter.parameters()).device

    def prefixes(feats: list[np.ndarray], tasks: list[str]) -> PrefixBatch:
        with torch.inference_mode():
            return model.decoding_prefix(*pad_feats(feats, device), tasks)

    if gguf is not None:
        from speechllm_cli.decode.llamacpp_scorer import LlamaCppScorer

        scorer = LlamaCppScorer(gguf, n_threads=num_threads)
    else:
        scorer = LLMScorer(model.hf_llm)
    return DecodeModel(scorer=scorer, inputs=prefixes,
                       eos_ids=sorted(set(eos_ids_for(model.tokenizer)) | {int(model.end_id)}),
                       to_text=model.decode_target, needs_task=True, context_length=llm_context_length(model.hf_llm),
                       feats_type=getattr(model.frontend, "feats_type", None))


def text_llm_decode_model(model) -> DecodeModel:
    """A loaded TextLLM for decoding: prompt + input text prefixes from the data dir's ``input`` table."""
    model.eval()
    device = next(model.hf_llm.parameters()).device

    def prefixes(texts: list[str], tasks: list[str]) -> PrefixBatch:
        with torch.inference_mode():
            return model.decoding_prefix(*model.pad_inputs(texts, device), tasks)

    return DecodeModel(scorer=LLMScorer(model.hf_llm), inputs=prefixes,
                       eos_ids=sorted(set(eos_ids_for(model.tokenizer)) | {int(model.end_id)}),
                       to_text=model.decode_target, needs_task=True, context_length=llm_context_length(model.hf_llm),
                       input_table=TEXT_INPUT_TABLE, copy_langs=tuple(model.config.copy_langs))


def seq2seq_decode_model(model, tokenizer, ctc_weight: float = 0.0) -> DecodeModel:
    """A loaded Seq2SeqModel (and its target tokenizer) for decoding, with CTC prefix scores at ``ctc_weight``."""
    from speechllm_cli.decode.seq2seq_scorer import FeatsBatch, Seq2SeqScorer

    model.eval()
    device = next(model.parameters()).device
    eos = model.eos_id
    return DecodeModel(scorer=Seq2SeqScorer(model, ctc_weight),
                       inputs=lambda feats, _: FeatsBatch(*pad_feats(feats, device)),
                       eos_ids=[eos], to_text=lambda ids: tokenizer.decode([i for i in ids if i != eos]),
                       ctc_weight=ctc_weight, feats_type=model.encoder.feats_type)


def whisper_decode_model(model) -> DecodeModel:
    """A loaded WhisperSeq2Seq for decoding: its prefix per utterance (language and task), the Whisper scorer."""
    from speechllm_cli.decode.whisper_scorer import WhisperBatch, WhisperScorer

    model.eval()
    device = model.device

    def inputs(feats: list[np.ndarray], tasks: list[str], langs: list[str]) -> WhisperBatch:
        prefixes = [model.prefix_ids(lang, task) for lang, task in zip(langs, tasks)]
        return WhisperBatch(*pad_feats(feats, device), prefixes)

    return DecodeModel(scorer=WhisperScorer(model), inputs=inputs, eos_ids=[model.eot], to_text=model.decode_text,
                       needs_task=True, needs_lang=True, context_length=model.max_target_positions,
                       feats_type=("whisper_mel", model.num_mel_bins))


def load_decode_model(model_dir: str | Path, device: str = "cpu", llm_path: str | Path | None = None,
                      ctc_weight: float = 0.0, gguf: str | Path | None = None, num_threads: int = 0,
                      dtype: str | None = None) -> DecodeModel:
    """The model saved in ``model_dir`` (any type that decodes, after its model.yaml) ready to decode; ``gguf``: a
    speech-LLM's LLM in llama.cpp (``--engine llamacpp``); ``dtype``: a speech-LLM's LLM dtype (default: as trained)."""
    model_type = read_model_record(model_dir)["model_type"]
    if gguf is not None and model_type not in SPEECH_LLM_TYPES:
        raise ValueError(f"--engine llamacpp decodes speech-LLMs; {model_dir} is a {model_type} model: use "
                         "--engine pytorch")
    if model_type == "text_llm":
        if ctc_weight > 0:
            raise ValueError(f"--ctc-weight is for seq2seq models; {model_dir} is a text LLM")
        return text_llm_decode_model(load_model(model_dir, device, llm_path=llm_path, dtype=dtype))
    if dtype is not None and model_type not in SPEECH_LLM_TYPES:
        raise ValueError(f"--dtype is for speech-LLMs and text LLMs; {model_dir} is a {model_type} model")
    if model_type == "seq2seq":
        model = load_model(model_dir, device)
        return seq2seq_decode_model(model, model.tokenizer, ctc_weight=ctc_weight)
    if model_type in SPEECH_LLM_TYPES:
        if ctc_weight > 0:
            raise ValueError(f"--ctc-weight is for seq2seq models; {model_dir} is a speech-LLM (it has no CTC head)")
        model = load_model(model_dir, device=device, llm_path=llm_path, dtype=dtype, audio_only=gguf is not None)
        return speech_llm_decode_model(model, gguf, num_threads)
    if model_type == "whisper":
        if ctc_weight > 0:
            raise ValueError(f"--ctc-weight is for seq2seq models; {model_dir} is a Whisper (it has no CTC head)")
        return whisper_decode_model(load_model(model_dir, device))
    raise ValueError(f"{Path(model_dir) / 'model.yaml'}: a {model_type} model does not decode on its own; give a "
                     "speech_llm, decoder_only, text_llm, seq2seq or whisper model dir")


def check_sources_unchanged(model_dir: str | Path) -> None:
    """A speech LLM's front-end is still the one it was trained with (FrontEndMismatchError otherwise)."""
    record = read_model_record(model_dir)
    if record["model_type"] in SPEECH_LLM_TYPES:
        from speechllm_cli.models.speech_llm_io import check_frontend_unchanged

        check_frontend_unchanged(model_dir, record)


def trained_task_choice(model_dir: str | Path, task: str | None, asr_langs: Sequence[str] | None
                        ) -> tuple[str | None, tuple[str, ...]]:
    """``task`` and ``asr_langs`` for decoding: the given ones, else what a speech-LLM was trained with (its record's
    ``training.task``, unless "auto", and ``training.asr_langs``), else per-utterance from utt2lang, English as ASR."""
    trained = read_model_record(model_dir).get("training") or {}
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


def _langs(data: DataDir, utts: list[str]) -> list[str]:
    if "utt2lang" not in data.tables:
        raise DataDirError(f"{data.path / 'utt2lang'}: missing; Whisper needs the language of each utterance (its "
                           "<|lang|> token): add utt2lang")
    return [data.tables["utt2lang"][u] for u in utts]


def _check_feats_type(data_dir: Path, expected: tuple[str, int], who: str) -> None:
    """The dump holds the features the model takes; a part of ``--nj`` jobs (``<dump>/splitN/K``) is its dump's."""
    from speechllm_cli.features.feats_type import FEATS_TYPE_FILE, check_feats_type

    if not (data_dir / FEATS_TYPE_FILE).exists() and data_dir.parent.name.startswith("split"):
        data_dir = data_dir.parent.parent
    check_feats_type(data_dir, expected, who)


def decode_batch(decoder: DecodeModel, feats: list, options: DecodeOptions, utt_ids: list[str],
                 tasks: list[str] | None = None, langs: list[str] | None = None, seconds: list[float] | None = None
                 ) -> tuple[list[list[Hypothesis]], int]:
    """Search one batch: raw features per utterance (frames of 10 ms; a text model's input texts), their tasks
    (asr/st; when ``decoder.needs_task``) and languages (when ``decoder.needs_lang``). Output caps follow ``options``
    and the model's context (a warning names each utterance whose cap shrinks); ``seconds``: each utterance's audio
    duration (default: from the feature frames). Returns the n-best lists (``max(nbest, 1)`` per utterance) and the
    number of positions the LLM read in place of audio (speech and text LLMs; 0 otherwise)."""
    seconds = seconds if seconds is not None else [len(f) * FRAME_SHIFT for f in feats]
    caps = max_new_tokens_for(seconds, options.max_new_tokens, options.max_len_a, options.max_len_b)
    inputs = decoder.inputs(feats, tasks, langs) if decoder.needs_lang else decoder.inputs(feats, tasks)
    if isinstance(inputs, PrefixBatch):  # an LLM: prompt + audio + output must fit its context
        caps = cap_to_context(caps, [len(e) for e in inputs.embeds], decoder.context_length, utt_ids, logger)
    elif decoder.context_length is not None:  # a decoder of limited positions (Whisper's 448)
        caps = cap_to_context(caps, inputs.prefix_lengths, decoder.context_length, utt_ids, logger)
    if hasattr(decoder.scorer, "reserve"):  # a fixed-size cache (llama.cpp): room for this batch
        decoder.scorer.reserve([len(e) for e in inputs.embeds], caps, options.beam)
    nbest = search(decoder.scorer, inputs, caps, decoder.eos_ids, beam=options.beam, nbest=max(options.nbest, 1),
                   length_penalty=options.length_penalty, no_repeat_ngram=options.no_repeat_ngram)
    return nbest, sum(getattr(inputs, "audio_lengths", None) or [])


def _input_reader(decoder: DecodeModel, data: DataDir) -> tuple[Callable, Callable, Callable]:
    """How to read an utterance's input, its audio duration in seconds and its size (to sort by): the features of
    feats.scp, or a text model's input table (durations from utt2dur, else utt2num_frames, else 0)."""
    if decoder.input_table is None:
        feats_scp = FeatsReader(data.path / "feats.scp", entries=data.tables["feats.scp"])
        num_frames = _num_frames(data, feats_scp)
        return feats_scp.__getitem__, lambda u: num_frames[u] * FRAME_SHIFT, num_frames.__getitem__
    table = data.tables[decoder.input_table]
    if "utt2dur" in data.tables:
        seconds = {u: float(d) for u, d in data.tables["utt2dur"].items()}
    elif "utt2num_frames" in data.tables:
        seconds = {u: int(n) * FRAME_SHIFT for u, n in data.tables["utt2num_frames"].items()}
    else:
        seconds = {}
    return table.__getitem__, lambda u: seconds.get(u, 0.0), lambda u: len(table[u])


def _copy_inputs(decoder: DecodeModel, data: DataDir, todo: list[str], read_input: Callable, partial: PartialOutput,
                 options: DecodeOptions, stats: dict, duration: Callable) -> list[str]:
    """Write the input of every utterance in ``decoder.copy_langs`` as its output (a cascade passes its ASR output
    through for the ASR languages); returns the utterances left to decode."""
    if "utt2lang" not in data.tables:
        raise DataDirError(f"{data.path / 'utt2lang'}: missing; the model copies the input of {decoder.copy_langs} "
                           "utterances, so it needs each utterance's language")
    copied = [u for u in todo if data.tables["utt2lang"][u] in decoder.copy_langs]
    if copied:
        as_is = Hypothesis(tokens=[], logprob=0.0, score=0.0, num_tokens=0, end_token=decoder.eos_ids[0])
        hyps = {u: one_line(read_input(u)) for u in copied}
        partial.append(hyps, [nbest_line(u, 1, as_is, t) for u, t in hyps.items()] if options.nbest else [])
        stats["num_utts"] += len(copied)
        stats["audio_seconds"] += sum(duration(u) for u in copied)
        logger.info("%d utterance(s) in %s: their input is their output (copy_langs)", len(copied),
                    ", ".join(decoder.copy_langs))
    return [u for u in todo if u not in hyps] if copied else todo


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
    decoder = model if isinstance(model, DecodeModel) else speech_llm_decode_model(model)
    source = decoder.input_table or "feats.scp"
    if source not in data.tables:
        how = ("make a text dir with `speechllm text-input`" if decoder.input_table
               else "decode a dump dir (run the fbank stage)")
        raise DataDirError(f"{data_dir / source}: missing; {how}")
    utts = data.utt_ids
    identity = _identity(options, model_dir, data_dir)
    if finished_decode(out_dir, identity, utts):
        logger.info("%s already holds a decode of %s with these options and model; nothing to do", out_dir, data_dir)
        return yaml.safe_load((out_dir / "stats.yaml").read_text(encoding="utf-8"))
    record = {**identity, "command": command or shlex.join(sys.argv)}
    read_input, duration, size = _input_reader(decoder, data)
    partial = PartialOutput(out_dir, identity)
    todo = sorted((u for u in utts if u not in partial.done), key=lambda u: (-size(u), u))
    if partial.done:
        logger.info("resuming: %d of %d utterances already decoded in %s", len(partial.done), len(utts), out_dir)
    if decoder.feats_type is not None:
        _check_feats_type(data_dir, decoder.feats_type, model_dir or "the model")
    if decoder.ctc_weight != options.ctc_weight:
        raise ValueError(f"the model decodes with CTC weight {decoder.ctc_weight}, "
                         f"the options say {options.ctc_weight}")
    stats = {"num_utts": 0, "audio_seconds": 0.0, "decode_seconds": 0.0, "output_tokens": 0, "audio_positions": 0}
    if decoder.copy_langs:
        todo = _copy_inputs(decoder, data, todo, read_input, partial, options, stats, duration)
    with tqdm(total=len(todo), desc=f"decode {data_dir.name}", unit="utt", disable=None) as bar:
        for start in range(0, len(todo), batch_size):
            batch_utts = todo[start:start + batch_size]
            begin = time.perf_counter()
            feats = [read_input(utt) for utt in batch_utts]  # FeatsReadError names utterance, ark, offset, fix
            seconds = [duration(utt) for utt in batch_utts]
            tasks = _tasks(data, batch_utts, options) if decoder.needs_task else None
            langs = _langs(data, batch_utts) if decoder.needs_lang else None
            nbest, audio_positions = decode_batch(decoder, feats, options, batch_utts, tasks, langs, seconds)
            stats["audio_positions"] += audio_positions
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


def decode(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, options: DecodeOptions | None = None,
           run: DecodeRun | None = None, **fields: Any) -> Path:
    """Decode the dump dir ``data_dir`` with the model (speech-LLM, seq2seq or Whisper) saved in ``model_dir`` into
    ``out_dir``.

    ``options`` (what decides the outputs) and ``run`` (how the decode runs) are used as given; instead, any of their
    fields can be passed by name (``decode(model_dir, data_dir, out_dir, beam=4, nj=2)``), every other field taking
    its dataclass default, except ``task`` and ``asr_langs`` (unset or None): the model's training choice
    (:func:`trained_task_choice`). ``run.nj > 1`` runs that many jobs (split by speaker) through ``run.cmd``, each
    with ``run.num_threads`` torch threads (0: this machine's cores divided among the jobs). Returns ``out_dir``.
    """
    check_sources_unchanged(model_dir)  # before "already decoded": a retrained front-end must not pass as done
    option_fields, run_fields = split_fields(fields, DecodeOptions, DecodeRun)
    if options is None:
        task, asr_langs = trained_task_choice(model_dir, option_fields.pop("task", None),
                                              option_fields.pop("asr_langs", None))
        options = DecodeOptions(task=task, asr_langs=asr_langs, **option_fields)
    elif option_fields:
        raise TypeError(f"give the DecodeOptions or its fields {sorted(option_fields)}, not both")
    run = dataclasses.replace(run or DecodeRun(), **run_fields)
    options.validate()
    if options.engine == "llamacpp":  # the GGUF is made (once) here, not in each job
        from speechllm_cli.models.gguf_export import gguf_for_decoding

        options = dataclasses.replace(options, gguf=str(gguf_for_decoding(model_dir, options.gguf, run.llm_path)))
    out_dir = Path(out_dir)
    command = shlex.join(sys.argv)
    if run.nj > 1:
        return _decode_in_jobs(model_dir, data_dir, out_dir, options, run, command)
    if run.num_threads > 0:
        torch.set_num_threads(run.num_threads)
    model = load_decode_model(model_dir, device=run.device, llm_path=run.llm_path, ctc_weight=options.ctc_weight,
                              gguf=options.gguf, num_threads=run.num_threads, dtype=options.dtype)
    decode_data_dir(model, data_dir, out_dir, options, run.batch_size, command, str(model_dir))
    return out_dir


def _decode_in_jobs(model_dir: str | Path, data_dir: str | Path, out_dir: Path, options: DecodeOptions,
                    run: DecodeRun, command: str) -> Path:
    """``run.nj`` jobs of :func:`main` (one per speaker-split part of ``data_dir``, each with the options written to
    ``out_dir/log/options.yaml``), then their outputs merged into ``out_dir``."""
    data = DataDir.load(data_dir)
    identity = _identity(options, model_dir, data_dir)
    if finished_decode(out_dir, identity, data.utt_ids):
        logger.info("%s already holds a decode of %s with these options and model; nothing to do", out_dir, data_dir)
        return out_dir
    record = {**identity, "command": command}
    start = time.perf_counter()
    nj = run.nj
    write_split(data, nj)
    split = f"split{nj}"
    job_run = dataclasses.replace(run, nj=1, num_threads=run.num_threads or max(1, (os.cpu_count() or 1) // nj))
    options_file = write_options(out_dir / JOB_OPTIONS, options, job_run)
    argv = [sys.executable, "-m", "speechllm_cli.decode.decode", "--options", str(options_file),
            "--model-dir", str(model_dir), "--data-dir", str(Path(data_dir) / split / "JOB"),
            "--out-dir", str(out_dir / split / "JOB")]
    run_jobs(run.cmd, nj, out_dir / "log" / "decode.JOB.log", argv)
    hyps: dict[str, str] = {}
    nbest_lines: list[str] = []
    parts = []
    for job in range(1, nj + 1):
        job_dir = out_dir / split / str(job)
        hyps.update(read_table(job_dir / "hyp.txt", allow_empty_value=True))
        if options.nbest:
            nbest_lines += [line for line in (job_dir / "nbest.txt").read_text(encoding="utf-8").split("\n") if line]
        parts.append(yaml.safe_load((job_dir / "stats.yaml").read_text(encoding="utf-8")))
    missing = sorted(set(data.utt_ids) - set(hyps))
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) of {data_dir} missing from the job outputs "
                           f"(first: {missing[0]}); see {out_dir / 'log'}")
    stats = merge_stats(parts, time.perf_counter() - start)
    stats["num_jobs"] = nj
    write_decode_dir(out_dir, hyps, data.tables, nbest_lines if options.nbest else None, record, stats)
    logger.info("decoded %d utterances with %d jobs: RTF %.3f (job time / audio), %.1f output tokens/s per job",
                stats["num_utts"], nj, stats["rtf"] or 0.0, stats["tokens_per_second"] or 0.0)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """One decoding job, as ``--nj`` runs it: the options of ``--options FILE`` (a flat YAML of DecodeOptions and
    DecodeRun fields), the model's task choice and the dataclass defaults for what the file leaves out."""
    from speechllm_cli.utils.logging import setup_logging

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", required=True, help="saved model dir, e.g. exp/seq2seq/model")
    parser.add_argument("--data-dir", required=True, help="dump dir to decode, e.g. dump/test/split2/1")
    parser.add_argument("--out-dir", required=True, help="decode dir to write, e.g. exp/seq2seq/decode_test/split2/1")
    parser.add_argument("--options", help=f"YAML of options, e.g. conf/decode.yaml or <out>/{JOB_OPTIONS}")
    args = parser.parse_args(argv)
    setup_logging()
    option_fields, run_fields = read_options(args.options, DecodeOptions, DecodeRun) if args.options else ({}, {})
    decode(args.model_dir, args.data_dir, args.out_dir, **option_fields, **run_fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
