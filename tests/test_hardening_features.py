"""Bad inputs at the feature stage (issue 15): NaN/Inf features never written nor averaged into CMVN, a truncated
ark named with its utterance, ark, offset and the stage to re-run, and output files that honour the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile

from speechllm_cli.data.kaldi_dir import DataDir, read_table
from speechllm_cli.features.cmvn import CmvnError, compute_cmvn, read_cmvn_stats, write_cmvn
from speechllm_cli.features.fbank import make_fbank
from speechllm_cli.features.feats_reader import FeatsReader, FeatsReadError
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.utils.io import atomic_dir, atomic_write_text

RATE = 16000


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.shape)).astype(
        np.float32)


def make_data_dir(root: Path, clips: dict[str, np.ndarray]) -> Path:
    """A data dir whose wav.scp points at float WAV files of ``clips`` (utt id -> samples)."""
    tables = {name: OrderedDict() for name in ("wav.scp", "text", "utt2spk")}
    for utt, samples in sorted(clips.items()):
        path = root / "wav" / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, samples, RATE, subtype="FLOAT")
        tables["wav.scp"][utt] = str(path)
        tables["text"][utt] = f"words of {utt}"
        tables["utt2spk"][utt] = utt.split("-")[0]
    return DataDir(root / "data", tables).save().path


def write_dump(dump: Path, feats: dict[str, np.ndarray]) -> Path:
    dump.mkdir(parents=True, exist_ok=True)
    with kaldiio.WriteHelper(f"ark,scp:{dump}/feats.ark,{dump}/feats.scp") as writer:
        for utt in sorted(feats):
            writer(utt, feats[utt])
    (dump / "utt2num_frames").write_text("".join(f"{u} {len(feats[u])}\n" for u in sorted(feats)))
    return dump


# ----- 3. non-finite features

def test_compute_cmvn_refuses_nan_and_inf_naming_the_utterances(tmp_path):
    rng = np.random.default_rng(0)
    feats = {f"s-u{i}": rng.standard_normal((20, 4)).astype(np.float32) for i in range(4)}
    feats["s-u1"][3, 2] = np.nan
    feats["s-u2"][[0, 5], 0] = np.inf
    dump = write_dump(tmp_path / "dump", feats)
    with pytest.raises(CmvnError, match=r"2 utterance\(s\) have NaN or infinite.*s-u1 \(1 frame\(s\)\), "
                                        r"s-u2 \(2 frame\(s\)\)") as error:
        compute_cmvn(dump)
    assert "speechllm fbank" in str(error.value) and not (dump / "cmvn.ark").exists()
    result = subprocess.run([sys.executable, "-m", "speechllm_cli.cli", "compute-cmvn", str(dump)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "s-u1" in result.stderr and "Traceback" not in result.stderr
    stats = np.zeros((2, 5))
    stats[0, -1], stats[0, 0] = 10, np.nan
    write_cmvn(tmp_path / "nan.ark", stats)  # stats from an older run: refused when read
    with pytest.raises(CmvnError, match="NaN or infinite"):
        read_cmvn_stats(tmp_path / "nan.ark")


def test_fbank_never_writes_non_finite_features(tmp_path):
    bad = tone(1.0, 300)
    bad[4000] = np.nan  # a float WAV with a NaN sample
    data = make_data_dir(tmp_path, {"s-good1": tone(1.0, 440), "s-nan": bad, "s-good2": tone(0.8, 220)})
    make_fbank(data, tmp_path / "dump")
    assert list(read_table(tmp_path / "dump" / "feats.scp")) == ["s-good1", "s-good2"]
    assert "NaN or infinite sample" in read_table(tmp_path / "dump" / "skipped")["s-nan"]
    for _, feats in FeatsReader(tmp_path / "dump" / "feats.scp"):
        assert np.isfinite(feats).all()
    compute_cmvn(tmp_path / "dump")
    assert np.isfinite(read_cmvn_stats(tmp_path / "dump" / "cmvn.ark")).all()


# ----- 4. a truncated ark

def test_truncated_ark_names_utterance_ark_offset_and_the_stage_to_rerun(tmp_path):
    data = make_data_dir(tmp_path, {f"s-u{i}": tone(1.0 + 0.2 * i, 200 + 50 * i) for i in range(3)})
    dump = tmp_path / "dump"
    make_fbank(data, dump)
    entry = read_table(dump / "feats.scp")["s-u2"]
    ark, offset = entry.rsplit(":", 1)
    size = os.path.getsize(ark)
    with open(ark, "r+b") as f:
        f.truncate(size - 1000)  # a kill mid-write: the last matrix is cut short
    readers = (lambda: compute_cmvn(dump), lambda: DumpDataset(dump)[2], lambda: list(FeatsReader(dump / "feats.scp")))
    for read in readers:
        with pytest.raises(FeatsReadError) as error:
            read()
        message = str(error.value)
        assert f"'s-u2' from {ark} at byte {offset} ({size - 1000} bytes long)" in message
        assert "cut short" in message and "speechllm fbank" in message and "re-run" in message
    make_fbank(data, dump)  # re-running the stage redoes the damaged job
    assert os.path.getsize(ark) == size
    compute_cmvn(dump)


# ----- 10. the umask decides the mode of atomically written files

@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                        (0o077, 0o600, 0o700)])
def test_atomic_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_bytes(b"x")
        write_cmvn(tmp_path / "cmvn.ark", np.ones((2, 3)))
        data = make_data_dir(tmp_path / "d", {"s-u1": tone(0.5, 300)})
        make_fbank(data, tmp_path / "dump")
    finally:
        os.umask(old)
    for path in (tmp_path / "config.yaml", tmp_path / "cmvn.ark", tmp_path / "dump" / "feats.scp",
                 tmp_path / "dump" / "text", tmp_path / "model" / "weights"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == dir_mode
