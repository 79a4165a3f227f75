"""A pretrained Whisper encoder on dumped Whisper log-mel features: at each clip's real length (padding masked) or
padded to 30 s, frozen or with its last layers trainable, with a per-utterance cache of what stays frozen.

Example::

    from speechllm_cli.models.whisper.encoder import WhisperAudioEncoder

    encoder = WhisperAudioEncoder.load("exp/whisper/base")        # speechllm export-whisper --out exp/whisper/base
    hidden, hidden_lens = encoder(feats, feat_lens)   # (B, T, 80) log-mel, (B,) -> (B, ceil(T / 2), 512), (B,)
    encoder.output_dim, encoder.num_mel_bins, encoder.content_hash   # 512, 80, the export's sha256

Real length (the default): the log-mel of a 3 s clip is 300 frames, not Whisper's 3000. The first convolution's
output is zeroed past each clip's length (the second convolution then sees what it sees at the end of a lone clip),
and self-attention masks the padded frames, so an utterance's output does not depend on its batch. 17x cheaper
than 30 s padding on 3 s clips (0.045 s vs 0.73 s per clip on 2 CPU cores for Whisper base).
``pad_to_30s``: each clip padded to 3000 frames with its own log-mel of silence (what Whisper's feature extractor
gives for zero samples) and the output cut to ``ceil(T / 2)`` frames: how Whisper itself runs.

Frozen weights never enter a state dict (``state_dict()`` leaves them out; ``load_state_dict`` keeps the pretrained
values), so a model holding this encoder saves only what it trained. With ``trainable_layers = N`` the last N layers
and the final LayerNorm train; the frozen part's output is cached per utterance (keyed by the bytes of its
features) up to ``cache_mb`` MiB, which makes every epoch after the first nearly free.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_cli.models.utterance_cache import UtteranceCache

SILENCE_LOG10 = -10.0  # log10 of Whisper's floor (1e-10) on the mel power: the log-mel of digital silence
DYNAMIC_RANGE = 8.0  # Whisper clamps the log-mel to (max - 8)


def silence_value(feats: torch.Tensor) -> torch.Tensor:
    """The normalised log-mel of zero samples in a clip whose (valid) features are ``feats`` (T, F): Whisper maps
    log10 x to (max(log10 x, clip max - 8) + 4) / 4, so silence is max(-1.5, max(feats) - 2)."""
    floor = (SILENCE_LOG10 + 4.0) / 4.0
    return torch.clamp(feats.max() - DYNAMIC_RANGE / 4.0, min=floor)


def padded_input(feats: torch.Tensor, max_frames: int = 3000) -> torch.Tensor:
    """One clip's log-mel (T, F) as Whisper's feature extractor gives it for the clip padded with zero samples to
    30 s: (max_frames, F), the frames after T at the clip's log-mel of silence."""
    return torch.cat([feats, silence_value(feats).expand(max_frames - feats.shape[0], feats.shape[1])])


def check_input(feats: torch.Tensor, feat_lens: torch.Tensor, num_mel_bins: int, max_frames: int) -> None:
    """A clear error for features of another mel size, or clips empty or longer than 30 s (``max_frames``)."""
    if feats.shape[-1] != num_mel_bins:
        raise ValueError(f"features of {feats.shape[-1]} bins where this Whisper takes {num_mel_bins}-bin log-mel: "
                         f"make them with `speechllm fbank --type whisper_mel --num-mel-bins {num_mel_bins}`")
    longest, shortest = int(feat_lens.max()), int(feat_lens.min())
    if longest > max_frames or shortest < 1:
        raise ValueError(f"clips of {shortest / 100:.2f}..{longest / 100:.1f} s: Whisper's encoder takes up to "
                         f"{max_frames / 100:.0f} s; split longer recordings")


class WhisperAudioEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, content_hash: str | None = None, pad_to_30s: bool = False,
                 trainable_layers: int = 0, cache_mb: float = 2048.0):
        """``encoder``: transformers' WhisperEncoder with pretrained weights."""
        super().__init__()
        num_layers = len(encoder.layers)
        if not 0 <= trainable_layers <= num_layers:
            raise ValueError(f"trainable_layers {trainable_layers} is not in [0, {num_layers}] (Whisper's layers)")
        self.encoder = encoder.eval()
        self.content_hash = content_hash
        self.pad_to_30s = pad_to_30s
        self.trainable_layers = trainable_layers
        self.num_mel_bins = encoder.config.num_mel_bins
        self.output_dim = encoder.config.d_model
        self.max_frames = encoder.config.max_source_positions * 2  # input frames of 30 s
        self.cache = UtteranceCache(cache_mb)
        self.encoder.requires_grad_(False)
        for module in self._trainable_modules():
            module.requires_grad_(True)
        self.register_state_dict_post_hook(_drop_frozen_weights)
        self.register_load_state_dict_pre_hook(_keep_frozen_weights)

    @classmethod
    def load(cls, whisper_dir: str | os.PathLike, device: str | torch.device = "cpu", pad_to_30s: bool = False,
             trainable_layers: int = 0, cache_mb: float = 2048.0) -> WhisperAudioEncoder:
        """The encoder of the Whisper dir ``speechllm export-whisper`` wrote (its other weights are not read)."""
        from safetensors import safe_open
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from speechllm_cli.models.model_dir import read_model_record

        whisper_dir = Path(whisper_dir)
        record = read_model_record(whisper_dir, expect=("whisper",))
        weights = whisper_dir / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: re-run `speechllm export-whisper --out {whisper_dir}`")
        encoder = WhisperEncoder(WhisperConfig.from_pretrained(whisper_dir))
        prefix = "model.encoder."
        with safe_open(str(weights), framework="pt") as f:
            state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        encoder.load_state_dict(state, strict=True)
        return cls(encoder.float(), record.get("hash"), pad_to_30s, trainable_layers, cache_mb).to(device)

    def _trainable_modules(self) -> list[nn.Module]:
        if not self.trainable_layers:
            return []
        return [*self.encoder.layers[len(self.encoder.layers) - self.trainable_layers:], self.encoder.layer_norm]

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # Whisper is used as pretrained: no dropout even in the trainable layers
        return self

    @staticmethod
    def output_lengths(feat_lens: torch.Tensor) -> torch.Tensor:
        """Frames out for ``feat_lens`` frames in: the second convolution halves them (ceil)."""
        return (feat_lens + 1) // 2

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, n_mels) Whisper log-mel, zero or junk past feat_lens -> hidden (B, ceil(T/2), D), lens (B,)."""
        feat_lens = feat_lens.to(feats.device)
        check_input(feats, feat_lens, self.num_mel_bins, self.max_frames)
        frozen, lens = self._frozen_part(feats, feat_lens)
        hidden = frozen
        if self.trainable_layers:
            layers = self.encoder.layers[len(self.encoder.layers) - self.trainable_layers:]
            hidden = self.encoder.layer_norm(self._run_layers(layers, hidden, lens))
        padding = torch.arange(hidden.shape[1], device=hidden.device) >= lens[:, None]
        return hidden.masked_fill(padding[..., None], 0.0), lens

    def _frozen_part(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output of what does not train, from the cache where it holds the utterance."""
        lens = self.output_lengths(feat_lens)
        keys = self.cache.keys(feats, feat_lens)
        missing = self.cache.missing(keys)
        out = feats.new_zeros(feats.shape[0], int(lens.max()), self.output_dim)
        if missing:
            index = torch.tensor(missing, device=feats.device)
            sub_lens = feat_lens[index]
            with torch.no_grad():
                computed = self._run_frozen(feats[index, : int(sub_lens.max())], sub_lens)
            for row, i in enumerate(missing):
                out[i, : int(lens[i])] = computed[row, : int(lens[i])]
                self.cache.put(keys[i], (computed[row, : int(lens[i])],))
        for i, key in enumerate(keys):
            if i not in missing:
                (value,) = self.cache.get(key)
                out[i, : value.shape[0]] = value.to(out.device, out.dtype)
        return out, lens

    def _run_frozen(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        lens = self.output_lengths(feat_lens)
        frozen_layers = enc.layers[: len(enc.layers) - self.trainable_layers]
        if self.pad_to_30s:
            x = torch.stack([padded_input(f[:n], self.max_frames) for f, n in zip(feats, feat_lens.tolist())])
            x = F.gelu(enc.conv2(F.gelu(enc.conv1(x.transpose(1, 2))))).transpose(1, 2)  # (B, 1500, D)
            hidden = self._run_layers(frozen_layers, x + enc.embed_positions.weight, None)
        else:
            valid = torch.arange(feats.shape[1], device=feats.device) < feat_lens[:, None]  # (B, T)
            x = feats.masked_fill(~valid[..., None], 0.0).transpose(1, 2)  # (B, F, T)
            x = F.gelu(enc.conv1(x)) * valid[:, None, :]  # zero past the length, as a lone clip's conv2 padding
            x = F.gelu(enc.conv2(x)).transpose(1, 2)  # (B, ceil(T/2), D)
            hidden = self._run_layers(frozen_layers, x + enc.embed_positions.weight[: x.shape[1]], lens)
        if not self.trainable_layers:
            hidden = enc.layer_norm(hidden)
        return hidden[:, : int(lens.max())]

    @staticmethod
    def _run_layers(layers, hidden: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
        mask = None
        if lens is not None:
            padding = torch.arange(hidden.shape[1], device=hidden.device) >= lens[:, None]  # (B, T')
            mask = torch.zeros(padding.shape, dtype=hidden.dtype, device=hidden.device)
            mask = mask.masked_fill(padding, torch.finfo(hidden.dtype).min)[:, None, None, :]  # (B, 1, 1, T')
        for layer in layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def _drop_frozen_weights(module: WhisperAudioEncoder, state_dict, prefix: str, local_metadata) -> None:
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    for name, _ in module.named_parameters():
        if name not in trainable:
            state_dict.pop(prefix + name, None)
    for name, _ in module.named_buffers():
        state_dict.pop(prefix + name, None)


def _keep_frozen_weights(module: WhisperAudioEncoder, state_dict, prefix: str, *args) -> None:
    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    for name, tensor in [*frozen, *module.named_buffers()]:
        state_dict.setdefault(prefix + name, tensor.detach())
