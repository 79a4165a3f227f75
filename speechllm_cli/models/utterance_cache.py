"""A per-utterance cache of what a frozen module computes, keyed by the bytes of the utterance's features.

Example::

    from speechllm_cli.models.utterance_cache import UtteranceCache

    cache = UtteranceCache(max_mb=1024)
    keys = cache.keys(feats, feat_lens)           # one key per row: a hash of its valid frames
    missing = cache.missing(keys)                 # rows to compute
    ...compute those rows..., then cache.put(keys[i], (frames_i, lens_i))
    cache.get(keys[j])                            # the stored tensors (on the CPU)

Frozen front-ends run the same utterances every epoch; caching their outputs makes every epoch after the first
skip them. The key is the content, not the utterance id, so a changed feature file is never served stale. Stored
tensors are CPU float32 copies; once ``max_mb`` is reached, new entries are not stored (computed every time).
"""

from __future__ import annotations

import hashlib

import torch


class UtteranceCache:
    def __init__(self, max_mb: float = 2048.0):
        self.max_bytes = int(max_mb * 2**20)
        self.used_bytes = 0
        self._store: dict[bytes, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def keys(feats: torch.Tensor, feat_lens: torch.Tensor) -> list[bytes]:
        """One key per row of ``feats`` (B, T, F): a hash of its first ``feat_lens[i]`` frames."""
        rows = feats.detach().float().cpu()
        return [hashlib.blake2b(rows[i, :n].numpy().tobytes(), digest_size=16).digest()
                for i, n in enumerate(feat_lens.tolist())]

    def missing(self, keys: list[bytes]) -> list[int]:
        """Indices of ``keys`` not stored."""
        return [i for i, key in enumerate(keys) if key not in self._store]

    def get(self, key: bytes) -> tuple[torch.Tensor, ...]:
        return self._store[key]

    def put(self, key: bytes, tensors: tuple[torch.Tensor, ...]) -> None:
        """Store CPU copies of ``tensors`` under ``key`` while the budget allows."""
        size = sum(t.numel() * 4 for t in tensors)
        if self.max_bytes and self.used_bytes + size <= self.max_bytes:
            self._store[key] = tuple(t.detach().to("cpu", torch.float32).clone() for t in tensors)
            self.used_bytes += size
