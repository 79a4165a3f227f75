"""CTC-compressor training (stage: train the CTC compressor on source transcripts) on the shared loop.

The experiment config (``conf/train_ctc.yaml``) has the sections ``tokenizer`` (a token list dir,
``data/token_list/<name>``), ``target_table`` (``text.src``: the CTC targets), ``model``
(``CTCCompressorConfig``; ``vocab_size`` comes from the tokenizer) and ``train`` (``TrainConfig``).
The global CMVN statistics of ``<train_dir>/cmvn.ark`` go into the model's buffers (``model.encoder: conv2d``), so
``<out_dir>`` alone rebuilds it: ``model.yaml`` + ``tokenizer/`` (a copy) + ``model.safetensors``.
Validation reports the CTC loss and the greedy CER (%, spaces excluded) on the target table.
With ``model.encoder: whisper`` the dump dirs hold Whisper log-mel (``speechllm fbank --type whisper_mel``) and
``model.whisper_dir`` names the exported Whisper (its hash goes into model.yaml; its weights stay there).

Usage:
    python -m speechllm_cli.train.ctc_task --config conf/train_ctc.yaml --train-data dump/train \\
        --valid-data dump/dev --out exp/ctc_compressor [--resume] [--set train.max_steps=100] [--num-procs 2]

    >>> from speechllm_cli.models.load import load_model                                  # doctest: +SKIP
    >>> from speechllm_cli.train.ctc_task import train_ctc                                 # doctest: +SKIP
    >>> train_ctc("conf/train_ctc.yaml", "dump/train", "dump/dev", "exp/ctc_compressor")  # doctest: +SKIP
    >>> model = load_model("exp/ctc_compressor", device="cpu")   # model.tokenizer: its CTC tokens # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from speechllm_cli.features.cmvn import read_cmvn_stats
from speechllm_cli.features.feats_type import check_feats_type
from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig, ctc_loss, greedy_decode
from speechllm_cli.models.ctc_compressor_io import write_ctc_record
from speechllm_cli.score.metrics import cer
from speechllm_cli.text.tokenizer import MODEL_NAME, TOKENS_NAME, Tokenizer
from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.dataset import DumpDataset, check_input_dim, require_file
from speechllm_cli.train.entry import training_main
from speechllm_cli.train.loop import Trainer
from speechllm_cli.train.task import Stats, Task, unwrap
from speechllm_cli.utils.config import ConfigError, apply_overrides, load_dataclass, read_yaml
from speechllm_cli.utils.io import atomic_path

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DataPaths:
    """Recorded in config.yaml: the dump dirs a model was trained and validated on."""

    train: str = ""
    valid: str = ""


@dataclasses.dataclass
class CTCExperimentConfig:
    tokenizer: str = ""  # token list dir: bpe.model + tokens.txt
    target_table: Literal["text.src", "text"] = "text.src"
    model: CTCCompressorConfig = dataclasses.field(default_factory=CTCCompressorConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataPaths = dataclasses.field(default_factory=DataPaths)


def load_ctc_config(config_path: str | os.PathLike, overrides: dict | None = None) -> CTCExperimentConfig:
    """The experiment config of ``config_path`` with dotted ``overrides`` (``{"train.lr": 1e-3}``) applied."""
    mapping = apply_overrides(read_yaml(config_path), overrides)
    return load_dataclass(CTCExperimentConfig, mapping, source=str(config_path))


class CTCTask(Task):
    """CTC compressor: fbank -> CTC ids of the target table; validation adds greedy CER."""

    length_key = "num_frames"

    model_type = "ctc_compressor"

    def __init__(self, config: CTCExperimentConfig, tokenizer: Tokenizer, cmvn_stats: np.ndarray | None):
        self.config = config
        self.tokenizer = tokenizer
        self.cmvn_stats = cmvn_stats
        self.text_key = {"text.src": "text_src", "text": "text"}[config.target_table]

    def build_model(self) -> nn.Module:
        return CTCCompressor(self.config.model, vocab_size=self.tokenizer.vocab_size, cmvn_stats=self.cmvn_stats)

    def collate(self, examples: list[dict]) -> dict:
        feats = [torch.from_numpy(e["feats"]) for e in examples]  # each (T, D)
        targets = [torch.tensor(self.tokenizer.encode(e[self.text_key]), dtype=torch.long) for e in examples]
        return {
            "feats": nn.utils.rnn.pad_sequence(feats, batch_first=True),  # (B, T, D) zero-padded
            "feat_lens": torch.tensor([len(f) for f in feats]),  # (B,)
            "targets": nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-1),  # (B, S)
            "target_lens": torch.tensor([len(t) for t in targets]),  # (B,)
            "texts": [e[self.text_key] for e in examples],
            "utt_ids": [e["utt_id"] for e in examples],
        }

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, Stats]:
        output = model(batch["feats"], batch["feat_lens"])
        loss = ctc_loss(output, batch["targets"], batch["target_lens"])  # mean over utterances
        num_utts = float(len(batch["feat_lens"]))
        return loss, {"loss": (loss.item() * num_utts, num_utts)}

    def validate_batch(self, model: nn.Module, batch: dict) -> Stats:
        output = model(batch["feats"], batch["feat_lens"])
        loss = ctc_loss(output, batch["targets"], batch["target_lens"]).item()
        hyps = [self.tokenizer.decode(ids) for ids in greedy_decode(output.logits, output.hidden_lens)]
        counts = cer(batch["texts"], hyps)
        num_utts = float(len(hyps))
        return {"loss": (loss * num_utts, num_utts), "cer": (100.0 * counts.errors, float(counts.ref_len))}

    def save_model(self, model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path, name: str) -> Path:
        """``<out_dir>/<name>.safetensors``; the experiment dir is the model dir, so model.yaml goes beside it."""
        path = super().save_model(model, state, out_dir, name)
        write_ctc_record(out_dir, unwrap(model).config)
        return path


def _copy_tokenizer(src: Path, out_dir: Path) -> None:
    for name in (MODEL_NAME, TOKENS_NAME):
        with atomic_path(out_dir / "tokenizer" / name) as tmp:
            shutil.copyfile(src / name, tmp)


def train_ctc(
    config_path: str | os.PathLike,
    train_dir: str | os.PathLike,
    valid_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overrides: dict | None = None,
) -> Path:
    """Train the CTC compressor on dump dirs ``train_dir`` (with ``cmvn.ark``) and ``valid_dir``;
    returns ``<out_dir>/model.safetensors``. Run it under torchrun for data parallelism."""
    config = load_ctc_config(config_path, overrides)
    if not config.tokenizer:
        raise ConfigError(f"{config_path}: 'tokenizer' is not set; give the token list dir, e.g. data/token_list/bpe")
    tokenizer = Tokenizer.load(config.tokenizer)
    config.model = dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size)
    config.data = DataPaths(train=str(train_dir), valid=str(valid_dir))
    train_set = DumpDataset(train_dir, require=(config.target_table,), augment=config.train.augment,
                            seed=config.train.seed)
    valid_set = DumpDataset(valid_dir, require=(config.target_table,))
    expected_feats = ("whisper_mel" if config.model.encoder == "whisper" else "fbank", config.model.input_dim)
    for dump_dir in (train_dir, valid_dir):
        check_feats_type(dump_dir, expected_feats, f"{config_path} (model.encoder: {config.model.encoder})")
    cmvn_stats = None
    if config.model.encoder == "conv2d":  # Whisper's log-mel is normalised already
        cmvn_stats = read_cmvn_stats(require_file(Path(train_dir) / "cmvn.ark"))
        check_input_dim(config_path, config.model.input_dim, train_set, cmvn_stats)
    if int(os.environ.get("RANK", "0")) == 0:
        _copy_tokenizer(Path(config.tokenizer), Path(out_dir))
    task = CTCTask(config, tokenizer, cmvn_stats)
    return Trainer(task, train_set, valid_set, config.train, out_dir, resolved_config=config).run(resume=resume)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (also what torchrun runs in each process)."""
    training_main(argv, "speechllm_cli.train.ctc_task", train_ctc, out_example="exp/ctc_compressor")


if __name__ == "__main__":
    main()
