"""Front-end ``kmeans_units``: discrete units (the survey's audio-token family) as one-hot frames.

Example::

    from speechllm_cli.models.frontends import build_frontend, frontend_config

    frontend = build_frontend(frontend_config({"type": "kmeans_units", "dir": "exp/kmeans_whisper500"}))
    out = frontend(feats, feat_lens)       # the k-means' own features, e.g. Whisper log-mel (B, T, 80), (B,)
    out.frames, out.lens                   # (B, U, 500) one-hot unit per position, (B,) units per utterance
    frontend.units(feats, feat_lens)       # the unit ids of each utterance, a list of (U_i,) long tensors

The units are those of ``speechllm train-kmeans`` (models/kmeans_units.py): the nearest centroid of each frame of
the k-means' own front-end (its ``encoder``, e.g. the frozen Whisper encoder), runs of one unit collapsed. Each unit
is a one-hot vector, so the ``unit_embedding`` adapter (a K x H table, adapters/unit_embedding.py) is the LLM's
vocabulary extended with K unit tokens: the LLM reads one new token embedding per unit and nothing else of the audio.
The front-end wraps another one, so ``build_frontend`` hands it the builder for its encoder (``wraps_frontend``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.frontends.base import FrontEndOutput
from speechllm_cli.models.model_dir import read_model_record, resolve_recorded_path

MODEL_TYPE = "kmeans_units"  # a train-kmeans dir's model.yaml
CENTROIDS = "centroids.safetensors"  # beside it: {"centroids": (K, D) float32}


@dataclass
class KMeansUnitsFrontEndConfig:
    type: str = "kmeans_units"
    dir: str = ""  # `speechllm train-kmeans --out`'s dir


def kmeans_hash(kmeans_dir: str | os.PathLike) -> str:
    """sha256 over a k-means dir's centroids and its encoder's recorded hash (changes when the k-means is refitted)."""
    from speechllm_cli.utils.io import files_sha256, sha256_text

    kmeans_dir = Path(kmeans_dir)
    record = read_model_record(kmeans_dir, expect=(MODEL_TYPE,))
    return sha256_text(files_sha256([kmeans_dir / CENTROIDS]) + str(record.get("frontend_hash")))


def collapsed_units(frames: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(A, D) frames of one utterance -> (U,) long ids of their nearest centroids (K, D), runs of one unit collapsed."""
    if not len(frames):
        return torch.zeros(0, dtype=torch.long, device=frames.device)
    units = torch.cdist(frames.float(), centroids.to(frames.device)).argmin(dim=1)
    keep = torch.ones_like(units, dtype=torch.bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep]


class KMeansUnitsFrontEnd(nn.Module):
    num_labels = 0
    pieces = None
    trainable = False
    wraps_frontend = True  # from_config takes the builder of the front-end it wraps

    def __init__(self, config: KMeansUnitsFrontEndConfig, encoder: nn.Module, centroids: torch.Tensor,
                 content_hash: str | None):
        super().__init__()
        self.config = config
        self.encoder = encoder.eval()  # the front-end whose frames were clustered (a submodule: frozen with it)
        self.register_buffer("centroids", centroids, persistent=False)  # (K, D)
        self.output_dim = int(centroids.shape[0])
        self.feats_type = getattr(encoder, "feats_type", None)
        self._content_hash = content_hash

    @classmethod
    def from_config(cls, config: KMeansUnitsFrontEndConfig, device: str | torch.device = "cpu",
                    build_frontend=None) -> KMeansUnitsFrontEnd:
        """Load the k-means dir ``config.dir`` and its encoder (built by ``build_frontend``, frontends/__init__.py),
        refusing an encoder whose content hash is not the one the units were fitted on."""
        from safetensors.torch import load_file

        if not config.dir:
            raise ValueError("model.frontend.dir is empty: set it to `speechllm train-kmeans --out`'s dir, e.g. "
                             "--set model.frontend.dir=exp/kmeans_whisper500")
        kmeans_dir = Path(config.dir)
        record = read_model_record(kmeans_dir, expect=(MODEL_TYPE,))
        section = dict(record["config"]["frontend"])
        if section.get("dir"):
            section["dir"] = resolve_recorded_path(section["dir"], kmeans_dir)
        encoder = build_frontend(section, device)
        found, recorded = encoder.content_hash(), record.get("frontend_hash")
        if recorded is not None and found != recorded:
            raise ValueError(f"{kmeans_dir}: its units were fitted on the {section['type']} front-end with hash "
                             f"{recorded}, but {section.get('dir', '')} now has hash {found}: restore that front-end "
                             "or train the k-means again")
        centroids = load_file(str(kmeans_dir / CENTROIDS))["centroids"].to(device)
        return cls(config, encoder, centroids, kmeans_hash(kmeans_dir))

    @staticmethod
    def source_hash(config: KMeansUnitsFrontEndConfig) -> str | None:
        return kmeans_hash(config.dir) if config.dir else None

    def content_hash(self) -> str | None:
        return self._content_hash

    def max_output_lengths(self, feat_lens: torch.Tensor) -> torch.Tensor:
        return self.encoder.max_output_lengths(feat_lens)  # collapsing runs never lengthens

    def units(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> list[torch.Tensor]:
        """The collapsed unit ids (U_i,) of each utterance of a padded feature batch."""
        out = self.encoder(feats, feat_lens)
        return [collapsed_units(out.frames[i, : int(n)], self.centroids) for i, n in enumerate(out.lens)]

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, with_posteriors: bool = False) -> FrontEndOutput:
        if with_posteriors:
            raise ValueError("the kmeans_units front-end has no CTC posteriors for a label table: set "
                             "model.label_embeddings: false")
        units = self.units(feats, feat_lens)
        lens = torch.tensor([len(u) for u in units], device=feats.device)
        frames = torch.zeros(len(units), max(1, int(lens.max())), self.output_dim, device=feats.device)
        for i, u in enumerate(units):
            frames[i, : len(u)] = F.one_hot(u, self.output_dim).float()
        return FrontEndOutput(frames, lens, None)
