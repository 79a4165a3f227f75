"""The shared training loop on a tiny real corpus (espeak-ng speech, fbank, sentencepiece, CTC compressor):
loss falls, SIGKILL + --resume is bit-exact, DDP gradients equal single-process ones, configs and dump
dirs fail with messages that say what to fix, and the bucketing sampler keeps its promises."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_fixtures import build_corpus, train_in_subprocess, write_config
from safetensors.torch import load_file

from speechllm_cli.train.config import TrainConfig
from speechllm_cli.train.dataset import BucketBatchSampler, DumpDataset, DumpDirError, padding_fraction
from speechllm_cli.utils.config import ConfigError, load_dataclass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    return build_corpus(tmp_path_factory.mktemp("train_corpus"))


# ---------------------------------------------------------------------------------------------- sampler


def skewed_lengths(n: int = 600, seed: int = 0) -> list[int]:
    """Mostly short utterances with a long tail, as speech corpora have (frames)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(mean=5.5, sigma=0.6, size=n), 50, 3000)]


def test_sampler_deterministic_complete_and_within_budget():
    lengths = skewed_lengths()
    sampler = BucketBatchSampler(lengths, batch_frames=4000, max_batch_size=16, seed=3, bucket_size=200)
    epoch1 = sampler.batches(1)
    assert epoch1 == BucketBatchSampler(lengths, 4000, 16, seed=3, bucket_size=200).batches(1)
    assert epoch1 != sampler.batches(2)  # reshuffled per epoch
    for epoch in (1, 2):
        batches = sampler.batches(epoch)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(lengths)))  # every utterance exactly once
        for batch in batches:
            assert len(batch) <= 16
            padded = max(lengths[i] for i in batch) * len(batch)
            assert padded <= 4000 or len(batch) == 1


def test_sampler_resume_position_and_equal_ddp_shards():
    lengths = skewed_lengths(301)
    full = BucketBatchSampler(lengths, 3000, 8, seed=0)
    assert list(full.iter_batches(4, start=5)) == full.batches(4)[5:]
    shards = [BucketBatchSampler(lengths, 3000, 8, seed=0, num_replicas=3, rank=r) for r in range(3)]
    per_rank = [list(s.iter_batches(4)) for s in shards]
    assert len({len(b) for b in per_rank}) == 1  # every rank steps the same number of times
    covered = {i for batches in per_rank for b in batches for i in b}
    assert covered == set(range(len(lengths)))
    assert per_rank[0][0] == full.batches(4)[0] and per_rank[1][0] == full.batches(4)[1]


def test_bucketing_pads_less_than_random_batching():
    lengths = skewed_lengths()
    bucketed = BucketBatchSampler(lengths, 6000, 64, seed=0, bucket_size=300).batches(1)
    plain = BucketBatchSampler(lengths, 6000, 64, seed=0, bucketing=False).batches(1)
    assert padding_fraction(lengths, bucketed) < 0.5 * padding_fraction(lengths, plain)
    assert padding_fraction([5, 5], [[0, 1]]) == 0.0
    assert padding_fraction([2, 6], [[0, 1]]) == pytest.approx(4 / 12)


# ---------------------------------------------------------------------------------------------- config


def test_config_errors_name_file_key_and_fix():
    with pytest.raises(ConfigError, match=r"conf/x\.yaml: unknown key\(s\) \['lrate'\].*valid keys.*'lr'"):
        load_dataclass(TrainConfig, {"lrate": 1.0}, source="conf/x.yaml")
    with pytest.raises(ConfigError, match=r"conf/x\.yaml: epochs: expected an int, got '3' \(str\)"):
        load_dataclass(TrainConfig, {"epochs": "3"}, source="conf/x.yaml")
    with pytest.raises(ConfigError, match=r"scheduler: expected one of 'noam'"):
        load_dataclass(TrainConfig, {"scheduler": "cosine"}, source="conf/x.yaml")
    config = load_dataclass(TrainConfig, {"betas": [0.9, 0.99], "max_steps": None, "lr": 1}, source="x")
    assert config.betas == (0.9, 0.99) and config.lr == 1.0 and isinstance(config.lr, float)


# ---------------------------------------------------------------------------------------------- training


def read_history(out_dir: Path) -> list[dict]:
    import json

    return json.loads((out_dir / "history.json").read_text())["history"]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One uninterrupted in-process training run: (config path, out dir)."""
    from speechllm_cli.train.ctc_task import train_ctc

    root = tmp_path_factory.mktemp("ctc_run")
    config = write_config(root / "train_ctc.yaml", corpus["tokenizer"], epochs=4, checkpoint_every_steps=2,
                          keep_last_checkpoints=1, average_last_k=2, lr=5e-3)
    train_ctc(config, corpus["train"], corpus["dev"], root / "exp")
    return config, root / "exp"


def test_ctc_training_loss_falls_and_model_reloads(corpus, trained):
    from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor
    from speechllm_cli.train.dataset import DumpDataset

    _, out = trained
    history = read_history(out)
    assert [e["epoch"] for e in history] == [1, 2, 3, 4]
    assert history[-1]["train"]["loss"] < 0.85 * history[0]["train"]["loss"]
    assert history[-1]["valid"]["loss"] < 0.95 * history[0]["valid"]["loss"]
    assert history[-1]["valid"]["cer"] >= 0  # 100 x char errors / ref chars
    for name in ("config.yaml", "train.log", "images/loss.png", "images/cer.png", "model.safetensors",
                 "model.best.safetensors", "model.avg.safetensors", "tokenizer/bpe.model"):
        assert (out / name).is_file(), name
    assert "epoch 4 done" in (out / "train.log").read_text()
    assert len(list((out / "checkpoints").glob("step*.pt"))) == 1  # keep_last_checkpoints
    assert len(list((out / "checkpoints").glob("epoch*.safetensors"))) <= 3  # the last 2 epochs and the best

    model, tokenizer = load_ctc_compressor(out, device="cpu")
    saved = load_file(out / "model.safetensors")
    assert set(saved) == set(model.state_dict())  # every parameter and the CMVN buffers
    assert torch.equal(model.cmvn.mean, saved["cmvn.mean"]) and float(model.cmvn.std.mean()) != 1.0
    assert tokenizer.vocab_size == model.config.vocab_size
    item = DumpDataset(corpus["dev"])[0]
    output = model(torch.from_numpy(item["feats"])[None], torch.tensor([item["num_frames"]]))
    assert output.logits.shape[-1] == tokenizer.vocab_size and torch.isfinite(output.logits).all()


def test_sigkill_then_resume_is_bit_exact(corpus, trained, tmp_path):
    config, reference = trained
    script = tmp_path / "train.py"
    # Slowed down (sleeping changes no number) so the kill lands mid-epoch 2 (3 steps per epoch).
    killed = train_in_subprocess(script, config, corpus, tmp_path / "exp", tmp_path / "killed.log", slow=0.15)
    wanted = tmp_path / "exp" / "checkpoints" / "step00000004.pt"
    deadline = time.monotonic() + 60
    while not wanted.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert wanted.exists() and not (tmp_path / "exp" / "model.safetensors").exists()

    resumed = train_in_subprocess(script, config, corpus, tmp_path / "exp", tmp_path / "resumed.log", resume=True)
    log = (tmp_path / "resumed.log").read_text() if resumed.wait() == 0 else ""
    assert "resumed from" in log and "epoch 4 done" in log, (tmp_path / "resumed.log").read_text()
    for name in ("model.safetensors", "model.best.safetensors", "model.avg.safetensors"):
        a, b = load_file(reference / name), load_file(tmp_path / "exp" / name)
        assert a.keys() == b.keys()
        unequal = [k for k in a if not torch.equal(a[k], b[k])]
        assert not unequal, f"{name}: {unequal[:5]}"
    assert read_history(reference) == read_history(tmp_path / "exp")


# ---------------------------------------------------------------------------------------------- DDP


def test_ddp_gradients_and_training_equal_single_process_on_the_same_global_batch(corpus, tmp_path):
    """torchrun, 2 gloo processes: (1) the loop's gradient on a global batch split over the ranks equals the
    single-process gradient on that batch, whole or accumulated; (2) a whole DDP training run ends where a
    single process with accum_grad=2 ends (the same global batches), and only rank 0 writes."""
    from _train_fixtures import DETERMINISTIC_MODEL, GLOBAL_BATCH, grad_setup, gradients, run_ddp_script

    from speechllm_cli.train.ctc_task import train_ctc
    from speechllm_cli.train.distributed import DistEnv
    from speechllm_cli.train.loop import forward_backward

    grad_config = write_config(tmp_path / "grad.yaml", corpus["tokenizer"], model=DETERMINISTIC_MODEL)
    # 12 utterances in batches of 3: 4 batches, rank r takes batches r and r + 2
    train = {"max_batch_size": 3, "batch_frames": 100000, "epochs": 2, "checkpoint_every_steps": 1}
    ddp_config = write_config(tmp_path / "ddp.yaml", corpus["tokenizer"], model=DETERMINISTIC_MODEL, **train)
    single_config = write_config(tmp_path / "single.yaml", corpus["tokenizer"], model=DETERMINISTIC_MODEL,
                                 accum_grad=2, **train)
    result = run_ddp_script(tmp_path, corpus, grad_config, ddp_config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    single = DistEnv()
    task, model, data = grad_setup(corpus, grad_config)
    forward_backward(model, task, [task.collate([data[i] for i in GLOBAL_BATCH[0] + GLOBAL_BATCH[1]])], single)
    whole = gradients(model)
    task, model, data = grad_setup(corpus, grad_config)
    forward_backward(model, task, [task.collate([data[i] for i in part]) for part in GLOBAL_BATCH], single)
    accumulated = gradients(model)
    ddp = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    assert ddp.keys() == whole.keys() == accumulated.keys()
    for name, grad in whole.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=f"DDP vs whole: {name}")
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=f"accum: {name}")

    train_ctc(single_config, corpus["train"], corpus["dev"], tmp_path / "single")
    ddp_model, single_model = load_file(tmp_path / "exp" / "model.safetensors"), load_file(tmp_path / "single" /
                                                                                          "model.safetensors")
    for name, value in single_model.items():
        torch.testing.assert_close(ddp_model[name], value, rtol=1e-4, atol=1e-5, msg=f"DDP vs accum_grad=2: {name}")
    log = (tmp_path / "exp" / "train.log").read_text()
    assert "2 process(es)" in log and log.count("epoch 2 done") == 1  # rank 0 alone writes
    ddp_history, single_history = read_history(tmp_path / "exp"), read_history(tmp_path / "single")
    for a, b in zip(ddp_history, single_history):
        assert a["valid"]["loss"] == pytest.approx(b["valid"]["loss"], rel=1e-4)
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-4)


# ---------------------------------------------------------------------------------------------- errors


def test_bad_config_and_incomplete_dump_say_what_to_fix(corpus, tmp_path):
    from speechllm_cli.train.ctc_task import train_ctc

    def fails(config: Path, train_dir: Path = corpus["train"]) -> str:
        with pytest.raises((ConfigError, DumpDirError)) as info:
            train_ctc(config, train_dir, corpus["dev"], tmp_path / "exp")
        return str(info.value)

    unknown = write_config(tmp_path / "unknown.yaml", corpus["tokenizer"], model={"n_layers": 3})
    message = fails(unknown)
    assert str(unknown) in message and "'n_layers'" in message and "'num_layers'" in message  # valid keys listed
    wrong = write_config(tmp_path / "wrong.yaml", corpus["tokenizer"], epochs="ten")
    assert fails(wrong) == f"{wrong}: train.epochs: expected an int, got 'ten' (str)"
    odd = write_config(tmp_path / "odd.yaml", corpus["tokenizer"], scheduler="cosine")
    assert "train.scheduler: expected one of 'noam', 'warmup_cosine'" in fails(odd)
    ok = write_config(tmp_path / "ok.yaml", corpus["tokenizer"])

    no_cmvn = tmp_path / "dump_no_cmvn"
    shutil.copytree(corpus["train"], no_cmvn)
    (no_cmvn / "cmvn.ark").unlink()
    expected = f"{no_cmvn / 'cmvn.ark'} missing: run `speechllm compute-cmvn dump/<train-set>` (stage 2)"
    assert fails(ok, no_cmvn) == expected
    (no_cmvn / "utt2num_frames").unlink()
    with pytest.raises(DumpDirError, match=r"utt2num_frames missing: run `speechllm fbank"):
        DumpDataset(no_cmvn)
    assert not (tmp_path / "exp" / "checkpoints").exists()  # nothing was trained


def test_ctc_report_and_compress_through_the_cli(corpus, trained):
    import json

    import kaldiio
    from typer.testing import CliRunner

    from speechllm_cli.cli import app

    _, out = trained
    result = CliRunner().invoke(app, ["ctc-report", "--model", str(out), "--data", str(corpus["dev"])])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report_dev.json").read_text())
    per_utt = report["per_utt"]
    frames = [int(line.split()[1]) for line in (corpus["dev"] / "utt2num_frames").read_text().splitlines()]
    assert report["num_utts"] == len(frames) and per_utt["input_frames"] == sum(frames) / len(frames)
    assert 1 <= per_utt["frame_average"] <= per_utt["blank_remove"] <= per_utt["encoder_frames"]
    assert per_utt["encoder_frames"] < per_utt["input_frames"] / 3.5  # 4x subsampling
    assert 0 <= report["cer"] and per_utt["source_tokens"] > 0

    for mode in ("frame_average", "none"):
        dest = out / f"compressed_{mode}"
        result = CliRunner().invoke(app, ["ctc-compress", "--model", str(out), "--data", str(corpus["dev"]),
                                          "--out", str(dest), "--mode", mode])
        assert result.exit_code == 0, result.output
        lengths = dict(line.split() for line in (dest / "utt2num_frames").read_text().splitlines())
        mats = dict(kaldiio.load_scp(str(dest / "feats.scp")))
        assert sorted(mats) == sorted(lengths) and len(mats) == report["num_utts"]
        assert all(mats[u].shape == (int(n), 32) for u, n in lengths.items())
        mean_len = sum(int(n) for n in lengths.values()) / len(lengths)
        expected = per_utt["frame_average"] if mode == "frame_average" else per_utt["encoder_frames"]
        assert mean_len == pytest.approx(expected)
