"""Stage-2 features into kaldiio arks: 80-dim log-mel filter banks (Kaldi's compute-fbank-feats, via
kaldi-native-fbank; type ``fbank``, the default) or Whisper's log-mel spectrogram (type ``whisper_mel``).

fbank: 25 ms Povey window, 10 ms shift, 16 kHz, dither 0 (deterministic), snip_edges true, so a
clip of S samples at 16 kHz gives 1 + (S - 400) // 160 frames. Samples are scaled to the 16-bit
range (x 32768) first, as Kaldi reads wav files, so the values equal Kaldi's.
whisper_mel: as Whisper's feature extractor computes it, without the padding to 30 s: S // 160
frames of 80 or 128 bins (features/whisper_mel.py).

``make_fbank`` splits a data dir by speaker into ``nj`` parts and runs one job per part through a
Kaldi launcher (``run.pl``/``slurm.pl``); each job (``compute_fbank_job``) streams its utterances
one at a time into ``<dump>/data/raw_<type>_<set>.<k>.ark`` and writes, last of all, the ``.scp``
that marks it complete, so a killed job leaves no scp and a re-run redoes exactly that job (or
every job, when the feature type or an option changed). Audio that cannot be read, or is too
short for one frame, is skipped and listed in ``<dump>/skipped`` (``utt reason``). The dump dir
says which features it holds in ``<dump>/feats_type`` (``fbank 80``; features/feats_type.py).

Usage:
    python -m speechllm_cli.features.fbank data/train/split2/1 dump/train/data/raw_fbank_train.1
    python -m speechllm_cli.features.fbank data/train/split2/1 dump/whisper_mel/train/data/raw_whisper_mel_train.1 \\
        --type whisper_mel --num-mel-bins 128
    >>> make_fbank("data/train", "dump/train", nj=2)                 # doctest: +SKIP
    >>> kaldiio.load_scp("dump/train/feats.scp")["spk1-utt1"].shape  # doctest: +SKIP
    (312, 80)
    >>> make_fbank("data/train", "dump/whisper_mel/train", config=feats_config("whisper_mel", 80))  # doctest: +SKIP
    >>> Path("dump/whisper_mel/train/feats_type").read_text()        # doctest: +SKIP
    'whisper_mel 80\\n'
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import sys
from pathlib import Path
from typing import ClassVar

import kaldi_native_fbank as knf
import numpy as np
from kaldiio.matio import write_array
from tqdm import tqdm

from speechllm_cli.data.kaldi_dir import DataDir, DataDirError, spk2utt_from_utt2spk, validate_data_dir, write_split
from speechllm_cli.features.audio import count_utterances, iter_data_dir_audio
from speechllm_cli.features.feats_type import FEATS_TYPES, feats_type_line, read_feats_type, write_feats_type
from speechllm_cli.features.whisper_mel import WhisperMelConfig, WhisperMelExtractor
from speechllm_cli.utils.io import atomic_path
from speechllm_cli.utils.jobs import run_jobs

logger = logging.getLogger(__name__)

# How a launcher starts one job; the CLI may swap in ["speechllm", "fbank-job"].
JOB_COMMAND = [sys.executable, "-m", "speechllm_cli.features.fbank"]
INT16_SCALE = 32768.0
JOB_FILES = ("ark", "skipped", "utt2num_frames", "utt2dur", "info", "scp")  # renamed in this order; scp last


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """Kaldi fbank options that change the features (all of them go into the job fingerprint)."""

    feats_type: ClassVar[str] = "fbank"

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    snip_edges: bool = True

    def options(self) -> knf.FbankOptions:
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = self.sample_rate
        opts.frame_opts.frame_length_ms = self.frame_length_ms
        opts.frame_opts.frame_shift_ms = self.frame_shift_ms
        opts.frame_opts.dither = self.dither
        opts.frame_opts.snip_edges = self.snip_edges
        opts.mel_opts.num_bins = self.num_mel_bins
        return opts


class FbankExtractor:
    """Log-mel fbank of whole utterances; the options are built once and reused."""

    def __init__(self, config: FbankConfig | None = None):
        self.config = config or FbankConfig()
        self.options = self.config.options()

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """samples (S,) float in [-1, 1] at ``config.sample_rate`` -> feats (T, num_mel_bins) float32."""
        scaled = np.asarray(samples, dtype=np.float32) * np.float32(INT16_SCALE)  # (S,)
        # accept_waveform converts a Python sequence element by element; an array.array of float32
        # converts ~3x faster than a numpy array (same values).
        waveform = array.array("f")
        waveform.frombytes(scaled.tobytes())
        fbank = knf.OnlineFbank(self.options)
        fbank.accept_waveform(self.config.sample_rate, waveform)
        fbank.input_finished()
        num_frames = fbank.num_frames_ready
        if num_frames == 0:
            return np.zeros((0, self.config.num_mel_bins), dtype=np.float32)
        return np.stack([fbank.get_frame(i) for i in range(num_frames)])  # (T, D)


FeatsConfig = FbankConfig | WhisperMelConfig
FEATS_CONFIGS: dict[str, type] = {"fbank": FbankConfig, "whisper_mel": WhisperMelConfig}  # --type -> its options
EXTRACTORS: dict[str, type] = {"fbank": FbankExtractor, "whisper_mel": WhisperMelExtractor}
assert tuple(FEATS_CONFIGS) == FEATS_TYPES == tuple(EXTRACTORS)


def feats_config(feats_type: str = "fbank", num_mel_bins: int = 80) -> FeatsConfig:
    """The options of feature type ``feats_type`` (``fbank`` or ``whisper_mel``), defaults but the mel size.

    >>> feats_config("whisper_mel", 128)
    WhisperMelConfig(sample_rate=16000, num_mel_bins=128, n_fft=400, hop_length=160, max_frequency=8000.0)
    """
    if feats_type not in FEATS_CONFIGS:
        raise ValueError(f"unknown feature type {feats_type!r}; choose one of {', '.join(FEATS_CONFIGS)}")
    return FEATS_CONFIGS[feats_type](num_mel_bins=num_mel_bins)


def make_extractor(config: FeatsConfig):
    """The extractor of ``config``'s type: a callable samples (S,) at 16 kHz -> feats (T, num_mel_bins) float32."""
    return EXTRACTORS[config.feats_type](config)


@dataclasses.dataclass
class JobSummary:
    utterances: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0


def job_paths(out_prefix: str | os.PathLike) -> dict[str, Path]:
    """The files of one job: ``<prefix>.ark``, ``.scp``, ``.skipped``, ``.utt2num_frames``, ``.utt2dur``, ``.info``."""
    prefix = Path(out_prefix).absolute()
    return {name: prefix.with_name(f"{prefix.name}.{name}") for name in JOB_FILES}


def job_prefix(dump_dir: str | os.PathLike, job: int | str, feats_type: str = "fbank") -> Path:
    """``<dump>/data/raw_<feats_type>_<set>.<job>`` (absolute): where job ``job`` of ``make_fbank`` writes."""
    dump_dir = Path(dump_dir).absolute()
    return dump_dir / "data" / f"raw_{feats_type}_{dump_dir.name}.{job}"


def job_fingerprint(data_dir: str | os.PathLike, config: FeatsConfig) -> str:
    """Hash of what a job's output depends on: the part's wav.scp (+ segments), the feature type and its options."""
    options = dataclasses.asdict(config)
    if config.feats_type != "fbank":  # fbank's hash is the one from before feature types: its jobs stay complete
        options["feats_type"] = config.feats_type
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for name in ("wav.scp", "segments"):
        path = Path(data_dir) / name
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def job_summary_if_complete(out_prefix: str | os.PathLike, fingerprint: str) -> JobSummary | None:
    """The summary of a finished job whose inputs match ``fingerprint``; None if it must (re)run."""
    paths = job_paths(out_prefix)
    if not paths["scp"].exists() or not paths["info"].exists():
        return None
    try:
        info = json.loads(paths["info"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("fingerprint") != fingerprint:
        return None
    ark_bytes = paths["ark"].stat().st_size if paths["ark"].exists() else -1
    if ark_bytes != info.get("ark_bytes", ark_bytes):
        logger.warning("%s is %d bytes, the job wrote %d (truncated or overwritten): redoing the job", paths["ark"],
                       ark_bytes, info["ark_bytes"])
        return None
    return JobSummary(**info["summary"])


def compute_fbank_job(
    data_dir: str | os.PathLike, out_prefix: str | os.PathLike, config: FeatsConfig | None = None
) -> JobSummary:
    """Features (``config``'s type; default fbank) of every utterance of ``data_dir`` (one split part) into
    ``<out_prefix>.ark/.scp``.

    Streams one utterance at a time. Unreadable audio, and audio too short for one frame (fbank: under 400
    samples at 16 kHz; whisper_mel: under 160), is skipped and listed in ``<prefix>.skipped``.
    Files are written under ``.tmp`` names and renamed at the end, the scp last: its existence means
    the job is complete. A complete job with the same inputs and options is not redone.
    """
    config = config or FbankConfig()
    data_dir = Path(data_dir)
    paths = job_paths(out_prefix)
    fingerprint = job_fingerprint(data_dir, config)
    done = job_summary_if_complete(out_prefix, fingerprint)
    if done is not None:
        logger.info("%s exists and matches %s: job already complete", paths["scp"], data_dir)
        return done
    paths["scp"].unlink(missing_ok=True)  # from here on the job counts as incomplete
    paths["ark"].parent.mkdir(parents=True, exist_ok=True)
    tmp = {name: path.with_name(path.name + ".tmp") for name, path in paths.items()}
    extractor = make_extractor(config)
    summary = JobSummary()
    total = count_utterances(data_dir)
    with open(tmp["ark"], "wb") as ark, open(tmp["scp"], "w", encoding="utf-8") as scp, \
            open(tmp["skipped"], "w", encoding="utf-8") as skipped, \
            open(tmp["utt2num_frames"], "w", encoding="utf-8") as num_frames, \
            open(tmp["utt2dur"], "w", encoding="utf-8") as durations:
        progress = tqdm(iter_data_dir_audio(data_dir, config.sample_rate), total=total, unit="utt",
                        desc=f"{config.feats_type} {paths['ark'].name}",
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)
        for item in progress:
            feats = extractor(item.samples) if item.error is None else None  # (T, D)
            if feats is not None and feats.shape[0] == 0:
                item.error = f"too short for one frame ({item.samples.shape[0]} samples at {config.sample_rate} Hz)"
            elif feats is not None and not np.isfinite(feats).all():  # never written: CMVN and training refuse them
                item.error = f"{int((~np.isfinite(feats)).any(axis=1).sum())} frame(s) of NaN/Inf features"
            if item.error is not None:
                logger.warning("skipping %s: %s", item.utt_id, item.error)
                skipped.write(f"{item.utt_id} {item.error}\n")
                summary.skipped += 1
                continue
            ark.write(f"{item.utt_id} ".encode())
            offset = ark.tell()
            write_array(ark, feats)
            scp.write(f"{item.utt_id} {paths['ark']}:{offset}\n")
            num_frames.write(f"{item.utt_id} {feats.shape[0]}\n")
            durations.write(f"{item.utt_id} {item.duration:.4f}\n")
            summary.utterances += 1
            summary.frames += feats.shape[0]
            summary.seconds += item.duration
        ark.flush()
        os.fsync(ark.fileno())
    info = {"fingerprint": fingerprint, "summary": dataclasses.asdict(summary), "ark_bytes": tmp["ark"].stat().st_size}
    tmp["info"].write_text(json.dumps(info) + "\n", encoding="utf-8")
    for name in JOB_FILES:
        os.replace(tmp[name], paths[name])
    logger.info("%s: %d utterances (%.1f s, %d frames), %d skipped", paths["scp"], summary.utterances,
                summary.seconds, summary.frames, summary.skipped)
    return summary


def fbank_job_argv(part_dir: str | os.PathLike, out_prefix: str | os.PathLike, config: FeatsConfig) -> list[str]:
    """The command line of one job (``JOB`` in the paths is the launcher's job index): ``--type`` and every
    option of ``config`` (``--num-mel-bins 80``, ``--snip-edges true``, ...), as ``main`` reads them."""
    argv = [*JOB_COMMAND, str(part_dir), str(out_prefix), "--type", config.feats_type]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        argv += [_flag(field.name), str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _merge_tables(paths: list[Path], out: Path) -> int:
    """Merge sorted ``key value`` files into ``out`` (sorted by key, streamed, atomic); return the line count."""
    files = [open(p, encoding="utf-8") for p in paths]
    count = 0
    try:
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for line in heapq.merge(*files, key=lambda line: line.split(" ", 1)[0]):
                f.write(line)
                count += 1
    finally:
        for handle in files:
            handle.close()
    return count


def make_fbank(
    data_dir: str | os.PathLike,
    dump_dir: str | os.PathLike,
    nj: int = 1,
    cmd: str = "run.pl",
    config: FeatsConfig | None = None,
) -> JobSummary:
    """Features of a data dir into a dump dir: ``feats.scp`` (+ arks under ``data/``), ``utt2num_frames``,
    ``utt2dur``, the data dir's tables restricted to utterances with features, ``skipped``, and
    ``feats_type`` (``fbank 80``, ``whisper_mel 80``, ...). ``config`` picks the type (default: 80-dim fbank;
    ``feats_config("whisper_mel", 80)`` for Whisper's log-mel).

    Runs ``nj`` speaker-split jobs with launcher ``cmd`` (logs in ``<dump>/log/<type>.JOB.log``);
    complete jobs are kept, so a re-run after a failure redoes only the failed jobs, and a re-run
    after success does nothing; another type or other options redo every job. ``feats.scp`` is
    removed before any ark is rewritten.
    """
    config = config or FbankConfig()
    data_dir, dump_dir = Path(data_dir), Path(dump_dir).absolute()
    validate_data_dir(data_dir)
    data = DataDir.load(data_dir)
    num_speakers = len(spk2utt_from_utt2spk(data.utt2spk))
    if nj > num_speakers:
        logger.warning("%s: %d speakers, so %d jobs instead of %d", data_dir, num_speakers, num_speakers, nj)
        nj = num_speakers
    part_dirs = write_split(data, nj)
    prefixes = [job_prefix(dump_dir, k, config.feats_type) for k in range(1, nj + 1)]
    summaries = [job_summary_if_complete(p, job_fingerprint(d, config)) for p, d in zip(prefixes, part_dirs)]
    feats_scp = dump_dir / "feats.scp"
    sources = [data_dir / name for name in data.tables] + [job_paths(p)["scp"] for p in prefixes]
    # Each type has its own job files, so complete jobs of this type do not mean feats.scp lists them: it may
    # list another type's, made since (the feats_type file says).
    if all(summaries) and feats_scp.exists() and _recorded_feats_type(dump_dir) == _feats_type(config) and \
            feats_scp.stat().st_mtime >= max(s.stat().st_mtime for s in sources if s.exists()):
        logger.info("%s is up to date (%d jobs complete); nothing to do", feats_scp, nj)
        write_feats_type(dump_dir, _feats_type(config))  # a dump from before feats_type files gets one
        return _total(summaries)
    feats_scp.unlink(missing_ok=True)  # never leave it pointing at an ark a job is about to rewrite
    todo = [k for k, s in enumerate(summaries, 1) if s is None]
    if todo:
        logger.info("%s: computing %s of %d of %d job(s) %s", data_dir, config.feats_type, len(todo), nj, todo)
        run_jobs(cmd, nj, dump_dir / "log" / f"{config.feats_type}.JOB.log",
                 fbank_job_argv(part_dirs[0].parent / "JOB", job_prefix(dump_dir, "JOB", config.feats_type), config))
        summaries = [job_summary_if_complete(p, job_fingerprint(d, config)) for p, d in zip(prefixes, part_dirs)]
        missing = [str(job_paths(p)["scp"]) for p, s in zip(prefixes, summaries) if s is None]
        if missing:
            raise RuntimeError(f"{config.feats_type} jobs finished without writing {missing}; see {dump_dir / 'log'}")
    return _write_dump(data, dump_dir, [job_paths(p) for p in prefixes], _total(summaries), _feats_type(config))


def _feats_type(config: FeatsConfig) -> tuple[str, int]:
    """What ``<dump>/feats_type`` records of ``config``: ``("whisper_mel", 80)``."""
    return config.feats_type, config.num_mel_bins


def _recorded_feats_type(dump_dir: Path) -> tuple[str, int] | None:
    """What ``<dump>/feats_type`` says (``("fbank", 80)`` when absent), or None when it is malformed (rewritten)."""
    try:
        return read_feats_type(dump_dir)
    except ValueError:
        return None


def _total(summaries: list[JobSummary | None]) -> JobSummary:
    total = JobSummary()
    for s in summaries:
        total.utterances += s.utterances
        total.skipped += s.skipped
        total.frames += s.frames
        total.seconds += s.seconds
    return total


def _write_dump(data: DataDir, dump_dir: Path, jobs: list[dict[str, Path]], total: JobSummary,
                feats_type: tuple[str, int]) -> JobSummary:
    """Merge the job outputs and copy the tables into the dump dir; feats_type, then feats.scp last."""
    kept = set()
    for job in jobs:
        with open(job["scp"], encoding="utf-8") as f:
            kept.update(line.split(" ", 1)[0] for line in f)
    if not kept:
        raise DataDirError(f"{data.path}: no utterance has features; see {dump_dir / 'skipped'} and the job logs")
    tables = {k: v for k, v in data.tables.items() if k not in ("feats.scp", "utt2num_frames", "utt2dur")}
    DataDir(data.path, tables).subset(kept).save(dump_dir)
    _merge_tables([j["skipped"] for j in jobs], dump_dir / "skipped")
    _merge_tables([j["utt2num_frames"] for j in jobs], dump_dir / "utt2num_frames")
    _merge_tables([j["utt2dur"] for j in jobs], dump_dir / "utt2dur")
    write_feats_type(dump_dir, feats_type)
    _merge_tables([j["scp"] for j in jobs], dump_dir / "feats.scp")
    logger.info("%s (%s): %d utterances (%.1f s of audio, %d frames); %d skipped%s", dump_dir / "feats.scp",
                feats_type_line(feats_type), total.utterances, total.seconds, total.frames, total.skipped,
                f" (listed in {dump_dir / 'skipped'})" if total.skipped else "")
    return total


def main(argv: list[str] | None = None) -> None:
    """One job: ``python -m speechllm_cli.features.fbank <part-data-dir> <out-prefix> [--type T] [options of T]``."""
    from speechllm_cli.utils.logging import setup_logging

    type_parser = argparse.ArgumentParser(add_help=False)
    type_parser.add_argument("--type", choices=FEATS_TYPES, default="fbank")
    feats_type = type_parser.parse_known_args(argv)[0].type
    parser = argparse.ArgumentParser(description=main.__doc__, parents=[type_parser])
    parser.add_argument("data_dir", help="data dir of this job (a split part)")
    parser.add_argument("out_prefix", help="writes <prefix>.ark, .scp, .skipped, .utt2num_frames, .utt2dur")
    fields = dataclasses.fields(FEATS_CONFIGS[feats_type])
    for field in fields:  # every option of this type, its default from the dataclass
        if isinstance(field.default, bool):
            parser.add_argument(_flag(field.name), choices=("true", "false"), default=str(field.default).lower())
        else:
            parser.add_argument(_flag(field.name), type=type(field.default), default=field.default)
    args = vars(parser.parse_args(argv))
    setup_logging()
    if feats_type == "whisper_mel":  # one job, one core, as Kaldi's: the launcher runs nj of them side by side
        import torch

        torch.set_num_threads(1)
    options = {f.name: args[f.name] == "true" if isinstance(f.default, bool) else args[f.name] for f in fields}
    compute_fbank_job(args["data_dir"], args["out_prefix"], FEATS_CONFIGS[feats_type](**options))


if __name__ == "__main__":
    main()
