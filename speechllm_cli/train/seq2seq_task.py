"""Train the encoder-decoder baseline (``model_type: seq2seq``) from scratch on the shared loop.

The experiment config (``conf/train_seq2seq.yaml``) has the sections ``model_type: seq2seq``, ``tokenizer`` (the
token list dir of the target text, e.g. ``data/token_list/tgt_unigram300``), ``target_table`` (``text``: the
translation; ``text.src`` for ASR), ``model`` (``Seq2SeqConfig``; ``vocab_size`` comes from the tokenizer) and
``train`` (``TrainConfig``). The global CMVN statistics of ``<train_dir>/cmvn.ark`` go into the model's buffers.
Validation reports the hybrid loss, its two parts and the attention token accuracy ``acc``.

``<out_dir>/model`` (and ``model.best``, ``model.avg``) are self-contained model dirs (see
speechllm_cli.models.seq2seq_io) that ``speechllm decode`` loads alone; ``<out_dir>/model_info.json`` records the
model type and parameter counts.

Usage:
    speechllm train --config conf/train_seq2seq.yaml --train-data dump/train --valid-data dump/dev \\
        --out exp/seq2seq [--resume] [--set train.epochs=2] [--num-procs 2]
    python -m speechllm_cli.train.seq2seq_task --config conf/train_seq2seq.yaml --train-data dump/train \\
        --valid-data dump/dev --out exp/seq2seq

    >>> from speechllm_cli.train.seq2seq_task import train_seq2seq                          # doctest: +SKIP
    >>> train_seq2seq("conf/train_seq2seq.yaml", "dump/train", "dump/dev", "exp/seq2seq")   # doctest: +SKIP
    PosixPath('exp/seq2seq/model')
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from speechllm_cli.features.cmvn import read_cmvn_stats
from speechllm_cli.models.seq2seq import IGNORE_ID, Seq2SeqConfig, Seq2SeqModel
from speechllm_cli.models.seq2seq_io import save_seq2seq
from speechllm_cli.text.tokenizer import Tokenizer
from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.ctc_task import DataPaths
from speechllm_cli.train.dataset import DumpDataset, check_input_dim, require_file
from speechllm_cli.train.entry import training_main
from speechllm_cli.train.loop import Trainer
from speechllm_cli.train.task import Stats, Task, unwrap
from speechllm_cli.utils.config import ConfigError, apply_overrides, load_dataclass, read_yaml, to_plain

logger = logging.getLogger(__name__)
TEXT_KEYS = {"text": "text", "text.src": "text_src"}  # dump table -> DumpDataset example key


@dataclasses.dataclass
class Seq2SeqExperimentConfig:
    model_type: Literal["seq2seq"] = "seq2seq"
    tokenizer: str = ""  # token list dir of the target text: bpe.model + tokens.txt
    target_table: Literal["text", "text.src"] = "text"
    model: Seq2SeqConfig = dataclasses.field(default_factory=Seq2SeqConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataPaths = dataclasses.field(default_factory=DataPaths)


def load_seq2seq_config(config_path: str | os.PathLike, overrides: dict | None = None) -> Seq2SeqExperimentConfig:
    """The experiment config of ``config_path`` with dotted ``overrides`` (``{"train.lr": 1e-3}``) applied."""
    mapping = apply_overrides(read_yaml(config_path), overrides)
    return load_dataclass(Seq2SeqExperimentConfig, mapping, source=str(config_path))


class Seq2SeqTask(Task):
    """fbank -> target token ids; loss = the model's hybrid CTC/attention loss."""

    model_type = "seq2seq"

    def __init__(self, config: Seq2SeqExperimentConfig, tokenizer: Tokenizer, cmvn_stats: np.ndarray | None):
        self.config = config
        self.tokenizer = tokenizer
        self.cmvn_stats = cmvn_stats
        self.text_key = TEXT_KEYS[config.target_table]

    def build_model(self) -> nn.Module:
        return Seq2SeqModel(self.config.model, cmvn_stats=self.cmvn_stats)

    def collate(self, examples: list[dict]) -> dict:
        feats = [torch.from_numpy(e["feats"]) for e in examples]  # each (T, D)
        targets = [torch.tensor(self.tokenizer.encode(e[self.text_key]), dtype=torch.long) for e in examples]
        return {
            "feats": nn.utils.rnn.pad_sequence(feats, batch_first=True),  # (B, T, D) zero-padded
            "feat_lens": torch.tensor([len(f) for f in feats]),  # (B,)
            "targets": nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=IGNORE_ID),  # (B, S)
            "target_lens": torch.tensor([len(t) for t in targets]),  # (B,)
            "utt_ids": [e["utt_id"] for e in examples],
        }

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, Stats]:
        loss, s = model(batch["feats"], batch["feat_lens"], batch["targets"], batch["target_lens"])
        num_utts, num_tokens = s["num_utts"], s["num_tokens"]
        return loss, {"loss": (s["loss"] * num_utts, num_utts), "loss_att": (s["loss_att"] * num_utts, num_utts),
                      "loss_ctc": (s["loss_ctc"] * num_utts, num_utts), "acc": (s["acc"] * num_tokens, num_tokens)}

    def save_model(self, model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path, name: str) -> Path:
        self.load_trainable_state_dict(model, state)
        return save_seq2seq(unwrap(model), self.config.tokenizer, to_plain(self.config), Path(out_dir) / name)


def train_seq2seq(
    config_path: str | os.PathLike,
    train_dir: str | os.PathLike,
    valid_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overrides: dict | None = None,
) -> Path:
    """Train the encoder-decoder on dump dirs ``train_dir`` (with ``cmvn.ark``) and ``valid_dir``; returns the
    final model dir ``<out_dir>/model``. Run it under torchrun for data parallelism."""
    config = load_seq2seq_config(config_path, overrides)
    if not config.tokenizer:
        raise ConfigError(f"{config_path}: 'tokenizer' is not set; give the target token list dir, "
                          "e.g. data/token_list/tgt_unigram300 (speechllm train-tokenizer --text dump/train/text)")
    tokenizer = Tokenizer.load(config.tokenizer)
    config.model = dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size + 1)  # + <sos/eos>
    config.data = DataPaths(train=str(train_dir), valid=str(valid_dir))
    cmvn_stats = read_cmvn_stats(require_file(Path(train_dir) / "cmvn.ark"))
    train_set = DumpDataset(train_dir, require=(config.target_table,), augment=config.train.augment,
                            seed=config.train.seed)
    valid_set = DumpDataset(valid_dir, require=(config.target_table,))
    check_input_dim(config_path, config.model.input_dim, train_set, cmvn_stats)
    task = Seq2SeqTask(config, tokenizer, cmvn_stats)
    return Trainer(task, train_set, valid_set, config.train, out_dir, resolved_config=config).run(resume=resume)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (also what torchrun runs in each process)."""
    training_main(argv, "speechllm_cli.train.seq2seq_task", train_seq2seq, out_example="exp/seq2seq")


if __name__ == "__main__":
    main()
