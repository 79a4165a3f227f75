"""The Whisper front-end's cost: frames/s of the front-end (encoder + CTC head + compression) on real clips against
the bare encoder forward, and the encoder's cost against clip length at the real length vs padded to 30 s.

Usage:
    .venv/bin/python bench/bench_whisper_frontend.py       # embedded Whisper base (exported to /tmp), espeak clips
    .venv/bin/python bench/bench_whisper_frontend.py --whisper egs/covost2/exp/whisper/base \
        --dump-dir egs/covost2/dump/whisper_mel/test --ctc-dir egs/covost2/exp/ctc_whisper

Prints, per batch of ``--batch`` real clips: input frames/s (100 per second of audio) of the bare encoder (real
length, no cache), the front-end's first pass (the encoder computed) and its cached pass (every epoch after the
first), and seconds per clip against clip length for both encoder modes (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import kaldiio
import torch

from speechllm_cli.features.whisper_mel import WhisperMelExtractor
from speechllm_cli.models.whisper.encoder import WhisperAudioEncoder
from speechllm_cli.models.whisper.export import export_whisper

SENTENCES = ["the cat sat on the mat", "good morning to you, how are you today", "a red house by the sea",
             "we walk home at night and the dog runs fast", "she reads a book", "it is cold today"]


def espeak_feats() -> list[torch.Tensor]:
    import numpy as np
    import soundfile
    import soxr

    extractor, feats = WhisperMelExtractor(), []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
            samples, rate = soundfile.read(wav, dtype="float32")
            feats.append(torch.from_numpy(extractor(np.asarray(soxr.resample(samples, rate, 16000)))))
    return feats


def pad(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats])


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", type=Path, default=None, help="exported Whisper dir (default: export to /tmp)")
    parser.add_argument("--dump-dir", type=Path, default=None, help="a whisper_mel dump dir (default: espeak clips)")
    parser.add_argument("--ctc-dir", type=Path, default=None, help="a CTC compressor trained on this Whisper")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    whisper = args.whisper or Path("/tmp/bench_whisper_base")
    if not (whisper / "model.yaml").is_file():
        export_whisper(None, whisper)
    if args.dump_dir:
        table = kaldiio.load_scp(str(args.dump_dir / "feats.scp"))
        feats = [torch.tensor(table[utt]) for utt in list(table)[: args.batch]]
    else:
        feats = espeak_feats()[: args.batch]
    batch, lens = pad(feats)
    frames = int(lens.sum())
    print(f"{len(feats)} clips, {frames / 100:.1f} s of audio, {args.threads} threads")

    bare = WhisperAudioEncoder.load(whisper, cache_mb=0)
    with torch.inference_mode():
        seconds = timed(lambda: bare(batch, lens), args.repeats)
        print(f"bare encoder (real length):        {frames / seconds:8.0f} frames/s")
        if args.ctc_dir:
            from speechllm_cli.models.frontends import build_frontend, frontend_config

            config = frontend_config({"type": "ctc_compressor", "dir": str(args.ctc_dir),
                                      "compression": "frame_average"})
            frontend = build_frontend(config)
            start = time.perf_counter()
            frontend(batch, lens, with_posteriors=True)
            first = time.perf_counter() - start
            cached = timed(lambda: frontend(batch, lens, with_posteriors=True), args.repeats)
            print(f"front-end, first pass:             {frames / first:8.0f} frames/s")
            print(f"front-end, cached (later epochs):  {frames / cached:8.0f} frames/s")

        padded = WhisperAudioEncoder.load(whisper, pad_to_30s=True, cache_mb=0)
        clip = batch[:1]
        print("clip s | real length s/clip | padded to 30 s s/clip | ratio")
        for clip_seconds in (1, 2, 4, 8, 15, 30):
            n = clip_seconds * 100
            x = clip.repeat(1, (n // clip.shape[1]) + 1, 1)[:, :n]
            n_lens = torch.tensor([n])
            real = timed(lambda x=x, n_lens=n_lens: bare(x, n_lens), args.repeats)
            full = timed(lambda x=x, n_lens=n_lens: padded(x, n_lens), args.repeats)
            print(f"{clip_seconds:6d} | {real:18.3f} | {full:21.3f} | {full / real:5.1f}x")


if __name__ == "__main__":
    main()
