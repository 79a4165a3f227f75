"""Build, save and load a SpeechLLM; a saved model records which LLM (path + content hash) and compressor it used.

Example::

    from speechllm_cli.models.speech_llm import SpeechLLMConfig
    from speechllm_cli.models.speech_llm_io import build_speech_llm, load_speech_llm, save_speech_llm

    model = build_speech_llm(SpeechLLMConfig(llm="/tmp/smollm2_hf"), "exp/ctc_compressor")
    save_speech_llm(model, "exp/speech_llm/model", extra={"step": 1000})
    model = load_speech_llm("exp/speech_llm/model", device="cpu")

A saved model dir holds::

    audio_encoder.safetensors     the audio encoder
    adapter/                      the LoRA adapter in PEFT's format (absent when lora.rank = 0);
                                  peft.PeftModel.from_pretrained(llm, dir / "adapter") loads it on the same LLM
    llm.safetensors               with train_llm only: every trained LLM weight (the causal LM's parameter names,
                                  a tied output projection once); loaded on top of the recorded initial LLM
    speech_llm.yaml               llm: {path, hash}, compressor_dir, config (SpeechLLMConfig), extra
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from safetensors.torch import load_file, save_file

from speechllm_cli.models.llm import find_embedded_gguf, llm_content_hash, load_llm
from speechllm_cli.utils.io import atomic_dir

if TYPE_CHECKING:
    from torch import nn

    from speechllm_cli.models.speech_llm import SpeechLLM, SpeechLLMConfig

logger = logging.getLogger(__name__)

RECORD_NAME = "speech_llm.yaml"
ENCODER_NAME = "audio_encoder.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # PEFT's file name inside ADAPTER_DIR
LLM_WEIGHTS_NAME = "llm.safetensors"


class LLMMismatchError(RuntimeError):
    """The LLM found is not the one a speech-LLM was trained with."""


class AdapterMismatchError(ValueError):
    """A saved LoRA adapter does not fit the model its record describes (missing or unexpected weights)."""


def resolve_llm_path(llm: str | os.PathLike | None) -> Path:
    """The configured LLM path, or the embedded SmolLM2 GGUF for ``""``/None."""
    return Path(llm).resolve() if llm else find_embedded_gguf()


def _load_compressor(compressor_dir, device):
    """(compressor, its CTC pieces in id order)."""
    from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor

    compressor, tokenizer = load_ctc_compressor(compressor_dir, device)
    return compressor, list(tokenizer.tokens)


def build_speech_llm(
    config: SpeechLLMConfig,
    compressor_dir: str | os.PathLike | None,
    device: str = "cpu",
    compressor: nn.Module | None = None,
    ctc_pieces: list[str] | None = None,
) -> SpeechLLM:
    """A fresh SpeechLLM: the LLM from ``config.llm``, the trained compressor from ``compressor_dir`` (or the
    ``compressor`` module given, with its CTC vocabulary ``ctc_pieces``), a new audio encoder and new LoRA weights."""
    from speechllm_cli.models.speech_llm import SpeechLLM

    llm_path = resolve_llm_path(config.llm)
    if llm_path.suffix == ".gguf":
        logger.warning("loading GGUF %s takes ~20 s each time; export it once with export_llm", llm_path)
    llm, tokenizer = load_llm(llm_path, config.dtype, device, config.attn_implementation)
    if compressor is None:
        if compressor_dir is None:
            raise ValueError("build_speech_llm needs compressor_dir (a trained CTC compressor) or a compressor module")
        compressor, ctc_pieces = _load_compressor(compressor_dir, device)
    model = SpeechLLM(config, compressor, llm, tokenizer, ctc_pieces=ctc_pieces).to(device)
    model.llm_hash = llm_content_hash(llm_path)
    model.compressor_dir = str(Path(compressor_dir).resolve()) if compressor_dir is not None else None
    return model


def save_speech_llm(model: SpeechLLM, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the audio encoder, the LoRA adapter (or with ``train_llm`` the LLM weights) and speech_llm.yaml to
    ``out_dir`` (replaced atomically)."""
    out_dir = Path(out_dir)
    llm_path = resolve_llm_path(model.config.llm)
    if model.llm_hash is None:
        model.llm_hash = llm_content_hash(llm_path)
    record = {
        "llm": {"path": str(llm_path), "hash": model.llm_hash},
        "compressor_dir": model.compressor_dir,
        "config": model.config.to_dict(),
        "extra": extra or {},
    }
    with atomic_dir(out_dir) as tmp_dir:
        encoder_state = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
        save_file(encoder_state, tmp_dir / ENCODER_NAME)
        if model.config.lora.rank > 0:
            model.llm.save_pretrained(tmp_dir / ADAPTER_DIR)
        if model.config.train_llm:
            llm_state = {k: p.detach().cpu().contiguous() for k, p in model.hf_llm.named_parameters()}
            save_file(llm_state, tmp_dir / LLM_WEIGHTS_NAME)
        (tmp_dir / RECORD_NAME).write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    logger.info("saved speech LLM to %s", out_dir)
    return out_dir


def read_record(model_dir: str | os.PathLike) -> dict:
    """The parsed speech_llm.yaml of a saved model dir."""
    path = Path(model_dir) / RECORD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a saved speech-LLM (save_speech_llm writes it)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_speech_llm(
    model_dir: str | os.PathLike,
    device: str = "cpu",
    llm_path: str | os.PathLike | None = None,
    compressor_dir: str | os.PathLike | None = None,
    compressor: nn.Module | None = None,
    trainable: bool = False,
) -> SpeechLLM:
    """Rebuild a saved SpeechLLM. The LLM is the recorded one unless ``llm_path`` is given; either way its content
    hash must equal the recorded hash (LLMMismatchError otherwise); a ``train_llm`` model then gets its trained LLM
    weights from ``llm.safetensors``. ``trainable=False`` freezes everything."""
    from speechllm_cli.models.speech_llm import SpeechLLM, SpeechLLMConfig

    model_dir = Path(model_dir)
    record = read_record(model_dir)
    record["config"].pop("blank_id", None)  # recorded by older versions; the compressor's blank id is the one used
    config = SpeechLLMConfig(**record["config"])
    llm = Path(llm_path) if llm_path else Path(record["llm"]["path"])
    if not llm.exists():
        raise FileNotFoundError(
            f"LLM {llm} recorded in {model_dir / RECORD_NAME} not found; pass the path of the same LLM (llm_path=...)"
        )
    found_hash, recorded_hash = llm_content_hash(llm), record["llm"]["hash"]
    if found_hash != recorded_hash:
        raise LLMMismatchError(
            f"LLM {llm} has content hash {found_hash}, but the speech LLM in {model_dir} was trained on an LLM with "
            f"hash {recorded_hash} (recorded in {model_dir / RECORD_NAME}). Its adapter and audio encoder only fit "
            "that LLM: point llm_path at the original LLM (re-export it with export_llm if it was a GGUF export), "
            "or retrain the speech LLM on this one."
        )
    config.llm = str(llm)
    llm_model, tokenizer = load_llm(llm, config.dtype, device, config.attn_implementation)
    if compressor is None:
        compressor_dir = compressor_dir or record.get("compressor_dir")
        if not compressor_dir:
            raise ValueError(f"{model_dir / RECORD_NAME} records no compressor_dir; pass compressor_dir=...")
        compressor, _ = _load_compressor(compressor_dir, device)
    adapter = model_dir / ADAPTER_DIR if config.lora.rank > 0 else None
    model = SpeechLLM(config, compressor, llm_model, tokenizer, adapter_dir=adapter)
    if adapter is not None:
        check_adapter(model.llm, adapter, config.lora)
    model.encoder.load_state_dict(load_file(model_dir / ENCODER_NAME))
    if config.train_llm:
        _load_llm_weights(model.hf_llm, model_dir / LLM_WEIGHTS_NAME)
    model.llm_hash = found_hash
    model.compressor_dir = str(compressor_dir) if compressor_dir else record.get("compressor_dir")
    if not trainable:
        model.requires_grad_(False)
    return model.to(device).train(trainable)


def check_adapter(peft_llm: nn.Module, adapter_dir: Path, lora) -> None:
    """The LoRA adapter in ``adapter_dir`` fits the model: its weight file holds exactly the LoRA weights the model
    has (PEFT alone only warns and leaves a missing weight at its initial value, i.e. decodes without LoRA), with
    the recorded rank and target modules (``lora``, the record's LoraSettings). AdapterMismatchError otherwise."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    weights = adapter_dir / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the adapter of {adapter_dir.parent} is incomplete; copy the "
                                "whole model dir again (or save it again from its experiment's checkpoints)")
    with safe_open(str(weights), framework="pt") as f:
        found = set(f.keys())
    expected = set(get_peft_model_state_dict(peft_llm).keys())
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{weights} does not fit the model recorded in {adapter_dir.parent / RECORD_NAME}: "
            f"{len(missing)} LoRA weight(s) missing (first: {missing[:3]}), {len(unexpected)} unexpected (first: "
            f"{unexpected[:3]}); decoding it would run without (part of) its LoRA. Use the adapter saved with this "
            "speech_llm.yaml (the same model dir), or save the model again"
        )
    peft_config = next(iter(peft_llm.peft_config.values()))
    if peft_config.r != lora.rank or set(peft_config.target_modules) != set(lora.target_modules):
        raise AdapterMismatchError(
            f"{adapter_dir / 'adapter_config.json'} has rank {peft_config.r} on {sorted(peft_config.target_modules)}, "
            f"but {adapter_dir.parent / RECORD_NAME} records rank {lora.rank} on {sorted(lora.target_modules)}; "
            "use the adapter saved with this speech_llm.yaml (the same model dir)"
        )


def _load_llm_weights(hf_llm: nn.Module, path: Path) -> None:
    """Put the trained LLM weights saved in ``path`` into ``hf_llm`` (every parameter, nothing else)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the speech LLM in {path.parent} was trained with train_llm, "
                                "so its trained LLM weights must be there; copy the whole model dir")
    state = load_file(path)
    expected = {name for name, _ in hf_llm.named_parameters()}
    if set(state) != expected:
        raise KeyError(f"{path} does not fit the recorded LLM: missing {sorted(expected - set(state))[:5]}, "
                       f"unexpected {sorted(set(state) - expected)[:5]}")
    hf_llm.load_state_dict(state, strict=False)
