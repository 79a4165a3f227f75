"""``SpeechModel``: a trained model (speech-LLM, seq2seq or Whisper) run on audio files or samples from Python.

Example::

    from speechllm_cli import SpeechModel

    model = SpeechModel.load("exp/speechllm_whisper")              # an experiment dir, a model dir or a package
    model.transcribe("meeting.wav").text                           # English ASR
    model.translate("interview.mp3", source_language="de").text    # X -> English
    for result in model.transcribe_batch(["a.flac", "b.ogg"]):    # batched; unreadable files come back with .error
        print(result.key, result.text or result.error)

Audio in any format libsndfile reads (wav, flac, mp3, ogg), any rate and channel count, is mixed down and resampled to
16 kHz; the features are the model's own (its dump ``feats_type``: fbank or Whisper log-mel, computed as stage 2
computes them; CMVN lives inside the model). A recording longer than ``max_seconds`` is split at pauses
(:meth:`SpeechModel.split`) and the parts' outputs are joined; ``max_seconds`` defaults to the longest utterance the
model was trained on (:func:`model_max_seconds`). Decoding goes through the same search as ``speechllm decode``
(:func:`~speechllm_cli.decode.decode.decode_batch`) with the model's decode options: the ``decode.yaml`` of a
package, else of the experiment's latest decode dir, else :class:`~speechllm_cli.decode.options.DecodeOptions`'
defaults; any field can be overridden.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from speechllm_cli.decode.decode import (
    DecodeModel,
    decode_batch,
    load_decode_model,
    resolve_model_dir,
    trained_task_choice,
)
from speechllm_cli.decode.decode_io import one_line
from speechllm_cli.decode.options import DecodeOptions
from speechllm_cli.features.audio import TARGET_RATE, AudioError, resample
from speechllm_cli.features.fbank import feats_config, make_extractor
from speechllm_cli.infer.audio_input import InputAudio, load_input, segment_at_pauses
from speechllm_cli.models.model_dir import read_model_record

DECODE_CONFIG = "decode.yaml"  # in a package (or an experiment's decode dir): the decode options
INFER_CONFIG = "infer.yaml"  # in a package: max_seconds, the longest utterance the model was trained on
DEFAULT_MAX_SECONDS = 30.0  # longer recordings are split at pauses (Whisper's window), when the training set is unknown
MIN_SECONDS = 0.1  # shorter audio (or a shorter last part) is not decoded


@dataclasses.dataclass
class Result:
    """The output for one recording."""

    key: str  # the path (or utterance id) it was given as
    text: str  # the 1-best output, parts joined with a space
    task: str | None  # asr or st (None: a model with one task)
    language: str | None  # the source language it was decoded as
    duration: float  # seconds of audio
    num_tokens: int = 0  # output tokens, end tokens included, over all parts
    score: float = 0.0  # sum of the parts' log-probabilities
    seconds: float = 0.0  # processing time (its share of the batches it was in)
    parts: int = 1  # pieces it was split into at pauses
    error: str | None = None  # why it could not be decoded (then text is empty)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Piece:
    index: int  # which recording of the chunk
    part: int  # which part of that recording, in time order
    feats: np.ndarray


def model_decode_options(model_dir: Path) -> DecodeOptions:
    """The decode options a model travels with: ``decode.yaml`` in the model dir (a package), else the newest
    ``decode_*/decode.yaml`` of its experiment dir, else the defaults."""
    candidates = [model_dir / DECODE_CONFIG]
    decode_dirs = sorted(model_dir.parent.glob(f"decode_*/{DECODE_CONFIG}"), key=lambda p: p.stat().st_mtime)
    candidates += decode_dirs[::-1]
    for path in candidates:
        if path.is_file():
            record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            fields = record.get("config", record)  # a decode dir's record holds the options under "config"
            known = {f.name for f in dataclasses.fields(DecodeOptions)} - {"task", "asr_langs", "engine", "gguf"}
            return DecodeOptions(**{k: v for k, v in fields.items() if k in known})
    return DecodeOptions()


def training_dump(model_dir: Path) -> Path | None:
    """The training dump dir of the experiment ``model_dir`` belongs to, from its ``model_info.json`` command
    (relative to the working dir or to the recipe dir, two levels above the experiment dir); None when unknown."""
    import json
    import shlex

    info = model_dir.parent / "model_info.json"
    if not info.is_file():
        return None
    argv = shlex.split(json.loads(info.read_text(encoding="utf-8")).get("command", ""))
    if "--train-data" not in argv[:-1]:
        return None
    train = Path(argv[argv.index("--train-data") + 1])
    for candidate in (train, model_dir.parent.parent.parent / train):
        if (candidate / "utt2dur").is_file():
            return candidate
    return None


def model_max_seconds(model_dir: Path) -> float:
    """The longest utterance the model was trained on, in seconds (rounded up to 0.5 s, at most
    :data:`DEFAULT_MAX_SECONDS`): a package's ``infer.yaml``, else the training dump's ``utt2dur``
    (:func:`training_dump`), else :data:`DEFAULT_MAX_SECONDS`. A model sees nothing longer in training and tends to
    stop after a training-length sentence, so longer recordings are split at pauses."""
    import math

    if (model_dir / INFER_CONFIG).is_file():
        return float((yaml.safe_load((model_dir / INFER_CONFIG).read_text(encoding="utf-8")) or {})["max_seconds"])
    dump = training_dump(model_dir)
    if dump is not None:
        durations = [float(fields[1]) for fields in map(str.split, (dump / "utt2dur").read_text().splitlines())
                     if len(fields) == 2]
        if durations:
            return min(DEFAULT_MAX_SECONDS, math.ceil(2 * max(durations)) / 2)
    return DEFAULT_MAX_SECONDS


class SpeechModel:
    """A trained model ready to run on audio; see the module docstring."""

    def __init__(self, decoder: DecodeModel, model_dir: Path, options: DecodeOptions, asr_langs: tuple[str, ...],
                 trained_task: str | None, batch_size: int = 8, max_seconds: float = DEFAULT_MAX_SECONDS):
        self.decoder = decoder
        self.model_dir = model_dir
        self.options = options
        self.asr_langs = asr_langs
        self.trained_task = trained_task
        self.batch_size = batch_size
        self.max_seconds = max_seconds
        feats_type = decoder.feats_type or ("fbank", 80)
        self.extract = make_extractor(feats_config(*feats_type))

    @classmethod
    def load(cls, model: str | os.PathLike, device: str = "cpu", engine: str = "pytorch",
             gguf: str | os.PathLike | None = None, llm_path: str | os.PathLike | None = None, num_threads: int = 0,
             batch_size: int = 8, max_seconds: float | None = None, **options) -> SpeechModel:
        """Load an experiment dir, a model dir or a package; ``options`` override DecodeOptions fields (``beam=4``).
        ``max_seconds``: split longer recordings at pauses (default: :func:`model_max_seconds`)."""
        model_dir = resolve_model_dir(model)
        if read_model_record(model_dir)["model_type"] == "text_llm":
            raise ValueError(f"{model_dir} is a text LLM (a cascade's translation step or an error corrector): it "
                             "reads text, not audio; run it with `speechllm decode` on a text dir (`speechllm "
                             "text-input`), after the speech system it follows")
        decode_options = dataclasses.replace(model_decode_options(model_dir), engine=engine, **options)
        if engine == "llamacpp":
            from speechllm_cli.models.gguf_export import gguf_for_decoding

            decode_options.gguf = str(gguf_for_decoding(model_dir, gguf, llm_path))
        decode_options.validate()
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        decoder = load_decode_model(model_dir, device=device, llm_path=llm_path, gguf=decode_options.gguf,
                                    num_threads=num_threads, dtype=decode_options.dtype)
        trained_task, asr_langs = trained_task_choice(model_dir, None, None)
        max_seconds = max_seconds or model_max_seconds(model_dir)
        return cls(decoder, model_dir, decode_options, asr_langs, trained_task, batch_size, max_seconds)

    def split(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Sample ranges of a recording's parts: a recording up to ``max_seconds`` is one part; a longer one is cut at
        every pause (:func:`~speechllm_cli.infer.audio_input.segment_at_pauses`: a sentence per part, as the model
        was trained), parts still over ``max_seconds`` at their longest pauses."""
        if len(samples) <= self.max_seconds * TARGET_RATE:
            return [(0, len(samples))]
        return segment_at_pauses(samples, TARGET_RATE, self.max_seconds)

    # ----- the task of a recording -----
    def task_for(self, task: str | None, language: str | None) -> tuple[str, str]:
        """(task, language): a given task wins; else ASR for the model's ASR languages and ST otherwise; with neither,
        the trained task, else the first ASR language."""
        if task is not None and task not in ("asr", "st"):
            raise ValueError(f"task must be 'asr' or 'st', not {task!r}")
        if language is None:
            language = self.asr_langs[0] if (task or self.trained_task or "asr") == "asr" else None
        if task is None:
            task = self.trained_task or ("asr" if language in self.asr_langs else "st")
        if language is None and self.decoder.needs_lang:
            raise ValueError("this model needs the source language of a translation: give language=... (--lang)")
        return task, language

    # ----- the Python API -----
    def transcribe(self, audio: str | os.PathLike | np.ndarray, language: str | None = None,
                   sample_rate: int = TARGET_RATE) -> Result:
        """Recognise one recording (a path, or float samples (T,) or (T, channels) at ``sample_rate``)."""
        return self._single(audio, "asr", language, sample_rate)

    def translate(self, audio: str | os.PathLike | np.ndarray, source_language: str | None = None,
                  sample_rate: int = TARGET_RATE) -> Result:
        """Translate one recording into the model's target language (English in the recipe)."""
        return self._single(audio, "st", source_language, sample_rate)

    def transcribe_batch(self, paths: Iterable[str | os.PathLike], language: str | None = None) -> list[Result]:
        return list(self.run([InputAudio(str(p), str(p)) for p in paths], "asr", language))

    def translate_batch(self, paths: Iterable[str | os.PathLike], source_language: str | None = None) -> list[Result]:
        return list(self.run([InputAudio(str(p), str(p)) for p in paths], "st", source_language))

    def _single(self, audio, task, language, sample_rate) -> Result:
        if isinstance(audio, np.ndarray):
            samples = np.asarray(audio, dtype=np.float32)
            if samples.ndim == 2:  # (T, channels), as soundfile.read gives: mixed down
                samples = samples.mean(axis=1)
            samples = resample(np.ascontiguousarray(samples.reshape(-1)), sample_rate)
            return self._decode_chunk([("array", samples)], *self.task_for(task, language))[0]
        result = next(self.run([InputAudio(str(audio), str(audio))], task, language))
        if result.error:
            raise AudioError(f"{result.key}: {result.error}")
        return result

    def run(self, items: list[InputAudio], task: str | None = None, language: str | None = None,
            progress: bool = False) -> Iterator[Result]:
        """Decode recordings in order, ``batch_size`` at a time; one Result per item (``error`` set for audio that
        cannot be read, the others decoded all the same). ``language`` (else each item's own, a data dir's
        utt2lang) picks each recording's task unless ``task`` is given (:meth:`task_for`)."""
        with tqdm(total=len(items), desc="infer", unit="file", disable=not progress) as bar:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                choice = {item.key: self.task_for(task, language or item.language) for item in chunk}
                groups: dict[tuple[str, str | None], list[tuple[str, np.ndarray]]] = {}
                results: dict[str, Result] = {}
                for item in chunk:
                    try:
                        groups.setdefault(choice[item.key], []).append((item.key, load_input(item)))
                    except AudioError as exc:
                        results[item.key] = Result(item.key, "", *choice[item.key], 0.0, error=str(exc))
                for (group_task, group_language), recordings in groups.items():  # one task and language each
                    for result in self._decode_chunk(recordings, group_task, group_language):
                        results[result.key] = result
                for item in chunk:
                    yield results[item.key]
                bar.update(len(chunk))

    def _decode_chunk(self, recordings: list[tuple[str, np.ndarray]], task: str, language: str | None
                      ) -> list[Result]:
        """Split each recording at pauses, decode all parts in batches (longest first), join each one's parts."""
        begin = time.perf_counter()
        pieces: list[_Piece] = []
        results = []
        for index, (key, samples) in enumerate(recordings):
            result = Result(key, "", task if self.decoder.needs_task else None, language, len(samples) / TARGET_RATE)
            ranges = [(first, last) for first, last in self.split(samples) if last - first >= MIN_SECONDS * TARGET_RATE]
            if not ranges:
                result.error = f"too short to decode ({result.duration:.3f} s; at least {MIN_SECONDS} s)"
            for part, (first, last) in enumerate(ranges):
                pieces.append(_Piece(index, part, self.extract(samples[first:last])))
            result.parts = len(ranges)
            results.append(result)
        texts: list[list[tuple[int, str]]] = [[] for _ in recordings]  # (part, text) per recording
        order = sorted(pieces, key=lambda p: -len(p.feats))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            keys = [f"{recordings[p.index][0]} (part {p.part + 1})" for p in batch]
            nbest, _ = decode_batch(self.decoder, [p.feats for p in batch], self.options, keys,
                                    [task] * len(batch), [language] * len(batch))
            for piece, hyps in zip(batch, nbest):
                best = hyps[0]
                texts[piece.index].append((piece.part, one_line(self.decoder.to_text(best.tokens))))
                results[piece.index].num_tokens += best.num_tokens
                results[piece.index].score += best.logprob
        seconds = (time.perf_counter() - begin) / max(len(recordings), 1)
        for result, parts in zip(results, texts):
            result.text = " ".join(text for _, text in sorted(parts) if text)
            result.seconds = seconds
        return results
