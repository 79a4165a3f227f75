"""Front-end ``ctc_compressor``: fbank -> the frozen CTC compressor -> blank removal / frame averaging / none.

Example::

    from speechllm_cli.models.frontends.ctc_compressor import CTCCompressorFrontEnd, CTCCompressorFrontEndConfig

    frontend = CTCCompressorFrontEnd.from_config(
        CTCCompressorFrontEndConfig(dir="exp/ctc_compressor", compression="frame_average"))
    out = frontend(feats, feat_lens, with_posteriors=True)   # raw fbank (B, T, 80), (B,)
    out.frames, out.lens, out.posteriors                       # (B, A, 256), (B,), (B, A, V_ctc)

The compressor (Speech-LLaMA's: 2 Conv2d + 4 Transformer layers pretrained with CTC on source transcripts, global
CMVN inside) runs in eval mode without gradients; its greedy CTC labels shorten its states (see compression.py).
The label posteriors are compressed with the states: one mean posterior per output vector. ``compression: none``
keeps every 40 ms frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from speechllm_cli.models.compression import MODES, compress
from speechllm_cli.models.frontends.base import FrontEndOutput


@dataclass
class CTCCompressorFrontEndConfig:
    type: str = "ctc_compressor"
    dir: str = ""  # a trained CTC compressor: `speechllm train-ctc --out`'s dir
    compression: Literal["frame_average", "blank_remove", "none"] = "frame_average"

    def __post_init__(self):
        if self.compression not in MODES:
            raise ValueError(f"compression {self.compression!r} is not one of {MODES}")


class CTCCompressorFrontEnd(nn.Module):
    def __init__(self, config: CTCCompressorFrontEndConfig, compressor: nn.Module, pieces: list[str] | None = None):
        """``compressor``: a CTCCompressor; ``pieces``: its CTC vocabulary in id order (for a label table)."""
        super().__init__()
        self.config = config
        self.compressor = compressor.eval().requires_grad_(False)
        self.pieces = pieces
        self.output_dim = compressor.output_dim
        self.num_labels = compressor.ctc_head.out_features
        self.feats_type = compressor.feats_type

    @classmethod
    def from_config(cls, config: CTCCompressorFrontEndConfig, device: str | torch.device = "cpu"
                    ) -> CTCCompressorFrontEnd:
        from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor

        if not config.dir:
            raise ValueError("model.frontend.dir is empty: set it to a trained CTC compressor dir "
                             "(speechllm train-ctc --out), e.g. --set model.frontend.dir=exp/ctc_compressor")
        compressor, tokenizer = load_ctc_compressor(config.dir, device)
        return cls(config, compressor, list(tokenizer.tokens))

    @staticmethod
    def source_hash(config: CTCCompressorFrontEndConfig) -> str | None:
        """The content hash of the compressor ``config.dir`` names (None without a dir: a module given directly)."""
        from speechllm_cli.models.ctc_compressor_io import ctc_compressor_hash

        return ctc_compressor_hash(config.dir) if config.dir else None

    def content_hash(self) -> str | None:
        return self.source_hash(self.config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.compressor.eval()  # frozen: dropout and SpecAugment off even while the speech LLM trains
        return self

    def max_output_lengths(self, feat_lens: torch.Tensor) -> torch.Tensor:
        """The compressor's output lengths: compression never lengthens them."""
        return self.compressor.output_lengths(feat_lens)

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, with_posteriors: bool = False) -> FrontEndOutput:
        hidden, hidden_lens, logits = self.compressor(feats, feat_lens)  # (B, T', D), (B,), (B, T', V)
        labels = logits.argmax(-1)  # (B, T') greedy CTC labels
        mode, blank_id = self.config.compression, self.compressor.blank_id
        if not with_posteriors:
            frames, lens = compress(hidden, hidden_lens, labels, mode, blank_id)  # (B, A, D), (B,)
            return FrontEndOutput(frames.float(), lens, None)
        dim = hidden.shape[-1]
        both = torch.cat([hidden.float(), logits.float().softmax(-1)], -1)  # (B, T', D + V)
        both, lens = compress(both, hidden_lens, labels, mode, blank_id)
        return FrontEndOutput(both[..., :dim], lens, both[..., dim:])  # (B, A, D), (B,), (B, A, V)
