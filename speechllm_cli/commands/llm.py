"""Stage 5, the LLM and the speech-LLM: ``export-llm``, ``export-whisper``, ``init-llm``, ``train``, ``export-gguf``.

Usage:
    speechllm export-llm --out exp/llm/smollm2_hf
    speechllm export-whisper --out exp/whisper/base           # the embedded Whisper base as a transformers dir
    speechllm export-gguf --model exp/speechllm --out exp/speechllm/llm-q8_0.gguf --type q8_0   # for llama.cpp
    speechllm init-llm --out exp/llm/scratch_small --config conf/llm_scratch_small.yaml \\
        --tokenizer data/token_list/tgt_unigram150            # a random LLaMA for model_type: decoder_only
    speechllm train --config conf/train_speechllm.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/speechllm
"""

from __future__ import annotations

from pathlib import Path

import typer

from speechllm_cli.commands.common import fail, option
from speechllm_cli.train.entry import TRAIN_HELP, TrainingOptions


def export_llm_cmd(
    out: Path = typer.Option(..., help="Output Hugging Face dir, e.g. exp/llm/smollm2_hf."),
    gguf: Path | None = typer.Option(None, help="GGUF file to convert (default: the embedded SmolLM2)."),
) -> None:
    """Convert a GGUF LLM once into a safetensors Hugging Face dir (with tokenizer) that loads in well under 1 s."""
    from speechllm_cli.models.llm import export_llm, find_embedded_gguf

    try:
        export_llm(gguf or find_embedded_gguf(), out)
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))


def export_whisper_cmd(
    out: Path = typer.Option(..., help="Output transformers Whisper dir, e.g. exp/whisper/base."),
    source: Path | None = typer.Option(None, help="A CTranslate2 Whisper dir (model.bin), an openai-whisper .pt or a "
                                       "transformers Whisper dir (default: the embedded Whisper base)."),
) -> None:
    """Convert a pretrained Whisper once into a transformers dir (safetensors, tokenizer, feature extractor) with a
    model.yaml recording its content hash; `speechllm decode --model` runs it zero-shot."""
    from speechllm_cli.models.whisper.ct2 import CT2FormatError
    from speechllm_cli.models.whisper.export import export_whisper

    try:
        export_whisper(source, out)
    except (FileNotFoundError, CT2FormatError, ValueError) as exc:
        fail(str(exc))


def export_gguf_cmd(
    model: Path = typer.Option(..., help="A trained speech-LLM or decoder-only experiment dir (or its model dir), e.g. "
                               "exp/speechllm_whisper."),
    out: Path = typer.Option(..., help="GGUF file to write, e.g. exp/speechllm_whisper/llm-q8_0.gguf."),
    type_: str = typer.Option("f16", "--type", help="f32, f16 or q8_0 (matrices; norms stay f32)."),
    base_gguf: Path | None = typer.Option(None, help="GGUF of the base LLM for the tokenizer metadata (default: the "
                                          "one the LLM dir was exported from, else its Hugging Face tokenizer)."),
    llm: Path | None = typer.Option(None, help="The LLM, if it moved since training (its hash must match)."),
) -> None:
    """Write the trained LLM (LoRA merged) as GGUF for llama.cpp; `speechllm decode --engine llamacpp --gguf FILE`
    decodes with it."""
    from speechllm_cli.decode.decode import resolve_model_dir
    from speechllm_cli.models.gguf_export import GGUFExportError, export_gguf

    try:
        export_gguf(resolve_model_dir(model), out, type_, base_gguf, llm)
    except (FileNotFoundError, GGUFExportError, ValueError, RuntimeError) as exc:
        fail(str(exc))


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
        fail("give either --config and --tokenizer, or --like")
    try:
        init_llm(out, config=config, tokenizer_dir=tokenizer, like=like, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def train_cmd(
    config: Path = typer.Option(..., help="Experiment YAML; its top-level model_type picks the model: speech_llm "
                                "(the default: compressor_dir, task, target, model, train), decoder_only (the same "
                                "sections; the whole LLM trains), seq2seq (tokenizer, model, train), whisper "
                                "(whisper, task, target, train: fine-tunes an exported Whisper) or text_llm (task, "
                                "target, model, train: LoRA on an LLM reading a text dir's input)."),
    train_data: Path = typer.Option(..., help=TRAIN_HELP["train_data"]),
    valid_data: Path = typer.Option(..., help=TRAIN_HELP["valid_data"]),
    out: Path = typer.Option(..., help="Experiment dir, e.g. exp/speechllm or exp/seq2seq."),
    resume: bool = option(TrainingOptions, "resume", help=TRAIN_HELP["resume"]),
    set_: list[str] = option(TrainingOptions, "overrides", "--set",
                             help="Override a config value, e.g. --set model.lora.rank=4."),
    num_procs: int = option(TrainingOptions, "num_procs", help=TRAIN_HELP["num_procs"]),
) -> None:
    """Train Speech-LLaMA (audio encoder + LoRA on a frozen LLM, over the frozen CTC compressor); with
    `model_type: decoder_only` the same with every LLM weight trained (an LLM from init-llm: from scratch); with
    `model_type: seq2seq` the encoder-decoder baseline from scratch; with `model_type: whisper` an exported Whisper
    fine-tuned (decoder, or all) at each clip's real length; with `model_type: text_llm` an LLM with LoRA reading a
    text input (a cascade's translation step, generative error correction; text dirs from `speechllm text-input`)."""
    from speechllm_cli.train import seq2seq_task, speechllm_task, text_llm_task, whisper_task
    from speechllm_cli.utils.config import ConfigError, read_yaml

    try:
        model_type = read_yaml(config).get("model_type", "speech_llm")
    except ConfigError as exc:
        fail(str(exc))
    tasks = {"speech_llm": speechllm_task, "decoder_only": speechllm_task, "seq2seq": seq2seq_task,
             "whisper": whisper_task, "text_llm": text_llm_task}
    if model_type not in tasks:
        fail(f"{config}: model_type {model_type!r} is not one of {sorted(tasks)}")
    tasks[model_type].main(TrainingOptions(str(config), str(train_data), str(valid_data), str(out), resume, set_,
                                           num_procs))


def register(app: typer.Typer) -> None:
    app.command("export-llm")(export_llm_cmd)
    app.command("export-whisper")(export_whisper_cmd)
    app.command("init-llm")(init_llm_cmd)
    app.command("train")(train_cmd)
    app.command("export-gguf")(export_gguf_cmd)
