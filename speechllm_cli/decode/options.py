"""The options of ``speechllm decode`` and ``speechllm rescore``: the one place their defaults are written.

``speechllm decode`` (speechllm_cli/commands/decoding.py), :func:`speechllm_cli.decode.decode.decode` and each
``--nj`` job take their defaults from :class:`DecodeOptions` (what decides the outputs, recorded in decode.yaml) and
:class:`DecodeRun` (how the decode runs); ``speechllm rescore`` and :func:`speechllm_cli.decode.rescore.rescore`
from :class:`RescoreOptions`. This module imports no torch, so the command line starts fast.

Example:
    >>> options = DecodeOptions(beam=4, nbest=2)
    >>> options.validate()
    >>> options.record()["asr_langs"], DecodeRun().nj, RescoreOptions().grid
    (['en'], 1, '0:1:0.1')
"""

from __future__ import annotations

import dataclasses

from speechllm_cli.score.score import ASR_LANGS

ENGINES = ("pytorch", "llamacpp")
LLM_DTYPES = ("float32", "bfloat16", "float16")


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
    asr_langs: tuple[str, ...] = ASR_LANGS  # utt2lang values decoded as ASR; every other language is ST
    task: str | None = None  # "asr" or "st" for every utterance, whatever utt2lang says
    ctc_weight: float = 0.0  # seq2seq models: weight of the CTC prefix scores (0: attention only)
    engine: str = "pytorch"  # "pytorch" (any model) or "llamacpp" (a speech-LLM's LLM exported to GGUF)
    gguf: str | None = None  # llamacpp: the GGUF file (None: <model>/gguf/llm-f16.gguf, exported on first use)
    dtype: str | None = None  # pytorch: a speech-LLM's LLM dtype (None: as trained); bfloat16 is ~2x faster on CPUs
    # with bf16 instructions, at slightly different scores

    def validate(self) -> None:
        if self.beam < 1 or self.max_new_tokens < 1:
            raise ValueError(f"beam ({self.beam}) and max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ValueError(f"--ctc-weight must be in [0, 1), got {self.ctc_weight}")
        if self.nbest > self.beam:
            raise ValueError(f"--nbest {self.nbest} needs --beam >= {self.nbest} (beam is {self.beam})")
        if self.task not in (None, "asr", "st"):
            raise ValueError(f"--task must be 'asr' or 'st', not {self.task!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.gguf is not None and self.engine != "llamacpp":
            raise ValueError("--gguf is for --engine llamacpp")
        if self.dtype is not None and (self.engine != "pytorch" or self.dtype not in LLM_DTYPES):
            raise ValueError(f"--dtype is for --engine pytorch, one of {', '.join(LLM_DTYPES)}; got {self.dtype!r} "
                             f"with --engine {self.engine} (llama.cpp's type is the GGUF's: export-gguf --type)")

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        out["asr_langs"] = list(self.asr_langs)
        return out


@dataclasses.dataclass
class DecodeRun:
    """How a decode runs: the outputs do not depend on it (it is not part of decode.yaml's identity)."""

    batch_size: int = 8  # utterances per batch
    nj: int = 1  # parallel jobs (the data dir split by speaker), run through ``cmd``
    cmd: str = "run.pl"  # job launcher: run.pl (local) or slurm.pl (cluster), with options
    device: str = "cpu"  # cpu or cuda
    llm_path: str | None = None  # the LLM, when it moved since training (its content hash must match)
    num_threads: int = 0  # torch threads of a job (0: torch's default; with nj > 1 the cores divided among jobs)


@dataclasses.dataclass
class RescoreOptions:
    """``speechllm rescore``'s options besides its inputs and output (all recorded in rescore.yaml)."""

    weight: float = 0.3  # LLM weight L: rank by (1 - L) * decoder logprob + L * LLM logprob
    length_normalise: bool = False  # divide each log-prob by its own token count first
    batch_size: int = 16  # hypotheses per LLM forward
    tune_nbest: str | None = None  # a dev nbest.txt to pick the weight on (from ``grid``); replaces ``weight``
    grid: str = "0:1:0.1"  # weights tried with ``tune_nbest``: start:stop:step, stop included
    asr_langs: tuple[str, ...] | None = None  # languages scored as recognition (WER) when tuning; None: those the
    # tuning n-best was decoded with (its decode.yaml, i.e. the model's training choice), else ASR_LANGS
    device: str = "cpu"  # cpu or cuda
    dtype: str = "float32"  # LLM dtype: float32, bfloat16 or float16
