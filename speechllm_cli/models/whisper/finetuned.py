"""Whisper as a model of the toolkit (``model_type: whisper``): the exported Whisper zero-shot, or one fine-tuned on a
recipe's train set (train/whisper_task.py); the model both decode and train, and its save and load.

A Whisper model dir is a transformers Whisper dir (``config.json``, ``model.safetensors``, ``generation_config.json``,
tokenizer and feature-extractor files) with a ``model.yaml``::

    model_type: whisper
    source: ...                 what the weights came from (export-whisper writes it; fine-tuning names the base)
    hash: <sha256>              content hash of this dir (weights, config, tokenizer; models/llm.py: llm_content_hash)
    num_mel_bins: 80
    input: padded_30s           how the encoder sees a clip: padded to 30 s with the log-mel of silence, the 1500
                                encoder frames all attended (Whisper's own way; the default, what export-whisper
                                writes), or real_length (WhisperAudioEncoder: the clip's frames only, padding masked)
    base: {path, hash}          fine-tuned only: the exported Whisper it started from
    training: {...}             fine-tuned only: task, asr_langs, target, finetune (decoder | all), ...

Each utterance is decoded after the prefix ``<|startoftranscript|><|lang|><|task|><|notimestamps|>``: the language
token from utt2lang, ``<|transcribe|>`` for ASR and ``<|translate|>`` (into English) for ST.

Batches of real-length clips: transformers' Whisper decoder passes no mask to cross-attention, so a short clip's
decoder would attend to the padding of the batch's longer ones. The decoder here runs under the attention function
``speechllm_whisper`` (registered in transformers' attention registry): sdpa, plus, in cross-attention only, the
key mask given per call as ``encoder_key_mask`` (B, S) bool. An utterance's scores then do not depend on its batch.

Example::

    from speechllm_cli.models.whisper.finetuned import load_whisper

    model = load_whisper("exp/whisper/base")                       # zero-shot (input: padded_30s), eval mode
    hidden, hidden_lens = model.encode(feats, feat_lens)           # (B, T, 80) log-mel -> (B, 1500, 512), (B,)
    prefix = model.prefix_ids("de", "st")                          # [50258, 50261, 50358, 50363]
    logits = model.decoder_logits(torch.tensor([prefix]), hidden[:1], hidden_lens[:1])   # (1, 4, 51865)
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.whisper.encoder import WhisperAudioEncoder, check_input, padded_input

logger = logging.getLogger(__name__)

MASKED_ATTENTION = "speechllm_whisper"  # the attention implementation the decoder runs under
TASK_NAMES = {"asr": "transcribe", "st": "translate"}  # our task -> Whisper's task token
INPUT_MODES = ("padded_30s", "real_length")
IGNORE_ID = -100
EXTRA_FILES = ("preprocessor_config.json",)  # copied from the base dir when saving a fine-tuned model


def _masked_attention(module: nn.Module, query, key, value, attention_mask, encoder_key_mask=None, **kwargs):
    """sdpa; in the decoder's cross-attention (``is_decoder`` and not causal) the keys past each clip's encoder
    length are masked with ``encoder_key_mask`` (B, S) bool, True = a real frame."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if encoder_key_mask is not None and getattr(module, "is_decoder", False) and not module.is_causal:
        attention_mask = encoder_key_mask[:, None, None, :]  # (B, 1, 1, S): every query and head alike
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_masked_attention() -> None:
    """Register ``speechllm_whisper`` (attention and mask making: those of sdpa) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(MASKED_ATTENTION, _masked_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(MASKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


class WhisperSeq2Seq(nn.Module):
    """A transformers ``WhisperForConditionalGeneration`` on dumped Whisper log-mel, with the toolkit's prefixes.

    ``input_mode``: ``padded_30s`` (Whisper's encoder on each clip padded to 3000 frames with its log-mel of silence)
    or ``real_length`` (``WhisperAudioEncoder``: the clip's own frames, its last ``trainable_encoder_layers`` layers
    trainable, the frozen part's output cached per utterance up to ``encoder_cache_mb`` MiB).
    """

    def __init__(self, whisper, tokenizer, input_mode: str = "padded_30s", trainable_encoder_layers: int = 0,
                 content_hash: str | None = None, encoder_cache_mb: float = 0.0):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input {input_mode!r} is not one of {INPUT_MODES}")
        register_masked_attention()
        whisper.set_attn_implementation(MASKED_ATTENTION)
        self.whisper = whisper
        self.tokenizer = tokenizer
        self.input_mode = input_mode
        self.content_hash = content_hash
        self.audio_encoder = None
        if input_mode == "real_length":  # shares whisper.model.encoder (its parameters are named under whisper.)
            self.audio_encoder = WhisperAudioEncoder(whisper.model.encoder, content_hash, pad_to_30s=False,
                                                     trainable_layers=trainable_encoder_layers,
                                                     cache_mb=encoder_cache_mb)
        elif trainable_encoder_layers:
            raise ValueError("a padded_30s Whisper keeps its encoder frozen: train at input real_length")
        else:
            whisper.model.encoder.requires_grad_(False)
        config, generation = whisper.config, whisper.generation_config
        self.num_mel_bins = config.num_mel_bins
        self.max_frames = config.max_source_positions * 2  # input frames of 30 s
        self.max_target_positions = config.max_target_positions
        self.sot, self.eot = int(generation.decoder_start_token_id), int(generation.eos_token_id)
        self.no_timestamps = int(generation.no_timestamps_token_id)
        self.lang_to_id = dict(getattr(generation, "lang_to_id", None) or {})
        self.task_to_id = dict(getattr(generation, "task_to_id", None) or {})
        if not self.lang_to_id or set(TASK_NAMES.values()) - set(self.task_to_id):
            raise ValueError("the Whisper's generation_config.json has no lang_to_id / task_to_id: an English-only "
                             "or unconverted Whisper; export a multilingual one with `speechllm export-whisper`")
        self.suppress_ids = [int(i) for i in getattr(generation, "suppress_tokens", None) or []]
        self.begin_suppress_ids = [int(i) for i in getattr(generation, "begin_suppress_tokens", None) or []]

    @property
    def device(self) -> torch.device:
        return self.whisper.proj_out.weight.device

    # ------------------------------------------------------------------ prefixes and text
    def prefix_ids(self, lang: str, task: str) -> list[int]:
        """``<|startoftranscript|><|lang|><|transcribe|>`` (task asr) or ``<|translate|>`` (st) ``<|notimestamps|>``.

        ``lang`` is a utt2lang code (``de``; a region suffix such as ``zh-CN`` falls back to ``zh``)."""
        if task not in TASK_NAMES:
            raise ValueError(f"task {task!r}: Whisper decodes 'asr' (transcribe) or 'st' (translate into English)")
        for code in (lang, lang.replace("_", "-").split("-")[0].lower()):
            lang_id = self.lang_to_id.get(f"<|{code}|>")
            if lang_id is not None:
                return [self.sot, int(lang_id), int(self.task_to_id[TASK_NAMES[task]]), self.no_timestamps]
        known = sorted(k.strip("<|>") for k in self.lang_to_id)
        raise ValueError(f"language {lang!r} has no Whisper token <|{lang}|> (Whisper knows {len(known)}: "
                         f"{' '.join(known[:12])} ...); fix utt2lang")

    def target_ids(self, text: str) -> list[int]:
        """Target token ids of ``text`` as Whisper emits it after the prefix: a leading space, no special tokens."""
        return list(self.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids)

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ encoder
    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, n_mels) dumped log-mel (zero-padded), feat_lens (B,) -> encoder output (B, S, D) and the
        valid frames of each row (B,): ceil(T_i / 2) at real length, all 1500 padded to 30 s."""
        if self.audio_encoder is not None:
            return self.audio_encoder(feats, feat_lens)
        check_input(feats, feat_lens, self.num_mel_bins, self.max_frames)
        lens = feat_lens.tolist()
        padded = torch.stack([padded_input(f[:n], self.max_frames) for f, n in zip(feats, lens)])  # (B, 3000, F)
        hidden = self.whisper.model.encoder(padded.transpose(1, 2)).last_hidden_state  # (B, 1500, D)
        return hidden, torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long, device=hidden.device)

    # ------------------------------------------------------------------ decoder
    def new_cache(self):
        """An empty key/value cache for :meth:`decoder_logits` (self-attention and cross-attention parts)."""
        from transformers import DynamicCache, EncoderDecoderCache

        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def decoder_states(self, input_ids: torch.Tensor, hidden: torch.Tensor, hidden_lens: torch.Tensor,
                       cache: Any = None) -> torch.Tensor:
        """The decoder's output (B, L, D) over ``input_ids`` (B, L), cross-attending to the first ``hidden_lens``
        frames of ``hidden`` (B, S, D). With ``cache`` (from :meth:`new_cache`) ``input_ids`` continue what the cache
        holds, and it is updated in place."""
        from speechllm_cli.models.llm import cache_kwarg

        decoder = self.whisper.model.decoder
        key_mask = None
        if int(hidden_lens.min()) < hidden.shape[1]:
            key_mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < hidden_lens[:, None]  # (B, S)
        out = decoder(input_ids=input_ids, encoder_hidden_states=hidden, use_cache=cache is not None,
                      encoder_key_mask=key_mask, **{cache_kwarg(decoder.forward): cache})
        return out.last_hidden_state

    def decoder_logits(self, input_ids: torch.Tensor, hidden: torch.Tensor, hidden_lens: torch.Tensor,
                       cache: Any = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, L, V) (``last_only``: (B, V)) of the tokens after each of ``input_ids``; see decoder_states."""
        states = self.decoder_states(input_ids, hidden, hidden_lens, cache)
        return self.whisper.proj_out(states[:, -1] if last_only else states)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, prefix_ids: list[list[int]],
                target_ids: list[list[int]], label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
        """Cross-entropy on the target tokens and <|endoftext|> (not on the prefix), the mean over tokens.
        Returns (loss, {"loss", "acc", "num_tokens", "num_utts"})."""
        hidden, hidden_lens = self.encode(feats, feat_lens)
        inputs, labels = [], []
        for prefix, target in zip(prefix_ids, target_ids):
            inputs.append(torch.tensor([*prefix, *target]))
            labels.append(torch.tensor([IGNORE_ID] * (len(prefix) - 1) + [*target, self.eot]))
        inputs = nn.utils.rnn.pad_sequence(inputs, batch_first=True, padding_value=self.eot).to(self.device)  # (B, L)
        labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_ID).to(self.device)
        if inputs.shape[1] > self.max_target_positions:
            raise ValueError(f"a prefix + target of {inputs.shape[1]} tokens: Whisper's decoder takes at most "
                             f"{self.max_target_positions}")
        scored = labels != IGNORE_ID  # (B, L): the output projection (V = 51865) runs on these positions only
        logits = self.whisper.proj_out(self.decoder_states(inputs, hidden, hidden_lens)[scored]).float()  # (N, V)
        loss = F.cross_entropy(logits, labels[scored], label_smoothing=label_smoothing)
        num_tokens = int(scored.sum())
        acc = float((logits.argmax(-1) == labels[scored]).float().mean())
        return loss, {"loss": float(loss.detach()), "acc": acc, "num_tokens": num_tokens, "num_utts": len(prefix_ids)}

    # ------------------------------------------------------------------ what trains
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        expected = {name for name, p in params.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"saved Whisper state does not match the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]} (another train.finetune?)")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)


def load_whisper(model_dir: str | os.PathLike, device: str | torch.device = "cpu", trainable_encoder_layers: int = 0,
                 input_mode: str | None = None, encoder_cache_mb: float = 0.0) -> WhisperSeq2Seq:
    """The Whisper of ``model_dir`` (an export or a fine-tuned dir) in eval mode, with ``.tokenizer`` and ``.record``
    (its model.yaml). ``input_mode`` None: the record's ``input`` (padded_30s when it has none)."""
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    from speechllm_cli.models.model_dir import read_model_record

    model_dir = Path(model_dir)
    record = read_model_record(model_dir, expect=("whisper",))
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: {model_dir} is incomplete; re-run `speechllm export-whisper` "
                                "(or the training that wrote it)")
    whisper = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = WhisperTokenizer.from_pretrained(model_dir)
    model = WhisperSeq2Seq(whisper, tokenizer, input_mode or record.get("input", "padded_30s"),
                           trainable_encoder_layers, record.get("hash"), encoder_cache_mb)
    model.record = record
    return model.to(device).eval()


def save_whisper(model: WhisperSeq2Seq, out_dir: str | os.PathLike, base_dir: str | os.PathLike,
                 training: dict) -> Path:
    """Write ``model`` as a full Whisper model dir (every weight, safetensors; replaced atomically) whose model.yaml
    names ``base_dir`` (the Whisper it was fine-tuned from, with its hash) and the ``training`` settings."""
    from speechllm_cli.models.llm import llm_content_hash
    from speechllm_cli.models.model_dir import read_model_record, write_model_record
    from speechllm_cli.utils.io import atomic_dir

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    base = read_model_record(base_dir, expect=("whisper",))
    with atomic_dir(out_dir) as tmp_dir:
        model.whisper.save_pretrained(tmp_dir)  # safetensors; the attention implementation is not saved
        model.tokenizer.save_pretrained(tmp_dir)
        for name in EXTRA_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, tmp_dir / name)
        write_model_record(tmp_dir, "whisper", source=f"fine-tuned from {base_dir}", hash=llm_content_hash(tmp_dir),
                           num_mel_bins=model.num_mel_bins, input=model.input_mode,
                           base={"path": str(base_dir), "hash": base.get("hash")}, training=training)
    logger.info("saved the fine-tuned Whisper to %s", out_dir)
    return out_dir
