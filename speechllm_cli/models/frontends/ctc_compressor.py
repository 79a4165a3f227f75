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
keeps every 40 ms frame. Being frozen, each utterance's output is computed once and cached (keyed by its features'
bytes, see utterance_cache.py): every training epoch after the first skips the compressor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from speechllm_cli.models.compression import MODES, compress
from speechllm_cli.models.frontends.base import FrontEndOutput
from speechllm_cli.models.utterance_cache import UtteranceCache


@dataclass
class CTCCompressorFrontEndConfig:
    type: str = "ctc_compressor"
    dir: str = ""  # a trained CTC compressor: `speechllm train-ctc --out`'s dir
    compression: Literal["frame_average", "blank_remove", "none"] = "frame_average"

    def __post_init__(self):
        if self.compression not in MODES:
            raise ValueError(f"compression {self.compression!r} is not one of {MODES}")


class CTCCompressorFrontEnd(nn.Module):
    def __init__(self, config: CTCCompressorFrontEndConfig, compressor: nn.Module, pieces: list[str] | None = None,
                 cache_mb: float = 1024.0):
        """``compressor``: a CTCCompressor; ``pieces``: its CTC vocabulary in id order (for a label table)."""
        super().__init__()
        self.config = config
        self.compressor = compressor.eval().requires_grad_(False)
        self.pieces = pieces
        self.output_dim = compressor.output_dim
        self.num_labels = compressor.ctc_head.out_features
        self.feats_type = compressor.feats_type
        self.cache = UtteranceCache(cache_mb)  # frozen: each utterance is compressed once per process

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
        keys = self.cache.keys(feats, feat_lens)
        missing = self.cache.missing(keys)
        if missing:
            index = torch.tensor(missing, device=feats.device)
            sub_lens = feat_lens.to(feats.device)[index]
            frames, lens, posteriors = self._compress(feats[index, : int(sub_lens.max())], sub_lens)
            for row, i in enumerate(missing):
                n = int(lens[row])
                self.cache.put(keys[i], (frames[row, :n], posteriors[row, :n]))
        parts = [self.cache.get(key) if i not in missing else None for i, key in enumerate(keys)]
        for row, i in enumerate(missing):  # rows the cache had no room for
            n = int(lens[row])
            parts[i] = (frames[row, :n], posteriors[row, :n])
        out_lens = torch.tensor([p[0].shape[0] for p in parts], device=feats.device)
        frames = pad_sequence([p[0] for p in parts], batch_first=True).to(feats.device)  # (B, A, D)
        if not with_posteriors:
            return FrontEndOutput(frames, out_lens, None)
        posteriors = pad_sequence([p[1] for p in parts], batch_first=True).to(feats.device)  # (B, A, V)
        return FrontEndOutput(frames, out_lens, posteriors)

    def _compress(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        """The compressor's states and label posteriors, compressed: (B, A, D), (B,), (B, A, V)."""
        hidden, hidden_lens, logits = self.compressor(feats, feat_lens)  # (B, T', D), (B,), (B, T', V)
        labels = logits.argmax(-1)  # (B, T') greedy CTC labels
        dim = hidden.shape[-1]
        both = torch.cat([hidden.float(), logits.float().softmax(-1)], -1)  # (B, T', D + V)
        both, lens = compress(both, hidden_lens, labels, self.config.compression, self.compressor.blank_id)
        return both[..., :dim], lens, both[..., dim:]
