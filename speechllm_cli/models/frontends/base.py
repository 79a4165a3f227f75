"""What every front-end is: a padded batch of features -> frame vectors, their lengths and (optionally) CTC label
posteriors per frame.

A front-end is an ``nn.Module`` with

- ``forward(feats, feat_lens, with_posteriors=False) -> FrontEndOutput``: feats (B, T, F) as the dump dir holds them
  (raw fbank: normalisation is the front-end's own), frames (B, A, output_dim) float, zero or junk past ``lens``.
- ``feats_type``: the features it reads, as ``(type, bins)`` of a dump dir's ``feats_type`` (``("fbank", 80)``,
  ``("whisper_mel", 80)``); training and decoding refuse a dump dir of another type.
- ``trainable`` (optional, default False): True when some of its weights train with the speech LLM; its
  ``state_dict()`` then holds exactly those, and the speech LLM saves them beside the adapter.
- ``max_output_lengths(feat_lens)``: an upper bound of ``lens`` without running it (the LLM context check).
- ``output_dim`` (int); ``num_labels`` and ``pieces`` (its CTC vocabulary in id order) when it has CTC posteriors
  (the label table needs them; 0 and None otherwise).
- ``from_config(config, device)``: load what its config names (a trained model dir); ``source_hash(config)`` (a
  staticmethod): a content hash of that model without loading it, recorded by a speech LLM and checked before it
  decodes again (None when there is nothing to hash); ``content_hash()``: the same for the loaded front-end.

Register a new one in ``speechllm_cli/models/frontends/__init__.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class FrontEndOutput(NamedTuple):
    frames: torch.Tensor  # (B, A, output_dim) float
    lens: torch.Tensor  # (B,)
    posteriors: torch.Tensor | None  # (B, A, num_labels) CTC label posteriors of each frame, rows sum to 1


def pad_feats(feats: list[np.ndarray], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features per utterance, each (T_i, F) -> the batch a front-end takes: zero-padded (B, T, F) and lengths
    (B,) on ``device``."""
    lens = torch.tensor([len(f) for f in feats], device=device)
    padded = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1], device=device)  # (B, T, F)
    for i, f in enumerate(feats):
        padded[i, : len(f)] = torch.tensor(f, device=device)
    return padded, lens
