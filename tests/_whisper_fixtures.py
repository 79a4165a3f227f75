"""Tiny randomly initialised Whisper models for the fast tests: written as a CTranslate2 dir (model.bin in two parts,
the embedded package's config.json and tokenizer.json) or an openai-whisper checkpoint, then exported with
``speechllm export-whisper``; and real Whisper log-mel dumps of espeak-ng speech.

The CTranslate2 writer here follows the format description in speechllm_cli/models/whisper/ct2.py independently of
the reader (fused q/k/v rows, a zero k bias, the output projection as an alias), so a test of the reader is a test.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from speechllm_cli.models.whisper.export import export_whisper, find_embedded_whisper

TINY = dict(vocab_size=51865, num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
            max_source_positions=1500, max_target_positions=64)


def tiny_whisper(seed: int = 0, **overrides):
    """A random WhisperForConditionalGeneration of the tiny shape (the real vocabulary)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**{**TINY, **overrides}))
    with torch.no_grad():  # transformers zero-initialises some biases: make every weight count
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray) -> bytes:
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    array = np.ascontiguousarray(array)
    head = _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    return head + struct.pack("<BI", codes[array.dtype], array.nbytes) + array.tobytes()


def ct2_bytes(model, dtype=np.float16) -> bytes:
    """``model`` (transformers Whisper) as a CTranslate2 WhisperSpec model.bin."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in model.state_dict().items()}
    cfg = model.config
    variables = {}

    def put(name, array):
        variables[name] = array

    for side, layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(layers):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            attn = f"{hf}.self_attn"
            put(f"{ct}/self_attention/linear_0/weight", np.concatenate(
                [sd[f"{attn}.q_proj.weight"], sd[f"{attn}.k_proj.weight"], sd[f"{attn}.v_proj.weight"]]))
            zeros = np.zeros_like(sd[f"{attn}.q_proj.bias"])
            put(f"{ct}/self_attention/linear_0/bias", np.concatenate(
                [sd[f"{attn}.q_proj.bias"], zeros, sd[f"{attn}.v_proj.bias"]]))
            put(f"{ct}/self_attention/linear_1/weight", sd[f"{attn}.out_proj.weight"])
            put(f"{ct}/self_attention/linear_1/bias", sd[f"{attn}.out_proj.bias"])
            put(f"{ct}/self_attention/layer_norm/gamma", sd[f"{hf}.self_attn_layer_norm.weight"])
            put(f"{ct}/self_attention/layer_norm/beta", sd[f"{hf}.self_attn_layer_norm.bias"])
            if side == "decoder":
                cross = f"{hf}.encoder_attn"
                put(f"{ct}/attention/layer_norm/gamma", sd[f"{hf}.encoder_attn_layer_norm.weight"])
                put(f"{ct}/attention/layer_norm/beta", sd[f"{hf}.encoder_attn_layer_norm.bias"])
                put(f"{ct}/attention/linear_0/weight", sd[f"{cross}.q_proj.weight"])
                put(f"{ct}/attention/linear_0/bias", sd[f"{cross}.q_proj.bias"])
                put(f"{ct}/attention/linear_1/weight", np.concatenate(
                    [sd[f"{cross}.k_proj.weight"], sd[f"{cross}.v_proj.weight"]]))
                put(f"{ct}/attention/linear_1/bias", np.concatenate([zeros, sd[f"{cross}.v_proj.bias"]]))
                put(f"{ct}/attention/linear_2/weight", sd[f"{cross}.out_proj.weight"])
                put(f"{ct}/attention/linear_2/bias", sd[f"{cross}.out_proj.bias"])
            put(f"{ct}/ffn/layer_norm/gamma", sd[f"{hf}.final_layer_norm.weight"])
            put(f"{ct}/ffn/layer_norm/beta", sd[f"{hf}.final_layer_norm.bias"])
            for j, fc in enumerate(("fc1", "fc2")):
                put(f"{ct}/ffn/linear_{j}/weight", sd[f"{hf}.{fc}.weight"])
                put(f"{ct}/ffn/linear_{j}/bias", sd[f"{hf}.{fc}.bias"])
        put(f"{side}/layer_norm/gamma", sd[f"model.{side}.layer_norm.weight"])
        put(f"{side}/layer_norm/beta", sd[f"model.{side}.layer_norm.bias"])
        put(f"{side}/position_encodings/encodings", sd[f"model.{side}.embed_positions.weight"])
        put(f"{side}/num_heads", np.array(getattr(cfg, f"{side}_attention_heads"), np.int16))
    for conv in ("conv1", "conv2"):
        put(f"encoder/{conv}/weight", sd[f"model.encoder.{conv}.weight"])
        put(f"encoder/{conv}/bias", sd[f"model.encoder.{conv}.bias"])
    put("decoder/embeddings/weight", sd["model.decoder.embed_tokens.weight"])
    put("decoder/scale_embeddings", np.array(0, np.int8))
    out = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    out += b"".join(_variable(name, array) for name, array in sorted(variables.items()))
    out += struct.pack("<I", 1) + _string("decoder/projection/weight") + _string("decoder/embeddings/weight")
    return out


def write_ct2_dir(model, out: Path, dtype=np.float16) -> Path:
    """A CTranslate2 Whisper dir: model.bin, and the embedded package's config.json and tokenizer.json."""
    data_dir, _ = find_embedded_whisper()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.bin").write_bytes(ct2_bytes(model, dtype))
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(data_dir / name, out / name)
    return out


def openai_checkpoint(model) -> dict:
    """``model`` as an openai-whisper checkpoint (``dims`` + ``model_state_dict`` in openai's names)."""
    renames = [("model.encoder.layers.", "encoder.blocks."), ("model.decoder.layers.", "decoder.blocks."),
               ("model.encoder.embed_positions.weight", "encoder.positional_embedding"),
               ("model.decoder.embed_positions.weight", "decoder.positional_embedding"),
               ("model.decoder.embed_tokens.weight", "decoder.token_embedding.weight"),
               ("model.encoder.layer_norm.", "encoder.ln_post."), ("model.decoder.layer_norm.", "decoder.ln."),
               ("model.encoder.conv", "encoder.conv"), (".self_attn_layer_norm.", ".attn_ln."),
               (".encoder_attn_layer_norm.", ".cross_attn_ln."), (".final_layer_norm.", ".mlp_ln."),
               (".fc1.", ".mlp.0."), (".fc2.", ".mlp.2."), (".self_attn.", ".attn."),
               (".encoder_attn.", ".cross_attn."),
               (".q_proj.", ".query."), (".k_proj.", ".key."), (".v_proj.", ".value."), (".out_proj.", ".out.")]
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "proj_out.weight":
            continue
        for old, new in renames:
            name = name.replace(old, new)
        state[name] = tensor.clone()
    cfg = model.config
    dims = {"n_mels": cfg.num_mel_bins, "n_vocab": cfg.vocab_size, "n_audio_ctx": cfg.max_source_positions,
            "n_audio_state": cfg.d_model, "n_audio_head": cfg.encoder_attention_heads,
            "n_audio_layer": cfg.encoder_layers, "n_text_ctx": cfg.max_target_positions, "n_text_state": cfg.d_model,
            "n_text_head": cfg.decoder_attention_heads, "n_text_layer": cfg.decoder_layers}
    return {"dims": dims, "model_state_dict": state}


def export_tiny_whisper(root: Path, seed: int = 0) -> Path:
    """A tiny Whisper exported the way the recipe exports the real one: ``root/whisper`` (transformers dir)."""
    ct2_dir = write_ct2_dir(tiny_whisper(seed), root / f"ct2_{seed}", dtype=np.float32)
    return export_whisper(ct2_dir, root / f"whisper_{seed}")

