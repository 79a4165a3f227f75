"""Global CMVN statistics in Kaldi's format, computed by streaming over a feats.scp.

The stats are a 2 x (D + 1) float64 matrix: row 0 holds the per-dimension sums and the frame count
in its last column, row 1 the per-dimension sums of squares (last column 0), as Kaldi's
``compute-cmvn-stats`` writes them. ``write_cmvn`` stores them as a kaldiio ark with key ``global``;
``read_cmvn`` reads that ark (or a plain Kaldi matrix file) and returns the mean and std.

Example:
    >>> stats = compute_cmvn_stats("dump/train/feats.scp")    # doctest: +SKIP
    >>> write_cmvn("dump/train/cmvn.ark", stats)              # doctest: +SKIP
    >>> mean, std = read_cmvn("dump/train/cmvn.ark")          # (D,), (D,)  # doctest: +SKIP
    >>> normed = apply_cmvn(feats, mean, std)                 # (T, D)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import kaldiio
import numpy as np
from tqdm import tqdm

from speechllm_cli.features.feats_reader import FeatsReader
from speechllm_cli.utils.io import atomic_path

logger = logging.getLogger(__name__)

CMVN_KEY = "global"


class CmvnError(ValueError):
    """Stats that cannot be computed or read; the message names the file and what to do."""


def compute_cmvn_stats(feats_scp: str | os.PathLike) -> np.ndarray:
    """Kaldi CMVN stats (2, D + 1) float64 over every frame of ``feats_scp``, one matrix at a time.

    A matrix with NaN or infinite values is an error (CmvnError naming the utterances): its frames would
    make every statistic NaN.
    """
    feats_scp = Path(feats_scp)
    if not feats_scp.is_file():
        raise CmvnError(f"{feats_scp}: missing; run `speechllm fbank` on this set first")
    reader = FeatsReader(feats_scp)
    stats = None
    non_finite: dict[str, int] = {}  # utt -> frames holding NaN/Inf
    for utt, feats in tqdm(reader, total=len(reader), unit="utt", desc="cmvn"):
        feats = feats.astype(np.float64)  # (T, D)
        if stats is None:
            stats = np.zeros((2, feats.shape[1] + 1), dtype=np.float64)
        elif feats.shape[1] != stats.shape[1] - 1:
            raise CmvnError(f"{feats_scp}: '{utt}' has {feats.shape[1]} dims, earlier ones {stats.shape[1] - 1}; "
                            "recompute the features of this set with one configuration")
        bad_frames = ~np.isfinite(feats).all(axis=1)  # (T,)
        if bad_frames.any():
            non_finite[utt] = int(bad_frames.sum())
            continue
        stats[0, :-1] += feats.sum(axis=0)
        stats[1, :-1] += np.einsum("td,td->d", feats, feats)
        stats[0, -1] += feats.shape[0]
    if non_finite:
        listed = ", ".join(f"{u} ({n} frame(s))" for u, n in list(non_finite.items())[:10])
        raise CmvnError(f"{feats_scp}: {len(non_finite)} utterance(s) have NaN or infinite feature values: {listed}"
                        f"{' ...' if len(non_finite) > 10 else ''}; no statistics written. Re-run `speechllm fbank` "
                        "for this set (it skips such audio), or remove these utterances with `speechllm fix-data`")
    if stats is None or stats[0, -1] == 0:
        raise CmvnError(f"{feats_scp}: no frames; check that feature extraction produced output")
    return stats


def write_cmvn(path: str | os.PathLike, stats: np.ndarray) -> None:
    """Write stats (2, D + 1) as a kaldiio ark holding one matrix with key ``global``, atomically."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[0] != 2:
        raise CmvnError(f"{path}: stats must be a 2 x (D + 1) matrix, got shape {stats.shape}")
    with atomic_path(path) as tmp:
        kaldiio.save_ark(str(tmp), {CMVN_KEY: stats})


def read_cmvn_stats(path: str | os.PathLike) -> np.ndarray:
    """Stats (2, D + 1) float64 from an ark (first matrix, e.g. key ``global``) or a plain Kaldi matrix file."""
    path = Path(path)
    if not path.is_file():
        raise CmvnError(f"{path}: missing; run `speechllm compute-cmvn` on the training dump dir")
    with open(path, "rb") as f:
        is_plain_matrix = f.read(2) == b"\0B"
    try:
        if is_plain_matrix:
            stats = kaldiio.load_mat(str(path))
        else:
            stats = next(iter(kaldiio.load_ark(str(path))))[1]
    except (StopIteration, ValueError, OSError, UnicodeDecodeError) as exc:
        raise CmvnError(f"{path}: not a Kaldi CMVN stats file ({exc}); rerun `speechllm compute-cmvn`") from exc
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[0] != 2 or stats[0, -1] <= 0:
        raise CmvnError(f"{path}: not Kaldi CMVN stats (a 2 x (D + 1) matrix with a positive count); "
                        "rerun `speechllm compute-cmvn` on the training dump dir")
    if not np.isfinite(stats).all():
        raise CmvnError(f"{path}: the statistics hold NaN or infinite values (features with NaN/Inf went into "
                        "them); rerun `speechllm compute-cmvn` on the training dump dir, which now names such "
                        "utterances")
    return stats


def stats_to_mean_std(stats: np.ndarray, var_floor: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and std (D,) float32 from Kaldi stats; the variance is floored at ``var_floor``."""
    count = stats[0, -1]
    mean = stats[0, :-1] / count
    var = np.maximum(stats[1, :-1] / count - mean**2, var_floor)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def read_cmvn(path: str | os.PathLike, var_floor: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and std (D,) float32 of the stats at ``path`` (see ``read_cmvn_stats``)."""
    return stats_to_mean_std(read_cmvn_stats(path), var_floor)


def apply_cmvn(feats: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(feats - mean) / std: feats (T, D), mean (D,), std (D,) -> (T, D) float32."""
    return ((np.asarray(feats, dtype=np.float32) - mean) / std).astype(np.float32, copy=False)


def compute_cmvn(dump_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Global CMVN of ``<dump_dir>/feats.scp`` into ``out`` (default ``<dump_dir>/cmvn.ark``); returns it."""
    dump_dir = Path(dump_dir)
    out = Path(out) if out is not None else dump_dir / "cmvn.ark"
    stats = compute_cmvn_stats(dump_dir / "feats.scp")
    write_cmvn(out, stats)
    logger.info("%s: global CMVN over %d frames, %d dims", out, int(stats[0, -1]), stats.shape[1] - 1)
    return out
