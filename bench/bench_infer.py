"""``speechllm infer`` figures: model start-up and per-file latency at batch 1 for short clips.

Usage (from egs/covost2 after make demo):
    ../../.venv/bin/python ../../bench/bench_infer.py --model exp/speechllm_whisper --data data/test_en
    ../../.venv/bin/python ../../bench/bench_infer.py --model exp/speechllm_whisper --data data/test_en \
        --engine llamacpp

Prints the seconds to import and load the model (SpeechModel.load, what `speechllm infer` does before its first
file), the first file's latency (warm-up), then the median and 90th percentile latency of ``--files`` clips decoded
one at a time (audio read and resampled, features, front-end, search), and their real-time factor. The whole command's
start-up (Python, imports, model) is best timed from the shell, e.g. ``time speechllm infer --model ... clip.wav``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    recipe = Path(__file__).resolve().parents[1] / "egs" / "covost2"
    parser.add_argument("--model", default=str(recipe / "exp" / "speechllm_whisper"),
                        help="experiment dir, model dir or package (default: make demo's)")
    parser.add_argument("--data", default=str(recipe / "data" / "test_en"),
                        help="a Kaldi data dir whose wav.scp lists the clips (default: the embedded English test set)")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--engine", default="pytorch")
    parser.add_argument("--lang", default=None)
    args = parser.parse_args(argv)
    if not Path(args.model).exists() or not Path(args.data).exists():
        print(f"bench_infer: {args.model} or {args.data} not found: run `make demo` first, or give --model/--data")
        return 0  # `make bench` runs every benchmark; this one needs a trained model
    start = time.perf_counter()
    from speechllm_cli import SpeechModel
    from speechllm_cli.infer.audio_input import collect_inputs

    imported = time.perf_counter()
    model = SpeechModel.load(args.model, engine=args.engine, batch_size=1)
    loaded = time.perf_counter()
    items, _ = collect_inputs([args.data])
    items = items[: args.files + 1]
    first = next(model.run(items[:1], language=args.lang))
    warm = time.perf_counter()
    latencies, audio = [], 0.0
    for item in items[1:]:
        begin = time.perf_counter()
        result = next(model.run([item], language=args.lang))
        latencies.append(time.perf_counter() - begin)
        audio += result.duration
    latencies.sort()
    print(f"{args.model} ({args.engine}): import {imported - start:.2f} s, SpeechModel.load {loaded - imported:.2f} s, "
          f"first file {warm - loaded:.2f} s ({first.duration:.1f} s of audio)")
    print(f"{len(latencies)} files one at a time, {audio / len(latencies):.2f} s of audio each on average: latency "
          f"median {statistics.median(latencies):.3f} s, p90 {latencies[int(0.9 * (len(latencies) - 1))]:.3f} s, "
          f"RTF {sum(latencies) / audio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
