"""Training throughput of SpeechLLM on SmolLM2 vs a bare LLM+LoRA step, LLM input length per audio second, peak RSS.

Usage:
    .venv/bin/python bench/bench_speech_llm.py          # random compressor; SmolLM2 exported to /tmp/smollm2_hf
    .venv/bin/python bench/bench_speech_llm.py --threads 2 \
        --ctc-model-dir egs/covost2/exp/ctc_compressor --dump-dir egs/covost2/dump/dev
    .venv/bin/python bench/bench_speech_llm.py --config egs/covost2/conf/tuning/adapter_qformer.yaml   # its adapter

The model's front-end compression, adapter and label table come from ``--config`` (a recipe training config; default
the recipe's conf/train_speechllm.yaml). The SpeechLLM step (compressor + compression + adapter + LLM with LoRA,
forward + backward + AdamW) runs on
``--batch`` real utterances of similar length from ``--dump-dir`` (else random fbank of ~``--seconds`` s, lengths
80-100 % of it) and random targets of ``--target-tokens`` tokens. The bare step
runs the same LLM with the same LoRA on random inputs_embeds as long as the SpeechLLM's LLM inputs, with HF's own
loss over all positions. Tokens/s counts LLM input positions (padding excluded).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from speechllm_cli.models.frontends.ctc_compressor import CTCCompressorFrontEnd, CTCCompressorFrontEndConfig
from speechllm_cli.models.llm import export_llm, find_embedded_gguf, load_llm
from speechllm_cli.models.speech_llm import SpeechLLM, SpeechLLMConfig
from speechllm_cli.models.subsampling import subsampled_lengths
from speechllm_cli.utils.config import read_yaml

RECIPE_CONFIG = Path(__file__).resolve().parents[1] / "egs" / "covost2" / "conf" / "train_speechllm.yaml"

FRAMES_PER_SECOND = 100  # 10 ms fbank shift
ESPEAK_SENTENCES = [
    "the weather is nice today and we are going for a walk",
    "please open the window before you leave the room",
    "speech recognition turns spoken words into written text",
    "a large language model predicts the next word",
]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_frontend(ctc_model_dir: str | None, compression: str, device: str):
    """(the ctc_compressor front-end, whether its compressor is trained)."""
    config = CTCCompressorFrontEndConfig(dir=ctc_model_dir or "", compression=compression)
    if ctc_model_dir:
        return CTCCompressorFrontEnd.from_config(config, device), True
    from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig

    torch.manual_seed(0)
    compressor = CTCCompressor(CTCCompressorConfig(vocab_size=500)).to(device).eval()
    return CTCCompressorFrontEnd(config, compressor, [f"<{i}>" for i in range(500)]), False


def timed_batch(args, generator):
    """The batch the steps run on: ``--batch`` real utterances of similar length (as bucketing picks them) from
    ``--dump-dir``, else random fbank of ~``--seconds`` s."""
    if args.dump_dir:
        from speechllm_cli.train.dataset import DumpDataset

        data = DumpDataset(args.dump_dir)
        feats = sorted((torch.from_numpy(data[i]["feats"]) for i in range(len(data))), key=len)
        middle = len(feats) // 2
        chosen = feats[middle : middle + args.batch]
        lens = torch.tensor([len(f) for f in chosen])
        return torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True), lens
    frames = int(args.seconds * FRAMES_PER_SECOND)
    feat_lens = torch.randint(int(0.8 * frames), frames + 1, (args.batch,), generator=generator)
    feat_lens[0] = frames
    feats = torch.randn(args.batch, frames, 80, generator=generator)  # (B, T, 80)
    return feats, feat_lens


def real_speech(dump_dir: str | None, device: str):
    """Fbank of real speech: the first 32 utterances of a dump dir, else a few espeak-ng sentences."""
    if dump_dir:
        from speechllm_cli.train.dataset import DumpDataset

        data = DumpDataset(dump_dir)
        feats = [torch.from_numpy(data[i]["feats"]) for i in range(min(32, len(data)))]
        source = f"speech from {dump_dir}"
    else:
        feats = [torch.from_numpy(espeak_fbank(text)) for text in ESPEAK_SENTENCES]
        source = "espeak-ng speech"
    lens = torch.tensor([len(f) for f in feats], device=device)
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(device), lens, source


def espeak_fbank(text: str) -> np.ndarray:
    """80-dim fbank (T, 80) of ``text`` spoken by espeak-ng at 16 kHz."""
    import kaldi_native_fbank as knf
    import soundfile
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-w", str(wav), text], check=True, capture_output=True)
        audio, rate = soundfile.read(wav, dtype="float32")
    audio = soxr.resample(audio, rate, 16000)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    computer = knf.OnlineFbank(opts)
    computer.accept_waveform(16000, (audio * 32768.0).tolist())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)]).astype(np.float32)


def time_steps(step_fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step_fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speech_llm_input_lengths(model: SpeechLLM, feats, feat_lens) -> torch.Tensor:
    with torch.no_grad():
        _, audio_lens = model.encode_audio(feats, feat_lens)
    return audio_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-dir", default="/tmp/smollm2_hf", help="exported HF dir (made from the GGUF if missing)")
    parser.add_argument("--ctc-model-dir", default=None, help="trained CTC compressor (else random weights)")
    parser.add_argument("--dump-dir", default=None, help="real speech for the length figures (with --ctc-model-dir)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per utterance")
    parser.add_argument("--target-tokens", type=int, default=16)
    parser.add_argument("--config", default=str(RECIPE_CONFIG), help="recipe training config: model.frontend "
                        "compression, model.adapter and model.label_embeddings come from it")
    parser.add_argument("--compression", default=None, help="override the config's model.frontend.compression")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device

    llm_dir = Path(args.llm_dir)
    if not (llm_dir / "config.json").is_file():
        start = time.perf_counter()
        export_llm(find_embedded_gguf(), llm_dir)
        print(f"export GGUF -> {llm_dir}: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    llm, tokenizer = load_llm(llm_dir, args.dtype, device)
    print(f"reload {llm_dir}: {time.perf_counter() - start:.2f} s")

    recipe = read_yaml(args.config)["model"]
    args.compression = args.compression or recipe["frontend"].get("compression", "frame_average")
    frontend, trained = make_frontend(args.ctc_model_dir, args.compression, device)
    config = SpeechLLMConfig(llm=str(llm_dir), dtype=args.dtype, frontend=frontend.config, adapter=recipe["adapter"],
                             label_embeddings=recipe.get("label_embeddings", False))
    model = SpeechLLM(config, frontend, llm, tokenizer).to(device).train()
    audio_params = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    generator = torch.Generator().manual_seed(0)
    feats, feat_lens = timed_batch(args, generator)
    feats, feat_lens = feats.to(device), feat_lens.to(device)
    vocab = model.hf_llm.config.vocab_size
    targets = [torch.randint(3, vocab, (args.target_tokens,), generator=generator).tolist() for _ in feat_lens]
    prompts = [model.prompt_ids("st")] * args.batch

    audio_lens = speech_llm_input_lengths(model, feats, feat_lens)
    post = len(model.post_audio_ids)
    seq_lens = [len(p) + int(a) + post + len(t) + 1 for p, a, t in zip(prompts, audio_lens, targets)]
    tokens = sum(seq_lens)

    def speech_step():
        loss, _ = model(feats, feat_lens, prompts, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    speech_s = time_steps(speech_step, args.steps, args.warmup)
    speech_rss = peak_rss_mib()  # before the bare LLM copy is loaded

    lora = config.lora
    bare_llm, _ = load_llm(llm_dir, args.dtype, device)
    lora_config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    bare = get_peft_model(bare_llm, lora_config).to(device).train()
    bare_opt = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4)
    hidden = model.hf_llm.config.hidden_size
    length = max(seq_lens)
    embeds = 0.02 * torch.randn(args.batch, length, hidden, generator=generator)
    embeds = embeds.to(device, model.hf_llm.dtype)
    mask = (torch.arange(length)[None] < torch.tensor(seq_lens)[:, None]).long().to(device)
    labels = torch.randint(3, vocab, (args.batch, length), generator=generator).masked_fill(mask.cpu() == 0, -100)
    labels = labels.to(device)

    def bare_step():
        loss = bare(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()

    bare_s = time_steps(bare_step, args.steps, args.warmup)

    # the same, but scoring only the target positions (as SpeechLLM does): isolates the audio-side overhead
    is_target = torch.zeros(args.batch, length, dtype=torch.bool)
    for b, n in enumerate(seq_lens):
        is_target[b, n - args.target_tokens - 2 : n - 1] = True  # positions that predict target + end
    is_target = is_target.to(device)
    hf_bare = bare.get_base_model()

    def bare_target_step():
        hidden_states = hf_bare.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        logits = hf_bare.get_output_embeddings()(hidden_states[is_target]).float()
        loss = torch.nn.functional.cross_entropy(logits, labels[is_target].clamp(min=0))
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()

    bare_target_s = time_steps(bare_target_step, args.steps, args.warmup)

    audio_seconds = feat_lens.sum().item() / FRAMES_PER_SECOND
    feat_padding = 1 - feat_lens.sum().item() / feats.shape[0] / feats.shape[1]
    llm_padding = 1 - tokens / (args.batch * length)
    print(f"device {device}, threads {args.threads}, dtype {args.dtype}, batch {args.batch} utterances, "
          f"{audio_seconds:.1f} s of {'speech from ' + args.dump_dir if args.dump_dir else 'random fbank'}, "
          f"compression {args.compression} (compressor: {args.ctc_model_dir or 'RANDOM weights'}), adapter "
          f"{config.adapter.type} ({audio_params / 1e6:.2f}M trained parameters with the label table)")
    print(f"LLM inputs {tokens} positions (longest {length}); padding {feat_padding:.1%} of fbank frames, "
          f"{llm_padding:.1%} of LLM positions")
    print(f"SpeechLLM train step: {speech_s * 1000:.0f} ms, {tokens / speech_s:.0f} tokens/s, "
          f"{audio_seconds / speech_s:.1f} audio s/s")
    print(f"bare LLM+LoRA step:   {bare_s * 1000:.0f} ms, {tokens / bare_s:.0f} tokens/s")
    print(f"bare, target-only logits: {bare_target_s * 1000:.0f} ms, {tokens / bare_target_s:.0f} tokens/s")
    print(f"ratio SpeechLLM / bare: {bare_s / speech_s * 100:.0f} % (full logits), "
          f"{bare_target_s / speech_s * 100:.0f} % (target-only logits, like SpeechLLM)")

    print("LLM input length per second of audio (audio positions only):")
    if trained:
        speech, speech_lens, source = real_speech(args.dump_dir, device)
    else:
        speech, speech_lens, source = feats, feat_lens, "random feats"
    seconds = speech_lens.float().sum().item() / FRAMES_PER_SECOND
    print(f"  on {len(speech_lens)} utterances, {seconds:.1f} s of {source}")
    print(f"  plain 4x subsampling: {subsampled_lengths(speech_lens).sum().item() / seconds:.1f}")
    modes = ("none", "frame_average", "blank_remove") if trained else ("none",)
    for mode in modes:
        model.frontend.config.compression = mode
        lens = speech_llm_input_lengths(model, speech, speech_lens).float().sum().item()
        print(f"  {mode}: {lens / seconds:.1f}")
    if not trained:
        print("  (random compressor weights: frame_average / blank_remove figures would be meaningless; "
              "pass --ctc-model-dir)")
    print(f"peak RSS: {speech_rss:.0f} MiB after the SpeechLLM steps, {peak_rss_mib():.0f} MiB with the bare copy")


if __name__ == "__main__":
    main()
