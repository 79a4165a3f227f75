"""Stage 1, data preparation: ``make-mini-corpus``, ``prepare-covost2``, ``validate-data``, ``fix-data``,
``split-data``, ``perturb-speed``.

Usage:
    speechllm make-mini-corpus downloads/mini
    speechllm make-mini-corpus downloads/mini_wide --voices wide   # the same dev/test, 60 train voices per language
    speechllm make-mini-corpus downloads/mini_unheard --voices unheard   # the test sentences in voices never trained on
    speechllm prepare-covost2 --cv-root downloads/mini --covost-dir downloads/mini --src-langs "de fr es en" --out data
    speechllm validate-data data/train data/dev
    speechllm fix-data my_corpus/train && speechllm validate-data my_corpus/train     # a corpus of your own
    speechllm split-data data/train 4                        # data/train/split4/{1..4} for your own scheduler
    speechllm perturb-speed data/train data/train_sp --factors "0.9 1.0 1.1"   # 3 copies, ids sp0.9-..., sp1.1-...
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import ConfigOption, fail, logger


def make_mini_corpus_cmd(
    out: Path = typer.Argument(..., help="Output folder (Common Voice + CoVoST2 layout)."),
    size: float = typer.Option(1.0, help="Scale of the default size (1.0 = 240/30/30 utts per language)."),
    seed: int = typer.Option(0, help="Seed of the sentence grammar and the speaker draw."),
    langs: str = typer.Option("de fr es en", help="Source languages, space separated."),
    jobs: int = typer.Option(2, help="Parallel espeak-ng workers."),
    voices: str = typer.Option("classic", help="Speakers: classic (12 train variants per language), wide (train: 60 "
                               "speakers per language of 79 espeak-ng variants, wider rate and pitch ranges) or "
                               "unheard (test: 8 speakers per language of variants neither train set uses); the "
                               "other splits are the classic clips."),
    config: Path | None = ConfigOption,
) -> None:
    """Build the embedded synthetic corpus (espeak-ng speech) in the real CoVoST2 layout."""
    from speechllm_cli.data.mini_corpus import make_mini_corpus

    try:
        make_mini_corpus(out, size=size, seed=seed, langs=langs.split(), jobs=jobs, voices=voices)
    except ValueError as exc:
        fail(str(exc))


def prepare_covost2_cmd(
    cv_root: Path = typer.Option(..., help="Common Voice root: <cv-root>/<lang>/{clips,validated.tsv}."),
    covost_dir: Path = typer.Option(..., help="Folder of covost_v2.<lang>_en.tsv tables."),
    src_langs: str = typer.Option("de fr es", help="Source languages, space separated."),
    out: Path = typer.Option(Path("data"), help="Output folder for the data dirs."),
    norm: str = typer.Option("tc", help="Target text convention: tc or lc.rm."),
    min_dur: float = typer.Option(0.1, help="Drop utterances shorter than this (s)."),
    max_dur: float = typer.Option(20.0, help="Drop utterances longer than this (s)."),
    jobs: int = typer.Option(8, help="Threads probing clips."),
    config: Path | None = ConfigOption,
) -> None:
    """CoVoST2 X->En: write data/{train,dev,test}_<lang> and combined data/{train,dev,test}."""
    from speechllm_cli.data.covost2 import CorpusError, prepare_covost2

    try:
        prepare_covost2(cv_root, covost_dir, src_langs.split(), out, norm=norm,
                        min_dur=min_dur, max_dur=max_dur, jobs=jobs)
    except CorpusError as exc:
        fail(str(exc))


def validate_data_cmd(data_dirs: list[Path] = typer.Argument(..., help="Kaldi data dirs.")) -> None:
    """Check data dirs with the rules of Kaldi's validate_data_dir.sh."""
    from speechllm_cli.data.kaldi_dir import DataDirError, validate_data_dir

    for data_dir in data_dirs:
        try:
            validate_data_dir(data_dir)
        except DataDirError as exc:
            fail(str(exc))
        logger.info("%s: OK", data_dir)


def fix_data_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir to repair in place."),
    max_drop: float = typer.Option(0.1, help="Fail, changing nothing, rather than remove more than this share."),
) -> None:
    """Repair a corpus of your own before validate-data, as Kaldi's fix_data_dir.sh (the recipe's data are clean):
    sort tables and keep only utterances present in all of them with non-empty text (each removal and its reason
    logged and listed in DATA_DIR/.backup/removed)."""
    from speechllm_cli.data.kaldi_dir import DataDirError, fix_data_dir

    try:
        removed = fix_data_dir(data_dir, max_drop=max_drop)
    except DataDirError as exc:
        fail(str(exc))
    logger.info("%s: removed %d utterance(s)%s", data_dir, len(removed),
                f", listed in {data_dir / '.backup/removed'}" if removed else "")


def split_data_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir."),
    num_parts: int = typer.Argument(..., help="Number of parts (whole speakers per part)."),
) -> None:
    """Write <data-dir>/split<N>/<1..N> for --nj N jobs of your own scheduler, as Kaldi's split_data_dir.sh (fbank
    and decode split by themselves)."""
    from speechllm_cli.data.kaldi_dir import DataDir, DataDirError, write_split

    try:
        parts = write_split(DataDir.load(data_dir), num_parts)
    except DataDirError as exc:
        fail(str(exc))
    logger.info("wrote %s", ", ".join(str(p) for p in parts))


def perturb_speed_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir to perturb (a training set)."),
    out_dir: Path = typer.Argument(..., help="Output data dir holding every factor's copy."),
    factors: str = typer.Option("0.9 1.0 1.1", help="Speed factors, space separated; 1.0 keeps the original ids."),
) -> None:
    """Speed perturbation as Kaldi's perturb_data_dir_speed.sh: one data dir with a copy per factor (ids
    sp<f>-<id>, audio through `sox ... speed <f> |`, segments and utt2dur divided by f). Needs sox."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.data.perturb import PerturbError, parse_factors, perturb_speed

    try:
        perturb_speed(data_dir, out_dir, parse_factors(factors))
    except (DataDirError, PerturbError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("make-mini-corpus")(make_mini_corpus_cmd)
    app.command("prepare-covost2")(prepare_covost2_cmd)
    app.command("validate-data")(validate_data_cmd)
    app.command("fix-data")(fix_data_cmd)
    app.command("split-data")(split_data_cmd)
    app.command("perturb-speed")(perturb_speed_cmd)
