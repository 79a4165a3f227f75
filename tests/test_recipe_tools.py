"""The recipe's shell plumbing: Kaldi-style option parsing, the run.pl launcher, and the CLI's
``--config`` defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from speechllm_cli.utils.jobs import run_jobs

ROOT = Path(__file__).resolve().parent.parent
PARSE_OPTIONS = ROOT / "egs/covost2/utils/parse_options.sh"


def parse(*args: str) -> subprocess.CompletedProcess:
    script = f'stage=1; src_langs="de fr"; . {PARSE_OPTIONS}; echo "$stage|$src_langs|$*"'
    return subprocess.run(["bash", "-c", script, "run.sh", *args], capture_output=True, text=True)


def test_parse_options_sets_known_variables():
    result = parse("--stage", "3", "--src-langs", "es ca", "rest")
    assert result.returncode == 0 and result.stdout.strip() == "3|es ca|rest"
    assert parse("--stage=4").stdout.strip() == "4|de fr|"


def test_parse_options_rejects_unknown_and_missing_values():
    result = parse("--stgae", "3")
    assert result.returncode == 1 and "unknown option --stgae" in result.stderr
    result = parse("--stage")
    assert result.returncode == 1 and "needs a value" in result.stderr


def test_run_pl_runs_every_job_with_its_log(tmp_path):
    out = tmp_path / "out"
    run_jobs("run.pl", 3, tmp_path / "log/job.JOB.log", ["bash", "-c", f"echo JOB > {out}.JOB"])
    assert [(tmp_path / f"out.{i}").read_text() for i in (1, 2, 3)] == ["1\n", "2\n", "3\n"]
    assert "Ended (code 0)" in (tmp_path / "log/job.2.log").read_text()


def test_run_pl_reports_failed_jobs(tmp_path):
    try:
        run_jobs("run.pl --max-jobs-run 1", 2, tmp_path / "log/j.JOB.log", ["bash", "-c", "exit $((JOB - 1))"])
    except RuntimeError as exc:
        assert "1 / 2 failed" in str(exc) and "j.2.log" in str(exc)
    else:
        raise AssertionError("a failing job must raise")
    assert "Ended (code 1)" in (tmp_path / "log/j.2.log").read_text()


def test_cli_config_defaults_and_overrides(tmp_path):
    cli = [sys.executable, "-m", "speechllm_cli.cli", "prepare-covost2"]
    (tmp_path / "c.yaml").write_text(f"cv_root: {tmp_path}/cv\ncovost_dir: {tmp_path}\nsrc_langs: xx\n")
    result = subprocess.run([*cli, "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True)
    assert f"{tmp_path}/cv/xx/validated.tsv: not found" in result.stderr  # values from the file
    result = subprocess.run([*cli, "--config", str(tmp_path / "c.yaml"), "--src-langs", "de"],
                            capture_output=True, text=True)
    assert f"{tmp_path}/cv/de/validated.tsv: not found" in result.stderr  # the flag wins
    (tmp_path / "bad.yaml").write_text("src_lang: de\n")
    result = subprocess.run([*cli, "--config", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key(s) ['src_lang']" in result.stderr


def test_recipe_decode_config_names_decode_options():
    """conf/decode.yaml (read by run.sh stage 6 for every system) holds only options of `speechllm decode`."""
    import yaml
    from typer.main import get_command

    from speechllm_cli.cli import app

    decode = get_command(app).commands["decode"]
    options = {p.name for p in decode.params}
    keys = set(yaml.safe_load((ROOT / "egs/covost2/conf/decode.yaml").read_text()))
    assert keys and keys <= options, keys - options
