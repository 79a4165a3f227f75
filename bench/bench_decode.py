"""Decoding throughput: the decode engines on a real test set, and our search against Hugging Face ``generate``.

Usage:
    # every engine on a trained speech LLM's test set (run from egs/covost2 after make demo)
    .venv/bin/python ../../bench/bench_decode.py testset --model exp/speechllm_whisper --data dump/whisper_mel/test
    .venv/bin/python ../../bench/bench_decode.py testset --model exp/speechllm_whisper --data dump/whisper_mel/test \
        --engines llamacpp-f16 --beams 1 --batch-sizes 1,8,16,32
    # our search against transformers' generate on plain text prompts (the LLM alone)
    .venv/bin/python bench/bench_decode.py text                       # batch 1 and 8, greedy and beam 4 (the default)
    .venv/bin/python bench/bench_decode.py text --batch-sizes 8 --beams 1 --max-new-tokens 32 --device cuda

``testset``: the audio side (front-end + adapter, PyTorch) runs once and is timed on its own; then each engine
decodes the same prefixes with the same caps (decode's ``max_len_a``/``max_len_b``, the LLM's context) and search
rules, in the order decode uses (longest first, batches of ``--batch-size``): ``pytorch`` (the LLM as trained),
``pytorch-bf16``, and ``llamacpp-<f32|f16|q8_0>`` (the model's LLM exported once to ``<model>/gguf/``). Each
configuration runs ``--repeats`` times, engines interleaved (rotated each repeat); the table shows the median.
``single`` is llama.cpp's own single-stream text decoding (its high-level ``Llama`` API, greedy, one prompt) on the
same GGUF, measured in the same run: the figure the batched engine is held against. Each row also gives how many
1-best outputs equal the ``pytorch`` engine's (same beam) and BLEU (X->en) / WER (English) of the outputs.

``text``: prefixes are the embeddings of real chat prompts ("Repeat/translate this sentence"), 30-50
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
import yaml

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


def text_main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
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


# ----- testset: the engines on a trained speech LLM's test set

def test_set_prefixes(model, data_dir: Path, options, batch_size: int):
    """The batches of ``data_dir`` as decode forms them, [(utts, PrefixBatch, caps)]; the audio side's seconds."""
    from speechllm_cli.data.kaldi_dir import DataDir
    from speechllm_cli.decode.decode import FRAME_SHIFT, pad_feats
    from speechllm_cli.decode.search import cap_to_context, max_new_tokens_for
    from speechllm_cli.features.feats_reader import FeatsReader
    from speechllm_cli.models.llm import llm_context_length

    data = DataDir.load(data_dir)
    reader = FeatsReader(data_dir / "feats.scp", entries=data.tables["feats.scp"])
    feats = {u: reader[u] for u in data.utt_ids}
    utts = sorted(feats, key=lambda u: (-len(feats[u]), u))
    langs = data.tables["utt2lang"]
    context = llm_context_length(model.hf_llm)
    batches, audio_seconds = [], 0.0
    for start in range(0, len(utts), batch_size):
        group = utts[start:start + batch_size]
        tasks = [options.task or ("asr" if langs[u] in options.asr_langs else "st") for u in group]
        begin = time.perf_counter()
        with torch.inference_mode():
            prefix = model.decoding_prefix(*pad_feats([feats[u] for u in group], "cpu"), tasks)
        audio_seconds += time.perf_counter() - begin
        caps = max_new_tokens_for([len(feats[u]) * FRAME_SHIFT for u in group], options.max_new_tokens,
                                  options.max_len_a, options.max_len_b)
        batches.append((group, prefix, cap_to_context(caps, [len(e) for e in prefix.embeds], context, group)))
    return batches, audio_seconds, data


def make_scorer(engine: str, model_dir: Path, threads: int):
    """The scorer of an engine name: pytorch, pytorch-bf16, llamacpp-<f32|f16|q8_0>."""
    from speechllm_cli.decode.llm_scorer import LLMScorer
    from speechllm_cli.models.load import load_model

    if engine.startswith("pytorch"):
        dtype = {"pytorch": None, "pytorch-bf16": "bfloat16"}[engine]
        return LLMScorer(load_model(model_dir, dtype=dtype).hf_llm)
    from speechllm_cli.decode.llamacpp_scorer import LlamaCppScorer

    return LlamaCppScorer(gguf_path(engine, model_dir), n_threads=threads)


def gguf_path(engine: str, model_dir: Path) -> Path:
    """The model's GGUF of a ``llamacpp-<type>`` engine (``<model>/gguf/llm-<type>.gguf``, exported once)."""
    from speechllm_cli.models.gguf_export import gguf_for_decoding

    return gguf_for_decoding(model_dir, out_type=engine.split("-", 1)[1])


def single_stream_tokens_per_second(gguf: Path, threads: int, max_tokens: int = 96) -> float:
    """llama.cpp's own greedy text decoding of one prompt (its high-level API): output tokens / seconds."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = "Write a long story about a train journey from Berlin to Madrid.\n"
    llm.create_completion(prompt, max_tokens=4, temperature=0.0)  # warm-up
    start = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
    seconds = time.perf_counter() - start
    return out["usage"]["completion_tokens"] / seconds


def run_engine(scorer, batches, eos_ids, options, beam: int) -> tuple[float, dict[str, list[int]]]:
    from speechllm_cli.decode.search import search

    outputs: dict[str, list[int]] = {}
    start = time.perf_counter()
    for utts, prefix, caps in batches:
        if hasattr(scorer, "reserve"):
            scorer.reserve([len(e) for e in prefix.embeds], caps, beam)
        nbest = search(scorer, prefix, caps, eos_ids, beam=beam, length_penalty=options.length_penalty,
                       no_repeat_ngram=options.no_repeat_ngram)
        for utt, hyps in zip(utts, nbest):
            outputs[utt] = hyps[0].tokens + ([hyps[0].end_token] if hyps[0].ended else [])
    return time.perf_counter() - start, outputs


def score_outputs(outputs: dict[str, list[int]], to_text, data, options) -> tuple[float | None, float | None]:
    """BLEU of the translations (X->en) and WER of the transcripts (%) of 1-best outputs."""
    from speechllm_cli.score.score import score_group

    hyps = {u: to_text(t) for u, t in outputs.items()}
    refs, langs = data.tables["text"], data.tables["utt2lang"]
    st = [u for u in hyps if langs[u] not in options.asr_langs]
    asr = [u for u in hyps if langs[u] in options.asr_langs]
    bleu = score_group(st, refs, hyps, "st")["bleu"] if st else None
    wer = score_group(asr, refs, hyps, "asr")["wer"] if asr else None
    return bleu, wer


def test_set_main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from speechllm_cli.decode.decode import resolve_model_dir, speech_llm_decode_model, trained_task_choice
    from speechllm_cli.decode.options import DecodeOptions
    from speechllm_cli.models.load import load_model

    parser.add_argument("--model", type=Path, required=True, help="trained speech LLM, e.g. exp/speechllm_whisper")
    parser.add_argument("--data", type=Path, required=True, help="dump dir, e.g. dump/whisper_mel/test")
    parser.add_argument("--decode-config", type=Path, default=Path("conf/decode.yaml"),
                        help="decode options (max_len_a/b, no_repeat_ngram, ...); beam and batch size come from here")
    parser.add_argument("--engines", default="pytorch,pytorch-bf16,llamacpp-f32,llamacpp-f16,llamacpp-q8_0")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    fields = yaml.safe_load(args.decode_config.read_text()) if args.decode_config.is_file() else {}
    task, asr_langs = trained_task_choice(model_dir, None, None)
    options = DecodeOptions(**{k: v for k, v in fields.items() if k in DecodeOptions.__dataclass_fields__},
                            task=task, asr_langs=asr_langs)
    model = load_model(model_dir)
    decoder = speech_llm_decode_model(model)
    engines = args.engines.split(",")
    scorers = {e: make_scorer(e, model_dir, args.threads) for e in engines}
    singles = {e: single_stream_tokens_per_second(gguf_path(e, model_dir), args.threads)
               for e in engines if e.startswith("llamacpp")}
    print(f"{model_dir} on {args.data}: {args.threads} threads, {', '.join(engines)}; llama.cpp single-stream text "
          "decoding " + ", ".join(f"{e.split('-')[1]} {v:.1f}" for e, v in singles.items()) + " tokens/s")
    print("| beam | batch | engine | output tokens | LLM seconds (median) | tokens/s | x llama.cpp single stream "
          "| same 1-best as pytorch | BLEU X->en | en WER |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batches, audio_seconds, data = test_set_prefixes(model, args.data, options, batch_size)
        for beam in [int(b) for b in args.beams.split(",")]:
            runs = {e: [] for e in engines}
            outputs = {}
            for repeat in range(args.repeats):  # interleaved, rotated: the machine may be shared
                order = engines[repeat % len(engines):] + engines[:repeat % len(engines)]
                for engine in order:
                    seconds, outputs[engine] = run_engine(scorers[engine], batches, decoder.eos_ids, options, beam)
                    runs[engine].append(seconds)
            reference = outputs.get("pytorch")
            for engine in engines:
                tokens = sum(len(t) for t in outputs[engine].values())
                median = statistics.median(runs[engine])
                single = singles.get(engine, singles.get("llamacpp-f16"))
                same = (f"{sum(reference[u] == t for u, t in outputs[engine].items())}/{len(reference)}"
                        if reference else "-")
                bleu, wer = (None if x is None else round(x, 2)
                             for x in score_outputs(outputs[engine], decoder.to_text, data, options))
                ratio = f"{tokens / median / single:.2f}" if single else "-"
                print(f"| {beam} | {batch_size} | {engine} | {tokens} | {median:.2f} | {tokens / median:.1f} | {ratio} "
                      f"| {same} | {bleu} | {wer} |",
                      flush=True)
        if batch_size == int(args.batch_sizes.split(",")[0]):  # later batch sizes hit the front-end's cache
            print(f"audio side (front-end + adapter, PyTorch, first pass, batch {batch_size}): {audio_seconds:.2f} s "
                  f"for {len(data.utt_ids)} utterances", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modes = {"testset": test_set_main, "text": text_main}
    if not argv or argv[0].startswith("-"):
        argv = ["text", *argv]  # `make bench`: the mode that needs no trained model
    if argv[0] not in modes:
        print(__doc__, file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"bench_decode.py {argv[0]}", description=__doc__.split("\n\n")[0])
    return modes[argv[0]](parser, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
