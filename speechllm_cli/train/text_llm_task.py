"""Train a text LLM (LoRA on a frozen LLM reading a text input: the text-based family) with the shared loop.

Usage:
    speechllm train --config conf/train_cascade_mt.yaml --train-data dump/text_src/train \\
        --valid-data dump/text_src/dev --out exp/cascade_mt
    python -m speechllm_cli.train.text_llm_task --config conf/train_ger.yaml --train-data dump/ger/train \\
        --valid-data dump/ger/dev --out exp/ger [--resume] [--set train.lr=1e-4]

The data are text dirs (``speechllm text-input``): ``input`` (what the LLM reads), the target table, ``utt2lang``.
Config (YAML)::

    model_type: text_llm                   # `speechllm train` dispatches on it
    task: auto                             # asr for utt2lang in asr_langs, st otherwise; or a model.prompts key
    asr_langs: [en]
    target: text                           # the table the model must output: text | text.src
    model:                                 # TextLLMConfig
      llm: exp/llm/smollm2_hf
      input_format: text                   # text | nbest
      copy_langs: [en]                     # not trained on, passed through when decoding (a cascade's ASR langs)
      lora: {rank: 2}
    train: {lr: 1e-3, epochs: 3, batch_frames: 6000, ...}   # TrainConfig; batch_frames counts input + target chars

Utterances of ``copy_langs`` are left out of training (decoding copies their input). ``<out_dir>/model`` (and
``model.best``, ``model.avg``) are saved text-LLM dirs (models/text_llm.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from speechllm_cli.data.kaldi_dir import TEXT_INPUT_TABLE as INPUT_TABLE
from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.models.audio_use import listening_warnings
from speechllm_cli.models.speech_llm_io import LLMMismatchError
from speechllm_cli.models.text_llm import TextLLMConfig, build_text_llm, pad_token_ids, render_input, save_text_llm
from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.entry import training_main
from speechllm_cli.train.speechllm_task import TARGET_FIELDS, SpeechLLMTask
from speechllm_cli.train.task import unwrap
from speechllm_cli.utils.config import ConfigError, apply_overrides, load_dataclass, read_yaml

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TextLLMExperiment:
    model_type: Literal["text_llm"] = "text_llm"
    task: str = "auto"
    asr_langs: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    target: Literal["text", "text.src"] = "text"
    model: TextLLMConfig = dataclasses.field(default_factory=TextLLMConfig)
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=20, scheduler="warmup_cosine", batch_frames=6000)
    )


class TextDataset:
    """Examples of a text dir: ``{"utt_id", "input", "text", "text_src", "lang"}`` (the tables present)."""

    def __init__(self, text_dir: str | os.PathLike, require: tuple[str, ...], skip_langs: tuple[str, ...] = ()):
        self.dump_dir = Path(text_dir)
        tables = {}
        for name in (INPUT_TABLE, *require):
            path = self.dump_dir / name
            if not path.is_file():
                how = "make it with `speechllm text-input`" if name == INPUT_TABLE else "rerun `speechllm text-input`"
                raise FileNotFoundError(f"{path} missing: {how}")
            tables[name] = read_table(path, allow_empty_value=name == INPUT_TABLE)
        self.tables = tables
        utts = sorted(tables[INPUT_TABLE])
        for name, table in tables.items():
            missing = [u for u in utts if u not in table]
            if missing:
                raise FileNotFoundError(f"{self.dump_dir / name}: {len(missing)} utterance(s) of the input table "
                                        f"missing (first: {missing[0]}); rerun `speechllm text-input`")
        if skip_langs:
            langs = tables["utt2lang"]
            skipped = [u for u in utts if langs[u] in skip_langs]
            utts = [u for u in utts if langs[u] not in skip_langs]
            logger.info("%s: %d utterance(s) in %s left out (copy_langs: decoding passes their input through)",
                        self.dump_dir, len(skipped), ", ".join(skip_langs))
        if not utts:
            raise FileNotFoundError(f"{self.dump_dir}: no utterance to train on")
        self.utt_ids = utts

    def __len__(self) -> int:
        return len(self.utt_ids)

    def meta(self, index: int) -> dict:
        utt = self.utt_ids[index]
        item = {"utt_id": utt, "input": self.tables[INPUT_TABLE][utt]}
        for name, key in (("text", "text"), ("text.src", "text_src"), ("utt2lang", "lang")):
            if name in self.tables:
                item[key] = self.tables[name][utt]
        return item

    __getitem__ = meta

    def lengths(self, key: str = "input_len") -> list[int]:
        """Characters of input + target per example: the batch budget (``train.batch_frames``) counts these."""
        targets = [t for t in ("text", "text.src") if t in self.tables]
        return [len(self.tables[INPUT_TABLE][u]) + max((len(self.tables[t][u]) for t in targets), default=0)
                for u in self.utt_ids]

    def exclude(self, utt_ids) -> None:
        drop = set(utt_ids)
        self.utt_ids = [u for u in self.utt_ids if u not in drop]


class TextLLMTask(SpeechLLMTask):
    """Batches of input ids + prompt ids + target ids; the loss and the input-use diagnostics of SpeechLLMTask."""

    length_key = "input_len"

    def build_model(self) -> nn.Module:
        model = build_text_llm(self.config.model)
        self.prompt_ids = {task: model.prompt_ids(task) for task in model.config.prompts}
        self.tokenizer = model.tokenizer
        self.pad_id = model.pad_id
        self._drop_over_context(model)
        return model

    def _drop_over_context(self, model) -> None:
        from speechllm_cli.models.llm import llm_context_length

        context = llm_context_length(model.hf_llm)
        field = TARGET_FIELDS[self.config.target]
        for dataset in self.datasets:
            if dataset is None or context is None:
                continue
            over = []
            for i in range(len(dataset)):
                e = dataset.meta(i)
                length = (len(self.prompt_ids[self.task_of(e)]) + len(model.encode_input(e["input"]))
                          + len(model.post_audio_ids) + len(model.encode_target(e[field])) + 1)
                if length > context:
                    over.append(e["utt_id"])
            if over:
                logger.warning("%s: skipping %d utterance(s) longer than the LLM's context of %d (first: %s)",
                               dataset.dump_dir, len(over), context, over[0])
                dataset.exclude(over)

    def collate(self, examples: list[dict]) -> dict:
        if self.tokenizer is None:
            raise RuntimeError("TextLLMTask.collate needs build_model() first (it brings the tokenizer)")
        field = TARGET_FIELDS[self.config.target]
        model = self.config.model
        encode = self.tokenizer  # no special tokens: the prompt brings bos
        input_ids = [encode(render_input(e["input"], model.input_format, model.nbest), add_special_tokens=False
                            ).input_ids for e in examples]
        inputs, lens = pad_token_ids(input_ids, self.pad_id)
        return {
            "feats": inputs,  # (B, N) input token ids: what fills the span a speech LLM fills with audio
            "feat_lens": lens,
            "prompt_ids": [list(self.prompt_ids[self.task_of(e)]) for e in examples],
            "target_ids": [list(encode(e[field], add_special_tokens=False).input_ids) for e in examples],
            "utt_ids": [e["utt_id"] for e in examples],
        }

    def epoch_warnings(self, metrics: dict[str, float]) -> list[str]:
        return listening_warnings(metrics, "input text", "Check that each utterance's `input` is its own transcript "
                                  "or n-best list (`speechllm text-input`), then try a lower train.lr.")

    def save_model(self, model: nn.Module, state: dict[str, torch.Tensor], out_dir: Path, name: str) -> Path:
        self.load_trainable_state_dict(model, state)
        return save_text_llm(unwrap(model), Path(out_dir) / name, training=self.training_choice())


def load_experiment(config_path: str | os.PathLike, overrides: dict | None = None) -> TextLLMExperiment:
    mapping = apply_overrides(read_yaml(config_path), overrides)
    exp = load_dataclass(TextLLMExperiment, mapping, source=str(config_path))
    needed = ("asr", "st") if exp.task == "auto" else (exp.task,)
    missing = [task for task in needed if task not in exp.model.prompts]
    if missing:
        raise ConfigError(f"{config_path}: task '{missing[0]}' has no prompt; model.prompts has "
                          f"{sorted(exp.model.prompts)} (task: auto needs asr and st)")
    return exp


def train_text_llm(config_path: str | os.PathLike, train_dir: str | os.PathLike, valid_dir: str | os.PathLike | None,
                   out_dir: str | os.PathLike, resume: bool = False, overrides: dict | None = None) -> Path:
    """Train a text LLM on text dirs; returns the final model dir (``<out_dir>/model``)."""
    from speechllm_cli.train.loop import Trainer

    exp = load_experiment(config_path, overrides)
    require = (exp.target, "utt2lang")
    skip = tuple(exp.model.copy_langs)
    train_set = TextDataset(train_dir, require, skip)
    valid_set = TextDataset(valid_dir, require, skip) if valid_dir else None
    task = TextLLMTask(exp, datasets=(train_set, valid_set))
    return Trainer(task, train_set, valid_set, exp.train, out_dir, resolved_config=exp).run(resume)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (also what torchrun runs in each process)."""
    training_main(argv, "speechllm_cli.train.text_llm_task", train_text_llm, out_example="exp/cascade_mt",
                  valid_required=False, errors=(LLMMismatchError,))


if __name__ == "__main__":
    main()
