"""Stages 6-7, decoding and scoring: ``decode``, ``rescore``, ``diagnose``, ``score``, ``results``.

The defaults of ``decode`` are the fields of DecodeOptions and DecodeRun, those of ``rescore`` the fields of
RescoreOptions (speechllm_cli/decode/options.py), which the Python entry points and the ``--nj`` jobs use too.

Usage:
    speechllm decode --model exp/speechllm --data dump/test --config conf/decode.yaml --nj 2
    speechllm decode --model exp/seq2seq --data dump/test --beam 4 --nbest 4 --ctc-weight 0.3
    speechllm rescore --nbest exp/seq2seq/decode_test/nbest.txt --llm exp/llm/smollm2_hf \\
        --tune-nbest exp/seq2seq/decode_dev/nbest.txt --length-normalise --out exp/seq2seq/decode_test_llm_rescore
    speechllm diagnose --model exp/speechllm --data dump/test
    speechllm score exp/speechllm/decode_test
    speechllm results exp
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import ConfigOption, fail, logger, option
from speechllm_cli.decode.options import ASR_LANGS, DecodeOptions, DecodeRun, RescoreOptions
from speechllm_cli.diagnose.options import DiagnoseOptions


def decode_cmd(
    model: Path = typer.Option(..., help="Experiment dir (exp/speechllm, exp/seq2seq) or a saved model dir "
                               "(exp/speechllm/model): a speech-LLM, a seq2seq model or a Whisper (exported, e.g. "
                               "exp/whisper/base, or fine-tuned)."),
    data: Path = typer.Option(..., help="Dump dir to decode, e.g. dump/test."),
    out: Path | None = typer.Option(None, help="Decode dir (default MODEL/decode_<data name>)."),
    beam: int = option(DecodeOptions, "beam", help="Beam size (1: greedy search)."),
    batch_size: int = option(DecodeRun, "batch_size", help="Utterances per batch."),
    max_new_tokens: int = option(DecodeOptions, "max_new_tokens", help="Output cap in tokens (end token included)."),
    max_len_a: float = option(DecodeOptions, "max_len_a",
                              help="Per-utterance cap ceil(a * seconds + b); 0: --max-new-tokens only."),
    max_len_b: float = option(DecodeOptions, "max_len_b", help="See --max-len-a."),
    no_repeat_ngram: int = option(DecodeOptions, "no_repeat_ngram", help="Ban repeated n-grams of this size (0: off)."),
    length_penalty: float = option(DecodeOptions, "length_penalty", help="Rank by logprob / length ** penalty."),
    nbest: int = option(DecodeOptions, "nbest", help="Write nbest.txt with this many hypotheses (<= beam)."),
    task: str | None = option(DecodeOptions, "task", help="asr or st for every utterance (default: the model's "
                              "training choice; task auto: from utt2lang)."),
    asr_langs: str | None = typer.Option(None, help="Source languages decoded as ASR, e.g. 'en fr' (default: the "
                                         "model's training choice, else en)."),
    nj: int = option(DecodeRun, "nj", help="Parallel jobs (split by speaker), run through --cmd."),
    cmd: str = option(DecodeRun, "cmd", help="Job launcher: run.pl or slurm.pl, with options."),
    device: str = option(DecodeRun, "device", help="cpu or cuda."),
    llm: Path | None = option(DecodeRun, "llm_path", help="LLM path if it moved since training (its hash must match)."),
    ctc_weight: float = option(DecodeOptions, "ctc_weight",
                               help="seq2seq models: weight of the CTC prefix scores (0: attention only)."),
    engine: str = option(DecodeOptions, "engine", help="pytorch (any model) or llamacpp (a speech-LLM's LLM as GGUF "
                         "in llama.cpp; needs llama-cpp-python)."),
    gguf: Path | None = option(DecodeOptions, "gguf", help="--engine llamacpp: the GGUF from export-gguf (default: "
                               "MODEL/model/gguf/llm-f16.gguf, exported on first use)."),
    dtype: str | None = option(DecodeOptions, "dtype", help="--engine pytorch: the speech-LLM's LLM dtype (default: as "
                               "trained); bfloat16 is about 2x faster on CPUs with bf16 instructions."),
    config: Path | None = ConfigOption,
) -> None:
    """Beam or greedy search (a speech-LLM with the LLM's key/value cache, a seq2seq model or Whisper); writes hyp.txt,
    ref.txt, decode.yaml and the RTF."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.decode.decode import decode, resolve_model_dir

    run = DecodeRun(batch_size=batch_size, nj=nj, cmd=cmd, device=device, llm_path=str(llm) if llm else None)
    try:
        decode(resolve_model_dir(model), data, out or model / f"decode_{data.name}", run=run, beam=beam,
               max_new_tokens=max_new_tokens, max_len_a=max_len_a, max_len_b=max_len_b,
               no_repeat_ngram=no_repeat_ngram, length_penalty=length_penalty, nbest=nbest, ctc_weight=ctc_weight,
               task=task, asr_langs=tuple(asr_langs.split()) if asr_langs else None,  # None: the model's choice
               engine=engine, gguf=str(gguf) if gguf else None, dtype=dtype)
    except (DataDirError, FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:  # RuntimeError: LLM or
        # front-end mismatch; ImportError: --engine llamacpp without llama-cpp-python
        fail(str(exc))


def rescore_cmd(
    nbest: Path = typer.Option(..., help="nbest.txt of a decode dir (decode with --nbest N), e.g. "
                               "exp/seq2seq/decode_test/nbest.txt."),
    llm: Path = typer.Option(..., help="LLM: a Hugging Face dir or a .gguf file, e.g. exp/llm/smollm2_hf."),
    out: Path = typer.Option(..., help="New decode dir, e.g. exp/seq2seq/decode_test_rescore."),
    weight: float = option(RescoreOptions, "weight",
                           help="LLM weight L: rank by (1 - L) * decoder logprob + L * LLM logprob."),
    length_normalise: bool = option(RescoreOptions, "length_normalise",
                                    help="Divide each log-prob by its own token count first."),
    batch_size: int = option(RescoreOptions, "batch_size", help="Hypotheses per LLM forward."),
    tune_nbest: Path | None = option(RescoreOptions, "tune_nbest", help="Dev nbest.txt (its dir needs ref.txt and "
                                     "utt2lang): pick the weight from --grid there (dev BLEU, or -WER for ASR-only "
                                     "sets); replaces --weight."),
    grid: str = option(RescoreOptions, "grid", help="Weights tried with --tune-nbest: start:stop:step, stop included."),
    asr_langs: str | None = typer.Option(None, help="Source languages scored as recognition (WER) when tuning, e.g. "
                                         "'en' (default: those the tuning n-best was decoded with)."),
    device: str = option(RescoreOptions, "device", help="cpu or cuda."),
    dtype: str = option(RescoreOptions, "dtype", help="LLM dtype: float32, bfloat16 or float16."),
    config: Path | None = ConfigOption,
) -> None:
    """Re-rank an n-best list with an LLM's log-prob of each hypothesis; writes a decode dir for `speechllm score`."""
    from speechllm_cli.decode.rescore import rescore

    options = RescoreOptions(weight=weight, length_normalise=length_normalise, batch_size=batch_size,
                             tune_nbest=str(tune_nbest) if tune_nbest else None, grid=grid,
                             asr_langs=tuple(asr_langs.split()) if asr_langs else None, device=device, dtype=dtype)
    try:
        rescore(nbest, llm, out, options)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def diagnose_cmd(
    model: Path = typer.Option(..., help="Trained speech-LLM experiment or model dir, e.g. exp/speechllm."),
    data: Path = typer.Option(..., help="Dump dir to measure on, e.g. dump/dev."),
    decode_dir: Path | None = typer.Option(None, help="Decode dir whose distinct hypotheses to count "
                                           "(default MODEL/decode_<set> when it exists)."),
    out: Path | None = typer.Option(None, help="JSON report (default MODEL/diagnose_<set>.json)."),
    batch_size: int = option(DiagnoseOptions, "batch_size",
                             help="Utterances per batch (the rolled audio comes from the same batch)."),
    device: str = option(DiagnoseOptions, "device", help="cpu or cuda."),
    llm: Path | None = option(DiagnoseOptions, "llm_path", help="The LLM, when it moved since training (same "
                              "content hash)."),
    config: Path | None = ConfigOption,
) -> None:
    """Does the model use its audio? Loss with true / rolled / no audio, embedding norms and similarity, and
    distinct hypotheses per language."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.diagnose.report import diagnose, format_report, write_report

    if decode_dir is None and (model / f"decode_{data.name}" / "hyp.txt").is_file():
        decode_dir = model / f"decode_{data.name}"
    try:
        options = DiagnoseOptions(batch_size=batch_size, device=device, llm_path=str(llm) if llm else None)
        report = diagnose(model, data, decode_dir, options)
    except (DataDirError, FileNotFoundError, ValueError, RuntimeError) as exc:  # RuntimeError: LLM/front-end mismatch
        fail(str(exc))
    print(format_report(report))
    logger.info("wrote %s", write_report(report, out or model / f"diagnose_{data.name}.json"))


def score_cmd(
    decode_dir: Path | None = typer.Argument(None, help="Decode dir holding hyp.txt, ref.txt (and utt2lang)."),
    ref: Path | None = typer.Option(None, help="Reference `utt text` file (default DECODE_DIR/ref.txt)."),
    hyp: Path | None = typer.Option(None, help="Hypothesis `utt text` file (default DECODE_DIR/hyp.txt)."),
    utt2lang: Path | None = typer.Option(None, help="Source language per utterance (default DECODE_DIR/utt2lang)."),
    asr_langs: str = typer.Option(" ".join(ASR_LANGS), help="Source languages scored as recognition (WER/CER)."),
) -> None:
    """BLEU/chrF (tc and lc.rm) and WER/CER, overall and per language, into result.txt."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.score.score import score_decode_dir

    if decode_dir is None:
        if hyp is None or ref is None:
            fail("give a DECODE_DIR, or both --ref and --hyp")
        decode_dir = hyp.parent
    try:
        score_decode_dir(decode_dir, ref=ref, hyp=hyp, utt2lang=utt2lang, asr_langs=tuple(asr_langs.split()))
    except (DataDirError, FileNotFoundError) as exc:
        fail(str(exc))


def results_cmd(
    exp_dir: Path = typer.Argument(Path("exp"), help="Folder of model dirs with scored decode dirs."),
    out: Path | None = typer.Option(None, help="Output Markdown file (default EXP_DIR/RESULTS.md, or "
                                    "EXP_DIR/FAMILIES.md with --systems)."),
    systems: Path | None = typer.Option(None, help="A YAML list of whole systems (family, system, decode, stages, "
                                        "train_only; e.g. conf/families/systems.yaml): one comparison table of them "
                                        "instead (score/families.py)."),
    sets: str = typer.Option("test", help="With --systems: the test sets, space-separated."),
) -> None:
    """Collect every scored decode into one Markdown table and print it; with --systems, one line per whole system
    (a cascade, a corrector on a first pass) with its summed parameters, training time and real-time factor."""
    from speechllm_cli.score.families import write_families_table
    from speechllm_cli.score.results import write_results

    try:
        if systems is not None:
            path = write_families_table(systems, sets.split(), out or exp_dir / "FAMILIES.md")
        else:
            path = write_results(exp_dir, out)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    print(path.read_text())


def register(app: typer.Typer) -> None:
    app.command("decode")(decode_cmd)
    app.command("rescore")(rescore_cmd)
    app.command("diagnose")(diagnose_cmd)
    app.command("score")(score_cmd)
    app.command("results")(results_cmd)
