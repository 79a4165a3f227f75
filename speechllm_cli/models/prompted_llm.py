"""What every LLM that reads a span of input embeddings shares: LoRA on a (frozen) causal LM, the prompt and
template around the input span, the sequence layout, the target-only loss and the decoding prefix.

Example (a subclass gives ``encode_audio``: its inputs -> the span's embeddings; see speech_llm.py, text_llm.py)::

    model = SpeechLLM(config, frontend, llm, tokenizer)       # or TextLLM(config, llm, tokenizer)
    prompts = [model.prompt_ids("st")] * len(targets)
    loss, stats = model(inputs, input_lens, prompts, [model.encode_target(t) for t in targets])
    prefix = model.decoding_prefix(inputs, input_lens, ["st"] * len(targets))     # what decoding continues from

``SpeechLLM`` fills the span with its adapter's audio embeddings, ``TextLLM`` with the LLM's own embeddings of an
input text (a transcript, an n-best list): the layout, the loss, the audio-use diagnostics (another utterance's
span) and every decoding engine are the same. Sequence per utterance (right-padded in a batch), built by
``build_inputs``::

    prompt_ids (bos + prompt text, or chat template head + prompt)  span embeddings ("audio")
    post-audio ids (separator, or chat template end of user turn + assistant header)  target ids  end id

Positions run 0..len-1 through the span; labels are -100 everywhere but the target and end ids (HF convention:
labels line up with the inputs, the model shifts them). The loss is the mean over utterances of each utterance's
per-token mean cross-entropy, so a batch's loss equals the mean of its utterances' losses.
``audio_attention="bidirectional"`` lets span positions see each other (a prefix-LM mask, a 4D mask given to the
LLM; sdpa or eager attention); ``"causal"`` keeps the LLM's own causal mask. ``train_llm=True`` (with
``lora.rank=0``) trains every LLM weight as well.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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
class PromptedLLMConfig:
    """The LLM side of a model config (SpeechLLMConfig and TextLLMConfig add their input side)."""

    llm: str = ""  # Hugging Face model dir or .gguf file; "" = the embedded SmolLM2 GGUF (slow: export it once)
    dtype: str = "float32"  # LLM weights: float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"
    prompts: dict[str, str] = field(
        default_factory=lambda: {"st": "Translate the audio into English:", "asr": "Transcribe the audio:"}
    )
    use_chat_template: bool = False
    separator: str = "\n"  # text between the input span and the target when no chat template is used
    audio_attention: Literal["causal", "bidirectional"] = "causal"  # bidirectional: within the input span
    gradient_checkpointing: bool = False  # recompute LLM activations in backward (large LLMs)
    train_llm: bool = False  # train every LLM weight (needs lora.rank 0): decoder-only from scratch, full fine-tune
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.audio_attention not in AUDIO_ATTENTION:
            raise ValueError(f"audio_attention {self.audio_attention!r} is not one of {AUDIO_ATTENTION}")
        if self.train_llm and self.lora.rank > 0:
            raise ValueError(f"train_llm: true trains every LLM weight, so LoRA must be off: set lora.rank: 0 "
                             f"(got lora.rank: {self.lora.rank})")

    def to_dict(self) -> dict:
        return asdict(self)


class PromptedLLM(nn.Module):
    """A causal LM (+ LoRA, or trained whole with ``config.train_llm``) reading prompt + input span + target; a
    subclass calls ``nn.Module.__init__``, registers its input side, calls ``attach_llm`` and defines
    ``encode_audio(inputs, lens) -> (span embeddings (B, A, H), lengths (B,))``."""

    def attach_llm(self, config: PromptedLLMConfig, llm: nn.Module, tokenizer, lora_dir=None) -> None:
        """Set the config, tokenizer and LLM (LoRA from ``lora_dir``, or new LoRA weights) and check the prompts."""
        from peft import LoraConfig, PeftModel, get_peft_model

        self.config = config
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
        self.llm_hash: str | None = None  # content hash of the LLM, set when built or loaded
        self.training_choice: dict = {}  # task, asr_langs, target it was trained with (the record's ``training``)
        self.pad_id = self.tokenizer.pad_token_id
        self._cache_kwarg = cache_kwarg(self.hf_llm.get_decoder().forward)
        self._prompt_cache: dict[str, list[int]] = {}
        self.post_audio_ids, self.end_id = self._template_parts()
        for text in config.prompts.values():
            self.prompt_ids_for_text(text)  # checks every configured prompt now

    def encode_audio(self, inputs: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

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
