"""Stage 2, features: ``fbank`` (80-dim log-mel, ``--nj`` jobs) and ``compute-cmvn`` (global CMVN on train).

Usage:
    speechllm fbank data/train dump/train --nj 2 --cmd run.pl
    speechllm compute-cmvn dump/train
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import ConfigOption, fail


def fbank_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir with wav.scp."),
    dump_dir: Path = typer.Argument(..., help="Output dump dir (feats.scp, arks, utt2num_frames, texts)."),
    nj: int = typer.Option(1, help="Parallel jobs (split by speaker)."),
    cmd: str = typer.Option("run.pl", help="Job launcher: run.pl (local) or slurm.pl (cluster), with options."),
    config: Path | None = ConfigOption,
) -> None:
    """80-dim Kaldi-compatible log-mel fbank (25 ms / 10 ms, 16 kHz); a re-run redoes only what is missing."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.features.fbank import make_fbank

    try:
        make_fbank(data_dir, dump_dir, nj=nj, cmd=cmd)
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


def register(app: typer.Typer) -> None:
    app.command("fbank")(fbank_cmd)
    app.command("compute-cmvn")(compute_cmvn_cmd)
