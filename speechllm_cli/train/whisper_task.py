"""Fine-tune an exported Whisper (``model_type: whisper``) on a recipe's train set with the shared loop.

Each utterance is Whisper's prefix ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` (as decoding uses it:
the language from utt2lang, transcribe for ``asr_langs``, translate otherwise) followed by the target text and
<|endoftext|>; the loss is the cross-entropy of the target tokens and <|endoftext|>, a mean over tokens. The encoder
runs at each clip's real length (``WhisperAudioEncoder``, padding masked; 17x cheaper than 30 s on 3 s clips) and the
decoder's cross-attention is masked to each clip's frames, so the fine-tuned model is saved with ``input:
real_length`` and decoded that way. ``train.finetune: decoder`` trains the decoder with the encoder frozen, whose
output is then computed once per utterance and cached for every later epoch (and validation); ``all`` trains the
encoder's Transformer layers too (its convolutions stay frozen). ``train.train_token_embeddings: false`` (the
default) also keeps the token embedding frozen, which is tied to the output projection: half the decoder's
parameters (26M of 52M for Whisper base) on a vocabulary of 51865, left as pretrained.

Config (YAML)::

    model_type: whisper                # `speechllm train` dispatches on it
    whisper: exp/whisper/base          # the exported Whisper to start from (speechllm export-whisper)
    task: auto                         # asr for utt2lang in asr_langs, st otherwise; or asr / st for every utterance
    asr_langs: [en]
    target: text                       # the dump table to output: text (English for X, the transcript for en)
    train: {finetune: decoder, lr: 1e-5, epochs: 3, ...}     # WhisperTrainConfig: TrainConfig + what is below

``<out_dir>/model`` (and ``model.best``, ``model.avg``) are full Whisper dirs (every weight, safetensors; see
models/whisper/finetuned.py) whose model.yaml records the base Whisper ({path, hash}) and the training settings;
``speechllm decode --model <out_dir>`` decodes them. Checkpoints hold the trained parameters only.

Usage:
    speechllm train --config conf/train_whisper.yaml --train-data dump/whisper_mel/train \\
        --valid-data dump/whisper_mel/dev --out exp/whisper_ft [--resume] [--set train.finetune=all]
    python -m speechllm_cli.train.whisper_task --config conf/train_whisper.yaml --train-data dump/whisper_mel/train \\
        --valid-data dump/whisper_mel/dev --out exp/whisper_ft
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from speechllm_cli.models.whisper.finetuned import WhisperSeq2Seq, load_whisper, save_whisper
from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.ctc_task import DataPaths
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.train.entry import training_main
from speechllm_cli.train.task import Stats, Task, unwrap
from speechllm_cli.utils.config import ConfigError, apply_overrides, load_dataclass, read_yaml

logger = logging.getLogger(__name__)
TARGET_FIELDS = {"text": "text", "text.src": "text_src"}  # dump table -> DumpDataset example key


@dataclasses.dataclass
class WhisperTrainConfig(TrainConfig):
    """The shared loop's settings plus what fine-tuning Whisper adds."""

    finetune: Literal["decoder", "all"] = "decoder"  # decoder: the encoder frozen (and its outputs cached)
    train_token_embeddings: bool = False  # the token embedding = the output projection (tied): 26M of Whisper base
    label_smoothing: float = 0.0
    encoder_cache_mb: float = 2048.0  # per-utterance cache of the frozen encoder part's output (~0.3 KB per frame)


@dataclasses.dataclass
class WhisperExperiment:
    model_type: Literal["whisper"] = "whisper"
    whisper: str = ""  # the exported Whisper dir to start from, e.g. exp/whisper/base
    task: Literal["auto", "asr", "st"] = "auto"  # auto: asr for utt2lang in asr_langs, st (into English) otherwise
    asr_langs: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    target: Literal["text", "text.src"] = "text"
    train: WhisperTrainConfig = dataclasses.field(default_factory=lambda: WhisperTrainConfig(
        lr=1e-5, warmup_steps=50, scheduler="warmup_linear", betas=(0.9, 0.98)))
    data: DataPaths = dataclasses.field(default_factory=DataPaths)


class WhisperTask(Task):
    """Batches of Whisper log-mel + prefix ids + target ids; loss = the target tokens' cross-entropy."""

    model_type = "whisper"

    def __init__(self, config: WhisperExperiment):
        self.config = config
        self.model: WhisperSeq2Seq | None = None  # set by build_model: collate tokenises with it

    def build_model(self) -> nn.Module:
        from transformers import WhisperConfig

        train = self.config.train
        encoder_layers = WhisperConfig.from_pretrained(self.config.whisper).encoder_layers
        model = load_whisper(self.config.whisper, "cpu", input_mode="real_length",
                             trainable_encoder_layers=encoder_layers if train.finetune == "all" else 0,
                             encoder_cache_mb=train.encoder_cache_mb)
        model.whisper.model.decoder.embed_tokens.requires_grad_(train.train_token_embeddings)  # tied to proj_out
        self.model = model
        return model

    def task_of(self, example: dict) -> str:
        if self.config.task != "auto":
            return self.config.task
        return "asr" if example["lang"] in self.config.asr_langs else "st"

    def collate(self, examples: list[dict]) -> dict:
        if self.model is None:
            raise RuntimeError("WhisperTask.collate needs build_model() first (it brings the tokenizer)")
        field = TARGET_FIELDS[self.config.target]
        prefixes, targets = [], []
        for e in examples:
            try:
                prefixes.append(self.model.prefix_ids(e["lang"], self.task_of(e)))
            except ValueError as exc:
                raise ValueError(f"utterance {e['utt_id']}: {exc}") from exc
            targets.append(self.model.target_ids(e[field]))
            if len(prefixes[-1]) + len(targets[-1]) + 1 > self.model.max_target_positions:
                raise ValueError(f"utterance {e['utt_id']}: its target is {len(targets[-1])} tokens, more than "
                                 f"Whisper's decoder takes ({self.model.max_target_positions} with the prefix); "
                                 "drop it from the set")
        feats = [torch.from_numpy(e["feats"]) for e in examples]
        return {
            "feats": nn.utils.rnn.pad_sequence(feats, batch_first=True),  # (B, T, n_mels)
            "feat_lens": torch.tensor([len(f) for f in feats]),  # (B,)
            "prefix_ids": prefixes,
            "target_ids": targets,
            "utt_ids": [e["utt_id"] for e in examples],
        }

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, Stats]:
        loss, s = model(batch["feats"], batch["feat_lens"], batch["prefix_ids"], batch["target_ids"],
                        label_smoothing=self.config.train.label_smoothing)
        num_tokens = s["num_tokens"]
        return loss, {"loss": (s["loss"] * num_tokens, num_tokens), "acc": (s["acc"] * num_tokens, num_tokens)}

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return unwrap(model).trainable_state_dict()

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        unwrap(model).load_trainable_state_dict(state)

    def save_model(self, model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path, name: str) -> Path:
        self.load_trainable_state_dict(model, state)
        train = self.config.train
        training = {"task": self.config.task, "asr_langs": list(self.config.asr_langs), "target": self.config.target,
                    "finetune": train.finetune, "train_token_embeddings": train.train_token_embeddings,
                    "data": dataclasses.asdict(self.config.data)}
        return save_whisper(unwrap(model), Path(out_dir) / name, self.config.whisper, training)


def load_whisper_experiment(config_path: str | os.PathLike, overrides: dict | None = None) -> WhisperExperiment:
    """The experiment config of ``config_path`` with dotted ``overrides`` applied, checked."""
    mapping = apply_overrides(read_yaml(config_path), overrides)
    exp = load_dataclass(WhisperExperiment, mapping, source=str(config_path))
    if not exp.whisper:
        raise ConfigError(f"{config_path}: 'whisper' is not set; give the exported Whisper dir, e.g. exp/whisper/base "
                          "(speechllm export-whisper --out exp/whisper/base)")
    return exp


def _drop_long_clips(dataset: DumpDataset | None, max_frames: int) -> None:
    """Whisper's encoder takes at most 30 s: longer clips leave the dataset, counted in the log."""
    if dataset is None:
        return
    too_long = [u for u, n in zip(dataset.utt_ids, dataset.num_frames) if n > max_frames]
    if too_long:
        logger.warning("%s: %d clip(s) longer than 30 s skipped (Whisper's encoder takes at most %d frames), "
                       "e.g. %s", dataset.dump_dir, len(too_long), max_frames, too_long[0])
        dataset.exclude(too_long)


def train_whisper(
    config_path: str | os.PathLike,
    train_dir: str | os.PathLike,
    valid_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overrides: dict | None = None,
) -> Path:
    """Fine-tune the config's Whisper on whisper_mel dump dirs; returns the final model dir (``<out_dir>/model``)."""
    from transformers import WhisperConfig

    from speechllm_cli.features.feats_type import check_feats_type
    from speechllm_cli.train.loop import Trainer

    exp = load_whisper_experiment(config_path, overrides)
    exp.data = DataPaths(train=str(train_dir), valid=str(valid_dir or ""))
    whisper_config = WhisperConfig.from_pretrained(exp.whisper)
    for dump in (train_dir, valid_dir):
        if dump:
            check_feats_type(dump, ("whisper_mel", whisper_config.num_mel_bins), who=exp.whisper)
    require = (exp.target, "utt2lang")  # the language token is needed whatever the task
    train_set = DumpDataset(train_dir, require=require, augment=exp.train.augment, seed=exp.train.seed)
    valid_set = DumpDataset(valid_dir, require=require) if valid_dir else None
    for dataset in (train_set, valid_set):
        _drop_long_clips(dataset, whisper_config.max_source_positions * 2)
    task = WhisperTask(exp)
    return Trainer(task, train_set, valid_set, exp.train, out_dir, resolved_config=exp).run(resume)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (also what torchrun runs in each process)."""
    training_main(argv, "speechllm_cli.train.whisper_task", train_whisper, out_example="exp/whisper_ft",
                  valid_required=False)


if __name__ == "__main__":
    main()
