"""Build, save and load a SpeechLLM; a saved model records the LLM and the front-end it used, by content hash.

Example::

    from speechllm_cli.models.speech_llm import SpeechLLMConfig
    from speechllm_cli.models.speech_llm_io import build_speech_llm, load_speech_llm, save_speech_llm

    config = SpeechLLMConfig(llm="/tmp/smollm2_hf", frontend={"dir": "exp/ctc_compressor"})
    model = build_speech_llm(config)
    save_speech_llm(model, "exp/speech_llm/model", training={"task": "auto", "asr_langs": ["en"]})
    model = load_speech_llm("exp/speech_llm/model", device="cpu")      # or load.load_model

A saved model dir holds::

    model.yaml            model_type (speech_llm | decoder_only), llm {path, hash}, frontend_hash, config
                          (SpeechLLMConfig: front-end and adapter sections included), training {task, asr_langs,
                          target} (decoding's defaults), extra
    audio.safetensors     the trained audio side: adapter.*, label_table.* (the front-end is frozen and referenced by
                          its config and hash, like the LLM)
    lora/                 the LoRA adapter in PEFT's format (absent when lora.rank = 0);
                          peft.PeftModel.from_pretrained(llm, dir / "lora") loads it on the same LLM
    llm.safetensors       with train_llm only: every trained LLM weight (the causal LM's parameter names,
                          a tied output projection once); loaded on top of the recorded initial LLM

Loading checks the LLM's and the front-end's content hashes against the record: a retrained compressor (or another
LLM) raises instead of decoding silently with different output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file, save_file

from speechllm_cli.models.frontends import FRONTENDS, build_frontend, frontend_config
from speechllm_cli.models.llm import find_embedded_gguf, llm_content_hash, load_llm
from speechllm_cli.models.model_dir import (
    SPEECH_LLM_TYPES,
    read_model_record,
    resolve_recorded_path,
    write_model_record,
)
from speechllm_cli.utils.io import atomic_dir

if TYPE_CHECKING:
    from torch import nn

    from speechllm_cli.models.speech_llm import SpeechLLM, SpeechLLMConfig

logger = logging.getLogger(__name__)

AUDIO_NAME = "audio.safetensors"
LORA_DIR = "lora"
LORA_WEIGHTS_NAME = "adapter_model.safetensors"  # PEFT's file name inside LORA_DIR
LLM_WEIGHTS_NAME = "llm.safetensors"


class LLMMismatchError(RuntimeError):
    """The LLM found is not the one a speech-LLM was trained with."""


class FrontEndMismatchError(RuntimeError):
    """The front-end found (e.g. a retrained CTC compressor) is not the one a speech LLM was trained with."""


class LoraMismatchError(ValueError):
    """A saved LoRA adapter does not fit the model its record describes (missing or unexpected weights)."""


def resolve_llm_path(llm: str | os.PathLike | None) -> Path:
    """The configured LLM path, or the embedded SmolLM2 GGUF for ``""``/None."""
    return Path(llm).resolve() if llm else find_embedded_gguf()


def build_speech_llm(config: SpeechLLMConfig, device: str = "cpu", frontend: nn.Module | None = None) -> SpeechLLM:
    """A fresh SpeechLLM: the LLM from ``config.llm``, the front-end its config section names (or the ``frontend``
    module given), a new adapter and new LoRA weights."""
    from speechllm_cli.models.speech_llm import SpeechLLM

    llm_path = resolve_llm_path(config.llm)
    if llm_path.suffix == ".gguf":
        logger.warning("loading GGUF %s takes ~20 s each time; export it once with export_llm", llm_path)
    llm, tokenizer = load_llm(llm_path, config.dtype, device, config.attn_implementation)
    frontend = frontend if frontend is not None else build_frontend(config.frontend, device)
    model = SpeechLLM(config, frontend, llm, tokenizer).to(device)
    model.llm_hash = llm_content_hash(llm_path)
    model.frontend_hash = frontend.content_hash()
    return model


def save_speech_llm(model: SpeechLLM, out_dir: str | os.PathLike, training: dict | None = None,
                    model_type: str = "speech_llm", extra: dict | None = None) -> Path:
    """Write the audio side, the LoRA adapter (or with ``train_llm`` the LLM weights) and model.yaml to ``out_dir``
    (replaced atomically). ``training``: the task choice it was trained with (decoding's defaults)."""
    if model_type not in SPEECH_LLM_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {SPEECH_LLM_TYPES}")
    out_dir = Path(out_dir)
    llm_path = resolve_llm_path(model.config.llm)
    if model.llm_hash is None:
        model.llm_hash = llm_content_hash(llm_path)
    training = training if training is not None else model.training_choice
    with atomic_dir(out_dir) as tmp_dir:
        save_file(_audio_state(model), tmp_dir / AUDIO_NAME)
        if model.config.lora.rank > 0:
            save_lora(model.llm, tmp_dir / LORA_DIR)
        if model.config.train_llm:
            llm_state = {k: p.detach().cpu().contiguous() for k, p in model.hf_llm.named_parameters()}
            save_file(llm_state, tmp_dir / LLM_WEIGHTS_NAME)
        write_model_record(tmp_dir, model_type, llm={"path": str(llm_path), "hash": model.llm_hash},
                           frontend_hash=model.frontend_hash, config=model.config.to_dict(),
                           training=dict(training), extra=extra or {})
    logger.info("saved speech LLM to %s", out_dir)
    return out_dir


def save_lora(peft_llm: nn.Module, lora_dir: Path) -> None:
    """PEFT's ``save_pretrained``, with ``adapter_config.json``'s lists sorted: PEFT writes ``target_modules`` from a
    set, in an order that changes from process to process, and the same model must give the same files (a decode
    of it stays up to date: decode_io's model fingerprint)."""
    import json

    peft_llm.save_pretrained(lora_dir)
    config_path = lora_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key, value in config.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _audio_state(model: SpeechLLM) -> dict:
    """Every weight of the audio side that trained: the adapter's, the label table's, the front-end's trainable ones."""
    state = {f"adapter.{k}": v for k, v in model.adapter.state_dict().items()}
    if getattr(model.frontend, "trainable", False):  # its state dict holds its trainable weights only
        state.update({f"frontend.{k}": v for k, v in model.frontend.state_dict().items()})
    if model.label_table is not None:
        state.update({f"label_table.{k}": v for k, v in model.label_table.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def read_record(model_dir: str | os.PathLike) -> dict:
    """The parsed model.yaml of a saved speech-LLM dir."""
    return read_model_record(model_dir, expect=SPEECH_LLM_TYPES)


def load_speech_llm(
    model_dir: str | os.PathLike,
    device: str = "cpu",
    llm_path: str | os.PathLike | None = None,
    frontend: nn.Module | None = None,
    trainable: bool = False,
    dtype: str | None = None,
    audio_only: bool = False,
) -> SpeechLLM:
    """Rebuild a saved SpeechLLM. The LLM is the recorded one unless ``llm_path`` is given, the front-end the one its
    config names unless a ``frontend`` module is given; the content hashes of both must equal the recorded ones
    (LLMMismatchError / FrontEndMismatchError otherwise). ``trainable=False`` freezes everything. ``dtype``: the LLM's
    dtype (default: the one it was trained in, ``config.dtype``), e.g. bfloat16 to decode faster on a CPU with bf16
    instructions. ``audio_only``: the front-end, adapter, label table, tokenizer and the LLM's input embeddings, the
    rest of the LLM left on the meta device and no LoRA (another engine runs the LLM: ``decode --engine llamacpp``),
    so a 7B LLM costs its embedding table, not its weights."""
    from speechllm_cli.models.speech_llm import SpeechLLM, SpeechLLMConfig

    model_dir = Path(model_dir)
    record = read_record(model_dir)
    config = SpeechLLMConfig(**record["config"])
    _resolve_frontend_dir(config.frontend, model_dir)
    llm, found_hash = recorded_llm(model_dir, record, llm_path)
    config.llm = str(llm)
    config.dtype = dtype or config.dtype
    frontend_hash = record.get("frontend_hash")
    if frontend is None:
        check_frontend_unchanged(model_dir, record)
        frontend = build_frontend(config.frontend, device)
    if audio_only:
        return _load_audio_side(model_dir, record, config, llm, frontend, device, found_hash, frontend_hash)
    llm_model, tokenizer = load_llm(llm, config.dtype, device, config.attn_implementation)
    lora = model_dir / LORA_DIR if config.lora.rank > 0 else None
    model = SpeechLLM(config, frontend, llm_model, tokenizer, lora_dir=lora, new_label_table=False)
    if lora is not None:
        check_lora(model.llm, lora, config.lora)
    _load_audio_state(model, model_dir / AUDIO_NAME)
    if config.train_llm:
        _load_llm_weights(model.hf_llm, model_dir / LLM_WEIGHTS_NAME)
    model.llm_hash, model.frontend_hash = found_hash, frontend_hash
    model.training_choice = dict(record.get("training") or {})
    if not trainable:
        model.requires_grad_(False)
    return model.to(device).train(trainable)


def recorded_llm(model_dir: Path, record: dict, llm_path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The LLM a saved model was trained on (``llm_path``, else the recorded path) and its content hash, which must
    equal the recorded one (LLMMismatchError otherwise)."""
    llm = Path(llm_path) if llm_path else Path(resolve_recorded_path(record["llm"]["path"], model_dir))
    if not llm.exists():
        raise FileNotFoundError(
            f"LLM {llm} recorded in {model_dir / 'model.yaml'} not found; pass the path of the same LLM (llm_path=...)"
        )
    found_hash, recorded_hash = llm_content_hash(llm), record["llm"]["hash"]
    if found_hash != recorded_hash:
        raise LLMMismatchError(
            f"LLM {llm} has content hash {found_hash}, but the model in {model_dir} was trained on an LLM with "
            f"hash {recorded_hash} (recorded in {model_dir / 'model.yaml'}). Its adapter and LoRA only fit "
            "that LLM: point llm_path at the original LLM (re-export it with export_llm if it was a GGUF export), "
            "or retrain the model on this one."
        )
    return llm, found_hash


def _load_audio_side(model_dir: Path, record: dict, config, llm: Path, frontend, device, llm_hash, frontend_hash):
    """load_speech_llm(audio_only=True): a frozen SpeechLLM whose LLM is a skeleton (load_llm_skeleton)."""
    import dataclasses

    from speechllm_cli.models.llm import load_llm_skeleton
    from speechllm_cli.models.speech_llm import LoraSettings, SpeechLLM

    embeddings = model_dir / LLM_WEIGHTS_NAME if config.train_llm else None
    skeleton, tokenizer = load_llm_skeleton(llm, config.dtype, config.attn_implementation, embeddings)
    no_lora = dataclasses.replace(config, lora=LoraSettings(rank=0), train_llm=False)
    model = SpeechLLM(no_lora, frontend, skeleton, tokenizer, new_label_table=False)
    _load_audio_state(model, model_dir / AUDIO_NAME)
    model.llm_hash, model.frontend_hash = llm_hash, frontend_hash
    model.training_choice = dict(record.get("training") or {})
    model.requires_grad_(False)
    for part in (model.frontend, model.adapter, model.label_table, skeleton.get_input_embeddings()):
        if part is not None:
            part.to(device)
    return model.eval()


def check_frontend_unchanged(model_dir: str | os.PathLike, record: dict | None = None) -> None:
    """The front-end a saved speech LLM names is still the one it was trained with (its content hash equals the
    recorded one); FrontEndMismatchError otherwise. Cheap: hashes the front-end's files without loading them."""
    record = record or read_record(model_dir)
    config = frontend_config(record["config"]["frontend"])
    _resolve_frontend_dir(config, model_dir)
    recorded, found = record.get("frontend_hash"), FRONTENDS.cls(config).source_hash(config)
    if recorded is not None and found != recorded:
        raise FrontEndMismatchError(
            f"the {config.type} front-end of {model_dir} ({getattr(config, 'dir', '')}) has content hash {found}, "
            f"but the model was trained on one with hash {recorded} (recorded in {Path(model_dir) / 'model.yaml'}): "
            "it was retrained or replaced since, and the adapter only fits the original. Restore the original "
            "front-end, or retrain the speech LLM on this one (run.sh --stage 5)."
        )


def _resolve_frontend_dir(frontend, model_dir: str | os.PathLike) -> None:
    """A front-end's ``dir`` relative to the model dir when it is there (a package), in place."""
    if getattr(frontend, "dir", ""):
        frontend.dir = resolve_recorded_path(frontend.dir, model_dir)


def _load_audio_state(model: SpeechLLM, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model dir {path.parent} is incomplete; copy the whole dir")
    state = load_file(path)
    expected = set(_audio_state(model))
    if set(state) != expected:
        raise KeyError(f"{path} does not fit the adapter recorded in {path.parent / 'model.yaml'}: missing "
                       f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=False)


def check_lora(peft_llm: nn.Module, adapter_dir: Path, lora) -> None:
    """The LoRA adapter in ``adapter_dir`` fits the model: its weight file holds exactly the LoRA weights the model
    has (PEFT alone only warns and leaves a missing weight at its initial value, i.e. decodes without LoRA), with
    the recorded rank and target modules (``lora``, the record's LoraSettings). LoraMismatchError otherwise."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    weights = adapter_dir / LORA_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the adapter of {adapter_dir.parent} is incomplete; copy the "
                                "whole model dir again (or save it again from its experiment's checkpoints)")
    with safe_open(str(weights), framework="pt") as f:
        found = set(f.keys())
    expected = set(get_peft_model_state_dict(peft_llm).keys())
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise LoraMismatchError(
            f"{weights} does not fit the model recorded in {adapter_dir.parent / 'model.yaml'}: "
            f"{len(missing)} LoRA weight(s) missing (first: {missing[:3]}), {len(unexpected)} unexpected (first: "
            f"{unexpected[:3]}); decoding it would run without (part of) its LoRA. Use the adapter saved with this "
            "model.yaml (the same model dir), or save the model again"
        )
    peft_config = next(iter(peft_llm.peft_config.values()))
    if peft_config.r != lora.rank or set(peft_config.target_modules) != set(lora.target_modules):
        raise LoraMismatchError(
            f"{adapter_dir / 'adapter_config.json'} has rank {peft_config.r} on {sorted(peft_config.target_modules)}, "
            f"but {adapter_dir.parent / 'model.yaml'} records rank {lora.rank} on {sorted(lora.target_modules)}; "
            "use the adapter saved with this model.yaml (the same model dir)"
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
