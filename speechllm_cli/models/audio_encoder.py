"""Audio encoder: compressed CTC-compressor states -> Transformer layers -> vectors in the LLM embedding space.

Example::

    import torch
    from speechllm_cli.models.audio_encoder import AudioEncoder, AudioEncoderConfig

    encoder = AudioEncoder(AudioEncoderConfig(num_layers=2), input_dim=256, llm_dim=576)
    hidden = torch.randn(2, 30, 256)                  # (B, T, Din) compressed compressor states
    audio_embeds = encoder(hidden, torch.tensor([30, 17]))
    print(audio_embeds.shape)                         # torch.Size([2, 30, 576]); frames past a length are junk

With ``label_embeddings: true`` the encoder also reads the compressor's CTC label posteriors of each vector and
adds ``posteriors @ label_table`` to its output: ``label_table`` (V_ctc, llm_dim) starts as the LLM's token
embeddings of each CTC piece's text (``init_label_table``) and trains with the rest, and the Transformer branch's
output projection starts at zero. A fresh encoder therefore hands the LLM a soft transcript in its own embedding
space, so the audio is useful to the LLM from the first step (a randomly initialised encoder is not, and
training then finds it easier to turn the encoder into one constant soft prompt than to learn to listen).

    encoder = AudioEncoder(AudioEncoderConfig(label_embeddings=True), input_dim=256, llm_dim=576, num_labels=300)
    init_label_table(encoder, pieces, llm_tokenizer, llm.get_input_embeddings().weight)
    audio_embeds = encoder(hidden, lens, label_posteriors)   # label_posteriors (B, T, 300), rows sum to 1

Layers are pre-LayerNorm ``nn.TransformerEncoderLayer``s with sinusoidal positions added after the input
projection. Attention is non-causal by default (``causal=True`` masks future frames); padded frames are
never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechllm_cli.models.subsampling import sinusoidal_positions


@dataclass
class AudioEncoderConfig:
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    causal: bool = False
    label_embeddings: bool = False  # add the CTC label posteriors' LLM embeddings (see the module docstring)


class AudioEncoder(nn.Module):
    """Linear(Din -> d_model) + positions -> N Transformer layers -> LayerNorm -> Linear(d_model -> llm_dim)."""

    def __init__(self, config: AudioEncoderConfig, input_dim: int, llm_dim: int, num_labels: int = 0):
        super().__init__()
        if config.d_model % config.num_heads:
            raise ValueError(f"audio encoder d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
        self.config = config
        self.input_proj = nn.Linear(input_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model,
                config.num_heads,
                config.ff_dim,
                config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model)
        self.output_proj = nn.Linear(config.d_model, llm_dim)
        if config.label_embeddings:
            if num_labels <= 0:
                raise ValueError("audio encoder label_embeddings needs the compressor's CTC vocabulary size")
            self.label_table = nn.Parameter(torch.zeros(num_labels, llm_dim))  # (V_ctc, llm_dim)
            nn.init.zeros_(self.output_proj.weight)  # the Transformer branch starts silent: a residual on the table
            nn.init.zeros_(self.output_proj.bias)

    def forward(self, x: torch.Tensor, lens: torch.Tensor, label_posteriors: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x: (B, T, Din) float, lens: (B,) valid frames, label_posteriors (B, T, V_ctc) with label_embeddings
        -> (B, T, llm_dim); frames at t >= lens[b] are junk."""
        batch, frames, _ = x.shape
        hidden = self.input_proj(x) + sinusoidal_positions(frames, self.config.d_model, x.device)  # (B, T, D)
        hidden = self.dropout(hidden)
        frame_idx = torch.arange(frames, device=x.device)
        # an utterance with 0 frames keeps frame 0 visible so no attention row is empty (its output is unused)
        padding = frame_idx[None, :] >= lens.to(x.device).clamp(min=1)[:, None]  # (B, T) True = padded
        causal = None
        if self.config.causal:
            causal = frame_idx[None, :] > frame_idx[:, None]  # (T, T) True = masked (future)
        for layer in self.layers:
            hidden = layer(hidden, src_mask=causal, src_key_padding_mask=padding, is_causal=False)
        out = self.output_proj(self.final_norm(hidden))  # (B, T, llm_dim)
        if self.config.label_embeddings:
            if label_posteriors is None:
                raise ValueError("this audio encoder has label_embeddings: pass the CTC label posteriors")
            out = out + label_posteriors.to(out.dtype) @ self.label_table
        return out


@torch.no_grad()
def init_label_table(encoder: AudioEncoder, pieces: list[str], llm_tokenizer, token_embeddings: torch.Tensor) -> int:
    """Set each row of ``encoder.label_table`` to the mean LLM token embedding of that CTC piece's text.

    ``pieces`` are the CTC vocabulary in id order (sentencepiece pieces, "\u2581" marks a word start);
    control pieces (``<blank>``, ``<unk>``, ``<...>``) keep a zero row. Returns the number of rows set.
    """
    table = encoder.label_table
    if len(pieces) != table.shape[0]:
        raise ValueError(f"{len(pieces)} CTC pieces for a label table of {table.shape[0]} rows")
    set_rows = 0
    for label, piece in enumerate(pieces):
        if not piece or (piece.startswith("<") and piece.endswith(">")):
            continue
        ids = llm_tokenizer(piece.replace("\u2581", " "), add_special_tokens=False).input_ids
        if ids:
            table[label] = token_embeddings[ids].float().mean(0).to(table.dtype)
            set_rows += 1
    return set_rows
