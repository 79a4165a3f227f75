"""A GGUF LLM run by llama.cpp as an incremental scorer for :mod:`speechllm_cli.decode.search` (``--engine llamacpp``).

One llama.cpp context holds every hypothesis of a batch as its own sequence id in one key/value cache (unified, so
beams share their prefix cells). ``init`` feeds each utterance's prefix: the text before the audio as tokens, the
audio as embedding rows of a ``llama_batch`` (computed by the model's audio side in PyTorch), the text after it as
tokens; the utterances go together, each batch of rows at most ``n_batch`` long. A task prompt shared by several
utterances of a batch is computed once and its cells copied to the others (prefill is compute-bound: the prompt is
about a third of the positions of the embedded test set). ``step`` feeds one token per
hypothesis in one ``llama_decode``; ``select`` copies and removes sequences (``llama_memory_seq_cp`` /
``llama_memory_seq_rm``) as the search keeps, repeats and drops rows. Before each batch, decode calls ``reserve``
(the prefixes plus ``beam`` times each output cap), so a batch never runs out of cells.

llama.cpp attends causally: a model that reads its audio bidirectionally is refused (decode it with the PyTorch
engine). Log-probabilities come from llama.cpp's float32 logits, so the same search rules (length caps, end tokens,
no-repeat n-grams) apply unchanged.

Example::

    from speechllm_cli.decode.llamacpp_scorer import LlamaCppScorer
    from speechllm_cli.decode.search import search

    scorer = LlamaCppScorer("exp/speechllm/model/gguf/llm-f16.gguf", n_threads=2)
    prefix = model.decoding_prefix(feats, lens, ["st", "asr"])     # the audio side runs in PyTorch
    scorer.reserve([len(e) for e in prefix.embeds], [40, 40], beam=4)
    nbest = search(scorer, prefix, [40, 40], eos_ids, beam=4)
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from speechllm_cli.models.speech_llm_layout import PrefixBatch

INSTALL_HINT = ("pip install llama-cpp-python (make install does it; it builds llama.cpp from source, a few "
                "minutes), or decode with --engine pytorch")
CELL_ROUNDING = 256  # the cache is sized in multiples of this many cells
_LOG_CALLBACK = None  # llama.cpp's log callback, kept alive here
_PROGRESS_CALLBACK = None  # and its model-loading progress callback (it prints dots otherwise)


def import_llama_cpp():
    """The llama_cpp module, or an ImportError naming the install command."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(f"--engine llamacpp needs llama-cpp-python, which is not installed: {INSTALL_HINT}") from exc
    return llama_cpp


def _quiet_logs(llama_cpp) -> None:
    """Send llama.cpp's log lines below the error level nowhere (it prints every tensor load otherwise)."""
    global _LOG_CALLBACK, _PROGRESS_CALLBACK
    if _LOG_CALLBACK is None:
        _PROGRESS_CALLBACK = llama_cpp.llama_progress_callback(lambda progress, user_data: True)
        def drop_below_error(level, text, user_data):
            if level >= 4:  # GGML_LOG_LEVEL_ERROR
                os.write(2, text)
        _LOG_CALLBACK = llama_cpp.llama_log_callback(drop_below_error)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


@dataclasses.dataclass
class _Segment:
    """Part of one utterance's prefix: token ids or embedding rows, at positions ``start``..."""

    seq: int
    start: int
    tokens: list[int] | None = None
    embeds: np.ndarray | None = None  # (n, H) float32
    last: bool = False  # its last position gives the utterance's first next-token scores

    def __len__(self) -> int:
        return len(self.tokens) if self.tokens is not None else len(self.embeds)


@dataclasses.dataclass
class LlamaCppState:
    """Scorer state; rows are hypotheses, each one llama.cpp sequence id."""

    seqs: list[int]  # (R,) sequence id of each row
    positions: np.ndarray  # (R,) position of each row's next token


class LlamaCppScorer:
    """Scorer over a GGUF LLM in llama.cpp; see the module docstring."""

    def __init__(self, gguf_path: str | os.PathLike, n_threads: int = 0, n_batch: int = 512):
        llama_cpp = import_llama_cpp()
        _quiet_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        self.lib = llama_cpp
        self.path = Path(gguf_path)
        params = llama_cpp.llama_model_default_params()
        params.progress_callback = _PROGRESS_CALLBACK
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {self.path}; re-export it with speechllm export-gguf")
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.hidden_size = llama_cpp.llama_model_n_embd(self.model)
        self.f32 = llama_cpp.llama_model_ftype(self.model) == 0  # LLAMA_FTYPE_ALL_F32
        self.n_threads = n_threads or torch.get_num_threads()
        self.n_batch = n_batch
        self.ctx = None
        self.n_ctx = 0
        self.n_seq_max = 0
        self._free_seqs: list[int] = []

    # ----- context -----
    def reserve(self, prefix_lengths: Sequence[int], max_new_tokens: Sequence[int], beam: int) -> None:
        """Make room, before ``init``, for a batch of prefixes decoded with these output caps and beam size: every
        prefix once (beams share it) and ``beam`` rows of each output cap."""
        cells = int(sum(prefix_lengths)) + beam * int(sum(max_new_tokens)) + len(prefix_lengths)
        self._make_context(len(prefix_lengths) * beam, cells)

    def _make_context(self, num_rows: int, cells: int) -> None:
        cells = -(-max(cells, self.n_batch) // CELL_ROUNDING) * CELL_ROUNDING
        if num_rows > 256:
            raise ValueError(f"llama.cpp holds at most 256 sequences; batch size x beam is {num_rows}: lower "
                             "--batch-size")
        if self.ctx is not None and cells <= self.n_ctx and num_rows <= self.n_seq_max:
            return
        self._free_context()
        lib = self.lib
        params = lib.llama_context_default_params()
        params.n_ctx = cells
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = max(num_rows, self.n_seq_max, 1)
        params.n_threads = params.n_threads_batch = self.n_threads
        params.kv_unified = True
        params.flash_attn_type = 0  # off: llama.cpp's CPU flash attention rounds through f16 (0.02 in log-probs
        # of SmolLM2 at f32) and was slower here (10.8 s against 11.7 s greedy, 15.1 against 18.1 s beam 4)
        if self.f32:  # an f32 export keeps its cache in f32 too (llama.cpp's default is f16)
            params.type_k = params.type_v = 0  # GGML_TYPE_F32
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {cells} cells for {self.path}")
        self.n_ctx, self.n_seq_max = cells, params.n_seq_max

    def _free_context(self) -> None:
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def close(self) -> None:
        self._free_context()
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    # ----- feeding rows -----
    def _run(self, segments: list[_Segment], want: list[bool]) -> np.ndarray:
        """One llama_decode over ``segments`` (all tokens or all embeddings); the float32 logits (N, V) of the
        positions flagged in ``want`` (one flag per position), in order."""
        lib = self.lib
        total = sum(len(s) for s in segments)
        embd = 0 if segments[0].tokens is not None else self.hidden_size
        batch = lib.llama_batch_init(total, embd, 1)
        try:
            batch.n_tokens = total
            at = 0
            for segment in segments:
                n = len(segment)
                if embd:
                    rows = np.ascontiguousarray(segment.embeds, dtype=np.float32)
                    ctypes.memmove(ctypes.addressof(batch.embd.contents) + at * embd * 4, rows.ctypes.data, rows.nbytes)
                else:
                    np.ctypeslib.as_array(batch.token, shape=(total,))[at:at + n] = segment.tokens
                positions = np.arange(segment.start, segment.start + n)
                np.ctypeslib.as_array(batch.pos, shape=(total,))[at:at + n] = positions
                for i in range(at, at + n):
                    batch.seq_id[i][0] = segment.seq
                at += n
            np.ctypeslib.as_array(batch.n_seq_id, shape=(total,))[:] = 1
            np.ctypeslib.as_array(batch.logits, shape=(total,))[:] = np.asarray(want, dtype=np.int8)
            code = lib.llama_decode(self.ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama_decode failed with code {code} (1: the key/value cache of {self.n_ctx} "
                                   "cells is full)")
            num_out = int(sum(want))
            if num_out == 0:
                return np.zeros((0, self.vocab_size), dtype=np.float32)
            return np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(num_out, self.vocab_size)).copy()
        finally:
            lib.llama_batch_free(batch)

    def _feed(self, segments: list[_Segment]) -> dict[int, np.ndarray]:
        """Feed prefix segments of one kind in llama_decode calls of at most ``n_batch`` positions (a segment may be
        split); the logits of each ``last`` segment's final position, by sequence id."""
        out: dict[int, np.ndarray] = {}
        chunk: list[_Segment] = []
        want: list[bool] = []

        def flush():
            if chunk:
                logits = self._run(chunk, want)
                for segment, row in zip([s for s in chunk if s.last], logits):
                    out[segment.seq] = row
                chunk.clear()
                want.clear()

        for segment in segments:
            offset = 0
            while offset < len(segment):
                room = self.n_batch - len(want)
                take = min(room, len(segment) - offset)
                part = _Segment(segment.seq, segment.start + offset,
                                segment.tokens[offset:offset + take] if segment.tokens is not None else None,
                                segment.embeds[offset:offset + take] if segment.embeds is not None else None,
                                segment.last and offset + take == len(segment))
                chunk.append(part)
                want += [False] * (take - 1) + [part.last]
                offset += take
                if len(want) == self.n_batch:
                    flush()
        flush()
        return out

    @staticmethod
    def _log_probs(logits: np.ndarray) -> torch.Tensor:
        return torch.log_softmax(torch.from_numpy(logits), dim=-1)

    # ----- the scorer calls -----
    def init(self, batch: PrefixBatch | list[torch.Tensor]) -> tuple[torch.Tensor, LlamaCppState]:
        """Feed each utterance's prefix (text as tokens, audio as embeddings); first next-token log-probs (B, V)."""
        if not isinstance(batch, PrefixBatch):
            batch = PrefixBatch(list(batch))
        if batch.bidirectional_spans is not None and any(s is not None for s in batch.bidirectional_spans):
            raise ValueError("the model reads its audio with bidirectional attention, which llama.cpp does not do; "
                             "decode it with --engine pytorch")
        num_utts = len(batch.embeds)
        if self.ctx is None or self.n_seq_max < num_utts:
            self._make_context(num_utts, sum(len(e) for e in batch.embeds) + num_utts)
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self._free_seqs = list(range(self.n_seq_max - 1, num_utts - 1, -1))
        rounds: list[list[_Segment]] = [[], [], []]  # text before the audio, audio, text after it
        prompt_holder: dict[tuple[int, ...], int] = {}  # prompt tokens -> the sequence that computes them
        prompt_copies: list[tuple[int, int]] = []  # (holder, sequence): same prompt, same cells
        for seq, embeds in enumerate(batch.embeds):
            embeds = embeds.detach().float().cpu().numpy()
            if embeds.shape[1] != self.hidden_size:
                raise ValueError(f"prefix embeddings of width {embeds.shape[1]}, but {self.path} has hidden size "
                                 f"{self.hidden_size}: the GGUF is not this model's LLM")
            pre, post = batch.text_ids[seq] if batch.text_ids is not None else ([], [])
            audio_end = len(embeds) - len(post)
            parts = [(0, _Segment(seq, 0, tokens=list(pre))),
                     (1, _Segment(seq, len(pre), embeds=embeds[len(pre):audio_end])),
                     (2, _Segment(seq, audio_end, tokens=list(post)))]
            parts = [(kind, segment) for kind, segment in parts if len(segment)]
            parts[-1][1].last = True  # its final position scores the first output token
            if pre and len(parts) > 1 and tuple(pre) in prompt_holder:  # a task prompt computed once per batch
                prompt_copies.append((prompt_holder[tuple(pre)], seq))
                parts = parts[1:]
            elif pre and len(parts) > 1:
                prompt_holder[tuple(pre)] = seq
            for kind, segment in parts:
                rounds[kind].append(segment)
        first: dict[int, np.ndarray] = {}
        memory = self.lib.llama_get_memory(self.ctx)
        for kind, segments in enumerate(rounds):
            if segments:
                first.update(self._feed(segments))
            if kind == 0:
                for holder, seq in prompt_copies:
                    self.lib.llama_memory_seq_cp(memory, holder, seq, -1, -1)
        logits = np.stack([first[seq] for seq in range(num_utts)])
        lengths = np.array([len(e) for e in batch.embeds])
        return self._log_probs(logits), LlamaCppState(list(range(num_utts)), lengths)

    def step(self, state: LlamaCppState, tokens: torch.Tensor) -> tuple[torch.Tensor, LlamaCppState]:
        """Feed one token per row (R,); next-token log-probs (R, V)."""
        segments = [_Segment(seq, int(pos), tokens=[int(t)])
                    for seq, pos, t in zip(state.seqs, state.positions, tokens.tolist())]
        logits = self._run(segments, [True] * len(segments))
        state.positions = state.positions + 1
        return self._log_probs(logits), state

    def select(self, state: LlamaCppState, rows: torch.Tensor) -> LlamaCppState:
        """Keep/reorder/repeat rows (R',): a repeated row's sequence is copied, a dropped one removed."""
        memory = self.lib.llama_get_memory(self.ctx)
        rows = rows.tolist()
        sources = {state.seqs[row] for row in rows}
        for seq in set(state.seqs) - sources:  # drop first: their ids serve the copies below
            self.lib.llama_memory_seq_rm(memory, seq, -1, -1)
            self._free_seqs.append(seq)
        placed: set[int] = set()
        seqs = []
        for row in rows:
            source = state.seqs[row]
            if source not in placed:
                placed.add(source)
                seqs.append(source)
            else:
                target = self._free_seqs.pop()
                self.lib.llama_memory_seq_cp(memory, source, target, -1, -1)
                seqs.append(target)
        return LlamaCppState(seqs, state.positions[rows])

