"""Whisper's log-mel spectrogram (OpenAI Whisper, transformers' ``WhisperFeatureExtractor``) at the clip's real length.

As Whisper computes it: 16 kHz, 400-point FFT, hop 160 (25 ms / 10 ms), periodic Hann window, centred STFT
(reflect padding), power spectrum, slaney mel filters (80 or 128 bins, 0-8000 Hz), log10 of max(mel, 1e-10),
floored at (max - 8), then (x + 4) / 4. S samples give S // 160 frames (Whisper drops the STFT's last frame).
Unlike the feature extractor the clip is not padded to 30 s, but the values are the same: Whisper's frames near
the end of a clip see the zeros of that padding, so ours do too (zeros, not a reflection, after the last sample),
and the max of the floor is taken over every frame that sees the clip, as it is over the padded 30 s.

``make_fbank(..., config=WhisperMelConfig())`` (features/fbank.py) dumps them as it dumps Kaldi fbank.

Example:
    >>> import numpy as np
    >>> extractor = WhisperMelExtractor(WhisperMelConfig(num_mel_bins=80))
    >>> samples = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)  # 1 s at 16 kHz
    >>> feats = extractor(samples)                                                        # (T, D)
    >>> feats.shape, feats.dtype
    ((100, 80), dtype('float32'))
    >>> extractor(samples[:159]).shape                                                    # under one hop
    (0, 80)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

WHISPER_MEL_BINS = (80, 128)  # Whisper v1/v2 and v3 encoders
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's max


@dataclasses.dataclass(frozen=True)
class WhisperMelConfig:
    """Whisper's log-mel options (all of them go into the job fingerprint); only ``num_mel_bins`` varies by model."""

    feats_type: ClassVar[str] = "whisper_mel"

    sample_rate: int = 16000
    num_mel_bins: int = 80
    n_fft: int = 400
    hop_length: int = 160
    max_frequency: float = 8000.0

    def __post_init__(self):
        if self.num_mel_bins not in WHISPER_MEL_BINS:
            raise ValueError(f"whisper_mel: --num-mel-bins {self.num_mel_bins}; Whisper encoders take "
                             f"{' or '.join(map(str, WHISPER_MEL_BINS))} (128 for large-v3)")
        if self.sample_rate != 16000:
            raise ValueError(f"whisper_mel: --sample-rate {self.sample_rate}; Whisper's features are at 16000 Hz")


class WhisperMelExtractor:
    """Whisper log-mel of whole utterances; the filter bank and window are built once and reused. The STFT runs
    ``chunk_frames`` frames at a time (3000: 30 s), so a long recording needs no more than its features' memory."""

    def __init__(self, config: WhisperMelConfig | None = None, chunk_frames: int = 3000):
        # torch and transformers are imported here, so that Kaldi fbank jobs do not pay for them.
        import torch
        from transformers.audio_utils import mel_filter_bank

        self.config = config or WhisperMelConfig()
        self.chunk_frames = chunk_frames
        c = self.config
        filters = mel_filter_bank(num_frequency_bins=1 + c.n_fft // 2, num_mel_filters=c.num_mel_bins,
                                  min_frequency=0.0, max_frequency=c.max_frequency, sampling_rate=c.sample_rate,
                                  norm="slaney", mel_scale="slaney")  # (F, D)
        self._torch = torch
        self.mel_filters = torch.from_numpy(np.ascontiguousarray(filters.T)).float()  # (D, F)
        self.window = torch.hann_window(c.n_fft)  # periodic, as Whisper's

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """samples (S,) float in [-1, 1] at 16 kHz -> feats (S // hop_length, num_mel_bins) float32."""
        torch, c = self._torch, self.config
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)  # (S,)
        num_frames = samples.shape[0] // c.hop_length
        if num_frames == 0:
            return np.zeros((0, c.num_mel_bins), dtype=np.float32)
        half = c.n_fft // 2
        # The clip followed by zeros, as Whisper pads it, and before it the centred STFT's reflect padding (done
        # here so that the STFT can run block by block). Frame t covers clip samples [t*hop - half, t*hop + half).
        padded = np.concatenate([samples, np.zeros(c.n_fft, dtype=np.float32)])  # (S + n_fft,)
        signal = torch.from_numpy(np.concatenate([padded[1:half + 1][::-1], padded]))  # (S + n_fft + half,)
        total = 1 + (signal.shape[0] - c.n_fft) // c.hop_length  # includes every frame that sees the clip
        log_mel = torch.empty(total, c.num_mel_bins)  # (T', D)
        for start in range(0, total, self.chunk_frames):
            count = min(self.chunk_frames, total - start)
            piece = signal[start * c.hop_length: (start + count - 1) * c.hop_length + c.n_fft]
            stft = torch.stft(piece, c.n_fft, c.hop_length, window=self.window, center=False,
                              return_complex=True)  # (F, count)
            mel = self.mel_filters @ (stft.abs() ** 2)  # (D, count)
            log_mel[start:start + count] = torch.clamp(mel, min=LOG_FLOOR).log10().T
        # The max over every frame that sees the clip (the rest are all zeros: log10(1e-10), the lowest value).
        log_mel = torch.maximum(log_mel[:num_frames], log_mel.max() - DYNAMIC_RANGE)
        return ((log_mel + 4.0) / 4.0).numpy()  # (T, D)
