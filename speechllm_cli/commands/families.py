"""The inputs of the survey's other families: the audio-token family's units (``train-kmeans``: a unit inventory
on a pretrained encoder's frames; ``units``: a dump dir as unit sequences) and the text-based family's text dirs
(``text-input``: what a text LLM reads, from a table or from decode dirs).

Usage:
    speechllm train-kmeans --frontend whisper --frontend-dir exp/whisper/base --data dump/whisper_mel/train \\
        --num-units 500 --out exp/kmeans_whisper500
    speechllm train-kmeans --frontend ctc_compressor --frontend-dir exp/ctc_whisper --data dump/whisper_mel/train \\
        --out exp/kmeans_ctc500                                  # the CTC compressor's encoder, not compressed
    speechllm units --kmeans exp/kmeans_whisper500 --data dump/whisper_mel/test --out dump/units_whisper500/test
    speechllm text-input --data dump/whisper_mel/test --from-decode exp/whisper_asr/decode_test --out dump/cascade/test
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


def text_input_cmd(
    data: Path = typer.Option(..., help="Data or dump dir whose utterances it holds, e.g. dump/whisper_mel/test."),
    out: Path = typer.Option(..., help="Text dir to write, e.g. dump/cascade/test."),
    from_table: str = typer.Option(None, help="The input is this table of --data, e.g. text.src (to train)."),
    from_decode: list[Path] = typer.Option(None, help="The input is this decode dir's output (repeatable: k-fold "
                                           "decodes of disjoint parts), e.g. exp/whisper_asr/decode_test."),
    nbest: int = typer.Option(0, help="Read the decode dirs' n-best lists: the first N distinct hypotheses (0: the "
                              "1-best)."),
) -> None:
    """Write a text dir (an input table + the data's text tables) for a text LLM: a cascade's translation step or
    generative error correction."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.decode.text_input import write_text_input

    try:
        write_text_input(data, out, from_table=from_table, decode_dirs=list(from_decode or []), nbest=nbest)
    except (FileNotFoundError, ValueError, DataDirError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("train-kmeans")(train_kmeans_cmd)
    app.command("units")(units_cmd)
    app.command("text-input")(text_input_cmd)
