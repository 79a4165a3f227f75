"""Bad inputs at the model stages (issue 15): sequences past the LLM's context (decoding caps, training skips),
adapters whose keys do not fit, pickled files refused with our own message, and the resume point in train.log."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from _speech_llm_fixtures import (
    TINY_ADAPTER,
    make_model,
    save_tiny_llm,
    speech_feats,
    tiny_compressor,
    tiny_frontend,
    tiny_llama,
)
from _train_fixtures import build_corpus, save_random_ctc_dir, write_config
from safetensors.torch import load_file, save_file
from speech_synth import requires_espeak

from speechllm_cli.decode.decode import DecodeOptions, decode_data_dir, pad_feats
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.models.speech_llm import LoraSettings
from speechllm_cli.models.speech_llm_io import LoraMismatchError, load_speech_llm, save_speech_llm
from speechllm_cli.train.checkpoint import load_checkpoint
from speechllm_cli.train.context_limit import drop_over_context, sequence_bounds
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.utils.safe_load import CorruptCheckpointError, UnsafeCheckpointError

pytestmark = requires_espeak
UTTS = ["spkA-u1", "spkA-u2", "spkB-u3"]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "llm")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = build_corpus(root)
    paths["ctc"] = save_random_ctc_dir(root / "ctc", paths)
    return paths


def make_dump_dir(path, feats: dict[str, np.ndarray]):
    import kaldiio

    from speechllm_cli.data.kaldi_dir import DataDir

    path.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{path}/feats.ark,{path}/feats.scp") as writer:
        for utt in sorted(feats):
            writer(utt, feats[utt])
    tables = {"text": {u: "hello world" for u in feats}, "utt2lang": {u: "de" for u in feats},
              "utt2spk": {u: u.split("-")[0] for u in feats},
              "utt2num_frames": {u: str(len(f)) for u, f in feats.items()}}
    DataDir(path, tables).save()
    return path


# ----- 5. the LLM's context: decoding caps prompt + audio + output, training skips what cannot fit

def test_decoding_caps_each_output_at_the_llms_context(llm_dir, tmp_path, caplog):
    model = make_model(llm_dir, use_chat_template=True)
    feats = dict(zip(UTTS, speech_feats()))
    prefix = model.decoding_prefix(*pad_feats(list(feats.values()), "cpu"), ["st"] * 3)
    prefixes = {u: len(e) for u, e in zip(UTTS, prefix.embeds)}
    context = max(prefixes.values()) + 3  # the longest utterance has room for 3 output tokens
    model.hf_llm.config.max_position_embeddings = context
    dump = make_dump_dir(tmp_path / "dump", feats)
    with caplog.at_level(logging.WARNING):
        decode_data_dir(model, dump, tmp_path / "decode", DecodeOptions(max_new_tokens=200, nbest=1))
    nbest = read_nbest(tmp_path / "decode" / "nbest.txt")
    for utt in UTTS:
        assert nbest[utt][0]["num_tokens"] <= context - prefixes[utt]  # prompt + audio + output <= context
        if context - prefixes[utt] < 200:
            assert f"utterance '{utt}': prompt + audio take {prefixes[utt]} of the LLM's {context} positions" \
                   in caplog.text
    model.hf_llm.config.max_position_embeddings = max(prefixes.values())  # no room at all: an error naming it
    longest = max(prefixes, key=prefixes.get)
    with pytest.raises(ValueError, match=f"utterance '{longest}': its prompt \\+ audio take"):
        decode_data_dir(model, dump, tmp_path / "decode2", DecodeOptions(max_new_tokens=200))


def test_training_skips_and_counts_examples_longer_than_the_context(corpus, tmp_path, caplog):
    from speechllm_cli.train.speechllm_task import TARGET_FIELDS, SpeechLLMTask, load_experiment

    config = {"task": "asr", "target": "text.src",
              "model": {"llm": str(save_tiny_llm(tmp_path / "llm")),
                        "frontend": {"dir": str(corpus["ctc"]), "compression": "none"}, "adapter": TINY_ADAPTER}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    task = SpeechLLMTask(load_experiment(tmp_path / "exp.yaml"))
    model = task.build_model()
    train = DumpDataset(corpus["train"], require=("text.src",))
    bounds = sequence_bounds(model, train, lambda e: task.prompt_ids[task.task_of(e)], "text_src")
    batch = task.collate([train[i] for i in range(len(train))])
    with torch.no_grad():  # compression "none": the bound is the exact sequence length
        audio_embeds, audio_lens = model.encode_audio(batch["feats"], batch["feat_lens"])
        labels = model.build_inputs(audio_embeds, audio_lens, batch["prompt_ids"], batch["target_ids"])["labels"]
    lengths = [len(p) + int(a) + len(model.post_audio_ids) + len(t) + 1
               for p, a, t in zip(batch["prompt_ids"], audio_lens, batch["target_ids"])]
    assert bounds == lengths and labels.shape[1] == max(lengths)

    context = sorted(bounds)[len(bounds) // 2]  # about half the examples are longer
    llm = tiny_llama()
    llm.config.max_position_embeddings = context
    short_llm = save_tiny_llm(tmp_path / "short_llm")
    llm.config.save_pretrained(short_llm)
    config["model"]["llm"] = str(short_llm)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    task = SpeechLLMTask(load_experiment(tmp_path / "exp.yaml"))
    task.datasets = (DumpDataset(corpus["train"], require=("text.src",)), None)
    with caplog.at_level(logging.WARNING):
        task.build_model()
    over = sorted(u for u, n in zip(train.utt_ids, bounds) if n > context)
    kept = task.datasets[0]
    assert over and len(kept) == len(train) - len(over) and not set(over) & set(kept.utt_ids)
    assert len(kept.lengths()) == len(kept) and kept[0]["utt_id"] == kept.utt_ids[0]
    assert f"skipping {len(over)} of {len(train)} utterance(s)" in caplog.text and over[0] in caplog.text
    assert f"LLM's context of {context} positions" in caplog.text
    assert drop_over_context(model, [kept], lambda e: task.prompt_ids["asr"], TARGET_FIELDS["text.src"]) == 0


# ----- 6. LoRA keys must match the model

@pytest.fixture()
def saved_model(llm_dir, tmp_path):
    compressor = tiny_compressor()
    model = make_model(llm_dir, compressor=compressor, lora=LoraSettings(rank=2, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: B != 0
    return save_speech_llm(model, tmp_path / "model"), tiny_frontend(compressor)


@pytest.mark.parametrize("tamper, message", [
    (lambda s: {k: v for k, v in s.items() if "layers.1." not in k}, r"8 LoRA weight\(s\) missing"),
    (lambda s: {k.replace("base_model.model.model.", "base_model.model."): v for k, v in s.items()},
     r"16 LoRA weight\(s\) missing .* 16 unexpected"),
    (lambda s: {**s, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(2, 64)},
     r"0 LoRA weight\(s\) missing .* 1 unexpected"),
])
def test_lora_with_missing_or_unexpected_keys_is_an_error(saved_model, tamper, message):
    model_dir, frontend = saved_model
    weights = model_dir / "lora" / "adapter_model.safetensors"
    assert load_speech_llm(model_dir, frontend=frontend) is not None  # the untouched adapter loads
    save_file(tamper(load_file(weights)), weights)
    with pytest.raises(LoraMismatchError, match=message) as error:
        load_speech_llm(model_dir, frontend=frontend)
    assert str(weights) in str(error.value) and "without (part of) its LoRA" in str(error.value)


def test_lora_config_other_than_the_record_is_an_error(saved_model):
    model_dir, frontend = saved_model
    adapter_config = model_dir / "lora" / "adapter_config.json"
    config = json.loads(adapter_config.read_text())
    config["target_modules"] = ["q_proj", "v_proj"]
    adapter_config.write_text(json.dumps(config))
    weights = model_dir / "lora" / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "q_proj" in k or "v_proj" in k}, weights)
    with pytest.raises(LoraMismatchError, match=r"rank 2 on \['q_proj', 'v_proj'\], but .* records rank 2 on"):
        load_speech_llm(model_dir, frontend=frontend)


# ----- 9. pickled files: our message (which file, why, how to convert), no traceback quoting torch

def test_pickled_checkpoint_is_refused_with_our_message(tmp_path):
    path = tmp_path / "step00000002.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": np.int64(2)}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: refused: it holds a pickled numpy") and "arbitrary code" in message
    assert f"python -m speechllm_cli.utils.safe_load {path} {path.with_suffix('.safetensors')} --trust" in message
    assert "weights_only=False" not in message and "delete it" in message
    converted = subprocess.run([sys.executable, "-m", "speechllm_cli.utils.safe_load", str(path),
                                str(path.with_suffix(".safetensors")), "--trust"], capture_output=True, text=True)
    assert converted.returncode == 0 and torch.equal(load_file(path.with_suffix(".safetensors"))["model.w"],
                                                     torch.ones(2))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=f"{path}: not a readable torch checkpoint"):
        load_checkpoint(path)


def test_pickled_llm_weights_are_refused_with_our_message(tmp_path):
    from speechllm_cli.models.llm import load_llm

    llm_dir = save_tiny_llm(tmp_path / "llm")
    state = load_file(llm_dir / "model.safetensors")
    (llm_dir / "model.safetensors").unlink()
    torch.save({**state, "extra": np.float64(1.0)}, llm_dir / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=f"{llm_dir / 'pytorch_model.bin'}: refused") as error:
        load_llm(llm_dir)
    assert f"{llm_dir / 'model.safetensors'} --trust" in str(error.value)
    assert "weights_only=False" not in str(error.value)


def test_resume_from_a_pickled_checkpoint_fails_without_traceback(corpus, tmp_path):
    out = tmp_path / "exp"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "extra": np.float64(1.0)}, out / "checkpoints" / "step00000002.pt")
    config = write_config(tmp_path / "ctc.yaml", corpus["tokenizer"])
    command = [sys.executable, "-m", "speechllm_cli.train.ctc_task", "--config", str(config), "--train-data",
               str(corpus["train"]), "--valid-data", str(corpus["dev"]), "--out", str(out), "--resume"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "step00000002.pt: refused" in result.stderr and "safe_load" in result.stderr
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr


# ----- 12. the resume point is marked in train.log

def test_resume_marks_the_resume_point_in_train_log(corpus, tmp_path):
    from speechllm_cli.train.ctc_task import train_ctc

    config = write_config(tmp_path / "ctc.yaml", corpus["tokenizer"], epochs=1, average_last_k=1)
    train_ctc(config, corpus["train"], corpus["dev"], tmp_path / "exp")
    step = int(load_checkpoint(sorted((tmp_path / "exp" / "checkpoints").glob("step*.pt"))[-1])["step"])
    with open(tmp_path / "exp" / "train.log", "a", encoding="utf-8") as log:
        log.write("... epoch 2 step 99: lines a killed run wrote after its last checkpoint\n")
    train_ctc(config, corpus["train"], corpus["dev"], tmp_path / "exp", resume=True, overrides={"train.epochs": 2})
    lines = (tmp_path / "exp" / "train.log").read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if "===== resumed from" in line)
    assert f"step{step:08d}.pt: step {step}, epoch 2, batch 0 =====" in lines[marker]
    assert f"lines below replace what the stopped run logged after step {step}" in lines[marker]
    killed = next(i for i, line in enumerate(lines) if "killed run" in line)
    assert killed < marker and any("epoch 2 done" in line for line in lines[marker:])
