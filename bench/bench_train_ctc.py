"""CTC-compressor training throughput with a recipe config, and what length bucketing saves in padding.

Usage:
    .venv/bin/python bench/bench_train_ctc.py                                   # egs/covost2/conf/train_ctc.yaml
    .venv/bin/python bench/bench_train_ctc.py --config egs/covost2/conf/tuning/train_ctc_large.yaml \\
        --device cuda --bf16 --steps 20
    .venv/bin/python bench/bench_train_ctc.py --frames 300 --threads 2 --batch-frames 6000   # quick CPU check

Throughput: batches of random 80-dim features whose lengths follow the clip lengths of the chosen
distribution (``--frames N`` fixes them), cut by the config's ``batch_frames``/``max_batch_size``
with the training sampler; each step is the loop's own ``forward_backward`` (CTC loss on random
targets of about one token per 12 frames) + gradient clipping + AdamW. Reported: input frames/s
(real frames, padding not counted) and seconds of audio per second, after ``--warmup`` steps.

Padding: the padded fraction (padded / total frames) of one epoch's batches, with bucketing and with
random batching, on 20,000 lengths drawn from a CoVoST2-like distribution (log-normal, median ~4.5 s,
1-20 s) and from the embedded corpus's 2-4 s clips.
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

import numpy as np
import torch

from speechllm_cli.train.ctc_task import CTCExperimentConfig, CTCTask
from speechllm_cli.train.dataset import BucketBatchSampler, padding_fraction
from speechllm_cli.train.distributed import DistEnv
from speechllm_cli.train.loop import forward_backward
from speechllm_cli.train.optim import build_optimizer
from speechllm_cli.utils.config import load_dataclass, read_yaml

RECIPE = Path(__file__).resolve().parent.parent / "egs" / "covost2" / "conf"


def covost_like_frames(n: int, rng: np.random.Generator) -> np.ndarray:
    seconds = np.clip(rng.lognormal(mean=np.log(4.5), sigma=0.45, size=n), 1.0, 20.0)
    return (seconds * 100).astype(int)


def mini_corpus_frames(n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.uniform(2.0, 4.0, size=n) * 100).astype(int)


def padding_report(config, rng: np.random.Generator) -> None:
    train = config.train
    print(f"padding at batch_frames={train.batch_frames}, max_batch_size={train.max_batch_size}, "
          f"bucket_size={train.bucket_size}:")
    for name, draw in (("covost2-like 1-20 s", covost_like_frames), ("mini corpus 2-4 s", mini_corpus_frames)):
        lengths = draw(20000, rng).tolist()
        fractions = []
        for bucketing in (True, False):
            sampler = BucketBatchSampler(lengths, train.batch_frames, train.max_batch_size, seed=0,
                                         bucket_size=train.bucket_size, bucketing=bucketing)
            batches = sampler.batches(1)
            fractions.append((padding_fraction(lengths, batches), len(batches)))
        (bucketed, nb), (plain, np_) = fractions
        print(f"  {name:22s} bucketing {100 * bucketed:5.1f}% ({nb} batches)   "
              f"random {100 * plain:5.1f}% ({np_} batches)")


def throughput(config, args, rng: np.random.Generator) -> None:
    device = torch.device(args.device)
    env = DistEnv(device=device)
    tokenizer = types.SimpleNamespace(vocab_size=args.vocab_size)  # the model only needs the output size
    task = CTCTask(config, tokenizer, cmvn_stats=None)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    optimizer = build_optimizer(model, config.train)
    params = [p for p in model.parameters() if p.requires_grad]
    num_steps = args.warmup + args.steps
    draw = mini_corpus_frames if args.lengths == "mini" else covost_like_frames
    lengths = [args.frames] * 4000 if args.frames else draw(4000, rng).tolist()
    sampler = BucketBatchSampler(lengths, config.train.batch_frames, config.train.max_batch_size, seed=0,
                                 bucket_size=config.train.bucket_size)
    batches = sampler.batches(1)[:num_steps]

    def make_batch(indices):
        lens = torch.tensor([lengths[i] for i in indices])
        feats = torch.randn(len(lens), int(lens.max()), config.model.input_dim) * 3 + 10  # fbank-like scale
        target_lens = torch.clamp(lens // 12, min=1)
        targets = torch.randint(1, args.vocab_size, (len(lens), int(target_lens.max())))
        return {"feats": feats, "feat_lens": lens, "targets": targets, "target_lens": target_lens}

    frames = 0
    start = None
    for step, indices in enumerate(batches):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        forward_backward(model, task, [make_batch(indices)], env, bf16=args.bf16)
        torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            frames += sum(lengths[i] for i in indices)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    steps = len(batches) - args.warmup
    size = sum(p.numel() for p in params) / 1e6
    m = config.model
    print(f"model d_model={m.d_model} heads={m.num_heads} ff={m.ff_dim} layers={m.num_layers} ({size:.2f}M params), "
          f"{device}, {'bf16' if args.bf16 else 'fp32'}, {torch.get_num_threads()} thread(s)")
    print(f"  {steps} steps, {frames / max(steps, 1):.0f} input frames/step: {frames / elapsed:.0f} input frames/s "
          f"= {frames / elapsed / 100:.1f} s of audio per s, {elapsed / steps:.3f} s/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=RECIPE / "train_ctc.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--frames", type=int, default=0, help="fix every length (0: draw from --lengths)")
    parser.add_argument("--lengths", choices=("mini", "covost"), default="mini")
    parser.add_argument("--vocab-size", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-frames", type=int, default=0, help="override train.batch_frames (0: the config's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_dataclass(CTCExperimentConfig, read_yaml(args.config), source=str(args.config))
    if args.batch_frames:
        config.train.batch_frames = args.batch_frames
    rng = np.random.default_rng(0)
    padding_report(config, rng)
    throughput(config, args, rng)


if __name__ == "__main__":
    main()
