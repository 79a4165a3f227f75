"""Save and load a trained encoder-decoder baseline as a self-contained model dir.

A saved model dir (``exp/seq2seq/model``, also ``model.best``, ``model.avg``) holds::

    model.yaml           model_type: seq2seq, weights: model.safetensors (see model_dir.py)
    config.yaml          the experiment config (its ``model`` section is the Seq2SeqConfig, vocab_size set)
    tokenizer/           a copy of the target token list dir (bpe.model + tokens.txt)
    model.safetensors    every weight and buffer (the CMVN statistics included)

Example::

    from speechllm_cli.models.seq2seq_io import load_seq2seq, save_seq2seq

    save_seq2seq(model, "data/token_list/tgt_unigram300", {"model": ..., "train": ...}, "exp/seq2seq/model")
    model, tokenizer = load_seq2seq("exp/seq2seq/model", device="cpu")   # eval mode (or model_dir.load_model)
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from speechllm_cli.models.model_dir import read_model_record, write_model_record
from speechllm_cli.models.seq2seq import Seq2SeqConfig, Seq2SeqModel
from speechllm_cli.text.tokenizer import MODEL_NAME, TOKENS_NAME, Tokenizer
from speechllm_cli.utils.config import dump_config, load_dataclass, read_yaml
from speechllm_cli.utils.io import atomic_dir

logger = logging.getLogger(__name__)

MODEL_TYPE = "seq2seq"
WEIGHTS_NAME = "model.safetensors"


def save_seq2seq(model: Seq2SeqModel, tokenizer_dir: str | os.PathLike, experiment_config: dict,
                 out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` (replaced atomically) from the model, its target token list dir and the resolved
    experiment config (a plain mapping whose ``model`` section is ``model.config``)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp_dir:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp_dir / WEIGHTS_NAME)
        (tmp_dir / "tokenizer").mkdir()
        for name in (MODEL_NAME, TOKENS_NAME):
            shutil.copyfile(Path(tokenizer_dir) / name, tmp_dir / "tokenizer" / name)
        dump_config(tmp_dir / "config.yaml", experiment_config)
        write_model_record(tmp_dir, MODEL_TYPE, weights=WEIGHTS_NAME)
    logger.info("saved the seq2seq model to %s", out_dir)
    return out_dir


def load_seq2seq(model_dir: str | os.PathLike, device: str = "cpu") -> tuple[Seq2SeqModel, Tokenizer]:
    """The saved model (eval mode, on ``device``) and its target tokenizer."""
    model_dir = Path(model_dir)
    read_model_record(model_dir, expect=(MODEL_TYPE,))
    config_path = model_dir / "config.yaml"
    config = load_dataclass(Seq2SeqConfig, read_yaml(config_path).get("model"), source=f"{config_path}: model")
    tokenizer = Tokenizer.load(model_dir / "tokenizer")
    if tokenizer.vocab_size + 1 != config.vocab_size:
        raise ValueError(f"{model_dir}: model.vocab_size {config.vocab_size} in config.yaml does not fit the "
                         f"{tokenizer.vocab_size} tokens of tokenizer/ (+1 for <sos/eos>); the dir is inconsistent")
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; the model dir is incomplete (rerun training with --resume)")
    model = Seq2SeqModel(config)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), tokenizer
