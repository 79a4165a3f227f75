"""The audio-token family's units: ``train-kmeans`` (a unit inventory on a pretrained encoder's frames) and ``units``
(a dump dir as unit sequences).

Usage:
    speechllm train-kmeans --frontend whisper --frontend-dir exp/whisper/base --data dump/whisper_mel/train \\
        --num-units 500 --out exp/kmeans_whisper500
    speechllm train-kmeans --frontend ctc_compressor --frontend-dir exp/ctc_whisper --data dump/whisper_mel/train \\
        --out exp/kmeans_ctc500                                  # the CTC compressor's encoder, not compressed
    speechllm units --kmeans exp/kmeans_whisper500 --data dump/whisper_mel/test --out dump/units_whisper500/test
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import fail


def train_kmeans_cmd(
    data: Path = typer.Option(..., help="Training dump dir, e.g. dump/whisper_mel/train."),
    out: Path = typer.Option(..., help="Output dir, e.g. exp/kmeans_whisper500."),
    frontend: str = typer.Option("whisper", help="Front-end type whose frames are clustered: whisper (the bare "
                                 "encoder) or ctc_compressor (its encoder, compression none)."),
    frontend_dir: Path = typer.Option(..., help="Its model: exp/whisper/base, or a CTC compressor dir."),
    num_units: int = typer.Option(500, help="k: the number of units."),
    seed: int = typer.Option(0, help="Seed of the utterance order and of k-means."),
    max_frames: int = typer.Option(200_000, help="Frames fitted at most."),
) -> None:
    """Fit k-means units (MiniBatchKMeans) on a pretrained encoder's frames."""
    from speechllm_cli.models.kmeans_units import KMeansConfig, train_kmeans

    try:
        config = KMeansConfig({"type": frontend, "dir": str(frontend_dir)}, num_units=num_units, seed=seed,
                              max_frames=max_frames)
        train_kmeans(config, data, out)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def units_cmd(
    kmeans: Path = typer.Option(..., help="A train-kmeans dir, e.g. exp/kmeans_whisper500."),
    data: Path = typer.Option(..., help="Dump dir, e.g. dump/whisper_mel/test."),
    out: Path = typer.Option(..., help="Output dir (units + text tables), e.g. dump/units_whisper500/test."),
) -> None:
    """Write each utterance's units (nearest centroid per frame, runs collapsed) and the units per second."""
    from speechllm_cli.models.kmeans_units import write_units

    try:
        write_units(kmeans, data, out)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("train-kmeans")(train_kmeans_cmd)
    app.command("units")(units_cmd)
