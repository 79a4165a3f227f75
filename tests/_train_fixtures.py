"""A tiny real dump dir for the training tests: espeak-ng speech (en + de), 80-dim fbank, Kaldi tables, CMVN
stats and a sentencepiece tokenizer, plus a tiny CTC config and a script that runs ``train_ctc``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import kaldiio
import numpy as np
import yaml
from speech_synth import synth_speech

from speechllm_cli.features.cmvn import compute_cmvn
from speechllm_cli.features.fbank import FbankExtractor
from speechllm_cli.text.tokenizer import train_tokenizer

SENTENCES = {
    "en": ["the cat sat on the mat", "good morning to you", "a red house by the sea", "open the door please",
           "we walk home at night", "the dog runs fast", "she reads a book", "it is cold today"],
    "de": ["der hund schläft im haus", "guten morgen", "das wetter ist schön", "ich trinke kaffee",
           "wir gehen nach hause", "die katze ist klein", "er liest ein buch", "heute ist es kalt"],
}
TRAIN_PER_LANG = 6  # the first 6 sentences of each language train, the last 2 validate


def write_dump(dump_dir: Path, utts: list[tuple[str, str, str, np.ndarray]], wavs: dict[str, Path] | None = None
               ) -> None:
    """feats.scp/ark, utt2num_frames, text, text.src, utt2spk, utt2lang from (utt, lang, text, feats); wav.scp from
    ``wavs`` (utt -> audio file) when given."""
    dump_dir.mkdir(parents=True, exist_ok=True)
    utts = sorted(utts)
    if wavs:
        (dump_dir / "wav.scp").write_text("".join(f"{u} {wavs[u]}\n" for u, *_ in utts), encoding="utf-8")
    with kaldiio.WriteHelper(f"ark,scp:{dump_dir / 'feats.ark'},{dump_dir / 'feats.scp'}") as writer:
        for utt, _, _, feats in utts:
            writer(utt, feats)
    tables = {
        "utt2num_frames": [str(len(f)) for *_, f in utts],
        "text.src": [text for _, _, text, _ in utts],
        "text": [text for _, _, text, _ in utts],  # the targets do not matter to the CTC compressor
        "utt2spk": [utt.split("-")[0] for utt, *_ in utts],
        "utt2lang": [lang for _, lang, _, _ in utts],
    }
    for name, values in tables.items():
        (dump_dir / name).write_text("".join(f"{u[0]} {v}\n" for u, v in zip(utts, values)), encoding="utf-8")


def build_corpus(root: Path) -> dict[str, Path]:
    """``root/dump/{train,dev}`` (12 + 4 utterances, their wavs in ``root/wav`` and wav.scp, cmvn.ark in train) and
    ``root/token_list/bpe``. The features are those stage 2 computes from the wav files."""
    import soundfile

    sets: dict[str, list] = {"train": [], "dev": []}
    wavs = {}
    for lang, voice in (("en", "en"), ("de", "de")):
        for i, text in enumerate(SENTENCES[lang]):
            utt = f"spk{lang}-{lang}{i:03d}"
            samples = synth_speech(text, voice, root / "utt.wav", sample_rate=16000)
            wavs[utt] = root / "wav" / f"{utt}.wav"
            wavs[utt].parent.mkdir(exist_ok=True)
            soundfile.write(wavs[utt], samples, 16000, subtype="FLOAT")  # read back as exactly these samples
            feats = FbankExtractor()(samples)
            sets["train" if i < TRAIN_PER_LANG else "dev"].append((utt, lang, text, feats))
    paths = {}
    for name, utts in sets.items():
        write_dump(root / "dump" / name, utts, wavs)
        paths[name] = root / "dump" / name
    compute_cmvn(paths["train"])  # dump/train/cmvn.ark, Kaldi stats
    paths["tokenizer"] = train_tokenizer([paths["train"] / "text.src"], root / "token_list" / "char", vocab_size=40,
                                         model_type="char")
    return paths


TINY_MODEL = {"d_model": 32, "num_heads": 2, "ff_dim": 64, "num_layers": 2, "dropout": 0.1}


def write_config(path: Path, tokenizer: Path, model: dict | None = None, **train) -> Path:
    """A train_ctc config: the tiny model and a short training."""
    base = {"batch_frames": 1200, "max_batch_size": 4, "epochs": 2, "lr": 2e-3, "warmup_steps": 4,
            "scheduler": "warmup_cosine", "grad_clip": 5.0, "seed": 1, "log_interval": 2, "average_last_k": 2}
    base.update(train)
    config = {"tokenizer": str(tokenizer), "model": {**TINY_MODEL, **(model or {})}, "train": base}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# A script that trains in a fresh process; SLOW_STEP_S > 0 sleeps after each loss so a test can kill it
# mid-run (sleeping changes no number).
TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from speechllm_cli.train import ctc_task

    config, train_dir, valid_dir, out_dir, resume, slow = sys.argv[1:7]
    if float(slow) > 0:
        original = ctc_task.CTCTask.compute_loss
        def slow_loss(self, model, batch):
            result = original(self, model, batch)
            time.sleep(float(slow))
            return result
        ctc_task.CTCTask.compute_loss = slow_loss
    ctc_task.train_ctc(config, train_dir, valid_dir, out_dir, resume=resume == "1")
""")


def train_in_subprocess(script: Path, config: Path, corpus: dict, out_dir: Path, log: Path, resume: bool = False,
                        slow: float = 0.0) -> subprocess.Popen:
    """``train_ctc`` in a fresh Python process; its stdout and stderr go to ``log``."""
    if not script.exists():
        script.write_text(TRAIN_SCRIPT, encoding="utf-8")
    cmd = [sys.executable, str(script), str(config), str(corpus["train"]), str(corpus["dev"]), str(out_dir),
           "1" if resume else "0", str(slow)]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


# ----------------------------------------------------------------------------------------- DDP gradients

DETERMINISTIC_MODEL = {"dropout": 0.0, "num_freq_masks": 0, "num_time_masks": 0}  # no randomness in a step
GLOBAL_BATCH = ([0, 1, 2], [3, 4])  # example indices of rank 0 and rank 1: unequal sizes test the weighting


def grad_setup(corpus: dict, config_path: Path):
    """(task, fresh model seeded identically, dataset) for the gradient comparisons."""
    import torch

    from speechllm_cli.features.cmvn import read_cmvn_stats
    from speechllm_cli.text.tokenizer import Tokenizer
    from speechllm_cli.train.ctc_task import CTCTask, load_ctc_config
    from speechllm_cli.train.dataset import DumpDataset

    config = load_ctc_config(config_path)
    task = CTCTask(config, Tokenizer.load(config.tokenizer), read_cmvn_stats(corpus["train"] / "cmvn.ark"))
    torch.manual_seed(0)
    return task, task.build_model(), DumpDataset(corpus["train"])


def gradients(model) -> dict:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


DDP_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from torch.nn.parallel import DistributedDataParallel
    from _train_fixtures import GLOBAL_BATCH, grad_setup, gradients
    from speechllm_cli.train.ctc_task import train_ctc
    from speechllm_cli.train.distributed import init_distributed
    from speechllm_cli.train.loop import forward_backward

    tests_dir, train_dir, dev_dir, grad_config, train_config, out = sys.argv[1:7]
    corpus = {"train": Path(train_dir), "dev": Path(dev_dir)}
    env = init_distributed()  # torchrun's environment: a gloo process group of 2
    # 1) this rank's part of GLOBAL_BATCH through the loop's forward_backward, in DDP
    task, model, data = grad_setup(corpus, grad_config)
    batch = task.collate([data[i] for i in GLOBAL_BATCH[env.rank]])
    forward_backward(DistributedDataParallel(model), task, [batch], env)
    if env.rank == 0:
        torch.save(gradients(model), Path(out) / "ddp_grads.pt")
    # 2) the whole training loop in the same 2 processes
    train_ctc(train_config, train_dir, dev_dir, Path(out) / "exp")
""")


def run_ddp_script(tmp: Path, corpus: dict, grad_config: Path, train_config: Path) -> subprocess.CompletedProcess:
    """DDP_SCRIPT under ``torchrun --nproc_per_node 2`` (gloo on CPU); outputs land in ``tmp``."""
    script = tmp / "ddp_script.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(Path(__file__).parent), str(corpus["train"]), str(corpus["dev"]), str(grad_config), str(train_config),
           str(tmp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def save_random_ctc_dir(ctc_dir: Path, corpus: dict[str, Path], seed: int = 0) -> Path:
    """A CTC compressor dir as train_ctc leaves it (model.yaml, tokenizer/, model.safetensors), with random tiny
    weights and the corpus's real CMVN statistics."""
    import torch

    from speechllm_cli.features.cmvn import read_cmvn_stats
    from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
    from speechllm_cli.text.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(corpus["tokenizer"])
    torch.manual_seed(seed)
    model_config = CTCCompressorConfig(**TINY_MODEL, vocab_size=tokenizer.vocab_size)
    compressor = CTCCompressor(model_config, cmvn_stats=read_cmvn_stats(corpus["train"] / "cmvn.ark"))
    return save_ctc_dir(ctc_dir, compressor, corpus["tokenizer"])


def save_ctc_dir(ctc_dir: Path, compressor, token_dir: Path) -> Path:
    """Save ``compressor`` (a CTCCompressor) with its token list dir as a CTC compressor model dir."""
    import shutil

    from safetensors.torch import save_file

    from speechllm_cli.models.ctc_compressor_io import write_ctc_record

    ctc_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(token_dir, ctc_dir / "tokenizer", dirs_exist_ok=True)
    save_file(compressor.state_dict(), ctc_dir / "model.safetensors")
    write_ctc_record(ctc_dir, compressor.config)
    return ctc_dir
