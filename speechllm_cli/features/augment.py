"""Additive noise and reverberation, made without downloads, applied to the waveform on the fly in training.

Example::

    import numpy as np
    from speechllm_cli.features.augment import AugmentConfig, augment, utterance_rng

    config = AugmentConfig(noise_prob=0.5, snr_db=(5.0, 20.0), reverb_prob=0.3, rt60=(0.2, 0.8))
    rng = utterance_rng(seed=0, epoch=3, utt_id="spkA-u1")       # the same draw for the same (seed, epoch, utt)
    noisy = augment(samples, config, rng)                          # (S,) float32 at 16 kHz, same length

or in a training config (``train.augment``, read by DumpDataset: the features are then computed from the
dump's ``wav.scp`` each epoch instead of read from ``feats.scp``)::

    train:
      augment: {noise_prob: 0.5, snr_db: [5, 20], reverb_prob: 0.3, rt60: [0.2, 0.8]}

- **Noise**: white, pink (1/f power) or brown (1/f^2) Gaussian noise shaped in the frequency domain, scaled to an
  SNR drawn uniformly from ``snr_db`` against the utterance's own power.
- **Reverberation**: a synthetic room impulse response: the direct path, a few early reflections (5-50 ms, random
  signs and gains) and a Gaussian tail decaying by 60 dB over an RT60 drawn from ``rt60`` (Polack's model), with
  the tail's energy at a random direct-to-reverberant ratio; the output keeps the input's length and peak level.
- **Reproducible and resumable**: every random draw comes from ``utterance_rng(seed, epoch, utt_id)``, so a run
  resumed mid-epoch (or another number of DataLoader workers) sees exactly the same audio.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

RATE = 16000
NOISE_COLORS = ("white", "pink", "brown")


@dataclasses.dataclass
class AugmentConfig:
    noise_prob: float = 0.0  # share of utterances that get additive noise
    snr_db: tuple[float, float] = (5.0, 20.0)  # SNR range (uniform), dB
    noise_colors: tuple[str, ...] = NOISE_COLORS  # one drawn per noisy utterance
    reverb_prob: float = 0.0  # share of utterances convolved with a synthetic room impulse response
    rt60: tuple[float, float] = (0.2, 0.8)  # reverberation time range (uniform), seconds

    def __post_init__(self):
        from speechllm_cli.utils.config import ConfigError

        for name in ("noise_prob", "reverb_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("snr_db", "rt60"):
            low, high = getattr(self, name)
            if low > high or (name == "rt60" and low <= 0):
                raise ConfigError(f"train.augment.{name} must be [low, high] with low <= high"
                                  f"{' and low > 0' if name == 'rt60' else ''}, got {[low, high]}")
        unknown = set(self.noise_colors) - set(NOISE_COLORS)
        if unknown or not self.noise_colors:
            raise ConfigError(f"train.augment.noise_colors must be among {list(NOISE_COLORS)}, got "
                              f"{list(self.noise_colors)}")

    @property
    def enabled(self) -> bool:
        return self.noise_prob > 0 or self.reverb_prob > 0


def utterance_rng(seed: int, epoch: int, utt_id: str) -> np.random.Generator:
    """The random draws of one utterance in one epoch: a function of (seed, epoch, utterance id) only."""
    utt_hash = int.from_bytes(hashlib.blake2b(utt_id.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, epoch, utt_hash])


def colored_noise(rng: np.random.Generator, length: int, color: str) -> np.ndarray:
    """(length,) float32 Gaussian noise of unit RMS, white, pink (power ~ 1/f) or brown (power ~ 1/f^2)."""
    white = rng.standard_normal(length)
    if color == "white" or length < 2:
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(length)
        freqs[0] = freqs[1]  # no division by zero at DC
        exponent = {"pink": 0.5, "brown": 1.0}[color]  # amplitude ~ f^-exponent
        noise = np.fft.irfft(spectrum / freqs**exponent, n=length)
    rms = np.sqrt(np.mean(noise**2)) or 1.0
    return (noise / rms).astype(np.float32)


def add_noise(samples: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``samples`` + ``noise`` scaled to ``snr_db`` against the samples' mean power (silence stays silent + noise
    at the level of a -60 dBFS signal)."""
    power = max(float(np.mean(samples.astype(np.float64) ** 2)), 1e-6)
    noise_power = float(np.mean(noise.astype(np.float64) ** 2)) or 1.0
    scale = np.sqrt(power / (noise_power * 10 ** (snr_db / 10)))
    return (samples + scale * noise).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, rt60: float, rate: int = RATE) -> np.ndarray:
    """A synthetic room impulse response (L,) float32: direct path 1.0 at 0, early reflections, and a Gaussian tail
    decaying 60 dB in ``rt60`` seconds (cut at that point), at a direct-to-reverberant ratio drawn in [0, 10] dB."""
    length = max(2, int(rt60 * rate))
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # 10^(-60/20) = e^-6.9078 at t = rt60
    onset = int(0.005 * rate)
    tail[:onset] = 0.0  # the reverberant field starts after the first reflections
    for _ in range(int(rng.integers(3, 7))):  # early reflections
        delay = int(rng.uniform(0.005, 0.05) * rate)
        if delay < length:
            tail[delay] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.7)
    drr_db = rng.uniform(0.0, 10.0)
    tail *= np.sqrt(1.0 / (np.sum(tail**2) * 10 ** (drr_db / 10)))
    tail[0] = 1.0  # the direct path
    return tail.astype(np.float32)


def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``samples`` convolved with ``rir`` (FFT), cut to the input's length and scaled back to its peak level."""
    n = len(samples) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(rir, size), size)[: len(samples)]
    peak_in, peak_out = float(np.max(np.abs(samples))), float(np.max(np.abs(wet)))
    if peak_out > 0:
        wet *= peak_in / peak_out
    return wet.astype(np.float32)


def augment(samples: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Reverberation (with probability ``reverb_prob``), then noise (``noise_prob``): same length, float32. Every
    choice is drawn up front, in a fixed order, from the utterance's own generator."""
    do_reverb, do_noise = rng.random() < config.reverb_prob, rng.random() < config.noise_prob
    rt60 = rng.uniform(*config.rt60)
    snr = rng.uniform(*config.snr_db)
    color = config.noise_colors[int(rng.integers(len(config.noise_colors)))]
    out = np.asarray(samples, dtype=np.float32)
    if do_reverb:
        out = reverberate(out, room_impulse_response(rng, rt60))
    if do_noise:
        out = add_noise(out, colored_noise(rng, len(out), color), snr)
    return out
