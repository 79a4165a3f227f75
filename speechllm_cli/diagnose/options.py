"""The options of ``speechllm diagnose`` (kept apart from report.py so the command line starts without torch).

Example::

    from speechllm_cli.diagnose.options import DiagnoseOptions
    from speechllm_cli.diagnose.report import diagnose
    report = diagnose("exp/speechllm", "dump/dev", options=DiagnoseOptions(batch_size=8))
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DiagnoseOptions:
    """``speechllm diagnose``'s options besides its inputs and outputs (the one source of their defaults)."""

    batch_size: int = 16  # utterances per batch (the rolled audio comes from the same batch)
    device: str = "cpu"  # cpu or cuda
    llm_path: str | None = None  # the LLM, when it moved since training (its content hash must match)
