"""Stages 3-4, the CTC compressor: ``train-tokenizer``, ``train-ctc``, ``ctc-report``, ``ctc-compress``.

Usage:
    speechllm train-tokenizer --text dump/train/text.src --out-dir data/token_list/unigram300
    speechllm train-ctc --config conf/train_ctc.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/ctc_compressor
    speechllm ctc-report --model exp/ctc_compressor --data dump/dev
    speechllm ctc-compress --model exp/ctc_compressor --data dump/dev --out exp/ctc_compressor/compressed_dev
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import ConfigOption, fail, logger, option
from speechllm_cli.train.entry import TRAIN_HELP, TrainingOptions


def train_tokenizer_cmd(
    text: list[Path] = typer.Option(..., help="Kaldi `utt text` file(s), e.g. dump/train/text.src (repeatable)."),
    out_dir: Path = typer.Option(..., help="Output token list dir, e.g. data/token_list/unigram300."),
    vocab_size: int = typer.Option(300, help="CTC output size, <blank> and <unk> included."),
    model_type: str = typer.Option("unigram", help="unigram, bpe or char."),
    character_coverage: float = typer.Option(1.0, help="Sentencepiece character coverage."),
    seed: int = typer.Option(0, help="Recorded seed (training is deterministic)."),
    config: Path | None = ConfigOption,
) -> None:
    """Train the CTC vocabulary (sentencepiece; <blank> first in tokens.txt) on source transcripts."""
    from speechllm_cli.text.tokenizer import train_tokenizer

    try:
        train_tokenizer(text, out_dir, vocab_size, model_type=model_type, seed=seed,
                        character_coverage=character_coverage)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    logger.info("wrote %s/bpe.model and tokens.txt", out_dir)


def train_ctc_cmd(
    config: Path = typer.Option(..., help=TRAIN_HELP["config"]),
    train_data: Path = typer.Option(..., help=TRAIN_HELP["train_data"]),
    valid_data: Path = typer.Option(..., help=TRAIN_HELP["valid_data"]),
    out: Path = typer.Option(..., help=TRAIN_HELP["out"]),
    resume: bool = option(TrainingOptions, "resume", help=TRAIN_HELP["resume"]),
    set_: list[str] = option(TrainingOptions, "overrides", "--set", help=TRAIN_HELP["overrides"]),
    num_procs: int = option(TrainingOptions, "num_procs", help=TRAIN_HELP["num_procs"]),
) -> None:
    """Pretrain the CTC compressor on source transcripts (shared training loop; DDP with --num-procs)."""
    from speechllm_cli.train import ctc_task

    ctc_task.main(TrainingOptions(str(config), str(train_data), str(valid_data), str(out), resume, set_, num_procs))


def ctc_report_cmd(
    model: Path = typer.Option(..., help="Trained compressor dir (exp/ctc_compressor)."),
    data: Path = typer.Option(..., help="Dump dir with text.src, e.g. dump/dev."),
    batch_frames: int = typer.Option(20000, help="Padded frames per batch."),
) -> None:
    """Greedy CER and the length statistics (frames, compressed lengths, source tokens) on a set."""
    from speechllm_cli.train.ctc_report import ctc_report

    try:
        ctc_report(model, data, batch_frames)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def ctc_compress_cmd(
    model: Path = typer.Option(..., help="Trained compressor dir (exp/ctc_compressor)."),
    data: Path = typer.Option(..., help="Dump dir, e.g. dump/dev."),
    out: Path = typer.Option(..., help="Output dir for feats.{ark,scp} and utt2num_frames."),
    mode: str = typer.Option("frame_average", help="frame_average, blank_remove or none."),
    batch_frames: int = typer.Option(20000, help="Padded frames per batch."),
) -> None:
    """Dump the compressor's compressed representations (one vector per predicted label) for analysis outside the
    recipe, which compresses on the fly while training."""
    from speechllm_cli.train.ctc_report import ctc_compress

    try:
        ctc_compress(model, data, out, mode, batch_frames)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("train-tokenizer")(train_tokenizer_cmd)
    app.command("train-ctc")(train_ctc_cmd)
    app.command("ctc-report")(ctc_report_cmd)
    app.command("ctc-compress")(ctc_compress_cmd)
