"""Front-ends: features -> frame vectors for the adapter, chosen by ``type:`` in the ``model.frontend`` section.

Example::

    from speechllm_cli.models.frontends import build_frontend, frontend_config

    config = frontend_config({"type": "ctc_compressor", "dir": "exp/ctc_compressor", "compression": "none"})
    frontend = build_frontend(config, device="cpu")
    out = frontend(feats, feat_lens)                  # FrontEndOutput(frames, lens, posteriors)

The interface every front-end keeps is in ``base.py``. To add one: write its module (a config dataclass whose first
field is ``type``, and the ``nn.Module`` with ``from_config``), add one line to ``FRONTENDS``.
"""

from __future__ import annotations

from torch import nn

from speechllm_cli.models.component import Registry
from speechllm_cli.models.frontends.ctc_compressor import CTCCompressorFrontEnd, CTCCompressorFrontEndConfig
from speechllm_cli.models.frontends.kmeans_units import KMeansUnitsFrontEnd, KMeansUnitsFrontEndConfig
from speechllm_cli.models.frontends.whisper import WhisperFrontEnd, WhisperFrontEndConfig

FRONTENDS = Registry("frontend", {
    "ctc_compressor": (CTCCompressorFrontEndConfig, CTCCompressorFrontEnd),  # Speech-LLaMA's CTC compressor
    "whisper": (WhisperFrontEndConfig, WhisperFrontEnd),  # a pretrained Whisper encoder, every 20 ms frame
    "kmeans_units": (KMeansUnitsFrontEndConfig, KMeansUnitsFrontEnd),  # k-means units of an encoder, one-hot
})


def frontend_config(section):
    """The typed config of a ``model.frontend`` section (a mapping with ``type``, or a config already built)."""
    return FRONTENDS.config(section)


def build_frontend(config, device: str = "cpu") -> nn.Module:
    """The front-end ``config`` (a config or a section mapping) describes, loaded from what it names; one that wraps
    another front-end (``wraps_frontend``: kmeans_units) gets this function to build it."""
    config = frontend_config(config)
    cls = FRONTENDS.cls(config)
    if getattr(cls, "wraps_frontend", False):
        return cls.from_config(config, device, build_frontend)
    return cls.from_config(config, device)
