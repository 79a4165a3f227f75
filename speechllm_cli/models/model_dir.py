"""One saved-model format: every model dir has ``model.yaml`` with ``model_type`` (``models/load.py: load_model``
reads any of them).

Example::

    from speechllm_cli.models.model_dir import read_model_record

    read_model_record("exp/speechllm/model")["model_type"]     # "speech_llm"

``model.yaml`` of each type (what else the dir holds is in each type's io module)::

    model_type: ctc_compressor      config (CTCCompressorConfig), weights, tokenizer       ctc_compressor_io.py
    model_type: seq2seq             config (the experiment config), weights, tokenizer     seq2seq_io.py
    model_type: speech_llm          config (SpeechLLMConfig), llm {path, hash},            speech_llm_io.py
    model_type: decoder_only          frontend_hash, training {task, asr_langs, target}
    model_type: text_llm            config (TextLLMConfig), llm {path, hash}, training; lora/    text_llm.py
    model_type: whisper             source, hash, num_mel_bins, input (padded_30s | real_length);   whisper/export.py,
                                      fine-tuned: base {path, hash}, training (a transformers dir)  whisper/finetuned.py
    model_type: kmeans_units        config (KMeansConfig), frontend_hash, stats; centroids        kmeans_units.py,
                                                                                            frontends/kmeans_units.py

To add a model type: write its save/load module, add a ``MODEL_TYPES`` line and a branch in ``load.py``, and teach
``speechllm decode`` its scorer (``decode/decode.py: load_decode_model``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from speechllm_cli.utils.io import atomic_write_text

RECORD_NAME = "model.yaml"
SPEECH_LLM_TYPES = ("speech_llm", "decoder_only")  # saved by speech_llm_io, decoded with the LLM scorer
MODEL_TYPES = ("ctc_compressor", "seq2seq", *SPEECH_LLM_TYPES, "text_llm", "whisper", "kmeans_units")
OLDER_RECORDS = ("speech_llm.yaml", "model.json")  # what model dirs held before model.yaml


def write_model_record(model_dir: str | os.PathLike, model_type: str, **fields) -> Path:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
    path = Path(model_dir) / RECORD_NAME
    atomic_write_text(path, yaml.safe_dump({"model_type": model_type, **fields}, sort_keys=False))
    return path


def read_model_record(model_dir: str | os.PathLike, expect: tuple[str, ...] = MODEL_TYPES) -> dict:
    """The parsed ``model.yaml`` of ``model_dir``; its model_type must be one of ``expect``."""
    path = Path(model_dir) / RECORD_NAME
    if not path.is_file():
        older = [name for name in OLDER_RECORDS if (Path(model_dir) / name).is_file()]
        hint = (f"; its {older[0]} was written by an older speechllm whose layout this one does not read: retrain "
                "it (the recipe's stage 5)") if older else ""
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a saved model dir (training writes "
                                f"{RECORD_NAME}; give `speechllm train --out`'s dir or its model/ dir){hint}")
    record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    model_type = record.get("model_type") if isinstance(record, dict) else None
    if model_type not in expect:
        raise ValueError(f"{path}: model_type {model_type!r} where one of {list(expect)} is needed")
    return record


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / RECORD_NAME).is_file()


GGUF_DIR = "gguf"  # in a model dir: its GGUF exports


def model_fingerprint(model_dir: str | os.PathLike | None) -> str | None:
    """A short hash of the names and contents of the files in ``model_dir``: it changes when the model is
    retrained or replaced (so a finished decode dir is not mistaken as up to date), not when the same model
    is written again (a finished training resumed). Its ``gguf/`` exports (``decode --engine llamacpp``) are
    derived files and do not count."""
    if model_dir is None:
        return None
    root = Path(model_dir)
    digest = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != GGUF_DIR):
        digest.update(f"{path.relative_to(root)}\n".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def resolve_recorded_path(recorded: str, base: str | os.PathLike) -> str:
    """A path a model dir records (its LLM, front-end or Whisper dir): relative to ``base`` (the dir that records
    it) when it is relative and exists there, as a package writes it; else as recorded (absolute, or relative to the
    working dir, as the recipe writes it)."""
    if recorded and not Path(recorded).is_absolute() and (Path(base) / recorded).exists():
        return str(Path(base) / recorded)
    return recorded
