"""Decoding throughput: our cached greedy/beam search against Hugging Face ``generate`` on SmolLM2.

Usage:
    .venv/bin/python bench/bench_decode.py                       # batch 1 and 8, greedy and beam 4
    .venv/bin/python bench/bench_decode.py --batch-sizes 8 --beams 1 --max-new-tokens 32 --device cuda

Prefixes are the embeddings of real chat prompts ("Repeat/translate this sentence"), 30-50
positions, so outputs have natural, different lengths and end with ``<|im_end|>``. The embedded
SmolLM2 GGUF is exported once to a safetensors dir (``--llm-dir``, default /tmp/smollm2_hf).
Output tokens/s counts real output tokens (end token included, padding of finished rows not);
the RTF column pretends each utterance is ``--audio-seconds`` long. Each configuration runs ``--repeats``
times, interleaved (ours, HF, HF, ours, ...); the table shows the median (tokens/s, RTF) and the best run.
Greedy outputs must equal ``generate``'s; the script exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from speechllm_cli.decode.llm_scorer import LLMScorer, eos_ids_for
from speechllm_cli.decode.search import search
from speechllm_cli.models.llm import export_llm, find_embedded_gguf, load_llm

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Il fait très beau aujourd'hui, allons nous promener au parc.",
    "Der Zug nach Berlin hat leider zwanzig Minuten Verspätung.",
    "Please remember to buy milk and bread on your way home.",
    "El museo abre a las diez de la mañana todos los días.",
    "Our meeting has been moved to Thursday afternoon.",
    "Ich habe das Buch gestern Abend zu Ende gelesen.",
    "Rain is expected for most of the weekend in the north.",
]


def prompts(tokenizer, count: int) -> list[list[int]]:
    out = []
    for i in range(count):
        task = "Repeat this sentence exactly" if i % 2 == 0 else "Translate this sentence into English"
        messages = [{"role": "user", "content": f"{task}: {SENTENCES[i % len(SENTENCES)]}"}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def left_pad(embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    total = max(e.shape[0] for e in embeds)
    inputs = embeds[0].new_zeros(len(embeds), total, embeds[0].shape[1])
    mask = torch.zeros(len(embeds), total, dtype=torch.long, device=embeds[0].device)
    for i, e in enumerate(embeds):
        inputs[i, total - e.shape[0]:] = e
        mask[i, total - e.shape[0]:] = 1
    return inputs, mask


def hf_generate(model, embeds, max_new, eos_ids, beam) -> list[list[int]]:
    inputs, mask = left_pad(embeds)
    out = model.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         num_beams=beam, eos_token_id=eos_ids, pad_token_id=eos_ids[0], length_penalty=1.0)
    results = []
    for row in out.tolist():  # generated tokens only; an end token then padding
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        results.append(row[: ends[0] + 1] if ends else row)
    return results


def ours(scorer, embeds, max_new, eos_ids, beam) -> list[list[int]]:
    nbest = search(scorer, embeds, [max_new] * len(embeds), eos_ids, beam=beam)
    return [h[0].tokens + ([h[0].end_token] if h[0].ended else []) for h in nbest]


def timed(fn, *args) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-dir", default="/tmp/smollm2_hf")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--num-utts", type=int, default=8, help="utterances per configuration")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--audio-seconds", type=float, default=5.0, help="pretend audio length for the RTF column")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=4, help="runs per measurement, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    llm_dir = Path(args.llm_dir)
    if not (llm_dir / "config.json").exists():
        export_llm(find_embedded_gguf(), llm_dir)
    model, tokenizer = load_llm(llm_dir, dtype=args.dtype, device=args.device, attn_implementation="sdpa")
    eos_ids = eos_ids_for(tokenizer)
    embed = model.get_input_embeddings()
    with torch.inference_mode():
        embeds = [embed(torch.tensor(ids, device=args.device)) for ids in prompts(tokenizer, args.num_utts)]
    scorer = LLMScorer(model)
    ours(scorer, embeds[:2], 4, eos_ids, 1)  # warm-up
    hf_generate(model, embeds[:2], 4, eos_ids, 1)
    print(f"device {args.device}, {torch.get_num_threads()} threads, prefixes "
          f"{min(e.shape[0] for e in embeds)}-{max(e.shape[0] for e in embeds)} positions, "
          f"max_new_tokens {args.max_new_tokens}, eos {eos_ids}")
    print("| batch | beam | impl | tokens | seconds (median) | tokens/s (median) | RTF | tokens/s (best) "
          "| same 1-best as HF |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = False
    for beam in [int(b) for b in args.beams.split(",")]:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            runs = {"ours": [0.0] * args.repeats, "hf": [0.0] * args.repeats}  # seconds over all groups, per run
            outputs = {"ours": [], "hf": []}
            for start in range(0, args.num_utts, batch_size):
                group = embeds[start:start + batch_size]
                for repeat in range(args.repeats):  # interleaved: the machine may be shared
                    order = (("ours", ours), ("hf", hf_generate))
                    for name, fn in order if repeat % 2 == 0 else order[::-1]:
                        arg = scorer if name == "ours" else model
                        seconds, result = timed(fn, arg, group, args.max_new_tokens, eos_ids, beam)
                        runs[name][repeat] += seconds
                        if repeat == 0:
                            outputs[name] += result
            same = sum(a == b for a, b in zip(outputs["ours"], outputs["hf"]))
            if beam == 1 and same != args.num_utts:
                failed = True
            for name in ("ours", "hf"):
                tokens = sum(len(t) for t in outputs[name])
                median = statistics.median(runs[name])
                rtf = median / (args.audio_seconds * args.num_utts)
                print(f"| {batch_size} | {beam} | {name} | {tokens} | {median:.2f} | {tokens / median:.1f} "
                      f"| {rtf:.3f} | {tokens / min(runs[name]):.1f} | {same}/{args.num_utts} |", flush=True)
    if failed:
        print("greedy outputs differ from HF generate", file=sys.stderr)
    print("example:", repr(tokenizer.decode(outputs["ours"][0], skip_special_tokens=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
