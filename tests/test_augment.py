"""On-the-fly noise and reverberation (features/augment.py): the SNR and the room decay it promises, draws that
depend on (seed, epoch, utterance) only, and DumpDataset computing features from the dump's audio with them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from speechllm_cli.features.augment import (
    AugmentConfig,
    add_noise,
    augment,
    colored_noise,
    reverberate,
    room_impulse_response,
    utterance_rng,
)
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.utils.config import ConfigError

RATE = 16000


def _tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_is_added_at_the_asked_snr(snr_db):
    clean = _tone()
    noisy = add_noise(clean, colored_noise(np.random.default_rng(0), len(clean), "pink"), snr_db)
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_noise_colors_tilt_the_spectrum_as_named():
    def low_to_high(color):
        noise = colored_noise(np.random.default_rng(1), RATE, color)
        power = np.abs(np.fft.rfft(noise)) ** 2
        freqs = np.fft.rfftfreq(RATE, 1 / RATE)
        return power[(freqs > 50) & (freqs < 500)].mean() / power[(freqs > 4000) & (freqs < 8000)].mean()

    white, pink, brown = (low_to_high(c) for c in ("white", "pink", "brown"))
    assert 0.7 < white < 1.4 and 5 < pink < 40 and brown > 50 * pink / 10
    assert np.sqrt(np.mean(colored_noise(np.random.default_rng(2), 1000, "brown") ** 2)) == pytest.approx(1.0, 1e-4)


def test_room_impulse_response_decays_60_db_over_rt60():
    rir = room_impulse_response(np.random.default_rng(3), rt60=0.5)
    assert len(rir) == int(0.5 * RATE) and rir[0] == 1.0
    tail = rir[int(0.005 * RATE):].astype(np.float64) ** 2
    first, last = tail[: len(tail) // 10].mean(), tail[-len(tail) // 10:].mean()
    assert 10 * np.log10(first / last) > 40  # ~54 dB from the first to the last tenth of a 60 dB decay
    reverberant = reverberate(_tone(), rir)
    assert reverberant.shape == _tone().shape
    assert np.max(np.abs(reverberant)) == pytest.approx(np.max(np.abs(_tone())), rel=1e-5)
    assert not np.allclose(reverberant, _tone(), atol=1e-3)


def test_draws_depend_on_seed_epoch_and_utterance_only():
    config = AugmentConfig(noise_prob=1.0, reverb_prob=1.0)
    clean = _tone()
    one = augment(clean, config, utterance_rng(0, 1, "spkA-u1"))
    assert np.array_equal(one, augment(clean, config, utterance_rng(0, 1, "spkA-u1")))
    for other in (utterance_rng(1, 1, "spkA-u1"), utterance_rng(0, 2, "spkA-u1"), utterance_rng(0, 1, "spkA-u2")):
        assert not np.array_equal(one, augment(clean, config, other))
    assert np.array_equal(augment(clean, AugmentConfig(), utterance_rng(0, 1, "x")), clean)  # off: untouched


@pytest.mark.parametrize("section, key", [
    ({"noise_prob": 1.5}, "noise_prob"), ({"snr_db": (20, 5)}, "snr_db"), ({"rt60": (0.0, 0.5)}, "rt60"),
    ({"noise_colors": ("blue",)}, "noise_colors"),
])
def test_bad_settings_name_the_key(section, key):
    with pytest.raises(ConfigError, match=f"train.augment.{key}"):
        AugmentConfig(**section)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from _train_fixtures import build_corpus

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    return build_corpus(tmp_path_factory.mktemp("augment"))


def test_dataset_features_from_the_audio_with_augmentation(corpus):
    plain = DumpDataset(corpus["train"])
    never = DumpDataset(corpus["train"], augment=AugmentConfig(noise_prob=1e-12))  # on, but no draw applies
    for i in range(len(plain)):  # computed from the audio: the dump's own features
        np.testing.assert_allclose(never[i]["feats"], plain[i]["feats"], atol=1e-5)
    noisy = DumpDataset(corpus["train"], augment=AugmentConfig(noise_prob=1.0, snr_db=(0.0, 0.0)), seed=5)
    noisy.set_epoch(1)
    first = noisy[0]["feats"]
    assert first.shape == plain[0]["feats"].shape and np.abs(first - plain[0]["feats"]).mean() > 1.0
    assert np.array_equal(first, noisy[0]["feats"])  # the same epoch: the same draw
    noisy.set_epoch(2)
    assert not np.array_equal(first, noisy[0]["feats"])


def test_augmentation_needs_the_dumps_audio(corpus, tmp_path):
    dump = tmp_path / "dump"
    shutil.copytree(corpus["dev"], dump)
    (dump / "wav.scp").unlink()
    with pytest.raises(FileNotFoundError, match="wav.scp"):
        DumpDataset(dump, augment=AugmentConfig(noise_prob=0.5))
    DumpDataset(dump)  # without augmentation the features suffice


def test_a_noisy_copy_of_a_test_set_keeps_ids_and_references(corpus, tmp_path, caplog):
    """`speechllm add-noise` on a real data dir (one unreadable file): the same utterances and texts, degraded audio
    at the asked SNR range, reproducible, resumable, the bad file skipped and listed."""
    import yaml
    from typer.testing import CliRunner

    from speechllm_cli.cli import app
    from speechllm_cli.data.kaldi_dir import read_table, validate_data_dir
    from speechllm_cli.features.audio import load_audio

    source = tmp_path / "test"
    source.mkdir()
    wavs = read_table(corpus["dev"] / "wav.scp")
    wavs["spkxx-broken"] = str(tmp_path / "missing.wav")
    tables = {"wav.scp": wavs, "text": {**read_table(corpus["dev"] / "text"), "spkxx-broken": "nothing"},
              "utt2spk": {**read_table(corpus["dev"] / "utt2spk"), "spkxx-broken": "spkxx"}}
    for name, table in tables.items():
        (source / name).write_text("".join(f"{u} {v}\n" for u, v in sorted(table.items())), encoding="utf-8")
    argv = ["add-noise", str(source), str(tmp_path / "noisy"), "--snr", "10", "--reverb-prob", "0"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    noisy = tmp_path / "noisy"
    validate_data_dir(noisy)
    assert read_table(noisy / "text") == read_table(corpus["dev"] / "text")
    assert "spkxx-broken" in (noisy / "skipped").read_text() and "1 utterance(s) skipped" in caplog.text
    utt = sorted(read_table(noisy / "wav.scp"))[0]
    clean, degraded = load_audio(wavs[utt]), load_audio(read_table(noisy / "wav.scp")[utt])
    assert clean.shape == degraded.shape
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((degraded - clean).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)  # 16-bit FLAC rounding aside
    first = (noisy / "audio" / f"{utt}.flac").read_bytes()
    record = yaml.safe_load((noisy / "noisy_copy.yaml").read_text())
    assert record["utterances"] == len(read_table(corpus["dev"] / "text")) and record["skipped"] == 1
    (noisy / "audio" / f"{utt}.flac").unlink()  # an interrupted copy: the rerun writes the same file again
    assert CliRunner().invoke(app, argv).exit_code == 0
    assert (noisy / "audio" / f"{utt}.flac").read_bytes() == first
    result = CliRunner().invoke(app, ["add-noise", str(source), str(tmp_path / "x"), "--snr", "loud"])
    assert result.exit_code != 0 and "--snr takes one or two numbers" in caplog.text
