"""Training data: a dump dir read lazily, and a length-bucketing batch sampler under a frame budget.

A dump dir (``dump/<set>/``) holds ``feats.scp`` (kaldiio ark), ``utt2num_frames`` and the text
tables copied from the data dir (``text``, ``text.src``, ``utt2lang``). ``DumpDataset`` reads the
tables up front and a feature matrix only when an example is asked for.

``BucketBatchSampler`` makes the batches of an epoch: shuffle the examples (seeded by seed and epoch),
cut them into buckets of ``bucket_size``, sort each bucket by length and fill batches while
``longest length x batch size <= batch_frames``, then shuffle the batch order. Under DDP rank ``r``
of ``W`` takes batches ``r, r+W, ...`` (the list padded by repeating its head so every rank gets the
same number); ``iter_batches(epoch, start)`` resumes an epoch at batch ``start``.

Example:
    >>> data = DumpDataset("dump/train", require=("text.src",))            # doctest: +SKIP
    >>> sampler = BucketBatchSampler(data.lengths(), batch_frames=20000, max_batch_size=64, seed=0)
    >>> batches = sampler.batches(epoch=1)                                  # doctest: +SKIP
    >>> padding_fraction(data.lengths(), batches)                           # doctest: +SKIP
    0.04
    >>> data[0]["feats"].shape                                              # doctest: +SKIP
    (312, 80)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.features.feats_reader import FeatsReader

logger = logging.getLogger(__name__)

# What makes each dump-dir file, for the message when one is missing.
MAKER = {
    "feats.scp": "run `speechllm fbank data/<set> dump/<set>` (stage 2)",
    "utt2num_frames": "run `speechllm fbank data/<set> dump/<set>` (stage 2)",
    "cmvn.ark": "run `speechllm compute-cmvn dump/<train-set>` (stage 2)",
    "text": "copy it from the data dir: rerun `speechllm fbank` (stage 2)",
    "text.src": "copy it from the data dir: rerun `speechllm fbank` (stage 2)",
    "utt2lang": "copy it from the data dir: rerun `speechllm fbank` (stage 2)",
}
TEXT_TABLES = {"text": "text", "text.src": "text_src", "utt2lang": "lang"}


class DumpDirError(FileNotFoundError):
    """A dump dir lacks a file or its tables disagree; the message says which and how to make it."""


def require_file(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else DumpDirError naming it and the command that makes it."""
    path = Path(path)
    if not path.is_file():
        how = MAKER.get(path.name, "check the path")
        raise DumpDirError(f"{path} missing: {how}")
    return path


def check_input_dim(config_path, input_dim: int, train_set: DumpDataset, cmvn_stats: np.ndarray) -> None:
    """The model's ``input_dim`` must equal the feature and CMVN dimensions of the training dump dir."""
    from speechllm_cli.utils.config import ConfigError

    dims = train_set[0]["feats"].shape[1]
    if dims != input_dim or cmvn_stats.shape[1] - 1 != dims:
        raise ConfigError(f"{config_path}: model.input_dim is {input_dim} but {train_set.dump_dir} has {dims}-dim "
                          f"features and {cmvn_stats.shape[1] - 1}-dim CMVN stats; set model.input_dim or redo stage 2")


class DumpDataset:
    """Examples of a dump dir: ``{"utt_id", "feats" (T, D) float32, "num_frames", "text", "text_src", "lang"}``.

    ``require`` names the text tables that must exist (others are read when present). Every utterance
    of ``feats.scp`` must appear in ``utt2num_frames`` and in each text table read.
    """

    def __init__(self, dump_dir: str | os.PathLike, require: Sequence[str] = (), augment=None, seed: int = 0):
        """``augment``: an AugmentConfig (features/augment.py); when it is enabled, each example's features are
        computed from the dump's ``wav.scp`` (and ``segments``) after noise / reverberation drawn from (``seed``,
        the epoch of ``set_epoch``, utterance id), instead of read from ``feats.scp``."""
        self.dump_dir = Path(dump_dir)
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed, self.epoch = seed, 0
        if not self.dump_dir.is_dir():
            raise DumpDirError(f"{self.dump_dir}: dump dir not found: run `speechllm fbank` (stage 2)")
        feats_scp = require_file(self.dump_dir / "feats.scp")
        self.feats_scp = read_table(feats_scp)
        self.utt_ids = list(self.feats_scp)
        if not self.utt_ids:
            raise DumpDirError(f"{feats_scp}: no utterances; check the data dir and rerun stage 2")
        num_frames = read_table(require_file(self.dump_dir / "utt2num_frames"))
        self.tables: dict[str, dict[str, str]] = {}
        for name in TEXT_TABLES:
            path = self.dump_dir / name
            if name in require or path.is_file():
                self.tables[name] = read_table(require_file(path))
        for name, table in [("utt2num_frames", num_frames), *self.tables.items()]:
            missing = [u for u in self.utt_ids if u not in table]
            if missing:
                raise DumpDirError(f"{self.dump_dir / name}: {len(missing)} utterance(s) of feats.scp missing, "
                                   f"e.g. '{missing[0]}'; rerun `speechllm fix-data` and stage 2")
        try:
            self.num_frames = [int(num_frames[u]) for u in self.utt_ids]
        except ValueError as exc:
            raise DumpDirError(f"{self.dump_dir / 'utt2num_frames'}: {exc}; expected `utt-id <int>` lines") from exc
        self._reader = None  # opened lazily, per process (DataLoader workers)
        self._audio = self._audio_source() if self.augment else None

    def _audio_source(self) -> tuple[dict[str, str], dict[str, str], object]:
        """wav.scp, segments and the feature extractor of the dump's feats_type, for on-the-fly augmentation."""
        from speechllm_cli.features.fbank import feats_config, make_extractor
        from speechllm_cli.features.feats_type import read_feats_type

        if not (self.dump_dir / "wav.scp").is_file():
            raise DumpDirError(f"{self.dump_dir / 'wav.scp'} missing: train.augment computes features from the "
                               "audio; rerun `speechllm fbank` (stage 2), which copies wav.scp into the dump")
        segments = read_table(self.dump_dir / "segments") if (self.dump_dir / "segments").is_file() else {}
        return read_table(self.dump_dir / "wav.scp"), segments, make_extractor(feats_config(*read_feats_type(
            self.dump_dir)))

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws __getitem__ makes (the training loop sets it before each epoch)."""
        self.epoch = epoch

    def _augmented_feats(self, utt: str) -> np.ndarray:
        from speechllm_cli.features.audio import load_audio
        from speechllm_cli.features.augment import augment, utterance_rng

        wav_scp, segments, extractor = self._audio
        if utt in segments:
            recording, start, end = segments[utt].split()
            samples = load_audio(wav_scp[recording], start=float(start), end=float(end))
        else:
            samples = load_audio(wav_scp[utt])
        return extractor(augment(samples, self.augment, utterance_rng(self.seed, self.epoch, utt)))

    def __len__(self) -> int:
        return len(self.utt_ids)

    def lengths(self, key: str = "num_frames") -> list[int]:
        """The length each example contributes to a batch's budget (``num_frames`` or a text length in chars)."""
        if key == "num_frames":
            return list(self.num_frames)
        table = {"text_len": "text", "text_src_len": "text.src"}.get(key)
        if table is None or table not in self.tables:
            raise KeyError(f"unknown length key '{key}'; use num_frames, text_len or text_src_len")
        return [len(self.tables[table][u]) for u in self.utt_ids]

    def meta(self, index: int) -> dict:
        """Everything about example ``index`` but its features (cheap)."""
        utt = self.utt_ids[index]
        item = {"utt_id": utt, "num_frames": self.num_frames[index]}
        for name, table in self.tables.items():
            item[TEXT_TABLES[name]] = table[utt]
        return item

    def __getitem__(self, index: int) -> dict:
        item = self.meta(index)
        if self.augment is not None:
            item["feats"] = self._augmented_feats(item["utt_id"])  # (T, D), as stage 2 computes it
            return item
        if self._reader is None:
            self._reader = FeatsReader(self.dump_dir / "feats.scp", entries=self.feats_scp)
        feats = self._reader[item["utt_id"]]  # FeatsReadError names the utterance, ark, offset and fix
        item["feats"] = np.array(feats, dtype=np.float32)  # (T, D), a writable copy (torch.from_numpy-safe)
        return item

    def exclude(self, utt_ids: set[str] | list[str]) -> None:
        """Drop the examples ``utt_ids`` (e.g. sequences longer than a model's context) from this dataset."""
        drop = set(utt_ids)
        kept = [i for i, utt in enumerate(self.utt_ids) if utt not in drop]
        self.utt_ids = [self.utt_ids[i] for i in kept]
        self.num_frames = [self.num_frames[i] for i in kept]
        if not self.utt_ids:
            raise DumpDirError(f"{self.dump_dir}: no example is left after dropping {len(drop)}; see the log")


def make_batches(
    lengths: Sequence[int], order: Sequence[int], batch_frames: int, max_batch_size: int
) -> list[list[int]]:
    """Cut ``order`` (example indices, in the order to batch them) into batches whose padded size
    ``max length x count`` stays within ``batch_frames`` (an example longer than that gets a batch alone)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for index in order:
        length = int(lengths[index])
        grown = max(longest, length)
        if batch and (grown * (len(batch) + 1) > batch_frames or len(batch) >= max_batch_size):
            batches.append(batch)
            batch, grown = [], length
        batch.append(int(index))
        longest = grown
    if batch:
        batches.append(batch)
    return batches


class BucketBatchSampler:
    """Batches of example indices under a frame budget, deterministic per (seed, epoch), shardable for DDP.

    ``shuffle=False`` keeps the dataset order (sorted by length within buckets still) for validation;
    ``pad_shards=False`` lets ranks get unequal batch counts (fine without collectives, e.g. validation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_frames: int,
        max_batch_size: int = 10**9,
        seed: int = 0,
        bucket_size: int = 2000,
        shuffle: bool = True,
        bucketing: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        pad_shards: bool = True,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.lengths = [int(n) for n in lengths]
        self.batch_frames = batch_frames
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.bucket_size = bucket_size
        self.shuffle = shuffle
        self.bucketing = bucketing
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad_shards = pad_shards
        too_long = sum(n > batch_frames for n in self.lengths)
        if too_long:
            logger.warning("%d example(s) longer than batch_frames=%d get a batch of their own",
                           too_long, batch_frames)

    def batches(self, epoch: int) -> list[list[int]]:
        """Every batch of ``epoch`` (all ranks), each example exactly once."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if not self.bucketing:
            return make_batches(self.lengths, order, self.batch_frames, self.max_batch_size)
        batches: list[list[int]] = []
        lengths = np.asarray(self.lengths)
        for start in range(0, n, self.bucket_size):
            bucket = order[start:start + self.bucket_size]
            bucket = bucket[np.argsort(-lengths[bucket], kind="stable")]  # longest first
            batches.extend(make_batches(self.lengths, bucket, self.batch_frames, self.max_batch_size))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's share of ``batches``: ``rank, rank+W, ...`` (padded so every rank gets as many)."""
        if self.num_replicas == 1:
            return batches
        if self.pad_shards:
            per_rank = math.ceil(len(batches) / self.num_replicas)
            total = per_rank * self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(total - len(batches))]
        return batches[self.rank::self.num_replicas]

    def num_batches(self, epoch: int) -> int:
        """How many batches this rank iterates in ``epoch``."""
        return len(self.shard(self.batches(epoch)))

    def iter_batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """This rank's batches of ``epoch`` from position ``start`` (for resuming mid-epoch)."""
        yield from self.shard(self.batches(epoch))[start:]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded frames / total frames (``max length x count`` summed over batches) of a batching."""
    total = 0
    real = 0
    for batch in batches:
        lens = [int(lengths[i]) for i in batch]
        total += max(lens) * len(lens)
        real += sum(lens)
    return (total - real) / total if total else 0.0
