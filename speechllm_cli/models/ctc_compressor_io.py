"""Save and load a trained CTC compressor: the experiment dir ``speechllm train-ctc`` writes is its model dir.

Example::

    from speechllm_cli.models.ctc_compressor_io import ctc_compressor_hash, load_ctc_compressor
    model, tokenizer = load_ctc_compressor("exp/ctc_compressor", device="cpu")   # eval mode, + its CTC tokenizer
    ctc_compressor_hash("exp/ctc_compressor")      # what a speech LLM records of the compressor it was trained on

The dir holds ``model.yaml`` (``model_type: ctc_compressor``, ``config``: the CTCCompressorConfig, ``tokenizer``:
the copied token list dir), ``model.safetensors`` (also ``model.best`` / ``model.avg``; the global CMVN statistics
are buffers in it) and ``tokenizer/`` (bpe.model + tokens.txt). Dirs written before model.yaml existed are read
from their ``config.yaml`` (``model:`` section) instead.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
from speechllm_cli.models.model_dir import is_model_dir, read_model_record, resolve_recorded_path, write_model_record
from speechllm_cli.text.tokenizer import MODEL_NAME, TOKENS_NAME, Tokenizer
from speechllm_cli.utils.config import load_dataclass, read_yaml
from speechllm_cli.utils.io import files_sha256, sha256_text

MODEL_TYPE = "ctc_compressor"
TOKENIZER_DIR = "tokenizer"


def write_ctc_record(model_dir: str | os.PathLike, config: CTCCompressorConfig) -> None:
    extra = {}
    if config.encoder == "whisper":  # the pretrained encoder it was trained on, by content hash
        whisper = read_model_record(config.whisper_dir, expect=("whisper",))
        extra["whisper"] = {"path": config.whisper_dir, "hash": whisper.get("hash")}
    write_model_record(model_dir, MODEL_TYPE, config=dataclasses.asdict(config), weights="model.safetensors",
                       tokenizer=TOKENIZER_DIR, **extra)


def check_whisper_unchanged(model_dir: Path) -> None:
    """The Whisper a compressor was trained on is still the one its config names (same content hash)."""
    record = read_model_record(model_dir, expect=(MODEL_TYPE,))
    if "whisper" not in record:
        return
    path, trained = resolve_recorded_path(record["whisper"]["path"], model_dir), record["whisper"]["hash"]
    now = read_model_record(path, expect=("whisper",)).get("hash")
    if now != trained:
        raise ValueError(f"{model_dir} was trained on the Whisper {path} with hash {trained}, but {path} now has hash "
                         f"{now}: export the same Whisper again or retrain the compressor (stage 4)")


def _config_and_tokenizer_dir(model_dir: Path) -> tuple[CTCCompressorConfig, Path]:
    if is_model_dir(model_dir):
        record = read_model_record(model_dir, expect=(MODEL_TYPE,))
        source = f"{model_dir / 'model.yaml'} (config:)"
        config = load_dataclass(CTCCompressorConfig, record["config"], source=source)
        config.whisper_dir = resolve_recorded_path(config.whisper_dir, model_dir)
        return config, model_dir / record["tokenizer"]
    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir / 'model.yaml'} not found: {model_dir} is not a trained CTC compressor "
                                "(speechllm train-ctc --out writes it)")
    mapping = read_yaml(config_path)
    copied = model_dir / TOKENIZER_DIR
    token_dir = copied if (copied / MODEL_NAME).is_file() else Path(mapping.get("tokenizer", ""))
    return load_dataclass(CTCCompressorConfig, mapping.get("model"), source=f"{config_path} (model:)"), token_dir


def load_ctc_compressor(
    model_dir: str | os.PathLike, device: str | torch.device = "cpu", variant: str = "model"
) -> tuple[CTCCompressor, Tokenizer]:
    """A trained compressor (eval mode) and its tokenizer from ``model_dir``; ``variant`` picks
    ``model`` (final), ``model.best`` or ``model.avg``."""
    model_dir = Path(model_dir)
    config, token_dir = _config_and_tokenizer_dir(model_dir)
    tokenizer = Tokenizer.load(token_dir)
    if is_model_dir(model_dir):
        check_whisper_unchanged(model_dir)
    weights = model_dir / f"{variant}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} missing: training did not finish; rerun train-ctc with --resume")
    model = CTCCompressor(config)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), tokenizer


def ctc_compressor_hash(model_dir: str | os.PathLike) -> str:
    """sha256 over the final weights and the tokenizer of the compressor in ``model_dir`` (and the hash of the Whisper
    under it): it changes when the compressor is retrained."""
    model_dir = Path(model_dir)
    _, token_dir = _config_and_tokenizer_dir(model_dir)
    files = [model_dir / "model.safetensors", token_dir / MODEL_NAME, token_dir / TOKENS_NAME]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: {model_dir} is not a complete CTC compressor dir")
    whisper = read_model_record(model_dir).get("whisper") if is_model_dir(model_dir) else None
    return files_sha256(files) if whisper is None else sha256_text(files_sha256(files) + whisper["hash"])
