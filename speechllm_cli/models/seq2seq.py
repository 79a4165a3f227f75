"""The encoder-decoder baseline: a Transformer trained from scratch with the hybrid CTC/attention loss (ESPnet).

GlobalCMVN -> SpecAugment (training) -> Conv2dSubsampling -> pre-LN Transformer encoder -> CTC head (the encoder is
a CTCCompressor over the target vocabulary: the same module the speech LLMs' front-end pretrains), and a causal
pre-LN Transformer decoder over the target tokens that attends to the encoder output. The loss is
``(1 - ctc_weight) * attention CE (label smoothing) + ctc_weight * CTC``, each summed over an utterance's tokens and
averaged over utterances (ESPnet's normalisation).

Vocabulary (``vocab_size`` outputs, shared by the CTC head and the decoder): the ids of the target tokenizer
(speechllm_cli.text.tokenizer: ``<blank>`` 0, ``<unk>`` 1, pieces) plus one last id, ``<sos/eos>``, that starts the
decoder input and ends its output (ESPnet's convention). ``vocab_size = tokenizer.vocab_size + 1``.

Example::

    import torch
    from speechllm_cli.models.seq2seq import Seq2SeqConfig, Seq2SeqModel

    model = Seq2SeqModel(Seq2SeqConfig(d_model=32, num_heads=2, ff_dim=64, encoder_layers=2, decoder_layers=1,
                                       vocab_size=20))
    feats, feat_lens = torch.randn(2, 100, 80), torch.tensor([100, 60])    # raw fbank (B, T, 80)
    loss, stats = model(feats, feat_lens, torch.tensor([[3, 4, 5], [6, 7, -1]]), torch.tensor([3, 2]))
    enc, enc_lens = model.encode(feats, feat_lens)                          # (B, T', D), (B,)
    prefix = torch.full((2, 1), model.sos_id)                               # (B, L) decoder input: <sos> ...
    log_probs = model.decode_step(prefix, enc, enc_lens)                    # (B, V) next-token log-probs
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig, ctc_loss
from speechllm_cli.models.subsampling import PositionalEncoding
from speechllm_cli.text.tokenizer import BLANK_ID

IGNORE_ID = -1  # target padding


@dataclass
class Seq2SeqConfig:
    input_dim: int = 80
    d_model: int = 256
    num_heads: int = 4
    ff_dim: int = 2048
    encoder_layers: int = 12
    decoder_layers: int = 6
    dropout: float = 0.1
    conv_channels: int = 0  # channels of the two Conv2d layers; 0 = d_model
    ctc_weight: float = 0.3  # loss = (1 - w) * attention + w * CTC
    label_smoothing: float = 0.1
    vocab_size: int = 0  # tokenizer ids + <sos/eos> (the last id); 0 = not set yet (training sets it)
    num_freq_masks: int = 2
    freq_mask_width: int = 27
    num_time_masks: int = 2
    time_mask_ratio: float = 0.05

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def causal_mask(length: int, device=None) -> torch.Tensor:
    """(L, L) bool, True where a query position may NOT attend (the future)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class Seq2SeqModel(nn.Module):
    """Attention encoder-decoder with a CTC head on the encoder; see the module docstring."""

    blank_id = BLANK_ID

    def __init__(self, config: Seq2SeqConfig, cmvn_stats: np.ndarray | None = None):
        super().__init__()
        if config.vocab_size < 3:
            raise ValueError(f"vocab_size {config.vocab_size} must be at least 3 (<blank>, one token, <sos/eos>); "
                             "set it to the target tokenizer's vocab_size + 1")
        self.config = config
        d_model, vocab = config.d_model, config.vocab_size
        self.encoder = CTCCompressor(CTCCompressorConfig(
            input_dim=config.input_dim, d_model=d_model, conv_channels=config.conv_channels,
            num_heads=config.num_heads, ff_dim=config.ff_dim, num_layers=config.encoder_layers,
            dropout=config.dropout, vocab_size=vocab, num_freq_masks=config.num_freq_masks,
            freq_mask_width=config.freq_mask_width, num_time_masks=config.num_time_masks,
            time_mask_ratio=config.time_mask_ratio), cmvn_stats=cmvn_stats)
        self.embed = nn.Embedding(vocab, d_model)
        self.decoder_pos = PositionalEncoding(d_model, config.dropout)
        self.decoder_layers = nn.ModuleList(
            nn.TransformerDecoderLayer(d_model, config.num_heads, config.ff_dim, config.dropout, batch_first=True,
                                       norm_first=True)
            for _ in range(config.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab)

    @property
    def eos_id(self) -> int:
        """``<sos/eos>``: the last id (it also starts the decoder input)."""
        return self.config.vocab_size - 1

    @property
    def sos_id(self) -> int:
        return self.eos_id

    @property
    def cmvn(self) -> nn.Module:
        return self.encoder.cmvn

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, input_dim) raw fbank, feat_lens (B,) -> enc (B, T', D) (0 past enc_lens), enc_lens (B,)."""
        enc, enc_lens, _ = self.encoder(feats, feat_lens)
        return enc, enc_lens

    def ctc_logits(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T', D) encoder output -> (B, T', V) CTC logits."""
        return self.encoder.ctc_head(enc)

    def decode(self, tokens: torch.Tensor, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """Decoder logits (B, L, V) for the input tokens (B, L) (``<sos>`` first; right padding with any valid id
        is harmless: a position sees only itself and earlier ones) over the encoder output enc (B, T', D)."""
        memory_padding = torch.arange(enc.shape[1], device=enc.device) >= enc_lens.to(enc.device)[:, None]
        mask = causal_mask(tokens.shape[1], tokens.device)
        hidden = self.decoder_pos(self.embed(tokens))  # (B, L, D)
        for layer in self.decoder_layers:
            hidden = layer(hidden, enc, tgt_mask=mask, memory_key_padding_mask=memory_padding)
        return self.output(self.decoder_norm(hidden))

    def decode_step(self, tokens: torch.Tensor, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """Next-token log-probs (B, V) after the prefixes tokens (B, L) (``<sos>`` first, no padding)."""
        return self.decode(tokens, enc, enc_lens)[:, -1].float().log_softmax(-1)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, targets: torch.Tensor,
                target_lens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hybrid loss (mean over utterances) and stats for targets (B, S) (token ids, padded with IGNORE_ID).

        stats: ``loss``, ``loss_att``, ``loss_ctc`` (per utterance), ``acc`` (attention argmax accuracy over the
        target tokens and ``<eos>``), ``num_utts``, ``num_tokens``.
        """
        batch = targets.shape[0]
        target_lens = target_lens.to(targets.device)
        encoded = self.encoder(feats, feat_lens)  # (enc (B, T', D), enc_lens (B,), CTC logits (B, T', V))
        enc, enc_lens = encoded.hidden, encoded.hidden_lens
        loss_ctc = ctc_loss(encoded, targets, target_lens)
        valid = torch.arange(targets.shape[1], device=targets.device) < target_lens[:, None]  # (B, S)
        tokens = targets.masked_fill(~valid, self.eos_id)
        sos = torch.full((batch, 1), self.sos_id, dtype=tokens.dtype, device=tokens.device)
        decoder_in = torch.cat([sos, tokens], dim=1)  # (B, S + 1): <sos> y
        decoder_out = torch.cat([targets.masked_fill(~valid, IGNORE_ID), sos.new_full((batch, 1), IGNORE_ID)], 1)
        decoder_out[torch.arange(batch, device=targets.device), target_lens] = self.eos_id  # (B, S + 1): y <eos>
        logits = self.decode(decoder_in, enc, enc_lens).float()  # (B, S + 1, V)
        loss_att = F.cross_entropy(logits.transpose(1, 2), decoder_out, ignore_index=IGNORE_ID,
                                   label_smoothing=self.config.label_smoothing, reduction="sum") / batch
        weight = self.config.ctc_weight
        loss = (1 - weight) * loss_att + weight * loss_ctc
        scored = decoder_out != IGNORE_ID
        num_tokens = int(scored.sum())
        correct = int(((logits.argmax(-1) == decoder_out) & scored).sum())
        stats = {"loss": loss.item(), "loss_att": loss_att.item(), "loss_ctc": loss_ctc.item(),
                 "acc": correct / max(num_tokens, 1), "num_utts": float(batch), "num_tokens": float(num_tokens)}
        return loss, stats
