"""The survey's other two families end to end on real espeak-ng speech and a tiny LLaMA, through the same `train`,
`decode` and `score` commands as the speech LLMs: the audio-token LLM (k-means units -> new token rows + LoRA), the
cascade's translation step and generative error correction (text LLMs on text dirs from `speechllm text-input`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from _speech_llm_fixtures import save_tiny_llm
from _train_fixtures import build_corpus, save_random_ctc_dir
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import DataDirError, read_table
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.decode.text_input import write_text_input
from speechllm_cli.models.kmeans_units import KMeansConfig, train_kmeans, write_units
from speechllm_cli.models.load import load_model
from speechllm_cli.models.model_dir import read_model_record
from speechllm_cli.models.text_llm import render_input

TRAIN = {"batch_frames": 100000, "max_batch_size": 4, "epochs": 3, "lr": 5e-3, "warmup_steps": 1,
         "scheduler": "constant", "seed": 1, "log_interval": 1, "checkpoint_every_steps": 0}


def _invoke(*argv):
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, result.output
    return result


def _write_config(path, config):
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A real fbank corpus (en + de), a tiny CTC compressor's encoder as the unit front-end, 8 k-means units, a tiny
    LLaMA, and a unit LLM trained and decoded (beam 2, 2-best) on it."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("families")
    corpus = build_corpus(root)
    ctc = save_random_ctc_dir(root / "ctc", corpus)
    kmeans = train_kmeans(KMeansConfig({"type": "ctc_compressor", "dir": str(ctc)}, num_units=8, batch_size=64),
                          corpus["train"], root / "kmeans")
    llm = save_tiny_llm(root / "llm")
    config = _write_config(root / "units.yaml", {
        "task": "auto",
        "model": {"llm": str(llm), "frontend": {"type": "kmeans_units", "dir": str(kmeans)},
                  "adapter": {"type": "unit_embedding"}, "lora": {"rank": 2, "dropout": 0.0}},
        "train": TRAIN})
    exp = root / "exp" / "units"
    _invoke("train", "--config", config, "--train-data", corpus["train"], "--valid-data", corpus["dev"], "--out", exp)
    decode = exp / "decode_dev"
    _invoke("decode", "--model", exp, "--data", corpus["dev"], "--out", decode, "--beam", 2, "--nbest", 2,
            "--max-new-tokens", 8)
    _invoke("score", decode)
    return {"root": root, "corpus": corpus, "llm": llm, "kmeans": kmeans, "units_exp": exp, "units_decode": decode}


def test_unit_llm_trains_new_token_rows_and_lora_and_decodes_one_position_per_unit(setup, tmp_path):
    exp, corpus = setup["units_exp"], setup["corpus"]
    history = json.loads((exp / "history.json").read_text())["history"]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    assert "loss_rolled" in history[-1]["valid"], "the audio-use diagnostics run for units too"
    model = load_model(exp / "model")
    assert read_model_record(exp / "model")["model_type"] == "speech_llm"
    fresh = load_model(exp / "model")
    assert torch.equal(model.adapter.output_proj.weight, fresh.adapter.output_proj.weight)
    assert model.adapter.output_proj.weight.shape == (model.hf_llm.config.hidden_size, 8)  # 8 new token rows
    trained = {n for n, p in load_model(exp / "model", trainable=True).named_parameters() if p.requires_grad}
    assert "adapter.output_proj.weight" in trained and any("lora_" in n for n in trained)
    assert not any(n.startswith("frontend.") for n in trained)
    # the LLM reads exactly the collapsed units: decode's audio positions = `speechllm units`' count
    stats = yaml.safe_load((setup["units_decode"] / "stats.yaml").read_text())
    unit_stats = write_units(setup["kmeans"], corpus["dev"], tmp_path / "units")
    assert stats["audio_positions"] == unit_stats["units"] > 0
    assert (setup["units_decode"] / "result.json").is_file()


def test_a_packaged_unit_llm_carries_its_kmeans_and_encoder(setup, tmp_path):
    from speechllm_cli.features.feats_reader import FeatsReader
    from speechllm_cli.models.frontends.base import pad_feats

    exp, corpus = setup["units_exp"], setup["corpus"]
    _invoke("package", "--model", exp, "--out", tmp_path / "pkg")
    shutil.move(str(setup["root"] / "ctc"), str(tmp_path / "ctc_moved"))  # the encoder must come from the package
    try:
        assert yaml.safe_load((tmp_path / "pkg" / "frontend" / "model.yaml").read_text())["config"]["frontend"][
            "dir"] == "../encoder"
        packaged = load_model(tmp_path / "pkg")
        reader = FeatsReader(corpus["dev"] / "feats.scp")
        feats = [reader[u] for u in sorted(read_table(corpus["dev"] / "utt2lang"))]
        shutil.move(str(tmp_path / "ctc_moved"), str(setup["root"] / "ctc"))
        original = load_model(exp / "model")
        with torch.inference_mode():
            one = packaged.decoding_prefix(*pad_feats(feats, "cpu"), ["asr"] * len(feats))
            two = original.decoding_prefix(*pad_feats(feats, "cpu"), ["asr"] * len(feats))
        assert all(torch.equal(a, b) for a, b in zip(one.embeds, two.embeds))
    finally:
        if (tmp_path / "ctc_moved").exists():
            shutil.move(str(tmp_path / "ctc_moved"), str(setup["root"] / "ctc"))


def test_text_inputs_from_a_table_a_decode_and_its_nbest(setup, tmp_path, caplog):
    corpus, decode = setup["corpus"], setup["units_decode"]
    write_text_input(corpus["dev"], tmp_path / "gold", from_table="text.src")
    assert read_table(tmp_path / "gold" / "input") == read_table(corpus["dev"] / "text.src")
    assert read_table(tmp_path / "gold" / "text") == read_table(corpus["dev"] / "text")
    write_text_input(corpus["dev"], tmp_path / "one", decode_dirs=[decode])
    assert read_table(tmp_path / "one" / "input", allow_empty_value=True) == read_table(decode / "hyp.txt",
                                                                                       allow_empty_value=True)
    write_text_input(corpus["dev"], tmp_path / "two", decode_dirs=[decode], nbest=2)
    lists = read_nbest(decode / "nbest.txt")
    for utt, line in read_table(tmp_path / "two" / "input", allow_empty_value=True).items():
        texts = list(dict.fromkeys(h["text"] for h in lists[utt]))  # distinct, in rank order
        assert line.split(" ||| ") == texts[:2]
    assert render_input("a b ||| c d ||| e", "nbest", 2) == "\n1. a b\n2. c d"
    with pytest.raises(DataDirError, match="have no input"):
        write_text_input(corpus["train"], tmp_path / "x", decode_dirs=[decode])  # dev's decode, train's utterances
    with pytest.raises(DataDirError, match="earlier --from-decode"):
        write_text_input(corpus["dev"], tmp_path / "x", decode_dirs=[decode, decode])
    result = CliRunner().invoke(app, ["text-input", "--data", str(corpus["dev"]), "--out", str(tmp_path / "x"),
                                      "--from-table", "nope"])
    assert result.exit_code != 0 and "dev/nope: missing" in caplog.text


def test_cascade_translation_step_copies_asr_languages_and_translates_the_rest(setup, tmp_path):
    corpus = setup["corpus"]
    for name in ("train", "dev"):
        _invoke("text-input", "--data", corpus[name], "--from-table", "text.src", "--out", tmp_path / "src" / name)
    config = _write_config(tmp_path / "mt.yaml", {
        "model_type": "text_llm", "task": "auto",
        "model": {"llm": str(setup["llm"]), "copy_langs": ["en"], "lora": {"rank": 2, "dropout": 0.0}},
        "train": TRAIN})
    exp = tmp_path / "cascade_mt"
    _invoke("train", "--config", config, "--train-data", tmp_path / "src" / "train", "--valid-data",
            tmp_path / "src" / "dev", "--out", exp)
    assert read_model_record(exp / "model")["model_type"] == "text_llm"
    history = json.loads((exp / "history.json").read_text())["history"]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    assert "loss_rolled" in history[-1]["valid"]  # another utterance's input: the input-use diagnostic
    # test time: the speech system's 1-best as the source transcript, decoded in 2 jobs
    _invoke("text-input", "--data", corpus["dev"], "--from-decode", setup["units_decode"], "--out", tmp_path / "asr")
    out = exp / "decode_dev"  # inside its experiment, as the recipe decodes
    _invoke("decode", "--model", exp, "--data", tmp_path / "asr", "--out", out, "--nj", 2, "--max-new-tokens", 6)
    hyps = read_table(out / "hyp.txt", allow_empty_value=True)
    asr = read_table(setup["units_decode"] / "hyp.txt", allow_empty_value=True)
    langs = read_table(corpus["dev"] / "utt2lang")
    assert set(hyps) == set(langs)
    assert all(hyps[u] == asr[u] for u in hyps if langs[u] == "en"), "English passes through the cascade"
    stats = yaml.safe_load((out / "stats.yaml").read_text())
    assert stats["audio_seconds"] == pytest.approx(
        sum(int(n) for n in read_table(corpus["dev"] / "utt2num_frames").values()) * 0.01, rel=1e-3)
    _invoke("score", out)
    _check_families_table(setup, out, exp, tmp_path)
    # the same decode, the same options: left alone
    _invoke("decode", "--model", exp, "--data", tmp_path / "asr", "--out", out, "--nj", 2, "--max-new-tokens", 6)
    assert read_table(out / "hyp.txt", allow_empty_value=True) == hyps


def test_generative_error_correction_reads_an_nbest_list(setup, tmp_path, caplog):
    corpus = setup["corpus"]
    nbest = tmp_path / "nbest"
    _invoke("text-input", "--data", corpus["dev"], "--from-decode", setup["units_decode"], "--nbest", 2, "--out", nbest)
    config = _write_config(tmp_path / "ger.yaml", {
        "model_type": "text_llm", "task": "auto",
        "model": {"llm": str(setup["llm"]), "input_format": "nbest", "nbest": 2,
                  "prompts": {"asr": "Correct the transcript:", "st": "Correct the translation:"},
                  "lora": {"rank": 2, "dropout": 0.0}},
        "train": TRAIN})
    exp = tmp_path / "ger"
    _invoke("train", "--config", config, "--train-data", nbest, "--valid-data", nbest, "--out", exp)
    model = load_model(exp / "model")
    ids, lens = model.pad_inputs(["a ||| b ||| c"], "cpu")
    assert model.tokenizer.decode(ids[0, : int(lens[0])]) == "\n1. a\n2. b"
    out = tmp_path / "decode_ger"
    _invoke("decode", "--model", exp, "--data", nbest, "--out", out, "--max-new-tokens", 6)
    assert set(read_table(out / "hyp.txt", allow_empty_value=True)) == set(read_table(nbest / "input",
                                                                                     allow_empty_value=True))
    result = CliRunner().invoke(app, ["decode", "--model", str(exp), "--data", str(corpus["dev"]), "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code != 0 and "speechllm text-input" in caplog.text  # a dump dir has no input table
    from speechllm_cli import SpeechModel

    with pytest.raises(ValueError, match="reads text, not audio"):
        SpeechModel.load(exp)


def _check_families_table(setup, cascade_decode, cascade_exp, tmp_path):
    """`speechllm results --systems`: a two-step system sums its steps' parameters, training and decoding time."""
    from speechllm_cli.score.families import read_systems, system_row

    units_decode = setup["units_decode"]
    systems = _write_config(tmp_path / "systems.yaml", [
        {"family": "audio-token", "system": "units", "decode": str(units_decode).replace("dev", "{set}"),
         "train_only": [str(setup["kmeans"])]},
        {"family": "text-based", "system": "cascade", "decode": str(cascade_decode),
         "stages": [str(units_decode)]}])
    _invoke("results", tmp_path, "--systems", systems, "--sets", "dev", "--out", tmp_path / "FAMILIES.md")
    table = (tmp_path / "FAMILIES.md").read_text()
    assert "| audio-token | units | dev |" in table and "| text-based | cascade | dev |" in table
    units, cascade = (system_row(s, "dev") for s in read_systems(systems))
    info = [json.loads((d / "model_info.json").read_text()) for d in (setup["units_exp"], cascade_exp)]
    kmeans_seconds = yaml.safe_load((setup["kmeans"] / "model.yaml").read_text())["stats"]["seconds"]
    assert units["params_trained"] == info[0]["params_trained"]
    assert units["train_seconds"] == pytest.approx(info[0]["train_time_s"] + kmeans_seconds)
    assert cascade["params_trained"] == info[0]["params_trained"] + info[1]["params_trained"]
    assert cascade["params_total"] == info[0]["params_total"] + info[1]["params_total"]
    stats = [yaml.safe_load((d / "stats.yaml").read_text()) for d in (units_decode, cascade_decode)]
    assert cascade["rtf"] == pytest.approx((stats[0]["decode_seconds"] + stats[1]["decode_seconds"])
                                           / stats[1]["audio_seconds"])
    result = json.loads((cascade_decode / "result.json").read_text())
    assert cascade["wer"]["en"] == result["groups"]["en"]["wer"]
    assert f"{result['groups']['all_st']['bleu']:.2f}" in table


def test_unit_llm_decodes_alike_in_llamacpp(setup, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by make install")
    exp, dev = setup["units_exp"], setup["corpus"]["dev"]
    common = ["--model", exp, "--data", dev, "--max-new-tokens", 6]
    _invoke("decode", *common, "--out", tmp_path / "pytorch")
    _invoke("decode", *common, "--out", tmp_path / "llamacpp", "--engine", "llamacpp")
    assert (tmp_path / "llamacpp" / "hyp.txt").read_text() == (tmp_path / "pytorch" / "hyp.txt").read_text()


def test_the_recipes_family_and_robustness_configs_load_and_its_scripts_parse():
    import subprocess
    from pathlib import Path

    from speechllm_cli.score.families import read_systems
    from speechllm_cli.train.speechllm_task import load_experiment as speech_llm_experiment
    from speechllm_cli.train.text_llm_task import load_experiment as text_llm_experiment

    recipe = Path(__file__).resolve().parents[1] / "egs" / "covost2"
    units = speech_llm_experiment(recipe / "conf" / "families" / "units.yaml")
    assert units.model.frontend.type == "kmeans_units" and units.model.adapter.type == "unit_embedding"
    assert not units.model.label_embeddings and units.model.lora.rank == 8
    cascade = text_llm_experiment(recipe / "conf" / "families" / "cascade_mt.yaml")
    ger = text_llm_experiment(recipe / "conf" / "families" / "ger.yaml")
    assert cascade.model.copy_langs == ["en"] and ger.model.input_format == "nbest" and ger.model.nbest == 5
    systems = read_systems(recipe / "conf" / "families" / "systems.yaml")
    assert {s.family for s in systems} >= {"latent representation", "text-based", "audio-token"}
    assert all("{set}" in s.decode for s in systems)
    robustness = read_systems(recipe / "conf" / "robustness" / "systems.yaml")
    assert all("{set}" in s.decode and s.trained_parts for s in robustness)  # each row names its compressor
    for script in ("run.sh", "local/run_families.sh", "local/run_robustness.sh"):
        assert subprocess.run(["bash", "-n", str(recipe / script)]).returncode == 0, script


SAVE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from _speech_llm_fixtures import save_speech_llm_dir
from speechllm_cli.models.model_dir import model_fingerprint
lora = {"rank": 2, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
print(model_fingerprint(save_speech_llm_dir(Path(sys.argv[1]), lora=lora)))
"""


def test_the_same_model_saved_by_two_processes_gives_the_same_files(tmp_path):
    """PEFT writes target_modules from a set (its order follows PYTHONHASHSEED); the saved LoRA config is sorted, so
    a resumed or repeated training does not make its decodes look out of date."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    prints = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        run = subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(tmp_path / "saved"), tests], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        prints.append(run.stdout.strip().splitlines()[-1])
    assert prints[0] == prints[1]
