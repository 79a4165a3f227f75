"""Text LLM = an LLM with LoRA that reads a text input: the survey's text-based family.

Two systems of issue 18 are text LLMs, trained and decoded like any speech LLM (``speechllm train``, ``decode``,
``score``) on a *text dir* made by ``speechllm text-input`` (an ``input`` table beside the dump's text tables):

- the cascade's translation step: ``input`` = the source transcript (``text.src`` to train, an ASR system's
  ``hyp.txt`` to test), output = the English text; ``copy_langs: [en]`` passes English input through unchanged
  (the cascade's ASR output is already the answer);
- generative error correction (GER, HyPoradise-style): ``input`` = an n-best list of a speech system (its hypotheses
  joined with `` ||| ``; ``input_format: nbest`` numbers them one per line), output = the corrected text.

Example::

    from speechllm_cli.models.text_llm import TextLLMConfig, build_text_llm, load_text_llm, save_text_llm

    model = build_text_llm(TextLLMConfig(llm="exp/llm/smollm2_hf", input_format="nbest"))
    ids, lens = model.pad_inputs(["a cat sat ||| the cat sat"], "cpu")      # (B, N) input token ids, (B,)
    loss, stats = model(ids, lens, [model.prompt_ids("asr")], [model.encode_target("the cat sat")])
    save_text_llm(model, "exp/ger/model", training={"task": "auto", "asr_langs": ["en"]})
    model = load_text_llm("exp/ger/model")
    prefix = model.decoding_prefix(ids, lens, ["asr"])                      # what decoding continues from

The input text takes the place of the audio span of a speech LLM (prompted_llm.py): the LLM's own (frozen) token
embeddings of the rendered input sit between the prompt and the separator, so the layout, the loss, the input-use
diagnostics (another utterance's input: ``loss_rolled``) and the search are shared. A saved dir holds model.yaml
(``model_type: text_llm``, the LLM's path and hash, the config, the training choice) and ``lora/``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from speechllm_cli.data.kaldi_dir import NBEST_SEPARATOR
from speechllm_cli.models.prompted_llm import PromptedLLM, PromptedLLMConfig

logger = logging.getLogger(__name__)

MODEL_TYPE = "text_llm"
LORA_DIR = "lora"


@dataclass
class TextLLMConfig(PromptedLLMConfig):
    prompts: dict[str, str] = field(
        default_factory=lambda: {"st": "Translate into English:", "asr": "Repeat the transcript:"}
    )
    input_format: Literal["text", "nbest"] = "text"  # nbest: hypotheses joined by " ||| ", numbered one per line
    nbest: int = 5  # hypotheses of an n-best input the LLM reads (the first ones)
    copy_langs: list[str] = field(default_factory=list)  # languages whose input is the output (a cascade's ASR langs)

    def __post_init__(self):
        super().__post_init__()
        if self.input_format not in ("text", "nbest"):
            raise ValueError(f"input_format {self.input_format!r} is not one of ['text', 'nbest']")
        if self.nbest < 1:
            raise ValueError(f"nbest must be at least 1, got {self.nbest}")
        if self.train_llm:
            raise ValueError("a text LLM trains LoRA on a frozen LLM: set train_llm: false")


def render_input(text: str, input_format: str, nbest: int) -> str:
    """The input as the LLM reads it: a newline, then the text, or the first ``nbest`` hypotheses numbered."""
    if input_format == "text":
        return "\n" + text
    hyps = [h.strip() for h in text.split(NBEST_SEPARATOR.strip())][:nbest]
    return "".join(f"\n{rank}. {hyp}" for rank, hyp in enumerate(hyps, 1))


def pad_token_ids(ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> right-padded (B, N) long (N >= 1) and lengths (B,)."""
    lens = torch.tensor([len(i) for i in ids], device=device)
    padded = torch.full((len(ids), max(1, int(lens.max()))), pad_id, dtype=torch.long, device=device)
    for row, seq in enumerate(ids):
        padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    return padded, lens


class TextLLM(PromptedLLM):
    """A frozen LLM + trainable LoRA that reads prompt + input text + separator and writes the target."""

    def __init__(self, config: TextLLMConfig, llm: nn.Module, tokenizer, lora_dir=None):
        super().__init__()
        self.attach_llm(config, llm, tokenizer, lora_dir)

    def encode_input(self, text: str) -> list[int]:
        return self._encode(render_input(text, self.config.input_format, self.config.nbest))

    def pad_inputs(self, texts: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Input texts -> right-padded token ids (B, N) long and lengths (B,) on ``device``."""
        return pad_token_ids([self.encode_input(t) for t in texts], self.pad_id, device)

    def encode_audio(self, inputs: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids (B, N) -> the LLM's token embeddings (B, N, H) (the span a speech LLM fills with audio)."""
        return self.hf_llm.get_input_embeddings()(inputs), lens


def build_text_llm(config: TextLLMConfig, device: str = "cpu") -> TextLLM:
    """A fresh TextLLM: the LLM of ``config.llm`` with new LoRA weights."""
    from speechllm_cli.models.llm import llm_content_hash, load_llm
    from speechllm_cli.models.speech_llm_io import resolve_llm_path

    llm_path = resolve_llm_path(config.llm)
    llm, tokenizer = load_llm(llm_path, config.dtype, device, config.attn_implementation)
    model = TextLLM(config, llm, tokenizer).to(device)
    model.llm_hash = llm_content_hash(llm_path)
    return model


def save_text_llm(model: TextLLM, out_dir: str | os.PathLike, training: dict | None = None) -> Path:
    """Write the LoRA adapter and model.yaml to ``out_dir`` (replaced atomically)."""
    from speechllm_cli.models.llm import llm_content_hash
    from speechllm_cli.models.model_dir import write_model_record
    from speechllm_cli.models.speech_llm_io import resolve_llm_path, save_lora
    from speechllm_cli.utils.io import atomic_dir

    out_dir = Path(out_dir)
    llm_path = resolve_llm_path(model.config.llm)
    model.llm_hash = model.llm_hash or llm_content_hash(llm_path)
    training = training if training is not None else model.training_choice
    with atomic_dir(out_dir) as tmp_dir:
        if model.config.lora.rank > 0:
            save_lora(model.llm, tmp_dir / LORA_DIR)
        write_model_record(tmp_dir, MODEL_TYPE, llm={"path": str(llm_path), "hash": model.llm_hash},
                           config=model.config.to_dict(), training=dict(training))
    logger.info("saved text LLM to %s", out_dir)
    return out_dir


def load_text_llm(model_dir: str | os.PathLike, device: str = "cpu", llm_path: str | os.PathLike | None = None,
                  dtype: str | None = None, trainable: bool = False) -> TextLLM:
    """Rebuild a saved TextLLM on the recorded LLM (or ``llm_path``, whose content hash must match the record)."""
    from speechllm_cli.models.llm import load_llm
    from speechllm_cli.models.model_dir import read_model_record
    from speechllm_cli.models.speech_llm_io import check_lora, recorded_llm

    model_dir = Path(model_dir)
    record = read_model_record(model_dir, expect=(MODEL_TYPE,))
    config = TextLLMConfig(**record["config"])
    llm, llm_hash = recorded_llm(model_dir, record, llm_path)
    config.llm, config.dtype = str(llm), dtype or config.dtype
    llm_model, tokenizer = load_llm(llm, config.dtype, device, config.attn_implementation)
    lora = model_dir / LORA_DIR if config.lora.rank > 0 else None
    model = TextLLM(config, llm_model, tokenizer, lora_dir=lora)
    if lora is not None:
        check_lora(model.llm, lora, config.lora)
    model.llm_hash = llm_hash
    model.training_choice = dict(record.get("training") or {})
    if not trainable:
        model.requires_grad_(False)
    return model.to(device).train(trainable)
