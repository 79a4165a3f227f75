"""``speechllm export-gguf``: the trained LLM of a speech-LLM (LoRA merged) or a decoder-only model as a GGUF file.

Usage:
    speechllm export-gguf --model exp/speechllm_whisper --out exp/speechllm_whisper/gguf/llm-f16.gguf --type f16
    speechllm decode --model exp/speechllm_whisper --data dump/whisper_mel/test --engine llamacpp

Python::

    from speechllm_cli.models.gguf_export import export_gguf, read_gguf_source
    export_gguf("exp/speechllm/model", "/tmp/llm-q8_0.gguf", "q8_0")
    read_gguf_source("/tmp/llm-q8_0.gguf")["model_fingerprint"]   # which model dir it was exported from

What is written: the LLaMA-architecture LLM with every LoRA adapter merged into its weights (a decoder-only model's
fully trained LLM as it is), in f32, f16 or q8_0 (matrices; norms stay f32), with llama.cpp's tensor names and the
rotary layout it expects (query/key rows of each head reordered from transformers' halves to interleaved pairs).
The tokenizer metadata comes from the base GGUF the LLM was exported from (``export-llm`` notes it in the LLM dir's
SOURCE; ``--base-gguf`` names another), so llama.cpp tokenizes text as the base does; an LLM that never was a GGUF
gets it from its Hugging Face tokenizer (BPE or unigram). Decoding feeds token ids and audio embeddings, never text,
so llama.cpp's own text tokenizer does not change our outputs. The audio side (front-end, adapter, label table)
stays in PyTorch: it is a few percent of the decode time (bench/bench_decode.py). The file records the model dir's
fingerprint (``speechllm.model_fingerprint``): decode refuses a GGUF exported from another or an older model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from speechllm_cli.models.model_dir import GGUF_DIR, SPEECH_LLM_TYPES, model_fingerprint, read_model_record
from speechllm_cli.utils.io import atomic_path

logger = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0")
SOURCE_PREFIX = "exported from "  # how export_llm's SOURCE note names the GGUF an LLM dir came from
KEY_PREFIX = "speechllm."  # our metadata keys in the GGUF
_COPIED_GENERAL = ("general.name", "general.organization", "general.basename", "general.size_label",
                   "general.license", "general.languages", "general.finetune")


class GGUFExportError(ValueError):
    """The model cannot be written as a GGUF llama.cpp reads (architecture, tokenizer)."""


def default_gguf_path(model_dir: str | os.PathLike, out_type: str = "f16") -> Path:
    """Where ``decode --engine llamacpp`` looks for (and first writes) a model's GGUF: ``<model>/gguf/llm-<type>``."""
    return Path(model_dir) / GGUF_DIR / f"llm-{out_type}.gguf"


def read_gguf_source(path: str | os.PathLike) -> dict[str, str]:
    """The ``speechllm.*`` metadata of an exported GGUF (model_dir, model_fingerprint, llm_hash, type), keys without
    the prefix; empty for a GGUF this toolkit did not write.

    The export writes these keys right after ``general.architecture``, before the tokenizer's arrays, so only the
    head of the file is read (parsing a whole GGUF's metadata takes seconds: tens of thousands of tokens).
    """
    import struct

    import gguf

    strings, sizes = gguf.GGUFValueType.STRING, gguf.GGUFReader.gguf_scalar_to_np
    found: dict[str, str] = {}
    with open(path, "rb") as f:
        def read(fmt: str):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def text() -> str:
            return f.read(read("Q")).decode("utf-8", errors="replace")

        if f.read(4) != b"GGUF":
            raise GGUFExportError(f"{path} is not a GGUF file")
        read("I"), read("Q")  # version, tensor count
        for _ in range(read("Q")):  # key/value pairs, in the order written
            key, kind = text(), gguf.GGUFValueType(read("I"))
            if kind == strings:
                value = text()
            elif kind in sizes:
                f.read(np.dtype(sizes[kind]).itemsize)
                value = None
            else:  # an array: the tokenizer's, after our keys
                break
            if key.startswith(KEY_PREFIX):
                found[key[len(KEY_PREFIX):]] = value
            elif found:
                break
    return found


def merged_llm(model) -> torch.nn.Module:
    """The transformers causal LM of a loaded SpeechLLM with its LoRA merged into the weights (in place)."""
    if hasattr(model.llm, "merge_and_unload"):
        return model.llm.merge_and_unload()
    return model.llm


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") not in ("default", None):
        raise GGUFExportError(f"rope scaling {params.get('rope_type')!r} of the LLM is not exported; only plain "
                              "rotary embeddings are")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise GGUFExportError("the LLM config has no rope_theta")
    return float(theta)


def _llama_hparams(config) -> dict[str, tuple[object, str]]:
    """``llama.*`` metadata from a transformers LlamaConfig: key -> (value, GGUF value type name)."""
    if config.model_type != "llama":
        raise GGUFExportError(f"export-gguf writes LLaMA-architecture LLMs; this one is {config.model_type!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFExportError("the LLM has attention or MLP biases, which llama.cpp's LLaMA does not read")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "llama.context_length": (config.max_position_embeddings, "UINT32"),
        "llama.embedding_length": (config.hidden_size, "UINT32"),
        "llama.block_count": (config.num_hidden_layers, "UINT32"),
        "llama.feed_forward_length": (config.intermediate_size, "UINT32"),
        "llama.attention.head_count": (config.num_attention_heads, "UINT32"),
        "llama.attention.head_count_kv": (config.num_key_value_heads or config.num_attention_heads, "UINT32"),
        "llama.attention.key_length": (head_dim, "UINT32"),
        "llama.attention.value_length": (head_dim, "UINT32"),
        "llama.rope.dimension_count": (head_dim, "UINT32"),
        "llama.rope.freq_base": (_rope_theta(config), "FLOAT32"),
        "llama.attention.layer_norm_rms_epsilon": (float(config.rms_norm_eps), "FLOAT32"),
        "llama.vocab_size": (config.vocab_size, "UINT32"),
    }


def interleave_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Query/key projection rows, per head, from transformers' rotary layout (first half, second half) to llama.cpp's
    (pairs side by side): row ``h, i`` of half ``j`` moves to ``h, 2 i + j``."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(rows, *weight.shape[1:]))


def _llama_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every weight of a transformers LLaMA, q/k rows in llama.cpp's rotary order."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the token embeddings when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"LLM weight {hf_name!r} has no llama.cpp name; is the LLM a plain LLaMA?")
        array = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = interleave_rotary_rows(array, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = interleave_rotary_rows(array, config.num_key_value_heads or config.num_attention_heads)
        yield name, array


def _encoded(array: np.ndarray, out_type: str) -> tuple[np.ndarray, object]:
    """An array in the file's type: norms and vectors stay f32; matrices become f16 or q8_0 (rows of 32)."""
    import gguf

    if array.ndim < 2 or out_type == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if out_type == "f16":
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    if array.shape[-1] % 32:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16  # q8_0 needs rows in blocks of 32
    return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
        gguf.GGMLQuantizationType.Q8_0


def _field_value(field):
    """A GGUFReader field as (value, type, sub type) for GGUFWriter.add_key_value."""
    import gguf

    main = field.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        return list(field.contents()), main, field.types[1]
    return field.contents(), main, None


def _base_gguf_candidates(llm_dir: Path, base_gguf: str | os.PathLike | None) -> list[Path]:
    if base_gguf is not None:
        return [Path(base_gguf)]
    source = llm_dir / "SOURCE"
    if source.is_file():
        note = source.read_text(encoding="utf-8").strip()
        if note.startswith(SOURCE_PREFIX) and note.endswith(".gguf"):
            return [Path(note[len(SOURCE_PREFIX):])]
    return []


def _gguf_tokens_match(reader, tokenizer, vocab_size: int) -> bool:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        return False
    ours = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    return all(tokens.contents(i) == token for i, token in enumerate(ours) if token is not None)


def _tokenizer_fields_from_gguf(reader) -> list[tuple[str, object, object, object]]:
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.") or key in _COPIED_GENERAL:
            fields.append((key, *_field_value(field)))
    return fields


def _tokenizer_fields_from_hf(tokenizer, vocab_size: int) -> list[tuple[str, object, object, object]]:
    """Tokenizer metadata made from a Hugging Face fast tokenizer: byte-level BPE (llama.cpp's "gpt2") or unigram
    (its "llama"), special tokens marked as control tokens, padded to the embedding rows."""
    import json

    import gguf

    V = gguf.GGUFValueType
    backend = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    special = set(tokenizer.all_special_ids)
    added = {int(i) for i in tokenizer.added_tokens_decoder}
    tokens, types = [], []
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab_size)))):
        tokens.append(token if token is not None else f"[PAD{i}]")
        # llama.cpp's token types: 1 normal, 3 control, 4 user-defined, 5 unused
        types.append(3 if i in special else 4 if i in added else 5 if token is None else 1)
    fields = [("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
              ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)]
    if backend["type"] == "BPE":
        merges = [m if isinstance(m, str) else " ".join(m) for m in backend.get("merges", [])]
        fields += [("tokenizer.ggml.model", "gpt2", V.STRING, None), ("tokenizer.ggml.pre", "default", V.STRING, None),
                   ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING)]
    elif backend["type"] == "Unigram":
        scores = [float(score) for _, score in backend["vocab"]]
        scores += [0.0] * (vocab_size - len(scores))
        fields += [("tokenizer.ggml.model", "llama", V.STRING, None),
                   ("tokenizer.ggml.scores", scores[:vocab_size], V.ARRAY, V.FLOAT32)]
    else:
        raise GGUFExportError(f"the LLM's tokenizer is a {backend['type']} model; give --base-gguf (a GGUF of the "
                              "same LLM) for its tokenizer metadata")
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            key = "unknown" if name == "unk" else "padding" if name == "pad" else name
            fields.append((f"tokenizer.ggml.{key}_token_id", int(token_id), V.UINT32, None))
    fields.append(("tokenizer.ggml.add_bos_token", False, V.BOOL, None))
    if tokenizer.chat_template:
        fields.append(("tokenizer.chat_template", tokenizer.chat_template, V.STRING, None))
    return fields


def tokenizer_fields(tokenizer, vocab_size: int, llm_dir: Path, base_gguf=None) -> tuple[list, str]:
    """The tokenizer metadata for the export and where it came from: the base GGUF when its tokens are the LLM's,
    else the Hugging Face tokenizer. A given ``base_gguf`` that does not fit is an error."""
    import gguf

    for candidate in _base_gguf_candidates(llm_dir, base_gguf):
        if not candidate.is_file():
            if base_gguf is not None:
                raise FileNotFoundError(f"--base-gguf {candidate} not found")
            continue
        reader = gguf.GGUFReader(str(candidate))
        if _gguf_tokens_match(reader, tokenizer, vocab_size):
            return _tokenizer_fields_from_gguf(reader), str(candidate)
        if base_gguf is not None:
            raise GGUFExportError(f"--base-gguf {candidate}: its tokens are not the LLM's ({vocab_size} embedding "
                                  "rows); give the GGUF the LLM was exported from")
    return _tokenizer_fields_from_hf(tokenizer, vocab_size), "the Hugging Face tokenizer"


def write_llm_gguf(llm, tokenizer, out: str | os.PathLike, out_type: str = "f16", llm_dir: str | os.PathLike = "",
                   base_gguf: str | os.PathLike | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write a transformers LLaMA (``llm``, its ``tokenizer``) to ``out`` as GGUF ``out_type``, atomically.

    ``llm_dir``: where the LLM was loaded from (its SOURCE may name the base GGUF); ``metadata``: extra string fields,
    written as ``speechllm.<key>``. Returns ``out``.
    """
    import gguf

    if out_type not in GGUF_TYPES:
        raise ValueError(f"--type must be one of {', '.join(GGUF_TYPES)}, not {out_type!r}")
    out = Path(out)
    config = llm.config
    hparams = _llama_hparams(config)
    tokens, token_source = tokenizer_fields(tokenizer, config.vocab_size, Path(llm_dir), base_gguf)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type]
    V = gguf.GGUFValueType
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        for key, value in {"type": out_type, **(metadata or {})}.items():  # first: read_gguf_source reads the head
            writer.add_key_value(KEY_PREFIX + key, str(value), V.STRING)
        writer.add_type("model")
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, (value, vtype) in hparams.items():
            writer.add_key_value(key, value, V[vtype])
        for key, value, vtype, sub_type in tokens:
            writer.add_key_value(key, value, vtype, sub_type)
        for name, array in _llama_tensors(llm):
            data, raw_dtype = _encoded(array, out_type)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    logger.info("wrote %s (%s, %.0f MB; tokenizer metadata from %s)", out, out_type, out.stat().st_size / 1e6,
                token_source)
    return out


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, out_type: str = "f16",
                base_gguf: str | os.PathLike | None = None, llm_path: str | os.PathLike | None = None) -> Path:
    """Write the LLM of the speech-LLM or decoder-only model saved in ``model_dir`` (LoRA merged) to ``out`` as GGUF
    ``out_type`` (f32, f16, q8_0), atomically, recording the model dir's fingerprint. Returns ``out``."""
    from speechllm_cli.models.load import load_model

    if out_type not in GGUF_TYPES:
        raise ValueError(f"--type must be one of {', '.join(GGUF_TYPES)}, not {out_type!r}")
    model_dir = Path(model_dir)
    record = read_model_record(model_dir)
    if record["model_type"] not in SPEECH_LLM_TYPES:
        raise GGUFExportError(f"{model_dir / 'model.yaml'}: a {record['model_type']} model has no LLM to export; "
                              "give a speech_llm or decoder_only model dir")
    start = time.perf_counter()
    model = load_model(model_dir, llm_path=llm_path)
    if model.config.audio_attention != "causal":
        logger.warning("%s reads its audio with bidirectional attention; llama.cpp attends causally, so only the "
                       "PyTorch engine decodes it as trained", model_dir)
    metadata = {"model_dir": str(model_dir.resolve()), "model_fingerprint": model_fingerprint(model_dir),
                "llm_hash": model.llm_hash or ""}
    write_llm_gguf(merged_llm(model), model.tokenizer, out, out_type, model.config.llm, base_gguf, metadata)
    logger.info("exported the LLM of %s (LoRA merged) in %.1f s", model_dir, time.perf_counter() - start)
    return Path(out)


def gguf_for_decoding(model_dir: str | os.PathLike, gguf: str | os.PathLike | None = None,
                      llm_path: str | os.PathLike | None = None, out_type: str = "f16") -> Path:
    """The GGUF that ``decode --engine llamacpp`` runs for the model in ``model_dir``: ``gguf`` when given (it must
    be an export of this model as it is now), else the model's ``out_type`` export (:func:`default_gguf_path`),
    written when missing or exported from an older state of the model."""
    model_dir = Path(model_dir)
    fingerprint = model_fingerprint(model_dir)
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise FileNotFoundError(f"--gguf {path} not found; write it with: speechllm export-gguf --model "
                                    f"{model_dir} --out {path}")
        source = read_gguf_source(path)
        if source.get("model_fingerprint") != fingerprint:
            raise GGUFExportError(
                f"--gguf {path} was exported from {source.get('model_dir', 'another model')} (fingerprint "
                f"{source.get('model_fingerprint')}), not from {model_dir} as it is now ({fingerprint}); re-export "
                f"it: speechllm export-gguf --model {model_dir} --out {path}")
        return path
    path = default_gguf_path(model_dir, out_type)
    if path.is_file() and read_gguf_source(path).get("model_fingerprint") == fingerprint:
        return path
    logger.info("%s: exporting the model's LLM for llama.cpp (once)", path)
    return export_gguf(model_dir, path, out_type, llm_path=llm_path)
