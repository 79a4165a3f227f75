"""A noisy (and reverberant) copy of a test set: the same utterances, references and ids, degraded audio.

Usage:
    speechllm add-noise data/test data/test_noisy --snr "5 15" --reverb-prob 0.5 --seed 1
    ./run.sh --noisy-snr "5 15"      # stage 1 also writes data/<test set>_noisy and later stages decode it

Python::

    from speechllm_cli.features.augment import AugmentConfig
    from speechllm_cli.features.noisy_copy import write_noisy_copy
    write_noisy_copy("data/test", "data/test_noisy", AugmentConfig(noise_prob=1.0, snr_db=(5, 15), reverb_prob=0.5))

Each utterance's audio (its segment, when the data dir has ``segments``) goes through the training augmentation
(features/augment.py) with its own draw from (``seed``, utterance id), and is written as 16 kHz 16-bit FLAC under
``<out>/audio/``. The copy's ``wav.scp`` is keyed by utterance (no ``segments``); text, text.src, utt2spk, utt2lang
and utt2dur are copied, and ``noisy_copy.yaml`` records the settings and the SNR / room of every utterance. A file
already written is kept (a rerun finishes an interrupted copy); an utterance whose audio cannot be read is skipped,
logged and listed in ``<out>/skipped``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import soundfile
import yaml
from tqdm import tqdm

from speechllm_cli.data.kaldi_dir import DataDir
from speechllm_cli.features.audio import TARGET_RATE, count_utterances, iter_data_dir_audio
from speechllm_cli.features.augment import AugmentConfig, augment, utterance_rng

logger = logging.getLogger(__name__)

COPIED_TABLES = ("text", "text.src", "utt2spk", "utt2lang", "utt2dur")


def write_noisy_copy(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: AugmentConfig,
                     seed: int = 1) -> dict:
    """Write the degraded copy of ``data_dir`` to ``out_dir``; returns what ``noisy_copy.yaml`` records."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if data_dir.resolve() == out_dir.resolve():
        raise ValueError(f"{out_dir}: the copy would overwrite its source; give another output dir")
    data = DataDir.load(data_dir)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    wav_scp, skipped = {}, {}
    total = count_utterances(data_dir)
    for utt in tqdm(iter_data_dir_audio(data_dir), total=total, desc=f"add-noise {data_dir.name}", unit="utt",
                    disable=None):
        path = audio_dir / f"{utt.utt_id}.flac"
        if utt.error is not None:
            skipped[utt.utt_id] = utt.error
            continue
        if not path.is_file():
            noisy = augment(utt.samples, config, utterance_rng(seed, 0, utt.utt_id))
            tmp = path.with_suffix(".tmp.flac")
            soundfile.write(tmp, noisy.clip(-1.0, 1.0), TARGET_RATE, subtype="PCM_16")
            tmp.replace(path)
        wav_scp[utt.utt_id] = str(path.resolve())
    if skipped:
        logger.warning("%s: %d utterance(s) skipped (unreadable audio), listed in %s: %s", data_dir, len(skipped),
                       out_dir / "skipped", ", ".join(list(skipped)[:5]))
        (out_dir / "skipped").write_text("".join(f"{u} {why}\n" for u, why in skipped.items()), encoding="utf-8")
    kept = set(wav_scp)
    tables = {"wav.scp": wav_scp}
    for name in COPIED_TABLES:
        if name in data.tables:
            tables[name] = {u: v for u, v in data.tables[name].items() if u in kept}
    DataDir(out_dir, tables).save()
    record = {"source": str(data_dir), "seed": seed, "augment": dataclasses.asdict(config),
              "utterances": len(wav_scp), "skipped": len(skipped)}
    (out_dir / "noisy_copy.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    logger.info("wrote %s: %d utterances (%s)", out_dir, len(wav_scp), ", ".join(
        f"{k} {v}" for k, v in dataclasses.asdict(config).items()))
    return record
