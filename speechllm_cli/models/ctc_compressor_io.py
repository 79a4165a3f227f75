"""Load a trained CTC compressor from the experiment dir ``speechllm train-ctc`` writes.

Example::

    from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor
    model, tokenizer = load_ctc_compressor("exp/ctc_compressor", device="cpu")   # eval mode, + its CTC tokenizer

The dir holds ``config.yaml`` (the resolved experiment config: its ``model:`` section is the
CTCCompressorConfig, ``tokenizer:`` the token list dir), ``model.safetensors`` (also ``model.best`` /
``model.avg``) and, when training copied it, ``tokenizer/`` (bpe.model + tokens.txt).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
from speechllm_cli.text.tokenizer import MODEL_NAME, Tokenizer
from speechllm_cli.utils.config import load_dataclass, read_yaml


def load_ctc_compressor(
    model_dir: str | os.PathLike, device: str | torch.device = "cpu", variant: str = "model"
) -> tuple[CTCCompressor, Tokenizer]:
    """A trained compressor (eval mode) and its tokenizer from ``model_dir``; ``variant`` picks
    ``model`` (final), ``model.best`` or ``model.avg``."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {model_dir} is not a trained CTC compressor "
                                "(speechllm train-ctc --out writes it)")
    mapping = read_yaml(config_path)
    config = load_dataclass(CTCCompressorConfig, mapping.get("model"), source=f"{config_path} (model:)")
    copied = model_dir / "tokenizer"
    token_dir = copied if (copied / MODEL_NAME).is_file() else Path(mapping.get("tokenizer", ""))
    tokenizer = Tokenizer.load(token_dir)
    weights = model_dir / f"{variant}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} missing: training did not finish; rerun train-ctc with --resume")
    model = CTCCompressor(config)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), tokenizer
