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
    speechllm train-tokenizer --text dump/train/text.src --out-dir data/token_list/unigram300
    speechllm train-ctc --config conf/train_ctc.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/ctc_compressor
    speechllm export-llm --out exp/llm/smollm2_hf
    speechllm init-llm --out exp/llm/scratch_small --config conf/llm_scratch_small.yaml \\
        --tokenizer data/token_list/tgt_unigram150          # a random LLaMA for model_type: decoder_only
    speechllm train --config conf/train_speechllm.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/speechllm
    speechllm decode --model exp/speechllm --data dump/test --beam 4
    speechllm score exp/speechllm/decode_test
    speechllm train --config conf/train_seq2seq.yaml --train-data dump/train --valid-data dump/dev \
        --out exp/seq2seq                                       # the baseline: model_type: seq2seq
    speechllm decode --model exp/seq2seq --data dump/test --beam 4 --nbest 4 --ctc-weight 0.3
    speechllm rescore --nbest exp/seq2seq/decode_test/nbest.txt --llm exp/llm/smollm2_hf \
        --tune-nbest exp/seq2seq/decode_dev/nbest.txt --length-normalise --out exp/seq2seq/decode_test_llm_rescore
    speechllm results exp
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
def fix_data_cmd(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir to repair in place."),
    max_drop: float = typer.Option(0.1, help="Fail, changing nothing, rather than remove more than this share."),
) -> None:
    """Sort tables and keep only utterances present in all of them with non-empty text (each removal and its
    reason logged and listed in DATA_DIR/.backup/removed)."""
    from speechllm_cli.data.kaldi_dir import DataDirError, fix_data_dir

    try:
        removed = fix_data_dir(data_dir, max_drop=max_drop)
    except DataDirError as exc:
        _fail(str(exc))
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


# --------------------------------------------------------------------------- features (stage 2)


@app.command("fbank")
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
        _fail(str(exc))


@app.command("compute-cmvn")
def compute_cmvn_cmd(
    dump_dir: Path = typer.Argument(..., help="Training dump dir with feats.scp."),
    out: Path | None = typer.Option(None, help="Output stats (default DUMP_DIR/cmvn.ark)."),
) -> None:
    """Global CMVN statistics in Kaldi's stats format (compute them on the training set only)."""
    from speechllm_cli.features.cmvn import compute_cmvn

    try:
        compute_cmvn(dump_dir, out)
    except (OSError, ValueError) as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------- CTC compressor (stages 3-4)


@app.command("train-tokenizer")
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
        _fail(str(exc))
    logger.info("wrote %s/bpe.model and tokens.txt", out_dir)


TRAIN_HELP = {
    "config": "Experiment YAML (sections: model, train, ...).",
    "train_data": "Training dump dir (feats.scp, cmvn.ark, text files).",
    "valid_data": "Validation dump dir.",
    "out": "Experiment dir, e.g. exp/ctc_compressor.",
    "resume": "Continue exactly from the newest checkpoint in --out.",
    "set": "Override a config value, e.g. --set train.lr=5e-4 (repeatable).",
    "num_procs": "Data-parallel processes (re-launched under torchrun).",
}


def _training_argv(config: Path, train_data: Path, valid_data: Path, out: Path, resume: bool,
                   overrides: list[str], num_procs: int) -> list[str]:
    argv = ["--config", str(config), "--train-data", str(train_data), "--valid-data", str(valid_data),
            "--out", str(out), "--num-procs", str(num_procs)]
    for override in overrides:
        argv += ["--set", override]
    return argv + (["--resume"] if resume else [])


@app.command("train-ctc")
def train_ctc_cmd(
    config: Path = typer.Option(..., help=TRAIN_HELP["config"]),
    train_data: Path = typer.Option(..., help=TRAIN_HELP["train_data"]),
    valid_data: Path = typer.Option(..., help=TRAIN_HELP["valid_data"]),
    out: Path = typer.Option(..., help=TRAIN_HELP["out"]),
    resume: bool = typer.Option(False, help=TRAIN_HELP["resume"]),
    set_: list[str] = typer.Option([], "--set", help=TRAIN_HELP["set"]),
    num_procs: int = typer.Option(1, help=TRAIN_HELP["num_procs"]),
) -> None:
    """Pretrain the CTC compressor on source transcripts (shared training loop; DDP with --num-procs)."""
    from speechllm_cli.train import ctc_task

    ctc_task.main(_training_argv(config, train_data, valid_data, out, resume, set_, num_procs))


@app.command("ctc-report")
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
        _fail(str(exc))


@app.command("ctc-compress")
def ctc_compress_cmd(
    model: Path = typer.Option(..., help="Trained compressor dir (exp/ctc_compressor)."),
    data: Path = typer.Option(..., help="Dump dir, e.g. dump/dev."),
    out: Path = typer.Option(..., help="Output dir for feats.{ark,scp} and utt2num_frames."),
    mode: str = typer.Option("frame_average", help="frame_average, blank_remove or none."),
    batch_frames: int = typer.Option(20000, help="Padded frames per batch."),
) -> None:
    """Dump the compressor's compressed representations (one vector per predicted label)."""
    from speechllm_cli.train.ctc_report import ctc_compress

    try:
        ctc_compress(model, data, out, mode, batch_frames)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------- speech-LLM (stage 5)


@app.command("export-llm")
def export_llm_cmd(
    out: Path = typer.Option(..., help="Output Hugging Face dir, e.g. exp/llm/smollm2_hf."),
    gguf: Path | None = typer.Option(None, help="GGUF file to convert (default: the embedded SmolLM2)."),
) -> None:
    """Convert a GGUF LLM once into a safetensors Hugging Face dir (with tokenizer) that loads in well under 1 s."""
    from speechllm_cli.models.llm import export_llm, find_embedded_gguf

    try:
        export_llm(gguf or find_embedded_gguf(), out)
    except (FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))


@app.command("init-llm")
def init_llm_cmd(
    out: Path = typer.Option(..., help="Output Hugging Face dir, e.g. exp/llm/scratch_small."),
    config: Path | None = typer.Option(None, "--config", help="LLaMA architecture YAML (LlamaConfig fields), e.g. "
                                       "conf/llm_scratch_small.yaml; needs --tokenizer."),
    tokenizer: Path | None = typer.Option(None, help="Token list dir (bpe.model + tokens.txt), e.g. "
                                          "data/token_list/tgt_unigram150: the LLM's vocabulary."),
    like: Path | None = typer.Option(None, help="Instead of --config/--tokenizer: copy the architecture and tokenizer "
                                     "of this Hugging Face LLM dir, e.g. exp/llm/smollm2_hf."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Write a randomly initialised causal LM (safetensors + tokenizer) to train from scratch (train_llm: true)."""
    from speechllm_cli.models.scratch_llm import init_llm

    if (like is None) == (config is None) or (config is None) != (tokenizer is None):
        _fail("give either --config and --tokenizer, or --like")
    try:
        init_llm(out, config=config, tokenizer_dir=tokenizer, like=like, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., help="Experiment YAML; its top-level model_type picks the model: speech_llm "
                                "(the default: compressor_dir, task, target, model, train), decoder_only (the same "
                                "sections; the whole LLM trains) or seq2seq (tokenizer, model, train)."),
    train_data: Path = typer.Option(..., help=TRAIN_HELP["train_data"]),
    valid_data: Path = typer.Option(..., help=TRAIN_HELP["valid_data"]),
    out: Path = typer.Option(..., help="Experiment dir, e.g. exp/speechllm or exp/seq2seq."),
    resume: bool = typer.Option(False, help=TRAIN_HELP["resume"]),
    set_: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set model.lora.rank=4."),
    num_procs: int = typer.Option(1, help=TRAIN_HELP["num_procs"]),
) -> None:
    """Train Speech-LLaMA (audio encoder + LoRA on a frozen LLM, over the frozen CTC compressor); with
    `model_type: decoder_only` the same with every LLM weight trained (an LLM from init-llm: from scratch); with
    `model_type: seq2seq` the encoder-decoder baseline from scratch."""
    from speechllm_cli.train import seq2seq_task, speechllm_task
    from speechllm_cli.utils.config import ConfigError, read_yaml

    try:
        model_type = read_yaml(config).get("model_type", "speech_llm")
    except ConfigError as exc:
        _fail(str(exc))
    tasks = {"speech_llm": speechllm_task, "decoder_only": speechllm_task, "seq2seq": seq2seq_task}
    if model_type not in tasks:
        _fail(f"{config}: model_type {model_type!r} is not one of {sorted(tasks)}")
    tasks[model_type].main(_training_argv(config, train_data, valid_data, out, resume, set_, num_procs))


# --------------------------------------------------------------------------- decoding (stage 6)


@app.command("decode")
def decode_cmd(
    model: Path = typer.Option(..., help="Experiment dir (exp/speechllm, exp/seq2seq) or a saved model dir "
                               "(exp/speechllm/model): a speech-LLM or a seq2seq model."),
    data: Path = typer.Option(..., help="Dump dir to decode, e.g. dump/test."),
    out: Path | None = typer.Option(None, help="Decode dir (default MODEL/decode_<data name>)."),
    beam: int = typer.Option(1, help="Beam size (1: greedy search)."),
    batch_size: int = typer.Option(8, help="Utterances per batch."),
    max_new_tokens: int = typer.Option(200, help="Output cap in tokens (end token included)."),
    max_len_a: float = typer.Option(0.0, help="Per-utterance cap ceil(a * seconds + b); 0: --max-new-tokens only."),
    max_len_b: float = typer.Option(10.0, help="See --max-len-a."),
    no_repeat_ngram: int = typer.Option(0, help="Ban repeated n-grams of this size (0: off)."),
    length_penalty: float = typer.Option(1.0, help="Rank by logprob / length ** penalty."),
    nbest: int = typer.Option(0, help="Write nbest.txt with this many hypotheses (<= beam)."),
    task: str | None = typer.Option(None, help="asr or st for every utterance (default: the model's training "
                                    "choice; task auto: from utt2lang)."),
    asr_langs: str | None = typer.Option(None, help="Source languages decoded as ASR, e.g. 'en fr' (default: the "
                                         "model's training choice, else en)."),
    nj: int = typer.Option(1, help="Parallel jobs (split by speaker), run through --cmd."),
    cmd: str = typer.Option("run.pl", help="Job launcher: run.pl or slurm.pl, with options."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    llm: Path | None = typer.Option(None, help="LLM path if it moved since training (its hash must match)."),
    ctc_weight: float = typer.Option(0.0, help="seq2seq models: weight of the CTC prefix scores (0: attention only)."),
    config: Path | None = ConfigOption,
) -> None:
    """Beam or greedy search (a speech-LLM with the LLM's key/value cache, or a seq2seq model); writes hyp.txt,
    ref.txt, decode.yaml and the RTF."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.decode.decode import decode, resolve_model_dir
    from speechllm_cli.models.speech_llm_io import LLMMismatchError

    try:
        model_dir = resolve_model_dir(model)
        decode(model_dir, data, out or model / f"decode_{data.name}", beam=beam, batch_size=batch_size,
               max_new_tokens=max_new_tokens, max_len_a=max_len_a, max_len_b=max_len_b,
               no_repeat_ngram=no_repeat_ngram, length_penalty=length_penalty, nbest=nbest, task=task,
               asr_langs=tuple(asr_langs.split()) if asr_langs else None, nj=nj,
               cmd=cmd, device=device, llm_path=llm, ctc_weight=ctc_weight)
    except (DataDirError, FileNotFoundError, ValueError, LLMMismatchError, RuntimeError) as exc:
        _fail(str(exc))


@app.command("rescore")
def rescore_cmd(
    nbest: Path = typer.Option(..., help="nbest.txt of a decode dir (decode with --nbest N), e.g. "
                               "exp/seq2seq/decode_test/nbest.txt."),
    llm: Path = typer.Option(..., help="LLM: a Hugging Face dir or a .gguf file, e.g. exp/llm/smollm2_hf."),
    out: Path = typer.Option(..., help="New decode dir, e.g. exp/seq2seq/decode_test_rescore."),
    weight: float = typer.Option(0.3, help="LLM weight L: rank by (1 - L) * decoder logprob + L * LLM logprob."),
    length_normalise: bool = typer.Option(False, help="Divide each log-prob by its own token count first."),
    batch_size: int = typer.Option(16, help="Hypotheses per LLM forward."),
    tune_nbest: Path | None = typer.Option(None, help="Dev nbest.txt (its dir needs ref.txt and utt2lang): pick the "
                                           "weight from --grid there (dev BLEU, or -WER for ASR-only sets); "
                                           "replaces --weight."),
    grid: str = typer.Option("0:1:0.1", help="Weights tried with --tune-nbest: start:stop:step, stop included."),
    asr_langs: str = typer.Option("en", help="Source languages scored as recognition (WER) when tuning."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("float32", help="LLM dtype: float32, bfloat16 or float16."),
    config: Path | None = ConfigOption,
) -> None:
    """Re-rank an n-best list with an LLM's log-prob of each hypothesis; writes a decode dir for `speechllm score`."""
    from speechllm_cli.decode.rescore import rescore

    try:
        rescore(nbest, llm, out, weight=weight, length_normalise=length_normalise, batch_size=batch_size,
                tune_nbest=tune_nbest, grid=grid, asr_langs=tuple(asr_langs.split()), device=device, dtype=dtype)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


@app.command("diagnose")
def diagnose_cmd(
    model: Path = typer.Option(..., help="Trained speech-LLM experiment or model dir, e.g. exp/speechllm."),
    data: Path = typer.Option(..., help="Dump dir to measure on, e.g. dump/dev."),
    decode_dir: Path | None = typer.Option(None, help="Decode dir whose distinct hypotheses to count "
                                           "(default MODEL/decode_<set> when it exists)."),
    out: Path | None = typer.Option(None, help="JSON report (default MODEL/diagnose_<set>.json)."),
    batch_size: int = typer.Option(16, help="Utterances per batch (the rolled audio comes from the same batch)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    llm: Path | None = typer.Option(None, help="The LLM, when it moved since training (same content hash)."),
    config: Path | None = ConfigOption,
) -> None:
    """Does the model use its audio? Loss with true / rolled / no audio, embedding norms and similarity, and
    distinct hypotheses per language."""
    from speechllm_cli.data.kaldi_dir import DataDirError
    from speechllm_cli.diagnose.report import diagnose, format_report, write_report
    from speechllm_cli.models.speech_llm_io import LLMMismatchError

    if decode_dir is None and (model / f"decode_{data.name}" / "hyp.txt").is_file():
        decode_dir = model / f"decode_{data.name}"
    try:
        report = diagnose(model, data, decode_dir, batch_size=batch_size, device=device, llm_path=llm)
    except (DataDirError, FileNotFoundError, ValueError, LLMMismatchError) as exc:
        _fail(str(exc))
    print(format_report(report))
    logger.info("wrote %s", write_report(report, out or model / f"diagnose_{data.name}.json"))


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
