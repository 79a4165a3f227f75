"""``load_model(dir)``: any saved model dir (its ``model.yaml`` says the type; see model_dir.py), ready to use.

Example::

    from speechllm_cli.models.load import load_model

    model = load_model("exp/speechllm/model", device="cpu")     # a SpeechLLM (eval mode, frozen)
    compressor = load_model("exp/ctc_compressor")               # a CTCCompressor; compressor.tokenizer its tokens
    seq2seq = load_model("exp/seq2seq/model")                   # a Seq2SeqModel; seq2seq.tokenizer its targets
    whisper = load_model("exp/whisper/base")                    # a WhisperSeq2Seq (exported or fine-tuned); .tokenizer
    units = load_model("exp/kmeans_whisper500")                 # a UnitExtractor: raw features -> unit ids
    mt = load_model("exp/cascade_mt/model")                     # a TextLLM (reads a text dir's input table)
"""

from __future__ import annotations

import os

from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor
from speechllm_cli.models.model_dir import read_model_record
from speechllm_cli.models.seq2seq_io import load_seq2seq
from speechllm_cli.models.speech_llm_io import load_speech_llm
from speechllm_cli.models.whisper.finetuned import load_whisper


def load_model(model_dir: str | os.PathLike, device: str = "cpu", **kwargs):
    """The model saved in ``model_dir``, whatever its type (eval mode); ``kwargs`` go to the type's loader (e.g.
    ``llm_path`` for a speech LLM)."""
    model_type = read_model_record(model_dir)["model_type"]
    if model_type == "ctc_compressor":
        model, tokenizer = load_ctc_compressor(model_dir, device, **kwargs)
    elif model_type == "seq2seq":
        model, tokenizer = load_seq2seq(model_dir, device)
    elif model_type == "whisper":
        return load_whisper(model_dir, device, **kwargs)  # it has its tokenizer
    elif model_type == "kmeans_units":
        from speechllm_cli.models.kmeans_units import UnitExtractor

        return UnitExtractor.load(model_dir, device)
    elif model_type == "text_llm":
        from speechllm_cli.models.text_llm import load_text_llm

        return load_text_llm(model_dir, device, **kwargs)
    else:
        return load_speech_llm(model_dir, device=device, **kwargs)
    model.tokenizer = tokenizer
    return model
