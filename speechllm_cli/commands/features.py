"""Stage 2, features: ``fbank`` (80-dim Kaldi fbank, or Whisper's log-mel with ``--type whisper_mel``; ``--nj``
jobs) and ``compute-cmvn`` (global CMVN on train); ``add-noise``: a noisy, reverberant copy of a test set.

Usage:
    speechllm fbank data/train dump/train --nj 2 --cmd run.pl
    speechllm fbank data/train dump/whisper_mel/train --type whisper_mel --num-mel-bins 80 --nj 2
    speechllm compute-cmvn dump/train
    speechllm add-noise data/test data/test_noisy --snr "5 15" --reverb-prob 0.5
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import ConfigOption, fail
from speechllm_cli.features.feats_type import DEFAULT_FEATS_TYPE, FEATS_TYPES


def _feats_type_choice(value: str) -> str:
    if value not in FEATS_TYPES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FEATS_TYPES)}")
    return value


def fbank_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir with wav.scp."),
    dump_dir: Path = typer.Argument(..., help="Output dump dir (feats.scp, arks, utt2num_frames, texts)."),
    nj: int = typer.Option(1, help="Parallel jobs (split by speaker)."),
    cmd: str = typer.Option("run.pl", help="Job launcher: run.pl (local) or slurm.pl (cluster), with options."),
    feats_type: str = typer.Option(
        DEFAULT_FEATS_TYPE[0], "--type", callback=_feats_type_choice, metavar="[" + "|".join(FEATS_TYPES) + "]",
        help="fbank: Kaldi-compatible log-mel fbank; whisper_mel: Whisper's log-mel (for a Whisper front-end)."),
    num_mel_bins: int = typer.Option(
        DEFAULT_FEATS_TYPE[1], help="Mel bins; whisper_mel: 80 (Whisper up to large-v2) or 128 (large-v3)."),
    config: Path | None = ConfigOption,
) -> None:
    """Log-mel features (25 ms / 10 ms, 16 kHz): 80-dim Kaldi-compatible fbank, or Whisper's log-mel at the clip's
    real length (--type whisper_mel); DUMP_DIR/feats_type records which. A re-run redoes only what is missing."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.features.fbank import feats_config, make_fbank

    try:
        feats = feats_config(feats_type, num_mel_bins)
    except ValueError as exc:  # a mel size Whisper does not take
        fail(str(exc))
    try:
        make_fbank(data_dir, dump_dir, nj=nj, cmd=cmd, config=feats)
    except (DataDirError, RuntimeError) as exc:
        fail(str(exc))


def compute_cmvn_cmd(
    dump_dir: Path = typer.Argument(..., help="Training dump dir with feats.scp."),
    out: Path | None = typer.Option(None, help="Output stats (default DUMP_DIR/cmvn.ark)."),
) -> None:
    """Global CMVN statistics in Kaldi's stats format (compute them on the training set only)."""
    from speechllm_cli.features.cmvn import compute_cmvn

    try:
        compute_cmvn(dump_dir, out)
    except (OSError, ValueError) as exc:
        fail(str(exc))


def add_noise_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir to copy, e.g. data/test."),
    out_dir: Path = typer.Argument(..., help="The noisy copy, e.g. data/test_noisy."),
    snr: str = typer.Option("5 15", help="SNR range in dB, 'LOW HIGH' (one value: fixed)."),
    noise_prob: float = typer.Option(1.0, help="Share of utterances that get noise."),
    reverb_prob: float = typer.Option(0.5, help="Share of utterances that get a synthetic room's reverberation."),
    rt60: str = typer.Option("0.2 0.8", help="Reverberation time range in seconds, 'LOW HIGH'."),
    seed: int = typer.Option(1, help="Seed of every draw (one per utterance)."),
) -> None:
    """Write a noisy, reverberant copy of a data dir (same ids and references; 16 kHz FLAC) to test robustness."""
    from speechllm_cli.features.augment import AugmentConfig
    from speechllm_cli.features.noisy_copy import write_noisy_copy
    from speechllm_cli.utils.config import ConfigError

    def value_range(text: str, name: str) -> tuple[float, float]:
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            fail(f"--{name} takes one or two numbers ('LOW HIGH'), got {text!r}")
        return values[0], values[-1]

    try:
        config = AugmentConfig(noise_prob=noise_prob, snr_db=value_range(snr, "snr"), reverb_prob=reverb_prob,
                               rt60=value_range(rt60, "rt60"))
        write_noisy_copy(data_dir, out_dir, config, seed=seed)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("fbank")(fbank_cmd)
    app.command("compute-cmvn")(compute_cmvn_cmd)
    app.command("add-noise")(add_noise_cmd)
