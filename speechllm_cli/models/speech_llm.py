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
both. Sequence per utterance (right-padded in a batch), built by ``build_inputs``::

    prompt_ids (bos + prompt text, or chat template head + prompt)  audio embeddings
    post-audio ids (separator, or chat template end of user turn + assistant header)  target ids  end id

Positions run 0..len-1 through the audio span; labels are -100 everywhere but the target and end ids (HF
convention: labels line up with the inputs, the model shifts them). The loss is the mean over utterances of
each utterance's per-token mean cross-entropy, so a batch's loss equals the mean of its utterances' losses.
``audio_attention="bidirectional"`` lets audio positions see each other (a prefix-LM mask, a 4D mask
given to the LLM; sdpa or eager attention); ``"causal"`` keeps the LLM's own causal mask.
``train_llm=True`` (with ``lora.rank=0``) trains every LLM weight as well: the decoder-only model trained from
scratch (an LLM made by ``speechllm init-llm``, see scratch_llm.py), or a full fine-tune.
``label_embeddings=True`` (the recipe's setting) adds the front-end's CTC label posteriors, pooled like the
adapter pools frames, times a label table that starts as the LLM's embeddings of each CTC piece, and starts the
adapter's output projection at zero (see label_table.py): the LLM reads a soft transcript from the first step.
Saving and loading live in speech_llm_io.py, the masks and the decoding prefix in speech_llm_layout.py.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.adapters import adapter_config, build_adapter
from speechllm_cli.models.frontends import frontend_config
from speechllm_cli.models.label_table import LabelTable
from speechllm_cli.models.llm import cache_kwarg, prepare_tokenizer
from speechllm_cli.models.speech_llm_layout import IGNORE_INDEX, PrefixBatch, as_llm_mask, prefix_lm_mask

logger = logging.getLogger(__name__)

AUDIO_ATTENTION = ("causal", "bidirectional")
_AUDIO_MARKER = "<<<speechllm-audio>>>"


@dataclass
class LoraSettings:
    rank: int = 2  # 0 = no LoRA (only the audio encoder trains)
    alpha: float = 4.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class SpeechLLMConfig:
    llm: str = ""  # Hugging Face model dir or .gguf file; "" = the embedded SmolLM2 GGUF (slow: export it once)
    dtype: str = "float32"  # LLM weights: float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"
    frontend: Any = field(default_factory=dict)  # a front-end section ({type: ctc_compressor, dir, compression})
    adapter: Any = field(default_factory=dict)  # an adapter section ({type: transformer, num_layers, ...})
    label_embeddings: bool = False  # + the CTC posteriors' label table (see label_table.py)
    prompts: dict[str, str] = field(
        default_factory=lambda: {"st": "Translate the audio into English:", "asr": "Transcribe the audio:"}
    )
    use_chat_template: bool = False
    separator: str = "\n"  # text between the audio and the target when no chat template is used
    audio_attention: Literal["causal", "bidirectional"] = "causal"  # bidirectional: within the audio span
    gradient_checkpointing: bool = False  # recompute LLM activations in backward (large LLMs)
    train_llm: bool = False  # train every LLM weight (needs lora.rank 0): decoder-only from scratch, full fine-tune
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.frontend = frontend_config(self.frontend)
        self.adapter = adapter_config(self.adapter)
        if self.audio_attention not in AUDIO_ATTENTION:
            raise ValueError(f"audio_attention {self.audio_attention!r} is not one of {AUDIO_ATTENTION}")
        if self.train_llm and self.lora.rank > 0:
            raise ValueError(f"train_llm: true trains every LLM weight, so LoRA must be off: set lora.rank: 0 "
                             f"(got lora.rank: {self.lora.rank})")

    def to_dict(self) -> dict:
        return asdict(self)


class SpeechLLM(nn.Module):
    """Frozen front-end (or partly trainable: ``frontend.trainable``) + trainable adapter (+ label table) + frozen LLM
    (+ trainable LoRA when ``lora.rank > 0``), or a trainable LLM when ``config.train_llm``."""

    def __init__(self, config: SpeechLLMConfig, frontend: nn.Module, llm: nn.Module, tokenizer, lora_dir=None,
                 new_label_table: bool = True):
        """``frontend``: a built front-end (frontends/); ``lora_dir``: a saved LoRA adapter to load (else a new one).
        ``new_label_table``: start the label table from the front-end's CTC pieces (False when the trained table is
        loaded right after, as speech_llm_io does)."""
        super().__init__()
        from peft import LoraConfig, PeftModel, get_peft_model

        self.config = config
        self.frontend = frontend.eval()
        if not getattr(frontend, "trainable", False):
            frontend.requires_grad_(False)
        self.tokenizer = prepare_tokenizer(tokenizer)
        llm.requires_grad_(config.train_llm)
        if config.lora.rank > 0 and lora_dir is not None:
            llm = PeftModel.from_pretrained(llm, str(lora_dir), is_trainable=True)
        elif config.lora.rank > 0:
            lora = config.lora
            llm = get_peft_model(
                llm,
                LoraConfig(
                    r=lora.rank,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    bias="none",
                    task_type="CAUSAL_LM",
                ),
            )
        self.llm = llm
        if config.gradient_checkpointing:
            hf_llm, kwargs = self.hf_llm, {"use_reentrant": False}
            if hasattr(hf_llm, "activation_checkpointing_enable"):  # transformers >= 5
                hf_llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf_llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.llm_hash: str | None = None  # content hash of the LLM, set by build_speech_llm / load_speech_llm
        self.frontend_hash: str | None = None  # and of the front-end's model (None: a module given directly)
        self.training_choice: dict = {}  # task, asr_langs, target it was trained with (the record's ``training``)
        llm_dim = self.hf_llm.config.hidden_size
        self.adapter = build_adapter(config.adapter, frontend.output_dim, llm_dim)
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
        self.pad_id = self.tokenizer.pad_token_id
        self._cache_kwarg = cache_kwarg(self.hf_llm.get_decoder().forward)
        self._prompt_cache: dict[str, list[int]] = {}
        self.post_audio_ids, self.end_id = self._template_parts()
        for text in config.prompts.values():
            self.prompt_ids_for_text(text)  # checks every configured prompt now

    # ----- text side -----
    @property
    def hf_llm(self) -> nn.Module:
        """The transformers causal LM (with LoRA layers injected when LoRA is on)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def _render_chat(self, prompt: str) -> tuple[str, str]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt + _AUDIO_MARKER}], tokenize=False, add_generation_prompt=True
        )
        if text.count(_AUDIO_MARKER) != 1:
            raise ValueError(f"chat template of {self.tokenizer.name_or_path} does not keep the user text verbatim")
        pre, post = text.split(_AUDIO_MARKER)
        return pre, post

    def _template_parts(self) -> tuple[list[int], int]:
        tok = self.tokenizer
        if not self.config.use_chat_template:
            if tok.eos_token_id is None:
                raise ValueError(f"tokenizer {tok.name_or_path} has no eos token to end the target with")
            return self._encode(self.config.separator), tok.eos_token_id
        if not tok.chat_template:
            raise ValueError(f"use_chat_template is set but tokenizer {tok.name_or_path} has no chat template")
        _, post = self._render_chat("")
        # the end token is the first special token the template writes after an assistant answer
        full = tok.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False
        )
        special = set(tok.all_special_ids)
        after = [i for i in self._encode(full.rsplit("y", 1)[1]) if i in special]
        end_id = after[0] if after else tok.eos_token_id
        if end_id is None:
            raise ValueError(f"cannot tell the end-of-answer token of {tok.name_or_path}'s chat template")
        return self._encode(post), end_id

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []

    def prompt_ids_for_text(self, prompt: str) -> list[int]:
        """Token ids before the audio for ``prompt``: [bos] + prompt, or the chat template head + prompt."""
        if prompt not in self._prompt_cache:
            unk = self.tokenizer.unk_token_id
            if unk is not None and unk in self._encode(prompt):
                logger.warning("prompt %r has characters that tokenizer %s does not know (they become %s); "
                               "reword it in model.prompts", prompt, self.tokenizer.name_or_path,
                               self.tokenizer.unk_token)
            if self.config.use_chat_template:
                pre, post = self._render_chat(prompt)
                if self._encode(post) != self.post_audio_ids:
                    raise ValueError(f"chat template puts different text after the audio for prompt {prompt!r}")
                ids = self._encode(pre)
            else:
                bos = self.tokenizer.bos_token_id
                ids = ([bos] if bos is not None else []) + self._encode(prompt)
            self._prompt_cache[prompt] = ids
        return list(self._prompt_cache[prompt])

    def prompt_ids(self, task: str) -> list[int]:
        """Prompt ids for a task named in ``config.prompts`` (``"st"``, ``"asr"``)."""
        if task not in self.config.prompts:
            raise KeyError(f"no prompt for task {task!r}; known tasks: {sorted(self.config.prompts)}")
        return self.prompt_ids_for_text(self.config.prompts[task])

    def encode_target(self, text: str) -> list[int]:
        """Target text -> token ids (no special tokens; the end id is added by build_inputs)."""
        return self._encode(text)

    def decode_target(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.end_id], skip_special_tokens=True).strip()

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

    # ----- sequence layout -----
    def build_inputs(self, audio_embeds, audio_lens, prompt_ids, target_ids=None) -> dict:
        """Right-padded LLM inputs for a batch (see the module docstring for the layout).

        audio_embeds (B, A, H), audio_lens (B,), prompt_ids: B lists of ids, target_ids: B lists or None
        (None = prefix only, no end id). Returns inputs_embeds (B, L, H), attention_mask ((B, L) long for
        causal audio attention, (B, 1, L, L) for bidirectional), position_ids (B, L), labels (B, L).
        """
        batch = audio_embeds.shape[0]
        if len(prompt_ids) != batch or (target_ids is not None and len(target_ids) != batch):
            raise ValueError(f"batch of {batch} audio items but {len(prompt_ids)} prompts / targets")
        audio_lens = [int(n) for n in audio_lens]
        pieces = []  # per utterance: (prompt, audio length, post + target ids, number of label positions)
        for b in range(batch):
            tail = list(self.post_audio_ids)
            n_labels = 0
            if target_ids is not None:
                tail += list(target_ids[b]) + [self.end_id]
                n_labels = len(target_ids[b]) + 1
            pieces.append((list(prompt_ids[b]), audio_lens[b], tail, n_labels))
        lengths = [len(p) + a + len(t) for p, a, t, _ in pieces]
        length = max(lengths)
        ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        audio_mask = torch.zeros(batch, length, dtype=torch.bool)
        audio_index = torch.zeros(batch, length, dtype=torch.long)  # which audio frame fills a position
        for b, (prompt, n_audio, tail, n_labels) in enumerate(pieces):
            start = len(prompt)
            ids[b, :start] = torch.tensor(prompt, dtype=torch.long)
            audio_mask[b, start : start + n_audio] = True
            audio_index[b, start : start + n_audio] = torch.arange(n_audio)
            ids[b, start + n_audio : lengths[b]] = torch.tensor(tail, dtype=torch.long)
            if n_labels:
                labels[b, lengths[b] - n_labels : lengths[b]] = torch.tensor(tail[len(tail) - n_labels :])
        device = audio_embeds.device
        ids, labels, audio_mask, audio_index = (t.to(device) for t in (ids, labels, audio_mask, audio_index))
        padding_mask = (torch.arange(length, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None])
        token_embeds = self.hf_llm.get_input_embeddings()(ids)  # (B, L, H)
        audio_at = audio_embeds.gather(1, audio_index[..., None].expand(-1, -1, audio_embeds.shape[2]))  # (B, L, H)
        inputs_embeds = torch.where(audio_mask[..., None], audio_at.to(token_embeds.dtype), token_embeds)
        position_ids = torch.arange(length, device=device)[None, :].expand(batch, -1)  # padding: inert, unused
        attention_mask = padding_mask.long()
        if self.config.audio_attention == "bidirectional":
            impl = getattr(self.hf_llm.config, "_attn_implementation", None)
            attention_mask = as_llm_mask(prefix_lm_mask(padding_mask, audio_mask), impl, token_embeds.dtype)
        return {
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
        }

    def audio_positions_bound(self, num_frames: list[int]) -> list[int]:
        """An upper bound of the audio positions of utterances of ``num_frames`` feature frames (without running)."""
        bound = self.frontend.max_output_lengths(torch.tensor(list(num_frames), dtype=torch.long))
        return [int(n) for n in self.adapter.output_lengths(bound)]

    def decoding_prefix(self, feats: torch.Tensor, feat_lens: torch.Tensor, tasks: list[str]) -> PrefixBatch:
        """Prompt + audio (+ separator / assistant header) embeddings per utterance, what decoding continues from.

        ``tasks``: a prompt key per utterance (``"asr"``, ``"st"``); feats are raw features as the dump dir holds
        them. Bidirectional audio attention becomes a bidirectional span over each utterance's audio positions.
        """
        prompt_ids = [self.prompt_ids(task) for task in tasks]
        audio_embeds, audio_lens = self.encode_audio(feats, feat_lens)  # (B, A, H), (B,)
        inputs = self.build_inputs(audio_embeds, audio_lens, prompt_ids, None)
        audio_lens = [int(a) for a in audio_lens]
        lengths = [len(p) + a + len(self.post_audio_ids) for p, a in zip(prompt_ids, audio_lens)]
        embeds = [inputs["inputs_embeds"][i, :n] for i, n in enumerate(lengths)]  # each (P_i, H)
        spans = None
        if self.config.audio_attention == "bidirectional":
            spans = [(len(p), len(p) + a) for p, a in zip(prompt_ids, audio_lens)]
        text_ids = [(list(p), list(self.post_audio_ids)) for p in prompt_ids]
        return PrefixBatch(embeds, spans, audio_lens, text_ids)

    # ----- LLM runs -----
    def _hidden(self, inputs: dict, cache=None) -> torch.Tensor:
        """Final hidden states (B, L, H) of the LLM decoder (LoRA applied), without the vocabulary projection."""
        kwargs = {self._cache_kwarg: cache, "use_cache": cache is not None}
        return self.hf_llm.get_decoder()(**inputs, **kwargs).last_hidden_state

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V) float32 logits."""
        return self.hf_llm.get_output_embeddings()(hidden).float()

    def forward(self, feats, feat_lens, prompt_ids, target_ids) -> tuple[torch.Tensor, dict]:
        """Cross-entropy on target + end tokens: mean over utterances of each one's per-token mean.

        Returns (loss, stats) with stats = {"loss", "acc" (token accuracy), "num_tokens", "num_utts"} as floats.
        """
        audio_embeds, audio_lens = self.encode_audio(feats, feat_lens)
        return self.loss_given_audio(audio_embeds, audio_lens, prompt_ids, target_ids)

    def loss_given_audio(self, audio_embeds, audio_lens, prompt_ids, target_ids) -> tuple[torch.Tensor, dict]:
        """``forward`` after the audio side: the loss and stats of the given audio embeddings (B, A, H) and
        lengths (B,) (lengths 0 leave the audio out; the diagnostics also pass other utterances' audio)."""
        inputs = self.build_inputs(audio_embeds, audio_lens, prompt_ids, target_ids)
        labels = inputs.pop("labels")
        hidden = self._hidden(inputs)  # (B, L, H)
        next_labels = labels[:, 1:]  # (B, L-1) the token position t predicts
        scored = next_labels != IGNORE_INDEX
        logits = self._logits(hidden[:, :-1][scored])  # (N, V) only where a target token is predicted
        targets = next_labels[scored]  # (N,)
        nll = F.cross_entropy(logits, targets, reduction="none")  # (N,)
        utt = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(scored)[scored]  # (N,)
        per_utt = torch.zeros(labels.shape[0], device=nll.device).index_add_(0, utt, nll) / scored.sum(1)
        loss = per_utt.mean()
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).sum().item()
        stats = {"loss": loss.item(), "acc": correct / len(targets), "num_tokens": float(len(targets))}
        stats["num_utts"] = float(labels.shape[0])
        return loss, stats

    # ----- trainable state (checkpoints) -----
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (adapter, label table, LoRA or the whole LLM): what a checkpoint needs."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise KeyError(f"checkpoint does not match the model: missing {sorted(expected - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - expected)[:5]}")
        self.load_state_dict(state, strict=False)


__all__ = [
    "IGNORE_INDEX",
    "LoraSettings",
    "PrefixBatch",
    "SpeechLLM",
    "SpeechLLMConfig",
    "prefix_lm_mask",
]
