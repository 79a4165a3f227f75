"""Train a Speech-LLaMA model (audio encoder + LoRA on a frozen LLM) with the shared loop, or with
``model_type: decoder_only`` the same model with every LLM weight trained (a scratch LLM from ``speechllm init-llm``).

Usage:
    from speechllm_cli.train.speechllm_task import train_speechllm
    model_dir = train_speechllm("conf/train_speechllm.yaml", "dump/train", "dump/dev", "exp/speechllm")
    python -m speechllm_cli.train.speechllm_task --config conf/train_speechllm.yaml --train-data dump/train \\
        --valid-data dump/dev --out exp/speechllm [--resume] [--set train.lr=1e-4] [--num-procs 2]

Config (YAML)::

    model_type: speech_llm                 # optional; decoder_only needs model.train_llm: true and model.lora.rank: 0
                                           # (`speechllm train` runs seq2seq_task for model_type: seq2seq)
    task: auto                             # asr for utt2lang in asr_langs, st otherwise; or a model.prompts key
    asr_langs: [en]                        # source languages whose utterances are recognised, not translated
    target: text                           # dump-dir table the model must output: text | text.src
    model:                                 # SpeechLLMConfig
      llm: exp/llm/smollm2_hf
      frontend: {type: ctc_compressor, dir: exp/ctc_compressor, compression: frame_average}
      adapter: {type: transformer, num_layers: 4}      # or stack_mlp, conv, qformer (models/adapters/)
      lora: {rank: 2}
    train: {lr: 1e-4, epochs: 10, ...}                                                    # TrainConfig

``<out_dir>/model`` (and ``model.best``, ``model.avg``) are saved speech-LLM dirs: load them with
``speechllm_cli.models.load.load_model``; they record task, asr_langs and target for decoding. Checkpoints hold
the trainable state only (with ``train_llm`` that includes every LLM weight). model_info.json records the config's
model_type.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from speechllm_cli.features.feats_type import check_feats_type
from speechllm_cli.models.audio_use import audio_dependence, derived_metrics, listening_warnings
from speechllm_cli.models.speech_llm import SpeechLLMConfig
from speechllm_cli.models.speech_llm_io import (
    FrontEndMismatchError,
    LLMMismatchError,
    build_speech_llm,
    save_speech_llm,
)
from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.context_limit import drop_over_context
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.train.entry import training_main
from speechllm_cli.train.task import Stats, Task, unwrap
from speechllm_cli.utils.config import ConfigError, apply_overrides, load_dataclass, read_yaml

logger = logging.getLogger(__name__)
TARGET_FIELDS = {"text": "text", "text.src": "text_src"}  # dump table -> DumpDataset example key


@dataclasses.dataclass
class SpeechLLMExperiment:
    model_type: Literal["speech_llm", "decoder_only"] = "speech_llm"  # `speechllm train` dispatches on it
    task: str = "auto"  # "auto": per utterance from utt2lang (asr_langs -> "asr", others -> "st"); or a prompt key
    asr_langs: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    target: Literal["text", "text.src"] = "text"
    model: SpeechLLMConfig = dataclasses.field(default_factory=SpeechLLMConfig)
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(lr=1e-4, warmup_steps=500, scheduler="warmup_cosine", betas=(0.9, 0.999))
    )


class SpeechLLMTask(Task):
    """Batches of fbank + prompt ids + target ids; loss = SpeechLLM's target-only cross-entropy."""

    def __init__(self, config: SpeechLLMExperiment, datasets: tuple = ()):
        self.config = config
        self.datasets = datasets  # train/valid DumpDatasets: build_model drops their examples over the LLM's context
        self.model_type = config.model_type  # model_info.json's model_type
        self.prompt_ids: dict[str, list[int]] = {}  # task -> prompt ids; set by build_model (needs the tokenizer)
        self.tokenizer = None

    def build_model(self) -> nn.Module:
        model = build_speech_llm(self.config.model)
        self.prompt_ids = {task: model.prompt_ids(task) for task in model.config.prompts}
        self.tokenizer = model.tokenizer
        for dataset in self.datasets:  # the dumps hold the features the front-end reads
            if dataset is not None:
                check_feats_type(dataset.dump_dir, model.frontend.feats_type,
                                 f"model.frontend ({self.config.model.frontend.type})")
        drop_over_context(model, self.datasets, lambda e: self.prompt_ids[self.task_of(e)],
                          TARGET_FIELDS[self.config.target])  # examples longer than the LLM's context: skipped
        return model

    def collate(self, examples: list[dict]) -> dict:
        if self.tokenizer is None:
            raise RuntimeError("SpeechLLMTask.collate needs build_model() first (it brings the tokenizer)")
        field = TARGET_FIELDS[self.config.target]
        feats = [torch.from_numpy(e["feats"]) for e in examples]
        targets = []
        for e in examples:
            text = e.get(field)
            if text is None:
                raise KeyError(f"utterance {e['utt_id']}: no '{self.config.target}' table in the dump dir")
            targets.append(list(self.tokenizer(text, add_special_tokens=False).input_ids))
        return {
            "feats": nn.utils.rnn.pad_sequence(feats, batch_first=True),  # (B, T, 80)
            "feat_lens": torch.tensor([len(f) for f in feats]),
            "prompt_ids": [list(self.prompt_ids[self.task_of(e)]) for e in examples],
            "target_ids": targets,
            "utt_ids": [e["utt_id"] for e in examples],
        }

    def task_of(self, example: dict) -> str:
        """The prompt key of an example: the configured task, or with ``task: auto`` asr/st from its language."""
        if self.config.task != "auto":
            return self.config.task
        if example.get("lang") is None:
            raise KeyError(f"utterance {example['utt_id']}: task 'auto' needs utt2lang in the dump dir "
                           "(or set task: st / asr)")
        return "asr" if example["lang"] in self.config.asr_langs else "st"

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, Stats]:
        loss, s = model(batch["feats"], batch["feat_lens"], batch["prompt_ids"], batch["target_ids"])
        num_utts, num_tokens = s["num_utts"], s["num_tokens"]
        return loss, {"loss": (s["loss"] * num_utts, num_utts), "acc": (s["acc"] * num_tokens, num_tokens)}

    def validate_batch(self, model: nn.Module, batch: dict) -> Stats:
        """Loss and accuracy with the true audio, another utterance's (rolled) and none, and the audio embeddings'
        norm and cross-utterance cosine: a model that stops listening shows here first."""
        return audio_dependence(model, batch["feats"], batch["feat_lens"], batch["prompt_ids"], batch["target_ids"])

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return derived_metrics(metrics)  # + audio_gap = 1 - loss / loss_rolled

    def epoch_warnings(self, metrics: dict[str, float]) -> list[str]:
        return listening_warnings(metrics)  # the model stopped listening: say so while it trains

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return unwrap(model).trainable_state_dict()

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        unwrap(model).load_trainable_state_dict(state)

    def training_choice(self) -> dict:
        """What a saved model records of its training (decoding's defaults): task, asr_langs, target."""
        return {"task": self.config.task, "asr_langs": list(self.config.asr_langs), "target": self.config.target}

    def save_model(self, model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path, name: str) -> Path:
        self.load_trainable_state_dict(model, state)
        return save_speech_llm(unwrap(model), Path(out_dir) / name, training=self.training_choice(),
                               model_type=self.model_type)


def load_experiment(config_path: str | os.PathLike, overrides: dict | None = None) -> SpeechLLMExperiment:
    """The experiment config of ``config_path`` with dotted ``overrides`` applied, checked."""
    mapping = apply_overrides(read_yaml(config_path), overrides)
    exp = load_dataclass(SpeechLLMExperiment, mapping, source=str(config_path))
    if exp.model_type == "decoder_only" and not (exp.model.train_llm and exp.model.lora.rank == 0):
        raise ConfigError(f"{config_path}: model_type: decoder_only trains every LLM weight: set model.train_llm: true "
                          f"and model.lora.rank: 0 (got train_llm: {str(exp.model.train_llm).lower()}, "
                          f"lora.rank: {exp.model.lora.rank})")
    if getattr(exp.model.frontend, "dir", None) == "":
        raise ConfigError(f"{config_path}: model.frontend.dir is empty; set it to the front-end's trained model dir "
                          "(e.g. --set model.frontend.dir=exp/ctc_compressor)")
    needed = ("asr", "st") if exp.task == "auto" else (exp.task,)
    missing = [task for task in needed if task not in exp.model.prompts]
    if missing:
        known = sorted(exp.model.prompts)
        raise ConfigError(f"{config_path}: task '{missing[0]}' has no prompt; model.prompts has {known} "
                          "(task: auto needs asr and st)")
    return exp


def train_speechllm(
    config_path: str | os.PathLike,
    train_dir: str | os.PathLike,
    valid_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overrides: dict | None = None,
) -> Path:
    """Train a speech LLM on dump dirs; returns the final model dir (``<out_dir>/model``)."""
    from speechllm_cli.train.loop import Trainer

    exp = load_experiment(config_path, overrides)
    require = (exp.target, "utt2lang") if exp.task == "auto" else (exp.target,)
    train_set = DumpDataset(train_dir, require=require, augment=exp.train.augment, seed=exp.train.seed)
    valid_set = DumpDataset(valid_dir, require=require) if valid_dir else None
    task = SpeechLLMTask(exp, datasets=(train_set, valid_set))
    return Trainer(task, train_set, valid_set, exp.train, out_dir, resolved_config=exp).run(resume)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (also what torchrun runs in each process)."""
    training_main(argv, "speechllm_cli.train.speechllm_task", train_speechllm, out_example="exp/speechllm",
                  valid_required=False, errors=(LLMMismatchError, FrontEndMismatchError))


if __name__ == "__main__":
    main()
