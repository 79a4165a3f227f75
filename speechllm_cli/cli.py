"""The ``speechllm`` command line: one subcommand per recipe stage.

Every option can also come from a YAML file given with ``--config`` (keys are the option names
with dashes or underscores); options on the command line win over the file.

Usage:
    speechllm make-mini-corpus downloads/mini
    speechllm prepare-covost2 --cv-root downloads/mini --covost-dir downloads/mini \\
        --src-langs "de fr es en" --out data
    speechllm validate-data data/train
    speechllm fbank data/train dump/train --nj 2
    speechllm compute-cmvn dump/train
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import yaml

from speechllm_cli.utils.logging import setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="speechllm: speech to decoder-only LLMs, in Kaldi/ESPnet-style recipes.",
)
logger = logging.getLogger("speechllm")


def _load_yaml_defaults(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """``--config FILE``: its keys become the defaults of this command's options."""
    if value is None:
        return value
    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {value}: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value}: expected a mapping of option names to values")
    known = {p.name for p in ctx.command.params if p.name not in (None, "config")}
    defaults = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise typer.BadParameter(f"{value}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = typer.Option(
    None, "--config", callback=_load_yaml_defaults, is_eager=True,
    help="YAML file of option values; command-line options win.",
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


def _fail(message: str) -> None:
    logger.error(message)
    raise typer.Exit(code=1)


# --------------------------------------------------------------------------- data (stage 1)


@app.command("make-mini-corpus")
def make_mini_corpus_cmd(
    out: Path = typer.Argument(..., help="Output folder (Common Voice + CoVoST2 layout)."),
    size: float = typer.Option(1.0, help="Scale of the default size (1.0 = 240/30/30 utts per language)."),
    seed: int = typer.Option(0, help="Seed of the sentence grammar and the speaker draw."),
    langs: str = typer.Option("de fr es en", help="Source languages, space separated."),
    jobs: int = typer.Option(2, help="Parallel espeak-ng workers."),
    config: Path | None = ConfigOption,
) -> None:
    """Build the embedded synthetic corpus (espeak-ng speech) in the real CoVoST2 layout."""
    from speechllm_cli.data.mini_corpus import make_mini_corpus

    make_mini_corpus(out, size=size, seed=seed, langs=langs.split(), jobs=jobs)


@app.command("prepare-covost2")
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
        _fail(str(exc))


@app.command("validate-data")
def validate_data_cmd(data_dirs: list[Path] = typer.Argument(..., help="Kaldi data dirs.")) -> None:
    """Check data dirs with the rules of Kaldi's validate_data_dir.sh."""
    from speechllm_cli.data.kaldi_dir import DataDirError, validate_data_dir

    for data_dir in data_dirs:
        try:
            validate_data_dir(data_dir)
        except DataDirError as exc:
            _fail(str(exc))
        logger.info("%s: OK", data_dir)


@app.command("fix-data")
def fix_data_cmd(data_dir: Path = typer.Argument(..., help="Kaldi data dir to repair in place.")) -> None:
    """Sort tables and keep only utterances present in all of them with non-empty text."""
    from speechllm_cli.data.kaldi_dir import fix_data_dir

    removed = fix_data_dir(data_dir)
    logger.info("%s: removed %d utterance(s)%s", data_dir, len(removed),
                f", listed in {data_dir / '.backup/removed'}" if removed else "")


@app.command("split-data")
def split_data_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir."),
    num_parts: int = typer.Argument(..., help="Number of parts (whole speakers per part)."),
) -> None:
    """Write <data-dir>/split<N>/<1..N> for --nj N jobs."""
    from speechllm_cli.data.kaldi_dir import DataDir, DataDirError, write_split

    try:
        parts = write_split(DataDir.load(data_dir), num_parts)
    except DataDirError as exc:
        _fail(str(exc))
    logger.info("wrote %s", ", ".join(str(p) for p in parts))


# --------------------------------------------------------------------------- scoring (stage 7)


@app.command("score")
def score_cmd(
    decode_dir: Path | None = typer.Argument(None, help="Decode dir holding hyp.txt, ref.txt (and utt2lang)."),
    ref: Path | None = typer.Option(None, help="Reference `utt text` file (default DECODE_DIR/ref.txt)."),
    hyp: Path | None = typer.Option(None, help="Hypothesis `utt text` file (default DECODE_DIR/hyp.txt)."),
    utt2lang: Path | None = typer.Option(None, help="Source language per utterance (default DECODE_DIR/utt2lang)."),
    asr_langs: str = typer.Option("en", help="Source languages scored as recognition (WER/CER)."),
) -> None:
    """BLEU/chrF (tc and lc.rm) and WER/CER, overall and per language, into result.txt."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.score.score import score_decode_dir

    if decode_dir is None:
        if hyp is None or ref is None:
            _fail("give a DECODE_DIR, or both --ref and --hyp")
        decode_dir = hyp.parent
    try:
        score_decode_dir(decode_dir, ref=ref, hyp=hyp, utt2lang=utt2lang, asr_langs=tuple(asr_langs.split()))
    except (DataDirError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command("results")
def results_cmd(
    exp_dir: Path = typer.Argument(Path("exp"), help="Folder of model dirs with scored decode dirs."),
    out: Path | None = typer.Option(None, help="Output Markdown file (default EXP_DIR/RESULTS.md)."),
) -> None:
    """Collect every scored decode into one Markdown table and print it."""
    from speechllm_cli.score.results import write_results

    try:
        path = write_results(exp_dir, out)
    except FileNotFoundError as exc:
        _fail(str(exc))
    print(path.read_text())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
