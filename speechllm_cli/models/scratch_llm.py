"""Randomly initialised causal LMs for training from scratch, written as plain Hugging Face directories.

Example::

    from speechllm_cli.models.llm import load_llm
    from speechllm_cli.models.scratch_llm import hf_tokenizer_from_token_list, init_llm

    # a small LLaMA on the toolkit's target vocabulary (sentencepiece ids kept, <s> </s> <pad> appended)
    init_llm("exp/llm/scratch_small", config="conf/llm_scratch_small.yaml",
             tokenizer_dir="data/token_list/tgt_unigram150", seed=0)
    # the architecture and tokenizer of an existing LLM, with fresh random weights
    init_llm("exp/llm/smollm2_scratch", like="exp/llm/smollm2_hf", seed=0)
    model, tokenizer = load_llm("exp/llm/scratch_small")     # loads like any HF dir
    print(hf_tokenizer_from_token_list("data/token_list/tgt_unigram150")("the cat").input_ids)

The ``--config`` YAML is a flat mapping of ``transformers.LlamaConfig`` fields (hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, max_position_embeddings, tie_word_embeddings,
rope_theta, ...); the vocabulary size and the bos/eos/pad ids come from the tokenizer. Weights get transformers'
own initialisation (normal, std ``initializer_range``) after ``torch.manual_seed(seed)``.

The tokenizer built from a token list (``bpe.model`` + ``tokens.txt``, see speechllm_cli.text.tokenizer) is a
``tokenizers`` Unigram model over the sentencepiece pieces and scores, with sentencepiece's default text handling
(NFKC, whitespace runs collapsed and stripped, ``▁`` for spaces and before the first word), so its ids are the
sentencepiece ids. ``<blank>`` stays a special token (never produced, dropped by decode).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import torch
import yaml

from speechllm_cli.models.llm import save_hf_dir

logger = logging.getLogger(__name__)

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}  # added when the token list lacks them
_FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
_UNIGRAM_LIKE = (1, 4)  # sentencepiece model types whose pieces + scores are a unigram model: unigram, char


def hf_tokenizer_from_token_list(token_dir: str | os.PathLike):
    """A ``PreTrainedTokenizerFast`` whose ids equal the sentencepiece ids of ``token_dir``, plus <s> </s> <pad>."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    from speechllm_cli.text.tokenizer import Tokenizer

    processor = Tokenizer.load(token_dir).processor
    model_type = _sentencepiece_model_type(processor.serialized_model_proto())
    if model_type not in _UNIGRAM_LIKE:
        raise ValueError(f"{token_dir}/bpe.model is a sentencepiece model of type {model_type}; only unigram (1) and "
                         "char (4) models convert exactly: retrain it with speechllm train-tokenizer --model-type "
                         "unigram")
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    unigram = HFTokenizer(models.Unigram(pieces, unk_id=processor.unk_id(), byte_fallback=False))
    unigram.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    unigram.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    controls = [piece for i, (piece, _) in enumerate(pieces) if processor.is_control(i)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=unigram, unk_token=processor.id_to_piece(processor.unk_id()),
        additional_special_tokens=controls,
    )
    tokenizer.add_special_tokens(dict(SPECIALS))  # appended after the pieces, unless the token list has them
    return tokenizer


def _sentencepiece_model_type(model_proto: bytes) -> int:
    """``trainer_spec.model_type`` of a serialised sentencepiece model (1 unigram, 2 bpe, 3 word, 4 char)."""
    trainer_spec = _proto_field(model_proto, 2)  # ModelProto.trainer_spec
    model_type = _proto_field(trainer_spec, 3) if trainer_spec is not None else None  # TrainerSpec.model_type
    return 1 if model_type is None else model_type  # protobuf default: UNIGRAM


def _proto_field(data: bytes, number: int) -> int | bytes | None:
    """The first value of top-level field ``number`` in a protobuf message (varint or bytes), None if absent."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire_type, value = key & 7, None
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if key >> 3 == number:
            return value
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def llama_config_from_yaml(path: str | os.PathLike, tokenizer):
    """A ``LlamaConfig`` from the architecture YAML at ``path``, sized for ``tokenizer`` (vocab and special ids)."""
    from transformers import LlamaConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LLaMA config file not found")
    fields = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of LlamaConfig fields (hidden_size: 256, ...)")
    default = LlamaConfig()
    rope_fields = getattr(default, "rope_parameters", None) or {}  # transformers 5 nests rope_theta there
    known = set(inspect.signature(LlamaConfig.__init__).parameters) | set(vars(default)) | set(rope_fields)
    unknown = sorted(str(k) for k in fields if k not in known)
    if unknown:
        raise ValueError(f"{path}: unknown LlamaConfig field(s) {unknown}; use fields such as hidden_size, "
                         "intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads")
    taken = sorted(k for k in fields if k in _FROM_TOKENIZER)
    if taken:
        raise ValueError(f"{path}: {taken} come from the tokenizer; remove them")
    return LlamaConfig(**fields, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def init_llm(
    out_dir: str | os.PathLike,
    config: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    like: str | os.PathLike | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised causal LM + tokenizer to ``out_dir`` (replaced atomically); returns it.

    Either ``config`` (LLaMA architecture YAML) with ``tokenizer_dir`` (a sentencepiece token list dir), or ``like``
    (a Hugging Face causal-LM dir whose config and tokenizer are copied, its weights not).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (like is None) == (config is None) or (config is None) != (tokenizer_dir is None):
        raise ValueError("init_llm needs either config and tokenizer_dir, or like (an existing LLM dir)")
    if like is not None:
        like = Path(like)
        if not (like / "config.json").is_file():
            raise FileNotFoundError(f"{like} has no config.json: not a Hugging Face model directory")
        model_config = AutoConfig.from_pretrained(like, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(like, trust_remote_code=False)
        source = f"architecture and tokenizer of {like.resolve()}"
    else:
        tokenizer = hf_tokenizer_from_token_list(tokenizer_dir)
        model_config = llama_config_from_yaml(config, tokenizer)
        source = f"architecture {Path(config).resolve()}, tokenizer {Path(tokenizer_dir).resolve()}"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    num_params = sum(p.numel() for p in model.parameters())

    out_dir = save_hf_dir(model, tokenizer, out_dir, f"randomly initialised (seed {seed}): {source}")
    logger.info("wrote a random %s of %.2fM parameters (vocabulary %d) to %s", model_config.model_type,
                num_params / 1e6, len(tokenizer), out_dir)
    return out_dir
