"""After training: ``infer`` (a trained model on audio files) and ``package`` (a model dir to hand on).

Usage:
    speechllm infer --model exp/speechllm_whisper recording.wav interviews/          # path<TAB>text lines
    find /data -name '*.flac' | speechllm infer --model mymodel/ --lang de --format jsonl -
    speechllm infer --model exp/speechllm_whisper data/test --format kaldi --out hyp.txt   # a Kaldi data dir
    speechllm package --model exp/speechllm_whisper --out mymodel/ [--with-llm]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from speechllm_cli.commands.common import fail, logger

FORMATS = ("tsv", "jsonl", "kaldi")


def _line(result, fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps(result.to_dict(), ensure_ascii=False)
    if fmt == "kaldi":
        return f"{'_'.join(result.key.split())} {result.text}".rstrip()
    return f"{result.key}\t{result.text}"


def infer_cmd(
    audio: list[str] = typer.Argument(..., help="Audio files (wav, flac, mp3, ogg; any rate and channels), "
                                      "directories (searched recursively), Kaldi data dirs (wav.scp), or - for a "
                                      "list of paths on stdin."),
    model: Path = typer.Option(..., help="An experiment dir (exp/speechllm_whisper), a model dir or a package."),
    task: str | None = typer.Option(None, help="asr or st (default: ASR for the model's ASR languages, ST otherwise)."),
    lang: str | None = typer.Option(None, help="Source language code, e.g. de (default: the model's first ASR "
                                    "language)."),
    beam: int | None = typer.Option(None, help="Beam size (default: the model's decode config)."),
    max_new_tokens: int | None = typer.Option(None, help="Output cap in tokens (default: the model's decode config)."),
    batch_size: int = typer.Option(8, help="Recordings (and parts) decoded together."),
    fmt: str = typer.Option("tsv", "--format", help="tsv (path<TAB>text), jsonl (with duration, tokens, score, "
                            "time, error) or kaldi (a hyp.txt: key text)."),
    out: Path | None = typer.Option(None, help="Write here instead of stdout."),
    max_seconds: float | None = typer.Option(None, help="Longer recordings are split at pauses and their outputs "
                                             "joined (default: the longest training utterance, at most 30 s)."),
    engine: str = typer.Option("pytorch", help="pytorch or llamacpp (speech-LLMs)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    llm: Path | None = typer.Option(None, help="The LLM, when it is not at the path the model records (a package "
                                    "made without --with-llm); its content hash must match."),
) -> None:
    """Run a trained model on audio files; one line per recording, in input order. Unreadable files are reported
    (and, in jsonl, written with their error) while the others are decoded."""
    from speechllm_cli.infer.audio_input import collect_inputs
    from speechllm_cli.infer.model import SpeechModel

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    items, problems = collect_inputs(audio, sys.stdin)
    for key, reason in problems:
        logger.warning("skipped %s: %s", key, reason)
    if not items:
        fail("no audio to decode" + (f" ({len(problems)} input(s) skipped, see above)" if problems else ""))
    overrides = {k: v for k, v in (("beam", beam), ("max_new_tokens", max_new_tokens)) if v is not None}
    try:
        speech_model = SpeechModel.load(model, device=device, engine=engine, llm_path=llm, batch_size=batch_size,
                                        max_seconds=max_seconds, **overrides)
        speech_model.task_for(task, lang)  # a bad task/language fails before any audio is read
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        fail(str(exc))
    stream = out.open("w", encoding="utf-8") if out else sys.stdout
    failed = []
    try:
        for result in speech_model.run(items, task, lang, progress=True):  # unreadable audio: result.error
            if result.error:
                failed.append(result.key)
                logger.warning("could not decode %s: %s", result.key, result.error)
                if fmt != "jsonl":
                    continue
            print(_line(result, fmt), file=stream, flush=True)
    finally:
        if out:
            stream.close()
    if failed:
        logger.warning("%d of %d recording(s) could not be decoded: %s", len(failed), len(items),
                       ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else ""))
    if len(failed) == len(items):
        raise typer.Exit(code=1)


def package_cmd(
    model: Path = typer.Option(..., help="An experiment dir (exp/speechllm_whisper) or a model dir."),
    out: Path = typer.Option(..., help="The package dir to write, e.g. mymodel/ (replaced)."),
    with_llm: bool = typer.Option(False, help="Copy the LLM in (else it is referenced by path and content hash)."),
) -> None:
    """Write a trained model as one self-contained dir (weights, front-end, Whisper, tokenizers, decode options,
    a model card) that `speechllm infer --model` and SpeechModel.load read from anywhere."""
    from speechllm_cli.infer.package import package_model

    try:
        package_model(model, out, with_llm=with_llm)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("infer")(infer_cmd)
    app.command("package")(package_cmd)
