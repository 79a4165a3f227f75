"""Evaluate a trained CTC compressor on a dump dir: greedy CER, and the lengths the speech-LLM will
see (input feature frames, encoder frames, compressed length per mode, source token count); optionally dump
the compressed representations as an ark.

Usage:
    speechllm ctc-report --model exp/ctc_compressor --data dump/dev
    speechllm ctc-compress --model exp/ctc_compressor --data dump/dev --mode frame_average \\
        --out exp/ctc_compressor/compressed_dev
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import kaldiio
import torch
from torch import nn
from tqdm import tqdm

from speechllm_cli.models.compression import compress
from speechllm_cli.models.ctc_compressor import greedy_decode, greedy_labels
from speechllm_cli.models.ctc_compressor_io import load_ctc_compressor
from speechllm_cli.score.metrics import cer
from speechllm_cli.train.dataset import BucketBatchSampler, DumpDataset
from speechllm_cli.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

MODES = ("blank_remove", "frame_average")


def iter_batches(data: DumpDataset, batch_frames: int):
    """Length-sorted batches of (examples, feats (B, T, D), feat_lens (B,)), in a fixed order."""
    sampler = BucketBatchSampler(data.lengths(), batch_frames=batch_frames, max_batch_size=64, seed=0,
                                 shuffle=False)
    for indices in sampler.batches(epoch=1):
        examples = [data[i] for i in indices]
        feats = nn.utils.rnn.pad_sequence([torch.from_numpy(e["feats"]) for e in examples], batch_first=True)
        yield examples, feats, torch.tensor([len(e["feats"]) for e in examples])


@torch.inference_mode()
def ctc_report(model_dir: Path, data_dir: Path, batch_frames: int = 20000) -> dict:
    """Greedy CER on ``text.src`` and average lengths per utterance; written to
    ``<model_dir>/report_<set>.json`` and logged."""
    model, tokenizer = load_ctc_compressor(model_dir)
    data = DumpDataset(data_dir, require=("text.src",))
    totals = {"input_frames": 0, "encoder_frames": 0, "source_tokens": 0, **{m: 0 for m in MODES}}
    refs, hyps = [], []
    for examples, feats, feat_lens in tqdm(list(iter_batches(data, batch_frames)), desc="ctc-report", unit="batch"):
        out = model(feats, feat_lens)
        labels = greedy_labels(out.logits, out.hidden_lens)
        for mode in MODES:
            totals[mode] += int(compress(out.hidden, out.hidden_lens, labels, mode)[1].sum())
        hyps += [tokenizer.decode(ids) for ids in greedy_decode(out.logits, out.hidden_lens)]
        refs += [e["text_src"] for e in examples]
        totals["input_frames"] += int(feat_lens.sum())
        totals["encoder_frames"] += int(out.hidden_lens.sum())
        totals["source_tokens"] += sum(len(tokenizer.encode(e["text_src"])) for e in examples)
    n = len(data)
    report = {
        "data": str(data_dir), "num_utts": n, "cer": cer(refs, hyps).rate,
        "per_utt": {k: v / n for k, v in totals.items()},
        "ratio_to_source_tokens": {m: totals[m] / max(totals["source_tokens"], 1) for m in MODES},
        "llm_inputs_per_second": {m: totals[m] / (totals["input_frames"] / 100) for m in (*MODES, "encoder_frames")},
    }
    out_path = Path(model_dir) / f"report_{Path(data_dir).name}.json"
    atomic_write_text(out_path, json.dumps(report, indent=2) + "\n")
    per = report["per_utt"]
    logger.info(
        "%s on %s (%d utts): greedy CER %.2f%%; per utterance: %.1f input frames, %.1f encoder frames, "
        "%.1f blank_remove, %.1f frame_average, %.1f source tokens (ratios to tokens: blank_remove %.2f, "
        "frame_average %.2f); report in %s", model_dir, data_dir, n, report["cer"], per["input_frames"],
        per["encoder_frames"], per["blank_remove"], per["frame_average"], per["source_tokens"],
        report["ratio_to_source_tokens"]["blank_remove"], report["ratio_to_source_tokens"]["frame_average"], out_path)
    return report


@torch.inference_mode()
def ctc_compress(model_dir: Path, data_dir: Path, out_dir: Path, mode: str = "frame_average",
                 batch_frames: int = 20000) -> Path:
    """Write compressed representations (T', D) per utterance to ``<out_dir>/feats.{ark,scp}`` plus
    ``utt2num_frames`` (the compressed lengths)."""
    if mode not in (*MODES, "none"):
        raise ValueError(f"unknown mode '{mode}'; use blank_remove, frame_average or none")
    model, _ = load_ctc_compressor(model_dir)
    data = DumpDataset(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = {}
    ark = out_dir / "feats.ark"
    with atomic_path(ark) as tmp_ark, atomic_path(out_dir / "feats.scp") as tmp_scp:
        with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
            for examples, feats, feat_lens in tqdm(list(iter_batches(data, batch_frames)), desc="ctc-compress"):
                out = model(feats, feat_lens)
                labels = greedy_labels(out.logits, out.hidden_lens)
                compressed, lens = compress(out.hidden, out.hidden_lens, labels, mode)
                for e, c, n in zip(examples, compressed, lens):
                    writer(e["utt_id"], c[: int(n)].numpy())
                    lengths[e["utt_id"]] = int(n)
        scp_lines = tmp_scp.read_text().replace(str(tmp_ark), str(ark.absolute())).splitlines(keepends=True)
        tmp_scp.write_text("".join(sorted(scp_lines)))
    atomic_write_text(out_dir / "utt2num_frames", "".join(f"{u} {lengths[u]}\n" for u in sorted(lengths)))
    logger.info("%s: %d utterances compressed (%s), %.1f vectors per utterance", out_dir, len(lengths), mode,
                sum(lengths.values()) / max(len(lengths), 1))
    return out_dir
