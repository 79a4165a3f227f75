"""train_speechllm on the shared loop: a tiny real corpus, a saved CTC compressor, a tiny LLaMA."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from _speech_llm_fixtures import TINY_ADAPTER, save_tiny_llm
from _train_fixtures import build_corpus, save_random_ctc_dir

from speechllm_cli.models.load import load_model
from speechllm_cli.models.model_dir import read_model_record
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.train.speechllm_task import SpeechLLMTask, load_experiment, train_speechllm
from speechllm_cli.utils.config import ConfigError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("speechllm_task")
    corpus = build_corpus(root)
    ctc_dir = save_random_ctc_dir(root / "ctc", corpus)  # random weights, real CMVN stats
    llm = save_tiny_llm(root / "llm")
    config = {
        "task": "asr",
        "target": "text.src",
        "model": {"llm": str(llm), "frontend": {"dir": str(ctc_dir), "compression": "none"},
                  "audio_attention": "bidirectional", "adapter": TINY_ADAPTER,
                  "lora": {"rank": 2, "dropout": 0.0}},
        "train": {"batch_frames": 1600, "max_batch_size": 4, "epochs": 2, "lr": 3e-3, "warmup_steps": 2,
                  "scheduler": "constant", "seed": 1, "log_interval": 2, "average_last_k": 2},
    }
    config_path = root / "speechllm.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return corpus, config_path, llm


def test_train_speechllm_writes_a_loadable_speech_llm(setup, tmp_path):
    corpus, config_path, llm = setup
    out = tmp_path / "exp"
    model_dir = train_speechllm(config_path, corpus["train"], corpus["dev"], out)
    assert model_dir == out / "model"
    for name in ("model", "model.best", "model.avg"):
        assert read_model_record(out / name)["model_type"] == "speech_llm"
        assert (out / name / "lora" / "adapter_config.json").is_file()
    history = json.loads((out / "history.json").read_text())["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    assert 0.0 <= history[-1]["valid"]["acc"] <= 1.0
    checkpoint = sorted((out / "checkpoints").glob("step*.pt"))[-1]
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert saved and all(k.startswith("adapter.") or "lora_" in k for k in saved)  # no frozen LLM weights

    # model.best is epoch 2's state: it reproduces epoch 2's validation loss (compressor from the recorded dir)
    best = load_model(out / "model.best")
    record = read_model_record(out / "model.best")
    assert record["training"] == {"task": "asr", "asr_langs": ["en"], "target": "text.src"}
    assert best.training_choice == record["training"] and record["frontend_hash"]
    assert record["llm"]["path"] == str(llm.resolve())
    task = SpeechLLMTask(load_experiment(config_path))
    task.build_model()
    dev = DumpDataset(corpus["dev"])
    batch = task.collate([dev[i] for i in range(len(dev))])
    with torch.no_grad():
        _, stats = best(batch["feats"], batch["feat_lens"], batch["prompt_ids"], batch["target_ids"])
    assert abs(stats["loss"] - history[-1]["valid"]["loss"]) < 1e-4
    assert batch["target_ids"][0] == best.encode_target(dev[0]["text_src"])


def test_config_errors_say_what_to_fix(setup, tmp_path):
    _, config_path, _ = setup
    with pytest.raises(ConfigError, match="task 'mt' has no prompt"):
        load_experiment(config_path, {"task": "mt"})
    with pytest.raises(ConfigError, match="model.frontend.dir is empty"):
        load_experiment(config_path, {"model.frontend.dir": ""})
    with pytest.raises(ConfigError, match="model.adapter.type 'mlp' is not one of"):
        load_experiment(config_path, {"model.adapter.type": "mlp"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['num_layers'\]"):
        load_experiment(config_path, {"model.adapter": {"type": "stack_mlp", "num_layers": 2}})
    # a new type starts from its own defaults, not the base's transformer keys
    assert load_experiment(config_path, {"model.adapter.type": "conv"}).model.adapter.stride == 4
    with pytest.raises(ConfigError, match="audio_attention"):
        load_experiment(config_path, {"model.audio_attention": "full"})


# ------------------------------------------------------------------------ resume and DDP, as the CLI runs them

SLOW_TRAIN_SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
from speechllm_cli.train import speechllm_task
compute_loss = speechllm_task.SpeechLLMTask.compute_loss
def slow_loss(self, model, batch):  # sleeping changes no number; it lets the test kill mid-run
    time.sleep(0.3)
    return compute_loss(self, model, batch)
speechllm_task.SpeechLLMTask.compute_loss = slow_loss
speechllm_task.main(sys.argv[1:])
"""


def _cli_argv(config_path, corpus, out, *extra) -> list[str]:
    return ["--config", str(config_path), "--train-data", str(corpus["train"]), "--valid-data", str(corpus["dev"]),
            "--out", str(out), *extra]


def _trained_weights(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {**load_file(model_dir / "audio.safetensors"),
            **load_file(model_dir / "lora" / "adapter_model.safetensors")}


AUGMENTED = {"train.augment.noise_prob": 0.7, "train.augment.reverb_prob": 0.5}  # from the wavs, each epoch anew


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "noise+reverb"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(setup, tmp_path, augment):
    import os
    import signal
    import subprocess
    import sys
    import time

    corpus, config_path, _ = setup
    reference = tmp_path / "reference"
    every_step = {"train.checkpoint_every_steps": 1, **(AUGMENTED if augment else {})}
    train_speechllm(config_path, corpus["train"], corpus["dev"], reference, overrides=every_step)
    script = tmp_path / "slow_train.py"
    script.write_text(SLOW_TRAIN_SCRIPT, encoding="utf-8")
    out = tmp_path / "killed"
    sets = [arg for key, value in every_step.items() for arg in ("--set", f"{key}={value}")]
    argv = [sys.executable, str(script), *_cli_argv(config_path, corpus, out, *sets)]
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    wanted = out / "checkpoints" / "step00000004.pt"  # mid epoch 2 (3 steps per epoch)
    deadline = time.monotonic() + 120
    while not wanted.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not (out / "model").exists()

    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    for name in ("model", "model.best", "model.avg"):
        a, b = _trained_weights(reference / name), _trained_weights(out / name)
        assert a.keys() == b.keys() and a
        assert not [k for k in a if not torch.equal(a[k], b[k])], name
    history = json.loads((reference / "history.json").read_text())["history"]
    assert history == json.loads((out / "history.json").read_text())["history"]


def test_two_process_ddp_equals_one_process_on_the_same_global_batches(setup, tmp_path):
    """`--num-procs 2` (torchrun, gloo) against one process with accum_grad=2: the same global batches."""
    import os
    import subprocess
    import sys

    corpus, config_path, _ = setup
    same = {"train.max_batch_size": 3, "train.batch_frames": 100000}  # 12 utterances: 4 batches of 3
    train_speechllm(config_path, corpus["train"], corpus["dev"], tmp_path / "single",
                    overrides={**same, "train.accum_grad": 2})
    sets = [arg for key, value in same.items() for arg in ("--set", f"{key}={value}")]
    argv = [sys.executable, "-m", "speechllm_cli.train.speechllm_task",
            *_cli_argv(config_path, corpus, tmp_path / "ddp", "--num-procs", "2", *sets)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = _trained_weights(tmp_path / "single" / "model"), _trained_weights(tmp_path / "ddp" / "model")
    assert single.keys() == ddp.keys() and single
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5, msg=name)
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert "2 process(es)" in log and log.count("epoch 2 done") == 1


def test_task_auto_picks_the_prompt_of_each_utterance_from_its_language(setup):
    corpus, config_path, _ = setup
    task = SpeechLLMTask(load_experiment(config_path, {"task": "auto", "asr_langs": ["en"]}))
    model = task.build_model()
    data = DumpDataset(corpus["train"])
    examples = [data[i] for i in range(len(data))]
    assert {e["lang"] for e in examples} == {"en", "de"}
    batch = task.collate(examples)
    for example, prompt in zip(examples, batch["prompt_ids"]):
        assert prompt == model.prompt_ids("asr" if example["lang"] == "en" else "st"), example["utt_id"]
    assert model.prompt_ids("asr") != model.prompt_ids("st")
    with pytest.raises(KeyError, match="needs utt2lang"):
        task.collate([{**examples[0], "lang": None}])


def test_decoding_defaults_to_the_task_choice_the_model_was_trained_with(setup, tmp_path):
    """Trained with task auto and German recognised too (asr_langs: [en, de]), the model decodes German with the
    ASR prompt without being told: the same hypotheses as --task asr, in one job or two."""
    from speechllm_cli.decode.decode import decode

    corpus, config_path, _ = setup
    overrides = {"task": "auto", "asr_langs": ["en", "de"], "train.epochs": 1, "train.max_steps": 2}
    model_dir = train_speechllm(config_path, corpus["train"], None, tmp_path / "exp", overrides=overrides)
    options = {"max_new_tokens": 5, "batch_size": 4}
    decode(model_dir, corpus["dev"], tmp_path / "by_record", **options)
    decode(model_dir, corpus["dev"], tmp_path / "by_record_nj2", nj=2, num_threads=1, **options)
    decode(model_dir, corpus["dev"], tmp_path / "asr", task="asr", **options)
    decode(model_dir, corpus["dev"], tmp_path / "st", task="st", asr_langs=("en",), **options)
    recorded = yaml.safe_load((tmp_path / "by_record" / "decode.yaml").read_text())["config"]
    assert recorded["asr_langs"] == ["en", "de"] and recorded["task"] is None
    hyps = {name: (tmp_path / name / "hyp.txt").read_text() for name in ("by_record", "by_record_nj2", "asr", "st")}
    assert hyps["by_record"] == hyps["asr"] == hyps["by_record_nj2"]
    st = yaml.safe_load((tmp_path / "st" / "decode.yaml").read_text())["config"]
    assert st["task"] == "st" and st["asr_langs"] == ["en"]  # flags win over the record


def test_a_retrained_compressor_is_refused_at_decode(setup, tmp_path):
    from _train_fixtures import save_random_ctc_dir

    from speechllm_cli.decode.decode import decode
    from speechllm_cli.models.speech_llm_io import FrontEndMismatchError

    corpus, config_path, _ = setup
    ctc_dir = save_random_ctc_dir(tmp_path / "ctc", corpus, seed=0)
    overrides = {"model.frontend.dir": str(ctc_dir), "train.epochs": 1, "train.max_steps": 1}
    model_dir = train_speechllm(config_path, corpus["train"], None, tmp_path / "exp", overrides=overrides)
    options = {"max_new_tokens": 3, "batch_size": 4}
    decode(model_dir, corpus["dev"], tmp_path / "decode", **options)
    save_random_ctc_dir(ctc_dir, corpus, seed=1)  # retrained in place: other weights, same dir
    for nj in (1, 2):  # the finished decode dir is not taken for up to date either
        with pytest.raises(FrontEndMismatchError, match="retrained or replaced") as error:
            decode(model_dir, corpus["dev"], tmp_path / "decode", nj=nj, **options)
        assert str(ctc_dir) in str(error.value)
    with pytest.raises(FrontEndMismatchError):
        load_model(model_dir)
