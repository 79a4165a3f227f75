"""The ``speechllm`` command line: one Typer app, one subcommand per recipe stage.

The subcommands live in speechllm_cli/commands/, one module per stage, each registering its commands here:

    commands/data.py      (stage 1)    make-mini-corpus, prepare-covost2, validate-data, fix-data, split-data,
                                       perturb-speed
    commands/features.py  (stage 2)    fbank, compute-cmvn, add-noise
    commands/ctc.py       (stages 3-4) train-tokenizer, train-ctc, ctc-report, ctc-compress
    commands/families.py  (audio tokens, text inputs) train-kmeans, units, text-input
    commands/llm.py       (stage 5)    export-llm, export-whisper, init-llm, train, export-gguf
    commands/decoding.py  (stages 6-7) decode, rescore, diagnose, score, results
    commands/inference.py (after)      infer (a trained model on audio files), package

fix-data, split-data and ctc-compress are for a user's own corpus, scheduler or analysis; the recipe needs none.
Every option can also come from a YAML file given with ``--config`` (keys are the option names
with dashes or underscores); options on the command line win over the file. The defaults of decode, rescore,
train and train-ctc are the fields of one dataclass each (DecodeOptions + DecodeRun, RescoreOptions:
decode/options.py; TrainingOptions: train/entry.py), which their Python entry points and jobs use too.

Usage:
    speechllm make-mini-corpus downloads/mini
    speechllm prepare-covost2 --cv-root downloads/mini --covost-dir downloads/mini \\
        --src-langs "de fr es en" --out data
    speechllm validate-data data/train
    speechllm fix-data my_corpus/train                      # a corpus of your own, before validate-data
    speechllm split-data data/train 4                       # data/train/split4/{1..4}, for your own scheduler
    speechllm fbank data/train dump/train --nj 2
    speechllm compute-cmvn dump/train
    speechllm train-tokenizer --text dump/train/text.src --out-dir data/token_list/unigram300
    speechllm train-ctc --config conf/train_ctc.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/ctc_compressor
    speechllm ctc-report --model exp/ctc_compressor --data dump/dev
    speechllm ctc-compress --model exp/ctc_compressor --data dump/dev --out exp/ctc_compressor/compressed_dev
    speechllm export-llm --out exp/llm/smollm2_hf
    speechllm init-llm --out exp/llm/scratch_small --config conf/llm_scratch_small.yaml \\
        --tokenizer data/token_list/tgt_unigram150          # a random LLaMA for model_type: decoder_only
    speechllm train --config conf/train_speechllm.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/speechllm
    speechllm decode --model exp/speechllm --data dump/test --beam 4
    speechllm decode --model exp/speechllm --data dump/test --beam 4 --engine llamacpp   # the LLM in llama.cpp
    speechllm export-gguf --model exp/speechllm --out exp/speechllm/llm-q8_0.gguf --type q8_0
    speechllm diagnose --model exp/speechllm --data dump/test
    speechllm score exp/speechllm/decode_test
    speechllm train --config conf/train_seq2seq.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/seq2seq                                       # the baseline: model_type: seq2seq
    speechllm decode --model exp/seq2seq --data dump/test --beam 4 --nbest 4 --ctc-weight 0.3
    speechllm rescore --nbest exp/seq2seq/decode_test/nbest.txt --llm exp/llm/smollm2_hf \\
        --tune-nbest exp/seq2seq/decode_dev/nbest.txt --length-normalise --out exp/seq2seq/decode_test_llm_rescore
    speechllm results exp
    speechllm infer --model exp/speechllm_whisper recording.wav more_recordings/
"""

from __future__ import annotations

import typer

from speechllm_cli.commands import ctc, data, decoding, families, features, inference, llm
from speechllm_cli.utils.logging import setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="speechllm: speech to decoder-only LLMs, in Kaldi/ESPnet-style recipes.",
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


for stage in (data, features, ctc, families, llm, decoding, inference):  # in recipe order (`speechllm --help`)
    stage.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
