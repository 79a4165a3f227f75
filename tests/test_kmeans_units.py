"""k-means units (the audio-token family's first step) on a real fbank dump dir (espeak-ng speech) and a tiny CTC
compressor's encoder: reproducible with a seed, runs collapsed, units per second, the CLI end to end."""

from __future__ import annotations

import pytest
import torch
import yaml
from _speech_llm_fixtures import UTTS, make_dump_dir, speech_feats
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.models.kmeans_units import KMeansConfig, UnitExtractor, train_kmeans, write_units
from speechllm_cli.models.load import load_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dump of real speech and a tiny random CTC compressor dir (its encoder gives the frames)."""
    from _train_fixtures import save_ctc_dir

    from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
    from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("units")
    dump = make_dump_dir(root / "dump", dict(zip(UTTS, speech_feats())))
    (root / "text").write_text("".join(f"{u} {t}\n" for u, (_, t) in UTTS.items()), encoding="utf-8")
    token_dir = train_tokenizer([root / "text"], root / "tokens", vocab_size=20, model_type="char")
    torch.manual_seed(0)
    config = CTCCompressorConfig(d_model=32, num_heads=2, ff_dim=64, num_layers=1, dropout=0.0,
                                 vocab_size=Tokenizer.load(token_dir).vocab_size)
    ctc = save_ctc_dir(root / "ctc", CTCCompressor(config), token_dir)
    return root, dump, ctc


def _config(ctc, seed=0, k=8):
    return KMeansConfig({"type": "ctc_compressor", "dir": str(ctc)}, num_units=k, seed=seed, batch_size=64)


def test_same_seed_same_units_other_seed_other_centroids(setup, tmp_path):
    root, dump, ctc = setup
    one = UnitExtractor.load(train_kmeans(_config(ctc), dump, tmp_path / "a"))
    two = UnitExtractor.load(train_kmeans(_config(ctc), dump, tmp_path / "b"))
    other = UnitExtractor.load(train_kmeans(_config(ctc, seed=1), dump, tmp_path / "c"))
    assert torch.equal(one.centroids, two.centroids) and not torch.equal(one.centroids, other.centroids)
    feats = list(speech_feats())
    units = one(feats)
    assert units == two(feats)
    for sequence in units:
        assert sequence and all(0 <= u < 8 for u in sequence)
        assert all(a != b for a, b in zip(sequence, sequence[1:])), "runs of one unit collapse"
    assert len(set(sum(units, []))) > 2, "frames spread over several units"
    assert isinstance(load_model(tmp_path / "a"), UnitExtractor)
    assert yaml.safe_load((tmp_path / "a" / "model.yaml").read_text())["config"]["frontend"]["compression"] == "none"


def test_units_of_a_dump_dir_with_units_per_second(setup, tmp_path, caplog):
    root, dump, ctc = setup
    result = CliRunner().invoke(app, ["train-kmeans", "--frontend", "ctc_compressor", "--frontend-dir", str(ctc),
                                      "--data", str(dump), "--num-units", "6", "--out", str(tmp_path / "km")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["units", "--kmeans", str(tmp_path / "km"), "--data", str(dump),
                                      "--out", str(tmp_path / "units")])
    assert result.exit_code == 0, result.output
    units = read_table(tmp_path / "units" / "units")
    assert set(units) == set(UTTS)
    assert read_table(tmp_path / "units" / "text") == read_table(dump / "text")
    stats = yaml.safe_load((tmp_path / "units" / "units_stats.yaml").read_text())
    frames = sum(int(n) for n in read_table(dump / "utt2num_frames").values())
    assert stats["units"] == sum(len(v.split()) for v in units.values())
    assert stats["units_per_second"] == pytest.approx(stats["units"] / (frames * 0.01), rel=1e-3)
    assert 0 < stats["units_per_second"] <= 25  # at most one unit per 40 ms encoder frame


def test_too_few_frames_and_a_changed_encoder_are_refused(setup, tmp_path):
    root, dump, ctc = setup
    with pytest.raises(ValueError, match="lower --num-units"):
        train_kmeans(_config(ctc, k=100000), dump, tmp_path / "x")
    km = train_kmeans(_config(ctc), dump, tmp_path / "km")
    weights = ctc / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + b"\0\0\0\0")  # the encoder was retrained after the k-means
        with pytest.raises(ValueError, match="train the k-means again"):
            write_units(km, dump, tmp_path / "units")
    finally:
        weights.write_bytes(original)
