"""The options and entry shared by the training tasks (ctc_task, speechllm_task, seq2seq_task).

:class:`TrainingOptions` holds what one training run is told (config, data, output, resume, ``--set`` overrides,
processes) and is the one source of those defaults, for ``speechllm train`` / ``speechllm train-ctc`` as for
``python -m <task module>``. Each task's ``main`` calls :func:`training_main` with its train function; the command
line passes a :class:`TrainingOptions`, a shell passes an argv. With ``num_procs`` N > 1 and no torchrun environment
yet, the options go to ``<out>/train_options.yaml`` and the task module is relaunched under torchrun with
``--options`` that file (``distributed.launch``).

Usage:
    python -m speechllm_cli.train.seq2seq_task --config conf/train_seq2seq.yaml --train-data dump/train \\
        --valid-data dump/dev --out exp/seq2seq --set train.epochs=2 --num-procs 2
    python -m speechllm_cli.train.seq2seq_task --options exp/seq2seq/train_options.yaml   # what torchrun runs

Python::

    def main(argv=None):   # in a task module
        training_main(argv, "speechllm_cli.train.seq2seq_task", train_seq2seq, out_example="exp/seq2seq")

    seq2seq_task.main(TrainingOptions("conf/train_seq2seq.yaml", "dump/train", "dump/dev", "exp/seq2seq"))
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from speechllm_cli.utils.config import ConfigError, parse_override
from speechllm_cli.utils.options import read_options, write_options

logger = logging.getLogger(__name__)

OPTIONS_NAME = "train_options.yaml"  # in the experiment dir: the options torchrun's processes read

TRAIN_HELP = {
    "config": "Experiment YAML (sections: model, train, ...).",
    "train_data": "Training dump dir (feats.scp, cmvn.ark, text files).",
    "valid_data": "Validation dump dir.",
    "out": "Experiment dir, e.g. exp/ctc_compressor.",
    "resume": "Continue exactly from the newest checkpoint in --out.",
    "overrides": "Override a config value, e.g. --set train.lr=5e-4 (repeatable).",
    "num_procs": "Data-parallel processes (re-launched under torchrun).",
}


@dataclasses.dataclass
class TrainingOptions:
    """One training run, as ``speechllm train`` / ``train-ctc`` take it (see TRAIN_HELP for each field)."""

    config: str
    train_data: str
    valid_data: str | None  # None or "": no validation (speechllm_task only)
    out: str
    resume: bool = False
    overrides: list[str] = dataclasses.field(default_factory=list)  # "KEY=VALUE", as --set takes them
    num_procs: int = 1


def parse_training_args(argv: list[str] | None, module: str, description: str | None, out_example: str,
                        valid_required: bool = True) -> TrainingOptions:
    """``--config --train-data --valid-data --out [--resume] [--set k=v] [--num-procs N]``, or ``--options FILE``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--options", help=f"YAML of every option (what --num-procs writes to <out>/{OPTIONS_NAME})")
    parser.add_argument("--config", help=TRAIN_HELP["config"])
    parser.add_argument("--train-data", help=TRAIN_HELP["train_data"])
    parser.add_argument("--valid-data", help=TRAIN_HELP["valid_data"] + ("" if valid_required else " ('' = none)"))
    parser.add_argument("--out", help=f"Experiment dir, e.g. {out_example}.")
    parser.add_argument("--resume", action="store_true", help=TRAIN_HELP["resume"])
    parser.add_argument("--set", action="append", dest="overrides", default=[], metavar="KEY=VALUE",
                        help=TRAIN_HELP["overrides"])
    parser.add_argument("--num-procs", type=int, default=TrainingOptions.num_procs, help=TRAIN_HELP["num_procs"])
    args = parser.parse_args(argv)
    if args.options:
        others = sorted(k for k, v in vars(args).items() if k != "options" and v != parser.get_default(k))
        if others:
            parser.error(f"--options FILE holds every option; drop {others}")
        return TrainingOptions(**read_options(args.options, TrainingOptions)[0])
    required = ["config", "train_data", "out"] + (["valid_data"] if valid_required else [])
    missing = [f"--{name.replace('_', '-')}" for name in required if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required (or --options): {', '.join(missing)}")
    return TrainingOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingOptions)})


def training_main(argv: list[str] | TrainingOptions | None, module: str, train: Callable, out_example: str,
                  valid_required: bool = True, errors: tuple[type[Exception], ...] = ()) -> None:
    """Run ``train(config, train_dir, valid_dir, out_dir, resume=..., overrides=...)`` with ``argv`` (the
    :class:`TrainingOptions` the CLI passes, or a command line, ``sys.argv`` when None); an error of a known kind is
    logged and exits 1."""
    if isinstance(argv, TrainingOptions):
        options = argv  # from speechllm's CLI, which set up logging
    else:
        from speechllm_cli.utils.logging import setup_logging

        options = parse_training_args(argv, module, train.__doc__, out_example, valid_required)
        setup_logging()
    try:
        overrides = dict(parse_override(s) for s in options.overrides)
        if options.num_procs > 1 and "WORLD_SIZE" not in os.environ:
            from speechllm_cli.train.distributed import launch

            options_file = write_options(Path(options.out) / OPTIONS_NAME, options)
            sys.exit(launch(options.num_procs, module, ["--options", str(options_file)]))
        train(options.config, options.train_data, options.valid_data or None, options.out, resume=options.resume,
              overrides=overrides)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, *errors) as exc:
        logger.error("%s", exc)
        sys.exit(1)
