"""``speechllm diagnose``: does a trained speech LLM use its audio? One report per model and data set.

Usage:
    speechllm diagnose --model exp/speechllm --data dump/test       # + exp/speechllm/decode_test when it exists
    from speechllm_cli.diagnose.report import diagnose, format_report
    print(format_report(diagnose("exp/speechllm", "dump/test")))

The report (also written as JSON, by default to ``<model>/diagnose_<set>.json``):
- teacher-forced loss and token accuracy with each utterance's own audio, with the audio of the next utterance of
  its batch ("rolled") and with no audio, and ``audio_gap = 1 - loss / loss_rolled``;
- the audio embeddings' mean row norm against the LLM's token embeddings', the mean pairwise cosine similarity of
  the utterances' mean audio vectors and the share of their energy in one common vector;
- with a decode dir: distinct hypotheses against distinct references per language (a model that ignores its
  audio writes a few fluent sentences for many inputs).
Tasks and targets follow the model's training record (``task``, ``asr_langs``, ``target``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.diagnose.options import DiagnoseOptions
from speechllm_cli.models.audio_use import (
    derived_metrics,
    embedding_stats,
    embeddings_dependence,
    row_norms,
    utterance_means,
)
from speechllm_cli.utils.io import atomic_write_text


def distinct_outputs(decode_dir: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Per language (utt2lang of the decode dir; "all" without it): distinct hypotheses, distinct references and
    utterances."""
    decode_dir = Path(decode_dir)
    hyps = read_table(decode_dir / "hyp.txt", allow_empty_value=True)
    refs = read_table(decode_dir / "ref.txt", allow_empty_value=True)
    lang_path = decode_dir / "utt2lang"
    langs = read_table(lang_path) if lang_path.is_file() else {u: "all" for u in refs}
    out = {}
    for lang in sorted(set(langs.values())):
        utts = [u for u in refs if langs.get(u) == lang]
        out[lang] = {"distinct_hyps": len({hyps.get(u, "") for u in utts}),
                     "distinct_refs": len({refs[u] for u in utts}), "utterances": len(utts)}
    return out


def _batches(dataset, batch_size: int) -> list[list[int]]:
    order = sorted(range(len(dataset)), key=lambda i: dataset.num_frames[i])  # similar lengths together
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def diagnose(model: str | os.PathLike, data: str | os.PathLike, decode_dir: str | os.PathLike | None = None,
             options: DiagnoseOptions | None = None) -> dict:
    """The audio-use report of the speech LLM in ``model`` (an experiment or model dir) on the dump dir ``data``."""
    options = options or DiagnoseOptions()
    from speechllm_cli.decode.decode import resolve_model_dir, trained_task_choice
    from speechllm_cli.models.load import load_model
    from speechllm_cli.train.dataset import DumpDataset
    from speechllm_cli.train.speechllm_task import TARGET_FIELDS

    model_dir = resolve_model_dir(model)
    task, asr_langs = trained_task_choice(model_dir, None, None)  # None: per utterance from utt2lang
    speech_llm = load_model(model_dir, device=options.device, llm_path=options.llm_path).eval()
    target = speech_llm.training_choice.get("target", "text")
    dataset = DumpDataset(data, require=(target, "utt2lang") if task is None else (target,))

    totals: dict[str, list[float]] = {}
    means, norms = [], []
    for indices in tqdm(_batches(dataset, options.batch_size), desc="diagnose", unit="batch", disable=None):
        examples = [dataset[i] for i in indices]
        feats = [torch.from_numpy(e["feats"]) for e in examples]
        feat_lens = torch.tensor([len(f) for f in feats], device=options.device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(options.device)  # (B, T, 80)
        tasks = [task or ("asr" if e["lang"] in asr_langs else "st") for e in examples]
        prompts = [speech_llm.prompt_ids(t) for t in tasks]
        targets = [speech_llm.encode_target(e[TARGET_FIELDS[target]]) for e in examples]
        audio_embeds, audio_lens = speech_llm.encode_audio(padded, feat_lens)  # (B, A, H), (B,)
        stats = embeddings_dependence(speech_llm, audio_embeds, audio_lens, prompts, targets)
        for name, (value, count) in stats.items():
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += value
            total[1] += count
        means.append(utterance_means(audio_embeds, audio_lens))
        norms.append(row_norms(audio_embeds, audio_lens))
    metrics = derived_metrics({k: v / c for k, (v, c) in totals.items() if c > 0 and k != "audio_cosine"})
    report = {"model": str(model_dir), "data": str(data), "utterances": len(dataset), "teacher_forced": metrics,
              "embeddings": embedding_stats(torch.cat(means), speech_llm.hf_llm.get_input_embeddings().weight,
                                            torch.cat(norms))}
    if decode_dir is not None:
        report["decode_dir"] = str(decode_dir)
        report["distinct"] = distinct_outputs(decode_dir)
    return report


def format_report(report: dict) -> str:
    """The report as a few readable lines."""
    tf, emb = report["teacher_forced"], report["embeddings"]
    lines = [f"{report['model']} on {report['data']} ({report['utterances']} utterances)",
             "teacher-forced   loss    acc",
             f"  true audio     {tf['loss']:.3f}  {tf['acc']:.3f}"]
    if "loss_rolled" in tf:
        lines.append(f"  rolled audio   {tf['loss_rolled']:.3f}  {tf['acc_rolled']:.3f}")
    lines.append(f"  no audio       {tf['loss_noaudio']:.3f}  {tf['acc_noaudio']:.3f}")
    if "audio_gap" in tf:
        lines.append(f"  audio gap (1 - true/rolled loss): {tf['audio_gap']:.3f}")
    lines.append(f"embeddings: audio row norm {emb['audio_embedding_norm']:.2f} vs token "
                 f"{emb['token_embedding_norm']:.2f}; utterance-mean cosine {emb['audio_utterance_cosine']:.3f}, "
                 f"shared energy {100 * emb['audio_shared_energy']:.1f}%")
    for lang, d in report.get("distinct", {}).items():
        share = d["distinct_hyps"] / max(d["distinct_refs"], 1)
        lines.append(f"distinct hypotheses {lang}: {d['distinct_hyps']} for {d['distinct_refs']} distinct references "
                     f"({100 * share:.0f}%) over {d['utterances']} utterances")
    return "\n".join(lines)


def write_report(report: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")
    return path
