"""Speech LLM = front-end -> adapter -> LLM: Speech-LLaMA and the survey's latent-representation systems.

Example (see tests/_speech_llm_fixtures.py for a tiny LLaMA and compressor)::

    from speechllm_cli.models.speech_llm import SpeechLLMConfig
    from speechllm_cli.models.speech_llm_io import build_speech_llm, save_speech_llm
    from speechllm_cli.models.load import load_model

    config = SpeechLLMConfig(llm="/tmp/smollm2_hf",
                             frontend={"type": "ctc_compressor", "dir": "exp/ctc_compressor"},
                             adapter={"type": "stack_mlp", "stack": 2})
    model = build_speech_llm(config, device="cpu")
    prompts = [model.prompt_ids("st")] * len(texts)           # bos/template head + prompt, per utterance
    targets = [model.encode_target(t) for t in texts]         # target text, no special tokens
    loss, stats = model(feats, feat_lens, prompts, targets)   # feats (B, T, 80), feat_lens (B,)
    loss.backward()                                           # grads reach the adapter and LoRA only
    save_speech_llm(model, "exp/speech_llm/model")
    model = load_model("exp/speech_llm/model", device="cpu")
    prefix = model.decoding_prefix(feats, feat_lens, ["st", "asr"])   # what decoding continues from

The front-end (``model.frontend``, registry in frontends/) turns raw features into frame vectors, frozen; the
adapter (``model.adapter``, registry in adapters/) maps them into the LLM's embedding space; ``encode_audio`` runs
both. The prompt, the layout around the audio span, the loss and the decoding prefix are PromptedLLM's
(prompted_llm.py). ``train_llm=True`` (with ``lora.rank=0``) trains every LLM weight as well: the decoder-only
model trained from scratch (an LLM made by ``speechllm init-llm``, see scratch_llm.py), or a full fine-tune.
``label_embeddings=True`` (the recipe's setting) adds the front-end's CTC label posteriors, pooled like the
adapter pools frames, times a label table that starts as the LLM's embeddings of each CTC piece, and starts the
adapter's output projection at zero (see label_table.py): the LLM reads a soft transcript from the first step.
Saving and loading live in speech_llm_io.py, the masks and the decoding prefix in speech_llm_layout.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from speechllm_cli.models.adapters import adapter_config, build_adapter
from speechllm_cli.models.frontends import frontend_config
from speechllm_cli.models.label_table import LabelTable
from speechllm_cli.models.prompted_llm import LoraSettings, PromptedLLM, PromptedLLMConfig
from speechllm_cli.models.speech_llm_layout import IGNORE_INDEX, PrefixBatch, prefix_lm_mask

logger = logging.getLogger(__name__)


@dataclass
class SpeechLLMConfig(PromptedLLMConfig):
    frontend: Any = field(default_factory=dict)  # a front-end section ({type: ctc_compressor, dir, compression})
    adapter: Any = field(default_factory=dict)  # an adapter section ({type: transformer, num_layers, ...})
    label_embeddings: bool = False  # + the CTC posteriors' label table (see label_table.py)

    def __post_init__(self):
        super().__post_init__()
        self.frontend = frontend_config(self.frontend)
        self.adapter = adapter_config(self.adapter)


class SpeechLLM(PromptedLLM):
    """Frozen front-end (or partly trainable: ``frontend.trainable``) + trainable adapter (+ label table) + frozen LLM
    (+ trainable LoRA when ``lora.rank > 0``), or a trainable LLM when ``config.train_llm``."""

    def __init__(self, config: SpeechLLMConfig, frontend: nn.Module, llm: nn.Module, tokenizer, lora_dir=None,
                 new_label_table: bool = True):
        """``frontend``: a built front-end (frontends/); ``lora_dir``: a saved LoRA adapter to load (else a new one).
        ``new_label_table``: start the label table from the front-end's CTC pieces (False when the trained table is
        loaded right after, as speech_llm_io does)."""
        super().__init__()
        self.frontend = frontend.eval()
        if not getattr(frontend, "trainable", False):
            frontend.requires_grad_(False)
        self.attach_llm(config, llm, tokenizer, lora_dir)
        self.frontend_hash: str | None = None  # content hash of the front-end's model (None: a module given directly)
        llm_dim = self.hf_llm.config.hidden_size
        self.adapter = build_adapter(config.adapter, frontend.output_dim, llm_dim)
        if hasattr(self.adapter, "init_from_token_embeddings"):  # new token rows (unit_embedding) start like tokens
            self.adapter.init_from_token_embeddings(self.hf_llm.get_input_embeddings().weight)
        self.label_table = None
        if config.label_embeddings:
            self.label_table = LabelTable(frontend.num_labels, llm_dim)
            nn.init.zeros_(self.adapter.output_proj.weight)  # the adapter starts silent: a residual on the table
            nn.init.zeros_(self.adapter.output_proj.bias)
            if new_label_table and frontend.pieces is not None:
                embeddings = self.hf_llm.get_input_embeddings().weight
                rows = self.label_table.init_from_pieces(frontend.pieces, self.tokenizer, embeddings)
                logger.info("label table: %d of %d CTC pieces start as their LLM token embeddings", rows,
                            len(frontend.pieces))

    # ----- audio side -----
    def train(self, mode: bool = True):
        super().train(mode)
        self.frontend.eval()  # frozen (or partly trainable without dropout): dropout off even while training
        return self

    def encode_audio(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F) raw features, feat_lens (B,) -> audio_embeds (B, A, H_llm) in the LLM dtype, lengths (B,)."""
        out = self.frontend(feats, feat_lens, with_posteriors=self.label_table is not None)
        audio_embeds, audio_lens = self.adapter(out.frames.float(), out.lens)  # (B, A, H), (B,)
        if self.label_table is not None:
            audio_embeds = audio_embeds + self.label_table(self.adapter.pool(out.posteriors, out.lens))
        return audio_embeds.to(self.hf_llm.dtype), audio_lens

    def audio_positions_bound(self, num_frames: list[int]) -> list[int]:
        """An upper bound of the audio positions of utterances of ``num_frames`` feature frames (without running)."""
        bound = self.frontend.max_output_lengths(torch.tensor(list(num_frames), dtype=torch.long))
        return [int(n) for n in self.adapter.output_lengths(bound)]


__all__ = [
    "IGNORE_INDEX",
    "LoraSettings",
    "PrefixBatch",
    "SpeechLLM",
    "SpeechLLMConfig",
    "prefix_lm_mask",
]
