"""Run data-parallel jobs through a Kaldi-style launcher (``run.pl`` locally, ``slurm.pl`` on a
cluster), the way recipe stages do with ``$train_cmd JOB=1:N log/x.JOB.log command``.

Example:
    run_jobs("run.pl", 4, "dump/train/log/fbank.JOB.log",
             ["speechllm", "fbank-job", "data/train/split4/JOB", "dump/train/job.JOB"])
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"


def resolve_launcher(cmd: str) -> list[str]:
    """Split a launcher command line; a bare ``run.pl``/``slurm.pl`` not on PATH resolves to the
    copy shipped with the package."""
    words = shlex.split(cmd)
    if not words:
        raise ValueError("empty --cmd; use 'run.pl' (local) or 'slurm.pl' (cluster)")
    if "/" not in words[0] and shutil.which(words[0]) is None and (SCRIPTS_DIR / words[0]).exists():
        words[0] = str(SCRIPTS_DIR / words[0])
    return words


def run_jobs(cmd: str, num_jobs: int, log_pattern: str | Path, argv: list[str]) -> None:
    """Run ``argv`` as jobs 1..num_jobs (``JOB`` in argv and log path is the index).

    Raises RuntimeError naming the failed logs when any job fails.
    """
    launcher = resolve_launcher(cmd)
    full = [*launcher, f"JOB=1:{num_jobs}", str(log_pattern), *argv]
    logger.info("running %d job(s): %s", num_jobs, shlex.join(full))
    result = subprocess.run(full, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{num_jobs} job(s) via {launcher[0]}: {result.stderr.strip() or 'failed'}; "
                           f"see {log_pattern}")
