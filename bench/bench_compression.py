"""Throughput of CTC compression (blank removal, frame averaging) and of the CTC compressor's forward pass.

Usage:
    .venv/bin/python bench/bench_compression.py                    # CPU, 1 thread
    .venv/bin/python bench/bench_compression.py --device cuda --threads 4

Compression runs on a batch of 16 x 500 frames x 256 dims with CTC-like greedy labels: about 65 %
blank frames, tokens in runs of 1-3 frames, utterance lengths 250-500. Frames/s counts valid input
frames. The model forward runs the default CTCCompressorConfig (vocab 500) in eval mode on
``--forward-batch`` (4) utterances of 2000 fbank frames (20 s, 500 frames after subsampling); frames/s counts fbank
frames. Each figure is the best of ``--repeats`` timed runs after a warm-up.

On CPU, blank removal's figure is mostly first-touch page faults: its 2.6 MB output buffer is
above glibc's mmap threshold, so each call maps fresh pages (MALLOC_MMAP_THRESHOLD_=268435456
makes it ~4x faster); the compute itself is one index_add over the frames in both modes.
"""

from __future__ import annotations

import argparse
import time

import torch

from speechllm_cli.models.compression import compress
from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig, greedy_labels


def ctc_like_labels(batch: int, frames: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) labels: blank with probability 0.65 per run, tokens repeated 1-3 frames."""
    runs = torch.randint(1, 4, (batch, frames), generator=generator)  # (B, T) run lengths, more than needed
    tokens = torch.randint(1, vocab, (batch, frames), generator=generator)
    tokens[torch.rand(batch, frames, generator=generator) < 0.65] = 0
    frame_index = torch.arange(frames).expand(batch, frames).contiguous()  # (B, T)
    run_of_frame = torch.searchsorted(runs.cumsum(1), frame_index, right=True)
    return tokens.gather(1, run_of_frame.clamp(max=frames - 1))


def best_time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--forward-batch", type=int, default=4, help="utterances of 20 s in the model forward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    generator = torch.Generator().manual_seed(0)

    hidden = torch.randn(args.batch, args.frames, args.dim, generator=generator).to(device)  # (B, T, D)
    lens = torch.randint(args.frames // 2, args.frames + 1, (args.batch,), generator=generator)
    lens[0] = args.frames
    lens = lens.to(device)
    labels = ctc_like_labels(args.batch, args.frames, 500, generator).to(device)
    valid_frames = int(lens.sum())
    print(f"device {device}, threads {args.threads}; compression on {args.batch} x {args.frames} x {args.dim}, "
          f"{valid_frames} valid frames")
    for mode in ("blank_remove", "frame_average"):
        seconds = best_time(lambda mode=mode: compress(hidden, lens, labels, mode), args.repeats, device)
        _, out_lens = compress(hidden, lens, labels, mode)
        print(f"  {mode:14s} {seconds * 1e3:8.2f} ms  {valid_frames / seconds / 1e6:8.2f} M frames/s  "
              f"(kept {int(out_lens.sum()) / valid_frames:.0%} of the frames)")

    torch.manual_seed(0)
    model = CTCCompressor(CTCCompressorConfig(), vocab_size=500).to(device).eval()
    feats = torch.randn(args.forward_batch, 2000, 80, device=device)  # (B, T, 80) 20 s per utterance
    feat_lens = torch.full((args.forward_batch,), 2000, device=device)

    @torch.no_grad()
    def forward():
        out = model(feats, feat_lens)
        return greedy_labels(out.logits, out.hidden_lens)

    seconds = best_time(forward, max(1, args.repeats // 2), device)  # (the conv stack is memory-bound on CPU)
    print(f"model forward (default config, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) on "
          f"{args.forward_batch} x 2000 fbank frames: {seconds * 1e3:.0f} ms, "
          f"{args.forward_batch * 2000 / seconds:,.0f} fbank frames/s (RTF {seconds / (args.forward_batch * 20):.4f})")


if __name__ == "__main__":
    main()
