"""Front-end ``whisper``: Whisper log-mel -> a pretrained Whisper encoder (frozen, or its last layers trained with
the speech LLM) -> every 20 ms frame; the adapter (e.g. ``stack_mlp``) shortens them.

Example::

    from speechllm_cli.models.frontends.whisper import WhisperFrontEnd, WhisperFrontEndConfig

    frontend = WhisperFrontEnd.from_config(WhisperFrontEndConfig(dir="exp/whisper/base"))
    out = frontend(feats, feat_lens)          # Whisper log-mel (B, T, 80), (B,)
    out.frames, out.lens                      # (B, ceil(T / 2), 512), (B,); no CTC posteriors

For CTC compression on Whisper, train a CTC compressor with ``model.encoder: whisper`` (conf/train_ctc_whisper.yaml)
and use the ``ctc_compressor`` front-end on it: that front-end gives blank removal, frame averaging and the label
table's posteriors. See models/whisper/encoder.py for real length vs 30 s padding and the per-utterance cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechllm_cli.models.frontends.base import FrontEndOutput
from speechllm_cli.models.whisper.encoder import WhisperAudioEncoder


@dataclass
class WhisperFrontEndConfig:
    type: str = "whisper"
    dir: str = ""  # `speechllm export-whisper --out`'s dir
    pad_to_30s: bool = False  # run the encoder on 30 s, as Whisper was trained (10x slower on short clips)
    trainable_layers: int = 0  # Whisper's last layers trained with the speech LLM (0: frozen, cached per utterance)

    def __post_init__(self):
        if self.trainable_layers < 0:
            raise ValueError(f"trainable_layers {self.trainable_layers} must be >= 0")


class WhisperFrontEnd(nn.Module):
    num_labels = 0
    pieces = None

    def __init__(self, config: WhisperFrontEndConfig, encoder: WhisperAudioEncoder):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.output_dim = encoder.output_dim
        self.trainable = config.trainable_layers > 0  # the speech LLM trains (and saves) those weights
        self.feats_type = ("whisper_mel", encoder.num_mel_bins)

    @classmethod
    def from_config(cls, config: WhisperFrontEndConfig, device: str | torch.device = "cpu") -> WhisperFrontEnd:
        if not config.dir:
            raise ValueError("model.frontend.dir is empty: set it to `speechllm export-whisper --out`'s dir, e.g. "
                             "--set model.frontend.dir=exp/whisper/base")
        encoder = WhisperAudioEncoder.load(config.dir, device, pad_to_30s=config.pad_to_30s,
                                           trainable_layers=config.trainable_layers)
        return cls(config, encoder)

    @staticmethod
    def source_hash(config: WhisperFrontEndConfig) -> str | None:
        """The content hash export-whisper recorded for ``config.dir``."""
        from speechllm_cli.models.model_dir import read_model_record

        return read_model_record(config.dir, expect=("whisper",)).get("hash") if config.dir else None

    def content_hash(self) -> str | None:
        return self.encoder.content_hash

    def max_output_lengths(self, feat_lens: torch.Tensor) -> torch.Tensor:
        return self.encoder.output_lengths(feat_lens)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, with_posteriors: bool = False) -> FrontEndOutput:
        if with_posteriors:
            raise ValueError("the whisper front-end has no CTC posteriors for a label table: set "
                             "model.label_embeddings: false, or use the ctc_compressor front-end on a compressor "
                             "trained with model.encoder: whisper")
        frames, lens = self.encoder(feats, feat_lens)
        return FrontEndOutput(frames.float(), lens, None)
