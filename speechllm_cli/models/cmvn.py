"""Global mean/variance normalisation whose statistics are buffers, so they are saved with the model.

Example::

    import kaldiio, torch
    from speechllm_cli.models.cmvn import GlobalCMVN

    cmvn = GlobalCMVN.from_stats(kaldiio.load_mat("dump/train/cmvn.ark"))
    feats = torch.randn(2, 100, 80)                        # (B, T, D)
    normed = cmvn(feats, torch.tensor([100, 60]))           # (B, T, D), frames past a length are 0

Kaldi stats are a 2 x (D + 1) matrix: row 0 holds the per-dimension sums and the frame count in
the last column, row 1 the sums of squares. mean = sums / count, var = squares / count - mean^2,
floored at ``var_floor``; std = sqrt(var).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mean_std_from_stats(stats: np.ndarray, var_floor: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi CMVN stats (2, D + 1) -> mean (D,), std (D,) as float64."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2:
        raise ValueError(f"CMVN stats must be a 2 x (D + 1) matrix, got shape {stats.shape}; "
                         "compute them with `speechllm compute-cmvn`")
    count = stats[0, -1]
    if not count > 0:
        raise ValueError(f"CMVN stats have frame count {count}; they were computed on no frames")
    mean = stats[0, :-1] / count
    var = np.maximum(stats[1, :-1] / count - mean**2, var_floor)
    return mean, np.sqrt(var)


class GlobalCMVN(nn.Module):
    """(feats - mean) / std with per-dimension mean/std buffers; padding frames are set to 0."""

    def __init__(self, dim: int, mean: np.ndarray | torch.Tensor | None = None,
                 std: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        mean = torch.zeros(dim) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std = torch.ones(dim) if std is None else torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != (dim,) or std.shape != (dim,):
            raise ValueError(f"CMVN mean/std have shapes {tuple(mean.shape)}/{tuple(std.shape)}; "
                             f"the features have {dim} dims")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    @classmethod
    def from_stats(cls, stats: np.ndarray, var_floor: float = 1e-10) -> GlobalCMVN:
        """Build from a Kaldi 2 x (D + 1) stats matrix."""
        mean, std = mean_std_from_stats(stats, var_floor)
        return cls(len(mean), mean, std)

    def set_stats(self, stats: np.ndarray, var_floor: float = 1e-10) -> None:
        """Overwrite mean/std in place from a Kaldi stats matrix of the same dimension."""
        mean, std = mean_std_from_stats(stats, var_floor)
        if mean.shape != self.mean.shape:
            raise ValueError(f"CMVN stats are for {len(mean)} dims; this model takes {self.mean.numel()}")
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, D), feat_lens (B,) -> normalised feats (B, T, D), 0 past each length."""
        normed = (feats - self.mean) / self.std  # (B, T, D)
        if feat_lens is not None:
            valid = torch.arange(feats.shape[1], device=feats.device) < feat_lens.to(feats.device)[:, None]  # (B, T)
            normed = normed.masked_fill(~valid[..., None], 0.0)
        return normed
