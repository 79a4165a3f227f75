"""Fbank stage throughput: ``make_fbank`` (mp3 decode + soxr resample + fbank + ark write, one job)
against bare loops on the same audio (decode + resample + fbank, and fbank alone); and the peak
memory of one job over N and 2N utterances.

Usage:
    .venv/bin/python bench/bench_fbank.py                   # 50 clips x 10 repeats, memory at 250/500 utts
    .venv/bin/python bench/bench_fbank.py --clips 20 --repeats 4 --mem-utts 40

The clips are espeak-ng sentences resampled to 48 kHz and written as mp3 (as Common Voice ships
them) in a temporary dir; the data dir lists each clip ``--repeats`` times (every entry is decoded
again). Throughput is seconds of audio per CPU-second (time.process_time plus the CPU time of child
processes: run.pl, bash and the job), so the job's interpreter start-up counts too. Three bare loops:
"from the mp3 files" does the stage's work (decode, resample, fbank) without the toolkit, the fair
comparison; two fbank-only loops on audio already decoded:
"documented" passes a numpy array to ``accept_waveform`` as knf's README does; "tuned" passes an
array.array, as our extractor does. Each measurement is the best of ``--runs``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import soundfile
import soxr

from speechllm_cli.features.audio import load_audio
from speechllm_cli.features.fbank import INT16_SCALE, FbankConfig, FbankExtractor, fbank_job_argv, make_fbank

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to buy milk and bread on your way home tonight.",
    "Our meeting has been moved to Thursday afternoon at three o'clock.",
    "Rain is expected for most of the weekend in the northern regions.",
    "She sells sea shells by the sea shore every summer morning.",
    "The museum opens at ten in the morning every day except Monday.",
    "A speech recognizer turns sound waves into written words.",
    "Filter bank features summarise the spectrum every ten milliseconds.",
]
VOICES = ["en", "en-us", "en-gb-x-rp", "en+f3"]


def make_clips(out: Path, count: int) -> list[Path]:
    """``count`` espeak-ng clips as 48 kHz mono mp3."""
    clips = []
    for i in range(count):
        wav = out / f"espeak{i}.wav"
        text = f"{SENTENCES[i % len(SENTENCES)]} Number {i}."
        subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-w", str(wav), text], check=True,
                       capture_output=True)
        audio, rate = soundfile.read(wav, dtype="float32")
        wav.unlink()
        clip = out / f"clip{i:03d}.mp3"
        soundfile.write(clip, np.clip(soxr.resample(audio, rate, 48000), -1, 1), 48000, format="MP3")
        clips.append(clip)
    return clips


def make_data_dir(path: Path, clips: list[Path], repeats: int) -> None:
    """A data dir listing every clip ``repeats`` times (one speaker per repeat)."""
    path.mkdir(parents=True, exist_ok=True)
    utts = {f"rep{r:03d}-clip{i:03d}": clip for r in range(repeats) for i, clip in enumerate(clips)}
    (path / "wav.scp").write_text("".join(f"{u} {utts[u]}\n" for u in sorted(utts)))
    (path / "text").write_text("".join(f"{u} some text\n" for u in sorted(utts)))
    (path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(utts)))


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def time_stage(data_dir: Path, dump_dir: Path) -> tuple[float, float]:
    """(seconds of audio, CPU-seconds) of make_fbank with one job, from scratch."""
    shutil.rmtree(dump_dir, ignore_errors=True)
    start = cpu_seconds()
    summary = make_fbank(data_dir, dump_dir, nj=1)
    return summary.seconds, cpu_seconds() - start


def time_bare(decoded: list[np.ndarray], repeats: int, tuned: bool) -> float:
    """CPU-seconds of the bare knf loop over every clip ``repeats`` times (16 kHz audio in memory)."""
    if tuned:
        extractor = FbankExtractor()
        start = time.process_time()
        for _ in range(repeats):
            for samples in decoded:
                extractor(samples)
        return time.process_time() - start
    opts = FbankConfig().options()
    start = time.process_time()
    for _ in range(repeats):
        for samples in decoded:
            fbank = knf.OnlineFbank(opts)
            fbank.accept_waveform(16000, samples * np.float32(INT16_SCALE))
            fbank.input_finished()
            np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    return time.process_time() - start


def time_bare_from_files(clips: list[Path], repeats: int) -> float:
    """CPU-seconds of a bare loop doing the stage's work without the toolkit: soundfile mp3 decode,
    soxr resample to 16 kHz, the tuned knf extractor; nothing written."""
    extractor = FbankExtractor()
    start = time.process_time()
    for _ in range(repeats):
        for clip in clips:
            audio, rate = soundfile.read(clip, dtype="float32")
            extractor(soxr.resample(audio, rate, 16000))
    return time.process_time() - start


def job_peak_rss_mb(data_dir: Path, prefix: Path) -> tuple[float, float]:
    """(peak RSS in MB, CPU-seconds) of one fbank job process over ``data_dir``."""
    proc = subprocess.Popen(fbank_job_argv(data_dir, prefix, FbankConfig()), stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"fbank job on {data_dir} failed (exit {proc.returncode})")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=50, help="distinct espeak-ng clips")
    parser.add_argument("--repeats", type=int, default=10, help="times each clip is listed in the data dir")
    parser.add_argument("--mem-utts", type=int, default=250, help="N of the N / 2N peak-memory runs")
    parser.add_argument("--runs", type=int, default=2, help="runs per measurement; the best counts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_fbank_") as tmp:
        tmp = Path(tmp)
        (tmp / "clips").mkdir()
        clips = make_clips(tmp / "clips", args.clips)
        decoded = [load_audio(str(c)) for c in clips]  # (T,) float32 at 16 kHz
        audio_s = args.repeats * sum(d.shape[0] for d in decoded) / 16000
        print(f"{args.clips} clips (48 kHz mp3, {audio_s / args.repeats:.1f} s) x {args.repeats} repeats "
              f"= {audio_s:.1f} s of audio")
        make_data_dir(tmp / "data", clips, args.repeats)
        stage, bare, tuned, full = [], [], [], []
        for _ in range(args.runs):
            seconds, cpu = time_stage(tmp / "data", tmp / "dump")
            stage.append(seconds / cpu)
            bare.append(audio_s / time_bare(decoded, args.repeats, tuned=False))
            tuned.append(audio_s / time_bare(decoded, args.repeats, tuned=True))
            full.append(audio_s / time_bare_from_files(clips, args.repeats))
        stage_rate, bare_rate, tuned_rate, full_rate = max(stage), max(bare), max(tuned), max(full)
        print("| pipeline | audio s per CPU-s | stage / this |")
        print("|---|---|---|")
        print(f"| make_fbank, nj=1 (decode + resample + fbank + write) | {stage_rate:.0f} | |")
        print(f"| bare loop from the mp3 files (decode + resample + knf) | {full_rate:.0f} "
              f"| {stage_rate / full_rate:.2f} |")
        print(f"| bare knf loop, numpy input (documented) | {bare_rate:.0f} | {stage_rate / bare_rate:.2f} |")
        print(f"| bare knf loop, array.array input (tuned) | {tuned_rate:.0f} | {stage_rate / tuned_rate:.2f} |")

        n = args.mem_utts
        for count in (1, n, 2 * n):
            reps = -(-count // args.clips)
            make_data_dir(tmp / f"mem{count}", clips, reps)
            lines = (tmp / f"mem{count}" / "wav.scp").read_text().splitlines()[:count]
            (tmp / f"mem{count}" / "wav.scp").write_text("".join(f"{line}\n" for line in lines))
        print("| one job over | peak RSS MB | CPU s |")
        print("|---|---|---|")
        cpu_of = {}
        for count in (1, n, 2 * n):
            rss, cpu_of[count] = job_peak_rss_mb(tmp / f"mem{count}", tmp / "memdump" / f"job{count}")
            print(f"| {count} utts | {rss:.1f} | {cpu_of[count]:.2f} |")
        per_utt_s = audio_s / (args.repeats * args.clips)
        marginal = n * per_utt_s / (cpu_of[2 * n] - cpu_of[n])
        print(f"job throughput without start-up (the {n} utts from {n} to {2 * n}): {marginal:.0f} audio s per CPU-s, "
              f"{marginal / full_rate:.2f} of the bare loop from files, {marginal / bare_rate:.2f} of documented, "
              f"{marginal / tuned_rate:.2f} of tuned bare knf loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
