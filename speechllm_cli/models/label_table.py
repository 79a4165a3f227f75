"""The CTC label table: the front-end's label posteriors times a table that starts as the LLM's token embeddings.

Example::

    import torch
    from speechllm_cli.models.label_table import LabelTable

    table = LabelTable(num_labels=300, llm_dim=576)
    rows = table.init_from_pieces(pieces, llm_tokenizer, llm.get_input_embeddings().weight)   # rows set
    embeds = table(posteriors)            # posteriors (B, T, 300), rows sum to 1 -> (B, T, 576)

A freshly initialised adapter produces vectors that mean nothing to a frozen LLM, and training then finds it
easier to turn it into one constant soft prompt than to learn to listen (``speechllm diagnose`` measures this).
With the table (``model.label_embeddings: true``) the speech LLM adds ``posteriors @ table`` to the adapter's output
(posteriors pooled the way the adapter pools frames) and starts the adapter's output projection at zero, so at
step 0 the LLM reads a soft transcript in its own embedding space. Each row starts as the mean LLM token embedding of
its CTC piece's text; control pieces (``<blank>``, ``<unk>``, ``<...>``) keep a zero row. The table trains.
"""

from __future__ import annotations

import torch
from torch import nn


class LabelTable(nn.Module):
    def __init__(self, num_labels: int, llm_dim: int):
        super().__init__()
        if num_labels <= 0:
            raise ValueError("the label table needs a front-end with CTC label posteriors (a CTC vocabulary)")
        self.weight = nn.Parameter(torch.zeros(num_labels, llm_dim))  # (V_ctc, llm_dim)

    def forward(self, posteriors: torch.Tensor) -> torch.Tensor:
        """(B, T, V_ctc) -> (B, T, llm_dim)."""
        return posteriors.to(self.weight.dtype) @ self.weight

    @torch.no_grad()
    def init_from_pieces(self, pieces: list[str], llm_tokenizer, token_embeddings: torch.Tensor) -> int:
        """Set each row to the mean LLM token embedding of that CTC piece's text ("\u2581" marks a word start);
        ``pieces`` are the CTC vocabulary in id order. Returns the number of rows set."""
        if len(pieces) != self.weight.shape[0]:
            raise ValueError(f"{len(pieces)} CTC pieces for a label table of {self.weight.shape[0]} rows")
        set_rows = 0
        for label, piece in enumerate(pieces):
            if not piece or (piece.startswith("<") and piece.endswith(">")):
                continue
            ids = llm_tokenizer(piece.replace("\u2581", " "), add_special_tokens=False).input_ids
            if ids:
                self.weight[label] = token_embeddings[ids].float().mean(0).to(self.weight.dtype)
                set_rows += 1
        return set_rows
