"""Fixtures for the Speech-LLaMA tests: a tiny random LLaMA with a real (tiny, trained) BPE tokenizer,
a tiny CTC compressor with random weights, and 80-dim fbank of real espeak-ng speech."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import kaldiio
import numpy as np
import torch
from speech_synth import synth_speech

HIDDEN = 64
VOCAB = 320
SENTENCES = [
    "Transcribe the audio:",
    "Translate the audio into English:",
    "the cat sat on the mat",
    "hello world, this is a small test",
    "good morning, how are you today?",
    "speech goes in and text comes out",
    "user assistant system",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(with_bos: bool = True):
    """Byte-level BPE trained on a few sentences, wrapped as a transformers fast tokenizer (no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>" if with_bos else None, eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(seed: int = 0, attn_implementation: str = "sdpa"):
    """A 2-layer LLaMA: hidden 64, 4 heads, 2 kv heads, vocab 320, random weights, sharpened output logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, attn_implementation=attn_implementation,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)  # peakier distributions: training can move the loss, greedy paths differ
    return model


def save_tiny_llm(out_dir: Path, seed: int = 0, with_bos: bool = True, attn_implementation: str = "sdpa") -> Path:
    """Save a tiny LLaMA + tokenizer as a Hugging Face directory; returns it."""
    model = tiny_llama(seed, attn_implementation)
    model.save_pretrained(out_dir)
    make_tokenizer(with_bos).save_pretrained(out_dir)
    return out_dir


def tiny_compressor(seed: int = 0, vocab_size: int = 16):
    """A CTCCompressor with a tiny config and random weights."""
    from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig

    torch.manual_seed(seed)
    config = CTCCompressorConfig(d_model=32, num_heads=2, ff_dim=64, num_layers=2, dropout=0.0)
    model = CTCCompressor(config, vocab_size=vocab_size).eval()
    with torch.no_grad():  # fewer blanks than chance: compression keeps several frames per utterance
        model.ctc_head.bias[model.blank_id] -= 1.0
    return model


def fbank(samples: np.ndarray) -> np.ndarray:
    """The toolkit's 80-dim fbank of 16 kHz samples: (T, 80) float32."""
    from speechllm_cli.features.fbank import FbankExtractor

    return FbankExtractor()(samples)


@functools.lru_cache(maxsize=1)
def speech_feats() -> tuple[np.ndarray, ...]:
    """Mean/variance-normalised fbank of three espeak-ng utterances of different lengths."""
    texts = ["hello world", "the cat sat on the mat", "good morning, how are you today?"]
    feats = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            samples = synth_speech(text, "en", Path(tmp) / f"{i}.wav", sample_rate=16000)
            f = fbank(samples)
            feats.append((f - f.mean(0)) / (f.std(0) + 1e-5))
    return tuple(feats)


def feats_batch(indices=(0, 1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, T, 80) feats and (B,) lengths for the chosen utterances."""
    chosen = [torch.from_numpy(speech_feats()[i]) for i in indices]
    lens = torch.tensor([len(f) for f in chosen])
    return torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True), lens


TINY_ADAPTER = {"type": "transformer", "num_layers": 1, "d_model": 32, "num_heads": 2, "ff_dim": 64, "dropout": 0.0}


def tiny_frontend(compressor=None, compression: str = "frame_average", pieces=None):
    """The ctc_compressor front-end over ``compressor`` (default: tiny_compressor()), given as a module."""
    from speechllm_cli.models.frontends.ctc_compressor import CTCCompressorFrontEnd, CTCCompressorFrontEndConfig

    compressor = compressor if compressor is not None else tiny_compressor()
    return CTCCompressorFrontEnd(CTCCompressorFrontEndConfig(compression=compression), compressor, pieces)


def make_model(llm_dir: Path, compressor=None, seed: int = 0, label_pieces=None, compression: str = "frame_average",
               adapter: dict | None = None, **overrides):
    """A SpeechLLM on the tiny LLaMA in ``llm_dir`` with a tiny adapter (default: a 1-layer Transformer; eval mode,
    dropout 0); with ``label_pieces`` (the compressor's CTC pieces) it has a label table initialised from them."""
    from speechllm_cli.models.llm import load_llm
    from speechllm_cli.models.speech_llm import SpeechLLM, SpeechLLMConfig

    config = SpeechLLMConfig(llm=str(llm_dir), adapter=dict(adapter or TINY_ADAPTER),
                             label_embeddings=label_pieces is not None, **overrides)
    config.frontend.compression = compression
    llm, tokenizer = load_llm(llm_dir, attn_implementation=config.attn_implementation)
    torch.manual_seed(seed)
    frontend = tiny_frontend(compressor, compression, label_pieces)
    return SpeechLLM(config, frontend, llm, tokenizer).eval()


def greedy(model, feats, feat_lens, tasks, max_new_tokens: int) -> list[list[int]]:
    """Greedy token ids per utterance (end token left out; at most ``max_new_tokens``) through the production
    decoding path: decoding_prefix + LLMScorer + search."""
    from speechllm_cli.decode.llm_scorer import LLMScorer
    from speechllm_cli.decode.search import search

    with torch.no_grad():
        prefix = model.decoding_prefix(feats, feat_lens, tasks)
        nbest = search(LLMScorer(model.hf_llm), prefix, [max_new_tokens] * len(tasks), [model.end_id], beam=1)
    return [hyps[0].tokens for hyps in nbest]  # end token left out


TARGETS = ["hello world", "the cat sat on the mat", "good morning, how are you today?"]


def _randomise_lora(model, seed: int = 1) -> None:
    """LoRA B starts at zero (a no-op); give it weights so the export has something to merge."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def save_speech_llm_dir(root, llm_dir=None, **overrides):
    """A speech-LLM model dir ``root/model`` on disk (tiny LLaMA, tiny random CTC compressor dir ``root/ctc`` on a char
    token list of UTTS' texts, LoRA B randomised), as `speechllm decode` loads it."""
    from _train_fixtures import save_ctc_dir

    from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
    from speechllm_cli.models.speech_llm import SpeechLLMConfig
    from speechllm_cli.models.speech_llm_io import build_speech_llm, save_speech_llm
    from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    (root / "text").write_text("".join(f"{u} {t}\n" for u, (_, t) in UTTS.items()), encoding="utf-8")
    token_dir = train_tokenizer([root / "text"], root / "token_list", vocab_size=20, model_type="char")
    torch.manual_seed(0)
    ctc_config = CTCCompressorConfig(d_model=32, num_heads=2, ff_dim=64, num_layers=1, dropout=0.0,
                                     vocab_size=Tokenizer.load(token_dir).vocab_size)
    save_ctc_dir(root / "ctc", CTCCompressor(ctc_config), token_dir)
    settings = {"use_chat_template": True, "adapter": TINY_ADAPTER,
                "frontend": {"dir": str(root / "ctc"), "compression": "frame_average"}, **overrides}
    config = SpeechLLMConfig(llm=str(llm_dir or save_tiny_llm(root / "llm")), **settings)
    model = build_speech_llm(config)
    if config.lora.rank > 0:
        _randomise_lora(model)
    return save_speech_llm(model, root / "model")


# three real utterances (speech_feats() order) with language and text, and a dump dir of them
UTTS = {"spkA-u1": ("en", "hello world"), "spkA-u2": ("fr", "the cat sat on the mat"),
        "spkB-u3": ("de", "good morning, how are you today?")}


def make_dump_dir(path, feats):
    """A dump dir at ``path`` holding ``feats`` (utt -> fbank) of UTTS, with their text, utt2lang, utt2spk."""
    from speechllm_cli.data.kaldi_dir import DataDir, read_table

    path.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{path}/feats.ark,{path}/feats.scp") as writer:
        for utt in sorted(feats):
            writer(utt, feats[utt])
    tables = {
        "text": {u: t for u, (_, t) in UTTS.items()},
        "utt2lang": {u: lang for u, (lang, _) in UTTS.items()},
        "utt2spk": {u: u.split("-")[0] for u in UTTS},
        "utt2num_frames": {u: str(len(feats[u])) for u in UTTS},
        "feats.scp": dict(read_table(path / "feats.scp")),
    }
    DataDir(path, tables).save()
    return path
