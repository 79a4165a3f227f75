"""The command line shared by the training entry points (ctc_task, speechllm_task, seq2seq_task).

Each task's ``main`` calls :func:`training_main` with its train function; with ``--num-procs N`` (N > 1) and no
torchrun environment yet, the same command line is relaunched under torchrun (``distributed.launch``).

Example::

    def main(argv=None):
        training_main(argv, "speechllm_cli.train.seq2seq_task", train_seq2seq, out_example="exp/seq2seq")
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from speechllm_cli.train.distributed import launch
from speechllm_cli.utils.config import ConfigError, parse_override

logger = logging.getLogger(__name__)


def training_main(argv: list[str] | None, module: str, train: Callable, out_example: str,
                  valid_required: bool = True, errors: tuple[type[Exception], ...] = ()) -> None:
    """Parse ``--config --train-data --valid-data --out [--resume] [--set k=v] [--num-procs N]`` and run
    ``train(config, train_dir, valid_dir, out_dir, resume=..., overrides=...)``; an error of a known kind is
    logged and exits 1."""
    from speechllm_cli.utils.logging import setup_logging

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=train.__doc__)
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--train-data", required=True, help="training dump dir (feats.scp, cmvn.ark, text tables)")
    parser.add_argument("--valid-data", required=valid_required, default="",
                        help="validation dump dir" + ("" if valid_required else " ('' = none)"))
    parser.add_argument("--out", required=True, help=f"experiment dir, e.g. {out_example}")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=5e-4 (repeatable)")
    parser.add_argument("--num-procs", type=int, default=1, help="data-parallel processes (torchrun)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        overrides = dict(parse_override(s) for s in args.set)
        if args.num_procs > 1 and "WORLD_SIZE" not in os.environ:
            sys.exit(launch(args.num_procs, module, sys.argv[1:] if argv is None else argv))
        train(args.config, args.train_data, args.valid_data or None, args.out, resume=args.resume,
              overrides=overrides)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, *errors) as exc:
        logger.error("%s", exc)
        sys.exit(1)
