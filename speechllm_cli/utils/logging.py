"""Logging set-up shared by every subcommand: time, level and place, as Kaldi's log lines."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Send log records to stderr once per process."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
