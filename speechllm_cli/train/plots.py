"""Training curves: one PNG per metric (train and valid against epoch), drawn with matplotlib's Agg canvas.
A metric ``<m>_<variant>`` (``loss_rolled``, ``acc_noaudio``) is drawn dashed on ``<m>.png`` beside ``<m>``.

Example:
    >>> history = [{"epoch": 1, "train": {"loss": 3.0}, "valid": {"loss": 2.9, "cer": 80.0}},
    ...            {"epoch": 2, "train": {"loss": 2.1}, "valid": {"loss": 2.2, "cer": 61.5}}]
    >>> [p.name for p in plot_history(history, "/tmp/plots_doctest")]
    ['cer.png', 'loss.png']
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from speechllm_cli.utils.io import atomic_path


def plot_history(history: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """``<out_dir>/<metric>.png`` for every metric of ``history`` (entries: epoch, train {...}, valid {...})."""
    out_dir = Path(out_dir)
    metrics = sorted({m for entry in history for split in ("train", "valid") for m in entry.get(split, {})})
    variants = {m: [v for v in metrics if v.startswith(m + "_")] for m in metrics}  # loss -> loss_rolled, ...
    drawn_with_base = {v for vs in variants.values() for v in vs}
    written = []
    for metric in (m for m in metrics if m not in drawn_with_base):
        fig = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for split in ("train", "valid"):
            for name in (metric, *variants[metric]):
                points = [(e["epoch"], e[split][name]) for e in history if name in e.get(split, {})]
                if points:
                    label = split + name[len(metric):].replace("_", " ")
                    ax.plot(*zip(*points), marker="o", linestyle="-" if name == metric else "--", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        written.append(path)
    return written
