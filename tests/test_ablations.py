"""The ablation configs of egs/covost2/conf/tuning: each is an overlay of the base config that changes what its
name says, and each trains (one step) on a tiny LLaMA with real fbank; no compression feeds the LLM every
subsampled frame."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from _speech_llm_fixtures import feats_batch, make_model, save_tiny_llm, tiny_compressor
from _train_fixtures import build_corpus, save_random_ctc_dir

from speechllm_cli.models.subsampling import subsampled_lengths
from speechllm_cli.train.dataset import DumpDataset
from speechllm_cli.train.speechllm_task import SpeechLLMTask, load_experiment
from speechllm_cli.utils.config import ConfigError, read_yaml, to_plain

CONF = Path(__file__).resolve().parents[1] / "egs" / "covost2" / "conf"
ABLATIONS = sorted((CONF / "tuning").glob("ablation_*.yaml")) + sorted((CONF / "tuning").glob("adapter_*.yaml"))
TINY_TRANSFORMER = {"model.adapter.num_layers": 1, "model.adapter.d_model": 32, "model.adapter.num_heads": 2,
                    "model.adapter.ff_dim": 64}


def _flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_overlay(path: Path) -> dict:
    """The file as written (its own keys, ``base`` left out), without the base config."""
    return {k: v for k, v in yaml.safe_load(path.read_text(encoding="utf-8")).items() if k != "base"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("ablations")
    corpus = build_corpus(root)
    ctc_dir = save_random_ctc_dir(root / "ctc", corpus)
    return corpus, ctc_dir, save_tiny_llm(root / "llm")


def test_there_are_ablations_of_every_kind():
    names = {path.stem.removeprefix("ablation_") for path in ABLATIONS}
    assert {"compression_blank_remove", "compression_none", "encoder_causal", "llm_audio_bidirectional",
            "lora_rank0", "lora_rank8", "adapter_stack_mlp", "adapter_conv", "adapter_qformer"} <= names


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_changes_only_what_it_names(path):
    base = _flatten(read_yaml(CONF / "train_speechllm.yaml"))
    merged = _flatten(read_yaml(path))
    overlay = _flatten(read_overlay(path))
    changed = {key for key in merged if merged[key] != base.get(key)}
    assert changed and changed == {key for key in overlay if overlay[key] != base.get(key)}
    replaced = {key.removesuffix("type") for key in overlay if key.endswith(".type") and overlay[key] != base[key]}
    kept = {key for key in base if not any(key.startswith(section) for section in replaced)}  # a new type: new keys
    assert set(merged) == kept | set(overlay)


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_config_trains_one_step(setup, path):
    corpus, ctc_dir, llm = setup
    tiny = TINY_TRANSFORMER if read_yaml(path)["model"]["adapter"]["type"] == "transformer" else {}
    exp = load_experiment(path, {"model.frontend.dir": str(ctc_dir), "model.llm": str(llm), **tiny})
    expected = _flatten(read_overlay(path).get("model", {}))
    actual = _flatten(to_plain(exp.model))
    assert all(actual[key] == value for key, value in expected.items() if key != "llm")
    task = SpeechLLMTask(exp)
    torch.manual_seed(0)
    model = task.build_model().train()
    dev = DumpDataset(corpus["dev"])
    batch = task.collate([dev[i] for i in range(3)])
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, stats = task.compute_loss(model, batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and stats["loss"][1] == 3
    changed = {name for name, p in model.named_parameters()
               if name in trainable and not torch.equal(p, trainable[name])}
    assert any(name.startswith("adapter.") for name in changed)
    has_lora = any("lora_" in name for name in changed)
    assert has_lora == (exp.model.lora.rank > 0)


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nmodel: {label_embeddings: false}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "a.yaml")


def test_no_compression_feeds_every_subsampled_frame(tmp_path):
    llm = save_tiny_llm(tmp_path / "llm")
    model = make_model(llm, tiny_compressor(), compression="none")
    feats, feat_lens = feats_batch()
    with torch.no_grad():
        audio_embeds, audio_lens = model.encode_audio(feats, feat_lens)
    assert audio_lens.tolist() == subsampled_lengths(feat_lens).tolist()
    assert audio_embeds.shape[1] == int(audio_lens.max())
    frame_average = make_model(llm, tiny_compressor(), compression="frame_average")
    with torch.no_grad():
        _, compressed_lens = frame_average.encode_audio(feats, feat_lens)
    assert (compressed_lens <= audio_lens).all()
