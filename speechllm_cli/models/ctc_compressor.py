"""The CTC compressor: fbank -> CMVN -> SpecAugment -> 4x Conv2d subsampling -> Transformer -> CTC head; or, with
``encoder: whisper``, Whisper log-mel -> a pretrained Whisper encoder (frozen) -> SpecAugment -> Linear ->
Transformer -> CTC head: CTC compression on top of Whisper.

Example::

    import torch
    from speechllm_cli.models.ctc_compressor import (
        CTCCompressor, CTCCompressorConfig, ctc_loss, greedy_decode, greedy_labels)

    model = CTCCompressor(CTCCompressorConfig(vocab_size=300))          # or cmvn_stats=kaldiio.load_mat(...)
    feats, feat_lens = torch.randn(2, 200, 80), torch.tensor([200, 150])  # (B, T, 80), (B,)
    out = model(feats, feat_lens)   # hidden (2, 49, 256), hidden_lens [49, 36], logits (2, 49, 300)
    targets, target_lens = torch.tensor([[5, 6, 7], [8, 9, -1]]), torch.tensor([3, 2])
    loss = ctc_loss(out, targets, target_lens)  # summed over utterances / batch size
    model.eval()
    labels = greedy_labels(out.logits, out.hidden_lens)     # (B, T'), -1 past each length
    hyps = greedy_decode(out.logits, out.hidden_lens)       # [[ids...], [ids...]], repeats collapsed, no blanks

SpecAugment runs in training mode only: frequency masks of up to ``freq_mask_width`` bins and time
masks of up to ``time_mask_ratio`` x the utterance's length, placed inside the utterance, filled
with 0 (the mean, as it runs after CMVN). Padding never changes an utterance's outputs: CMVN zeroes
padded frames, the convolutions never reach past a length (see subsampling.py) and attention masks
padded frames. ``hidden`` (after the final LayerNorm) is 0 past each length.

With ``encoder: whisper`` (``whisper_dir``: ``speechllm export-whisper``'s dir) the Whisper encoder runs at each clip's
real length (or padded to 30 s: ``whisper_pad_to_30s``; see models/whisper/encoder.py), 50 frames per second; its
frozen weights stay in the Whisper dir (the compressor's state dict leaves them out) and its outputs are cached per
utterance, so only the layers above it cost anything after the first epoch. SpecAugment masks its output frames
and channels. There is no CMVN: Whisper's log-mel is normalised already.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.cmvn import GlobalCMVN
from speechllm_cli.models.subsampling import Conv2dSubsampling, PositionalEncoding, subsampled_lengths
from speechllm_cli.text.tokenizer import BLANK_ID  # the one blank id: the tokenizer reserves it, CTC uses it


@dataclass
class CTCCompressorConfig:
    input_dim: int = 80  # feature bins (fbank or Whisper log-mel)
    encoder: Literal["conv2d", "whisper"] = "conv2d"  # conv2d: Speech-LLaMA's; whisper: a pretrained Whisper encoder
    whisper_dir: str = ""  # encoder: whisper: the `speechllm export-whisper --out` dir
    whisper_pad_to_30s: bool = False  # run Whisper on 30 s (how it was trained) instead of each clip's real length
    whisper_trainable_layers: int = 0  # Whisper's last layers that train with the CTC head (0: frozen)
    d_model: int = 256
    conv_channels: int = 0  # channels of the two Conv2d layers; 0 = d_model (the second conv dominates the cost)
    num_heads: int = 4
    ff_dim: int = 1024
    num_layers: int = 4
    dropout: float = 0.1
    vocab_size: int = 0  # CTC outputs, blank (id 0) included; 0 = not set yet (give it from the tokenizer)
    num_freq_masks: int = 2
    freq_mask_width: int = 27  # bins, absolute (the LD policy's F on 80 dims)
    num_time_masks: int = 2
    time_mask_ratio: float = 0.05  # the largest time mask, as a fraction of the utterance's length


class CTCOutput(NamedTuple):
    hidden: torch.Tensor  # (B, T', D) encoder output, 0 past hidden_lens
    hidden_lens: torch.Tensor  # (B,)
    logits: torch.Tensor  # (B, T', V) CTC logits (unnormalised)


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019) without time warping; vectorised over the batch."""

    def __init__(self, num_freq_masks: int, freq_mask_width: int, num_time_masks: int, time_mask_ratio: float):
        super().__init__()
        self.num_freq_masks, self.freq_mask_width = num_freq_masks, freq_mask_width
        self.num_time_masks, self.time_mask_ratio = num_time_masks, time_mask_ratio

    @staticmethod
    def _spans(size: torch.Tensor, max_width: torch.Tensor, count: int, extent: int) -> torch.Tensor:
        """(B, extent) True inside ``count`` random spans per row, each of width U[0, max_width] inside [0, size)."""
        batch = size.shape[0]
        rand = torch.rand(batch, count, 2, device=size.device)
        widths = (rand[..., 0] * (max_width[:, None] + 1)).floor().long()  # (B, n) in [0, max_width]
        widths = torch.minimum(widths, size[:, None])
        starts = (rand[..., 1] * (size[:, None] - widths + 1)).floor().long()  # (B, n) in [0, size - width]
        pos = torch.arange(extent, device=size.device)  # (extent,)
        inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # (B, n, extent)
        return inside.any(dim=1)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """feats (B, T, D), feat_lens (B,) -> masked feats (B, T, D)."""
        batch, frames, dims = feats.shape
        masked = torch.zeros(batch, frames, dims, dtype=torch.bool, device=feats.device)
        if self.num_freq_masks > 0 and self.freq_mask_width > 0:
            size = torch.full((batch,), dims, device=feats.device)
            width = torch.full((batch,), min(self.freq_mask_width, dims), device=feats.device)
            masked |= self._spans(size, width, self.num_freq_masks, dims)[:, None, :]
        if self.num_time_masks > 0 and self.time_mask_ratio > 0:
            lens = feat_lens.to(feats.device).long()
            width = (lens * self.time_mask_ratio).floor().long()
            masked |= self._spans(lens, width, self.num_time_masks, frames)[:, :, None]
        return feats.masked_fill(masked, 0.0)


class CTCCompressor(nn.Module):
    """GlobalCMVN -> SpecAugment (training) -> Conv2dSubsampling -> pre-LN Transformer -> LayerNorm -> CTC head."""

    blank_id = BLANK_ID

    def __init__(
        self, config: CTCCompressorConfig, vocab_size: int | None = None, cmvn_stats: np.ndarray | None = None
    ):
        super().__init__()
        if vocab_size is not None:
            config = replace(config, vocab_size=vocab_size)
        if config.vocab_size < 2:
            raise ValueError(f"CTC vocab_size {config.vocab_size} must be at least 2 (blank + one token); "
                             "set it from the tokenizer (Tokenizer.vocab_size)")
        if config.d_model % config.num_heads:
            raise ValueError(f"d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
        self.config = config
        self.spec_augment = SpecAugment(
            config.num_freq_masks, config.freq_mask_width, config.num_time_masks, config.time_mask_ratio
        )
        self.whisper = None
        if config.encoder == "whisper":
            self.whisper = _load_whisper(config)
            self.input_proj = nn.Linear(self.whisper.output_dim, config.d_model)
        elif config.encoder == "conv2d":
            self.cmvn = GlobalCMVN(config.input_dim)
            if cmvn_stats is not None:
                self.cmvn.set_stats(cmvn_stats)
            self.subsampling = Conv2dSubsampling(config.input_dim, config.d_model, config.conv_channels or None)
            self.pos_enc = PositionalEncoding(config.d_model, config.dropout)
        else:
            raise ValueError(f"model.encoder {config.encoder!r} is not one of ['conv2d', 'whisper']")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model, config.num_heads, config.ff_dim, config.dropout, batch_first=True, norm_first=True
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.ctc_head = nn.Linear(config.d_model, config.vocab_size)

    @property
    def output_dim(self) -> int:
        return self.config.d_model

    @property
    def feats_type(self) -> tuple[str, int]:
        """The features it reads, as a dump dir's ``feats_type`` names them."""
        return ("whisper_mel" if self.whisper is not None else "fbank"), self.config.input_dim

    def output_lengths(self, feat_lens: torch.Tensor) -> torch.Tensor:
        """Its output lengths (before compression) for ``feat_lens`` input frames."""
        return self.whisper.output_lengths(feat_lens) if self.whisper is not None else subsampled_lengths(feat_lens)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> CTCOutput:
        """feats (B, T, input_dim) raw fbank (or Whisper log-mel), feat_lens (B,) -> CTCOutput(hidden, hidden_lens,
        logits)."""
        feat_lens = feat_lens.to(feats.device)
        if self.whisper is not None:
            hidden, hidden_lens = self.whisper(feats, feat_lens)  # (B, T', D_whisper), 0 past each length
            if self.training:
                hidden = self.spec_augment(hidden, hidden_lens)
            hidden = self.input_proj(hidden)
        else:
            feats = self.cmvn(feats, feat_lens)  # (B, T, F), 0 past each length
            if self.training:
                feats = self.spec_augment(feats, feat_lens)
            hidden, hidden_lens = self.subsampling(feats, feat_lens)  # (B, T', D), (B,)
            hidden = self.pos_enc(hidden)
        padding = torch.arange(hidden.shape[1], device=hidden.device) >= hidden_lens[:, None]  # (B, T') True = pad
        for layer in self.layers:
            hidden = layer(hidden, src_key_padding_mask=padding)
        hidden = self.norm(hidden).masked_fill(padding[..., None], 0.0)  # (B, T', D)
        return CTCOutput(hidden, hidden_lens, self.ctc_head(hidden))


def _load_whisper(config: CTCCompressorConfig) -> nn.Module:
    from speechllm_cli.models.whisper.encoder import WhisperAudioEncoder

    if not config.whisper_dir:
        raise ValueError("model.encoder is whisper but model.whisper_dir is empty: set it to `speechllm export-whisper "
                         "--out`'s dir, e.g. --set model.whisper_dir=exp/whisper/base")
    whisper = WhisperAudioEncoder.load(config.whisper_dir, pad_to_30s=config.whisper_pad_to_30s,
                                       trainable_layers=config.whisper_trainable_layers)
    if whisper.num_mel_bins != config.input_dim:
        raise ValueError(f"{config.whisper_dir} takes {whisper.num_mel_bins}-bin log-mel but model.input_dim is "
                         f"{config.input_dim}: set model.input_dim={whisper.num_mel_bins} and make the features with "
                         f"`speechllm fbank --type whisper_mel --num-mel-bins {whisper.num_mel_bins}`")
    return whisper


def ctc_loss(output: CTCOutput, targets: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """CTC loss summed over utterances and divided by the batch size (ESPnet's normalisation).

    targets (B, S) padded CTC ids (any padding value), target_lens (B,). Utterances whose targets
    cannot be aligned (longer than their frames) contribute 0 (``zero_infinity``).
    """
    log_probs = output.logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, V)
    targets = targets.clamp(min=0)  # padding is never read, but must be a valid index
    loss = F.ctc_loss(
        log_probs, targets, output.hidden_lens, target_lens,
        blank=BLANK_ID, reduction="sum", zero_infinity=True,
    )
    return loss / log_probs.shape[1]


def greedy_labels(logits: torch.Tensor, lens: torch.Tensor, pad_id: int = -1) -> torch.Tensor:
    """Best label per frame (B, T'), ``pad_id`` past each length."""
    labels = logits.argmax(-1)  # (B, T')
    padding = torch.arange(labels.shape[1], device=labels.device) >= lens.to(labels.device)[:, None]
    return labels.masked_fill(padding, pad_id)


def greedy_decode(logits: torch.Tensor, lens: torch.Tensor, blank_id: int = BLANK_ID) -> list[list[int]]:
    """Best path per utterance: repeated labels collapsed, blanks dropped."""
    labels = greedy_labels(logits, lens, pad_id=blank_id)  # (B, T')
    previous = F.pad(labels[:, :-1], (1, 0), value=blank_id)  # (B, T') label of the frame before
    keep = (labels != blank_id) & (labels != previous)
    return [row[row_keep].tolist() for row, row_keep in zip(labels.cpu(), keep.cpu())]
