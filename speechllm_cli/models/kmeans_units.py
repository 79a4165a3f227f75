"""Discrete speech units (the survey's audio-token family): k-means over a pretrained encoder's frames.

Usage:
    speechllm train-kmeans --frontend whisper --frontend-dir exp/whisper/base --data dump/whisper_mel/train \\
        --num-units 500 --out exp/kmeans_whisper500
    speechllm units --kmeans exp/kmeans_whisper500 --data dump/whisper_mel/test --out dump/units_whisper500/test

Python::

    from speechllm_cli.models.kmeans_units import KMeansConfig, UnitExtractor, train_kmeans
    train_kmeans(KMeansConfig({"type": "whisper", "dir": "exp/whisper/base"}, num_units=500), "dump/whisper_mel/train",
                 "exp/kmeans_whisper500")
    units = UnitExtractor.load("exp/kmeans_whisper500")([feats])[0]      # unit ids, consecutive duplicates removed

The frames come from any front-end (``frontends/``): the bare Whisper encoder (``whisper``, 50 frames/s) or a CTC
compressor's encoder without compression (``ctc_compressor`` with ``compression: none``). Training reads the
utterances of a dump dir in a seeded order until ``max_frames`` frames, then fits scikit-learn's MiniBatchKMeans
with that seed, so the same data, front-end and seed give the same centroids. A frame's unit is its nearest centroid
(Euclidean); runs of the same unit collapse to one. The model dir holds ``model.yaml`` (``model_type:
kmeans_units``, the config, the front-end's content hash, fit statistics) and ``centroids.safetensors``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from speechllm_cli.models.frontends import FRONTENDS, build_frontend, frontend_config
from speechllm_cli.models.frontends.base import pad_feats
from speechllm_cli.models.frontends.kmeans_units import CENTROIDS, MODEL_TYPE, KMeansUnitsFrontEnd
from speechllm_cli.models.model_dir import write_model_record
from speechllm_cli.utils.io import atomic_dir

logger = logging.getLogger(__name__)

FRAME_SHIFT = 0.01  # seconds per feature frame of a dump


@dataclasses.dataclass
class KMeansConfig:
    """What a unit inventory is made of; recorded in its model.yaml."""

    frontend: dict  # a model.frontend section: {"type": "whisper", "dir": ...} or a ctc_compressor with "none"
    num_units: int = 500  # k
    seed: int = 0  # utterance order and k-means initialisation
    max_frames: int = 200_000  # frames fitted (the first utterances of the seeded order)
    batch_size: int = 4096  # MiniBatchKMeans batch
    max_iter: int = 100  # passes over the frames at most

    def __post_init__(self):
        if self.num_units < 2:
            raise ValueError(f"num_units must be at least 2, got {self.num_units}")
        if isinstance(self.frontend, dict) and self.frontend.get("type") == "ctc_compressor":
            self.frontend = {**self.frontend, "compression": self.frontend.get("compression", "none")}


def _batches(utts: list[str], size: int):
    for start in range(0, len(utts), size):
        yield utts[start:start + size]


def encoder_frames(frontend, feats: list[np.ndarray]) -> list[np.ndarray]:
    """The front-end's frames (A_i, D) float32 of each utterance's raw features."""
    with torch.inference_mode():
        out = frontend(*pad_feats(feats, "cpu"))
    return [out.frames[i, : int(n)].float().numpy() for i, n in enumerate(out.lens)]


def _check_dump(frontend, dump_dir: Path, who: str) -> None:
    from speechllm_cli.features.feats_type import check_feats_type

    if getattr(frontend, "feats_type", None) is not None:
        check_feats_type(dump_dir, frontend.feats_type, who)


def train_kmeans(config: KMeansConfig, dump_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 batch_utts: int = 8) -> Path:
    """Fit ``config.num_units`` centroids on the front-end frames of ``dump_dir`` and save them in ``out_dir``."""
    from sklearn.cluster import MiniBatchKMeans

    from speechllm_cli.data.kaldi_dir import DataDir
    from speechllm_cli.features.feats_reader import FeatsReader

    dump_dir, out_dir = Path(dump_dir), Path(out_dir)
    start = time.perf_counter()
    section = frontend_config(config.frontend)
    frontend = build_frontend(section).eval()
    _check_dump(frontend, dump_dir, f"the {section.type} front-end")
    data = DataDir.load(dump_dir)
    reader = FeatsReader(dump_dir / "feats.scp", entries=data.tables["feats.scp"])
    order = list(np.random.default_rng(config.seed).permutation(sorted(data.utt_ids)))
    chunks, total, used = [], 0, 0
    with tqdm(total=config.max_frames, desc="kmeans frames", unit="frame", disable=None) as bar:
        for group in _batches(order, batch_utts):
            for frames in encoder_frames(frontend, [reader[u] for u in group]):
                take = frames[: config.max_frames - total]
                chunks.append(take)
                total += len(take)
                bar.update(len(take))
            used += len(group)
            if total >= config.max_frames:
                break
    frames = np.concatenate(chunks)
    if len(frames) < config.num_units:
        raise ValueError(f"{dump_dir}: only {len(frames)} frames for {config.num_units} units; lower --num-units or "
                         "give more data")
    kmeans = MiniBatchKMeans(n_clusters=config.num_units, random_state=config.seed, batch_size=config.batch_size,
                             max_iter=config.max_iter, n_init=1).fit(frames)
    stats = {"frames": int(len(frames)), "utterances": used, "inertia_per_frame": float(kmeans.inertia_ / len(frames)),
             "seconds": round(time.perf_counter() - start, 1)}
    with atomic_dir(out_dir) as tmp:
        save_file({"centroids": torch.from_numpy(kmeans.cluster_centers_.astype(np.float32))}, tmp / CENTROIDS)
        write_model_record(tmp, MODEL_TYPE, config=dataclasses.asdict(config),
                           frontend_hash=FRONTENDS.cls(section).source_hash(section), stats=stats)
    logger.info("k-means: %d units on %d frames of %d utterances of %s in %.1f s", config.num_units, len(frames), used,
                dump_dir, stats["seconds"])
    return out_dir


class UnitExtractor:
    """A trained unit inventory: raw features -> unit ids (runs collapsed); the ``kmeans_units`` front-end inside."""

    def __init__(self, units_frontend: KMeansUnitsFrontEnd):
        self.units_frontend = units_frontend.eval()
        self.frontend = units_frontend.encoder  # the front-end whose frames were clustered
        self.centroids = units_frontend.centroids  # (K, D)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "cpu") -> UnitExtractor:
        return cls(build_frontend({"type": MODEL_TYPE, "dir": str(model_dir)}, device))

    @property
    def num_units(self) -> int:
        return int(self.centroids.shape[0])

    def __call__(self, feats: list[np.ndarray]) -> list[list[int]]:
        """Unit ids of each utterance's raw features, consecutive duplicates removed."""
        with torch.inference_mode():
            return [u.tolist() for u in self.units_frontend.units(*pad_feats(feats, self.centroids.device))]


def write_units(kmeans_dir: str | os.PathLike, dump_dir: str | os.PathLike, out_dir: str | os.PathLike,
                batch_utts: int = 8) -> dict:
    """The units of every utterance of ``dump_dir`` into ``out_dir``: a ``units`` table (``utt u1 u2 ...``), the
    dump's text tables, and ``units_stats.yaml`` (units per second of audio). Returns the statistics."""
    import shutil

    import yaml

    from speechllm_cli.data.kaldi_dir import DataDir, format_table
    from speechllm_cli.features.feats_reader import FeatsReader

    dump_dir, out_dir = Path(dump_dir), Path(out_dir)
    extractor = UnitExtractor.load(kmeans_dir)
    _check_dump(extractor.frontend, dump_dir, f"the units of {kmeans_dir}")
    data = DataDir.load(dump_dir)
    reader = FeatsReader(dump_dir / "feats.scp", entries=data.tables["feats.scp"])
    units: dict[str, str] = {}
    seconds = 0.0
    count = 0
    utts = sorted(data.utt_ids)
    with tqdm(total=len(utts), desc=f"units {dump_dir.name}", unit="utt", disable=None) as bar:
        for group in _batches(utts, batch_utts):
            feats = [reader[u] for u in group]
            for utt, f, ids in zip(group, feats, extractor(feats)):
                units[utt] = " ".join(map(str, ids))
                seconds += len(f) * FRAME_SHIFT
                count += len(ids)
            bar.update(len(group))
    stats = {"utterances": len(units), "units": count, "audio_seconds": round(seconds, 2),
             "units_per_second": round(count / seconds, 2) if seconds else None, "num_units": extractor.num_units}
    with atomic_dir(out_dir) as tmp:
        (tmp / "units").write_text(format_table(units), encoding="utf-8")
        for name in ("text", "text.src", "utt2lang", "utt2spk", "spk2utt", "utt2num_frames", "utt2dur"):
            if (dump_dir / name).is_file():
                shutil.copy(dump_dir / name, tmp / name)
        (tmp / "units_stats.yaml").write_text(yaml.safe_dump(stats, sort_keys=False), encoding="utf-8")
    logger.info("%s: %d units over %.1f s of audio, %.1f units per second", out_dir, count, seconds,
                stats["units_per_second"] or 0.0)
    return stats
