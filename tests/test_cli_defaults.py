"""One source of defaults per stage: the Typer commands take theirs from the option dataclasses, the Python entry points
repeat none, and the jobs of `decode --nj` / `train --num-procs` read the resolved options from a file (a tiny real
seq2seq model: --nj 2 writes the same hyp.txt as --nj 1)."""

from __future__ import annotations

import dataclasses
import inspect
import shutil

import pytest
import yaml
from _train_fixtures import build_corpus
from typer.main import get_command
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.decode.decode import decode
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.decode.options import DecodeOptions, DecodeRun, RescoreOptions
from speechllm_cli.decode.rescore import rescore
from speechllm_cli.diagnose.options import DiagnoseOptions
from speechllm_cli.train.entry import OPTIONS_NAME, TrainingOptions, parse_training_args, training_main
from speechllm_cli.utils.config import ConfigError
from speechllm_cli.utils.options import field_default, read_options, write_options

CLI_NAMES = {"llm_path": "llm", "overrides": "set_"}  # dataclass field -> Typer parameter, where they differ


def command_params(name: str) -> dict:
    return {p.name: p for p in get_command(app).commands[name].params}


def command_defaults(name: str) -> dict:
    return {name: p.default for name, p in command_params(name).items()}


def assert_defaults_from(command: str, *classes: type, cli_only: dict | None = None) -> None:
    """Every field of ``classes`` that ``command`` has as an option defaults to the field's default (a field without
    default is a required option)."""
    params = command_params(command)
    for cls in classes:
        for field in dataclasses.fields(cls):
            name = CLI_NAMES.get(field.name, field.name)
            if name in (cli_only or {}) or name not in params:
                continue
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                assert params[name].required, f"{command} --{name}"
            else:
                assert params[name].default == field_default(cls, field.name), f"{command} --{name}"
    for name, value in (cli_only or {}).items():
        assert params[name].default == value, f"{command} --{name}"


def test_decode_command_takes_its_defaults_from_decode_options_and_decode_run():
    defaults = command_defaults("decode")
    fields = [f.name for cls in (DecodeOptions, DecodeRun) for f in dataclasses.fields(cls)]
    assert {CLI_NAMES.get(f, f) for f in fields} - set(defaults) == {"num_threads"}  # jobs only: cores / nj
    # asr_langs None on the command line: the model's training choice (DecodeOptions holds the resolved tuple)
    assert_defaults_from("decode", DecodeOptions, DecodeRun, cli_only={"asr_langs": None})


def test_rescore_and_training_commands_take_their_defaults_from_their_dataclasses():
    assert_defaults_from("rescore", RescoreOptions)  # asr_langs None: those the tuning n-best was decoded with
    assert {f.name for f in dataclasses.fields(RescoreOptions)} <= set(command_defaults("rescore"))
    assert_defaults_from("diagnose", DiagnoseOptions)
    for command in ("train", "train-ctc"):
        assert_defaults_from(command, TrainingOptions)
        assert {"resume", "set_", "num_procs"} <= set(command_defaults(command))


def test_entry_points_repeat_no_default():
    """decode() and rescore() read their defaults from the dataclasses: their own parameters default to None."""
    for function in (decode, rescore):
        literal = {name: p.default for name, p in inspect.signature(function).parameters.items()
                   if p.default is not inspect.Parameter.empty and p.default is not None}
        assert literal == {}, function.__name__


def test_options_file_round_trip_and_errors(tmp_path):
    options, run = DecodeOptions(beam=3, nbest=2, asr_langs=("en", "de"), task="st"), DecodeRun(nj=1, batch_size=2)
    path = write_options(tmp_path / "options.yaml", options, run)
    read, ran = read_options(path, DecodeOptions, DecodeRun)
    assert DecodeOptions(**read) == options and DecodeRun(**ran) == run
    (tmp_path / "partial.yaml").write_text("beam: 4\nbatch_size: 2\n")
    assert read_options(tmp_path / "partial.yaml", DecodeOptions, DecodeRun) == [{"beam": 4}, {"batch_size": 2}]
    (tmp_path / "bad.yaml").write_text("beam: four\n")
    with pytest.raises(ConfigError, match="beam: expected an int"):
        read_options(tmp_path / "bad.yaml", DecodeOptions, DecodeRun)
    (tmp_path / "unknown.yaml").write_text("bem: 4\n")
    with pytest.raises(ConfigError, match="unknown option 'bem'"):
        read_options(tmp_path / "unknown.yaml", DecodeOptions, DecodeRun)


def test_training_options_from_argv_from_a_file_and_from_the_cli(tmp_path):
    argv = ["--config", "c.yaml", "--train-data", "dump/train", "--valid-data", "dump/dev", "--out", str(tmp_path),
            "--set", "train.lr=0.001", "--set", "train.epochs=2", "--resume"]
    parsed = parse_training_args(argv, "m", None, "exp/x")
    assert parsed == TrainingOptions("c.yaml", "dump/train", "dump/dev", str(tmp_path), True,
                                     ["train.lr=0.001", "train.epochs=2"])
    path = write_options(tmp_path / OPTIONS_NAME, parsed)  # what --num-procs writes for torchrun's processes
    assert parse_training_args(["--options", str(path)], "m", None, "exp/x") == parsed
    with pytest.raises(SystemExit):  # --options holds every option: no other flag beside it
        parse_training_args(["--options", str(path), "--resume"], "m", None, "exp/x")
    with pytest.raises(SystemExit):
        parse_training_args(["--config", "c.yaml"], "m", None, "exp/x")
    calls = []
    training_main(parsed, "m", lambda *args, **kwargs: calls.append((args, kwargs)), "exp/x")
    assert calls == [(("c.yaml", "dump/train", "dump/dev", str(tmp_path)),
                      {"resume": True, "overrides": {"train.lr": 0.001, "train.epochs": 2}})]


# ----- `speechllm train` then `speechllm decode --nj 2` against --nj 1, on a tiny seq2seq model and espeak-ng speech

SEQ2SEQ = {"model_type": "seq2seq",
           "model": {"d_model": 32, "num_heads": 2, "ff_dim": 64, "encoder_layers": 2, "decoder_layers": 1,
                     "conv_channels": 16, "dropout": 0.1},
           "train": {"batch_frames": 1200, "max_batch_size": 4, "epochs": 3, "lr": 2e-3, "warmup_steps": 4,
                     "scheduler": "warmup_cosine", "seed": 1, "average_last_k": 1}}


@pytest.fixture(scope="module")
def exp_and_dump(tmp_path_factory):
    """A seq2seq experiment trained by `speechllm train` (TrainingOptions, --set), and its dev dump dir."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make install)")
    root = tmp_path_factory.mktemp("cli_defaults")
    corpus = build_corpus(root)  # dev: 4 utterances of 2 speakers
    (root / "conf.yaml").write_text(yaml.safe_dump({**SEQ2SEQ, "tokenizer": str(corpus["tokenizer"])}))
    result = CliRunner().invoke(app, ["train", "--config", str(root / "conf.yaml"), "--train-data",
                                      str(corpus["train"]), "--valid-data", str(corpus["dev"]), "--out",
                                      str(root / "exp"), "--set", "train.log_interval=2"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((root / "exp" / "config.yaml").read_text())["train"]["log_interval"] == 2
    return root / "exp", corpus["dev"]


def test_decode_nj_2_equals_nj_1_with_options_from_the_config_file(exp_and_dump, tmp_path):
    exp, dump = exp_and_dump
    (tmp_path / "decode.yaml").write_text("beam: 2\nbatch_size: 2\nmax_new_tokens: 4\nlength_penalty: 0.5\n")
    outs = {}
    for nj in (1, 2):
        outs[nj] = tmp_path / f"nj{nj}"
        result = CliRunner().invoke(app, ["decode", "--model", str(exp), "--data", str(dump), "--out", str(outs[nj]),
                                          "--config", str(tmp_path / "decode.yaml"), "--nbest", "2", "--nj", str(nj)])
        assert result.exit_code == 0, result.output
    one, two = outs[1], outs[2]
    assert (one / "hyp.txt").read_text() == (two / "hyp.txt").read_text()
    nbest_one, nbest_two = read_nbest(one / "nbest.txt"), read_nbest(two / "nbest.txt")
    for utt, hyps in nbest_one.items():  # other batch-mates (other padding): scores agree to float rounding
        assert [h["text"] for h in hyps] == [h["text"] for h in nbest_two[utt]] and len(hyps) == 2
        assert [h["score"] for h in hyps] == pytest.approx([h["score"] for h in nbest_two[utt]], abs=1e-4)
    assert list(read_table(two / "hyp.txt", allow_empty_value=True)) == sorted(read_table(dump / "text"))
    assert yaml.safe_load((one / "decode.yaml").read_text())["config"] == \
        yaml.safe_load((two / "decode.yaml").read_text())["config"]
    job_options = yaml.safe_load((two / "log" / "options.yaml").read_text())
    assert job_options["beam"] == 2 and job_options["nbest"] == 2 and job_options["length_penalty"] == 0.5
    assert job_options["max_new_tokens"] == 4 and job_options["batch_size"] == 2 and job_options["nj"] == 1
    log = (two / "log" / "decode.1.log").read_text()
    assert "--options" in log and "--beam" not in log  # no argv of every flag
    for job in ("1", "2"):  # each job decoded with the same options as the single run
        assert yaml.safe_load((two / "split2" / job / "decode.yaml").read_text())["config"] == \
            yaml.safe_load((one / "decode.yaml").read_text())["config"]
