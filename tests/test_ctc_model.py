"""CTC compressor, CMVN, subsampling and the CTC tokenizer, on real espeak-ng fbank and real corpus text."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from speech_synth import requires_espeak, synth_speech

from speechllm_cli.data.mini_corpus.grammar import generate_pairs
from speechllm_cli.features.cmvn import read_cmvn_stats, write_cmvn
from speechllm_cli.models.cmvn import GlobalCMVN
from speechllm_cli.models.ctc_compressor import (
    CTCCompressor,
    CTCCompressorConfig,
    CTCOutput,
    SpecAugment,
    ctc_loss,
    greedy_decode,
    greedy_labels,
)
from speechllm_cli.models.subsampling import subsampled_lengths
from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer

TEXTS = ["hello world", "the cat sat on the mat", "good morning, how are you today?"]


def fbank(samples: np.ndarray) -> np.ndarray:
    """The toolkit's 80-dim fbank of 16 kHz samples: (T, 80) float32."""
    from speechllm_cli.features.fbank import FbankExtractor

    return FbankExtractor()(samples)


@functools.lru_cache(maxsize=1)
def speech_fbank() -> tuple[np.ndarray, ...]:
    """Raw fbank of TEXTS spoken by espeak-ng (16 kHz)."""
    with tempfile.TemporaryDirectory() as tmp:
        return tuple(fbank(synth_speech(text, "en", Path(tmp) / f"{i}.wav", sample_rate=16000))
                     for i, text in enumerate(TEXTS))


def kaldi_stats(frames: np.ndarray) -> np.ndarray:
    """Kaldi global CMVN stats (2, D + 1) of frames (N, D)."""
    stats = np.zeros((2, frames.shape[1] + 1))
    stats[0, :-1] = frames.sum(0)
    stats[0, -1] = len(frames)
    stats[1, :-1] = (frames.astype(np.float64) ** 2).sum(0)
    return stats


def pad(feats: list[np.ndarray], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = [torch.from_numpy(f) for f in feats]
    return (torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True, padding_value=value),
            torch.tensor([len(f) for f in chosen]))


def tiny_model(vocab_size: int = 12, seed: int = 0, cmvn_stats=None, **overrides) -> CTCCompressor:
    torch.manual_seed(seed)
    settings = dict(d_model=32, num_heads=2, ff_dim=64, num_layers=2, dropout=0.0) | overrides
    return CTCCompressor(CTCCompressorConfig(**settings), vocab_size=vocab_size, cmvn_stats=cmvn_stats)


# ----- subsampling / shapes -----

def test_forward_shapes_and_exact_lengths():
    model = tiny_model().eval()
    lens = [1, 6, 7, 8, 10, 11, 14, 15, 50, 123]
    expected = [1, 1, 1, 1, 1, 2, 2, 3, 11, 30]  # ((T - 1) // 2 - 1) // 2, at least 1
    assert subsampled_lengths(torch.tensor(lens)).tolist() == expected
    feats = torch.randn(len(lens), max(lens), 80)
    out = model(feats, torch.tensor(lens))
    assert isinstance(out, CTCOutput)
    assert out.hidden_lens.tolist() == expected
    assert out.hidden.shape == (len(lens), 30, 32) and out.logits.shape == (len(lens), 30, 12)
    for T, n in zip(lens, expected):  # alone, the conv stack itself produces exactly that many frames
        single = model(torch.randn(1, T, 80), torch.tensor([T]))
        assert single.hidden.shape[1] == n and single.hidden_lens.tolist() == [n]
    padded = torch.arange(30) >= out.hidden_lens[:, None]
    assert torch.all(out.hidden[padded] == 0)


def test_config_vocab_and_errors():
    assert tiny_model(vocab_size=7).config.vocab_size == 7
    config = CTCCompressorConfig(d_model=32, num_heads=2, ff_dim=64, vocab_size=9)
    assert CTCCompressor(config).ctc_head.out_features == 9
    with pytest.raises(ValueError, match="vocab_size"):
        CTCCompressor(CTCCompressorConfig())
    with pytest.raises(ValueError, match="divisible"):
        CTCCompressor(CTCCompressorConfig(d_model=30, num_heads=4), vocab_size=5)


# ----- CMVN -----

@requires_espeak
def test_cmvn_from_kaldi_stats_equals_numpy(tmp_path):
    frames = np.concatenate(speech_fbank())
    write_cmvn(tmp_path / "cmvn.ark", kaldi_stats(frames))  # the dump/<train>/cmvn.ark format
    stats = read_cmvn_stats(tmp_path / "cmvn.ark")
    cmvn = GlobalCMVN.from_stats(stats)
    expected = (frames - frames.mean(0)) / frames.std(0)
    feats, lens = pad(list(speech_fbank()), value=123.0)
    normed = cmvn(feats, lens)
    got = torch.cat([normed[b, :n] for b, n in enumerate(lens.tolist())]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.all(normed[torch.arange(feats.shape[1]) >= lens[:, None]] == 0)

    model = tiny_model(cmvn_stats=stats)  # the statistics travel in the state dict
    state = model.state_dict()
    np.testing.assert_allclose(state["cmvn.mean"].numpy(), frames.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state["cmvn.std"].numpy(), frames.std(0), rtol=1e-4)
    fresh = tiny_model(seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.cmvn.std, model.cmvn.std)


def test_cmvn_variance_floor_and_bad_stats():
    stats = np.array([[2.0, 4.0, 2.0], [2.0, 8.0, 0.0]])  # dim 0 constant 1.0 (var 0), dim 1 constant 2.0
    cmvn = GlobalCMVN.from_stats(stats, var_floor=0.25)
    assert cmvn.mean.tolist() == [1.0, 2.0] and cmvn.std.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="2 x"):
        GlobalCMVN.from_stats(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="count"):
        GlobalCMVN.from_stats(np.zeros((2, 5)))


# ----- SpecAugment -----

def test_spec_augment_respects_lengths():
    torch.manual_seed(0)
    augment = SpecAugment(num_freq_masks=2, freq_mask_width=27, num_time_masks=2, time_mask_ratio=0.05)
    lens = torch.tensor([400, 250, 100, 7])
    feats = torch.ones(4, 400, 80)
    saw_time_mask = saw_freq_mask = False
    for _ in range(50):
        out = augment(feats, lens)
        time_masked = (out == 0).all(dim=2)  # (B, T) whole frames zeroed
        freq_masked = (out == 0).all(dim=1)  # (B, F) whole bins zeroed
        for b, n in enumerate(lens.tolist()):
            assert not time_masked[b, n:].any(), "a time mask reached into the padding"
            assert time_masked[b].sum() <= 2 * int(n * 0.05)
            assert freq_masked[b].sum() <= 2 * 27
            bins_left = ~freq_masked[b]
            assert torch.all(out[b, n:][:, bins_left] == 1), "padding frames were masked"
        saw_time_mask |= bool(time_masked.any())
        saw_freq_mask |= bool(freq_masked.any())
    assert saw_time_mask and saw_freq_mask


@requires_espeak
def test_spec_augment_only_in_training():
    feats, lens = pad(list(speech_fbank()))
    stats = kaldi_stats(np.concatenate(speech_fbank()))
    model = tiny_model(cmvn_stats=stats)  # dropout 0: SpecAugment is the only randomness
    model.eval()
    first, second = model(feats, lens), model(feats, lens)
    assert torch.equal(first.logits, second.logits)
    model.train()
    torch.manual_seed(1)
    trained = model(feats, lens)
    assert not torch.allclose(trained.logits, first.logits, atol=1e-4)

    no_augment = tiny_model(cmvn_stats=stats, num_freq_masks=0, num_time_masks=0).train()
    torch.testing.assert_close(no_augment(feats, lens).logits, first.logits)


# ----- padding -----

@requires_espeak
def test_padding_is_inert():
    torch.manual_seed(0)
    utts = list(speech_fbank())
    model = tiny_model(cmvn_stats=kaldi_stats(np.concatenate(utts))).eval()
    with torch.no_grad():
        batched = model(*pad(utts, value=0.0))
        garbage = model(*pad(utts, value=1e4))  # what sits in the padding must not matter
        for b, utt in enumerate(utts):
            alone = model(*pad([utt]))
            n = int(alone.hidden_lens[0])
            assert batched.hidden_lens[b] == n == garbage.hidden_lens[b]
            torch.testing.assert_close(batched.hidden[b, :n], alone.hidden[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batched.logits[b, :n], alone.logits[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(garbage.logits[b, :n], alone.logits[0], rtol=1e-4, atol=1e-5)


# ----- CTC loss and greedy decoding -----

def test_ctc_loss_normalisation():
    torch.manual_seed(0)
    logits = torch.randn(3, 20, 6)
    lens = torch.tensor([20, 15, 8])
    targets = torch.tensor([[1, 2, 3, 4], [5, 5, -1, -1], [2, -1, -1, -1]])
    target_lens = torch.tensor([4, 2, 1])
    output = CTCOutput(torch.zeros(3, 20, 4), lens, logits)
    per_utt = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets.clamp(min=0), lens, target_lens,
                         reduction="none")
    torch.testing.assert_close(ctc_loss(output, targets, target_lens), per_utt.sum() / 3)
    # an impossible alignment (6 labels, 2 frames) contributes 0 instead of inf
    impossible = CTCOutput(torch.zeros(1, 2, 4), torch.tensor([2]), logits[:1, :2])
    assert ctc_loss(impossible, torch.tensor([[1, 2, 3, 4, 5, 1]]), torch.tensor([6])).item() == 0.0


def test_greedy_labels_and_decode():
    best = torch.tensor([[0, 3, 3, 0, 3, 2, 2, 0], [4, 4, 1, 1, 0, 1, 5, 5]])  # (B, T) best label per frame
    logits = F.one_hot(best, 6).float()
    lens = torch.tensor([8, 6])
    assert greedy_labels(logits, lens).tolist() == [[0, 3, 3, 0, 3, 2, 2, 0], [4, 4, 1, 1, 0, 1, -1, -1]]
    assert greedy_decode(logits, lens) == [[3, 3, 2], [4, 1, 1]]


# ----- tokenizer -----

def write_texts(tmp_path: Path, n: int = 150) -> list[Path]:
    """Kaldi ``text.src`` files for three languages of the mini corpus."""
    paths = []
    for lang in ("de", "fr", "es"):
        path = tmp_path / f"train_{lang}" / "text.src"
        path.parent.mkdir(parents=True)
        lines = [f"spk{lang}-{i:04d} {src}\n" for i, (src, _) in enumerate(generate_pairs(lang, n, seed=0))]
        path.write_text("".join(lines) + f"spk{lang}-9999\n", encoding="utf-8")  # an utterance with empty text
        paths.append(path)
    return paths


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    texts = write_texts(tmp_path)
    first = train_tokenizer(texts, tmp_path / "tok1", vocab_size=120)
    second = train_tokenizer(texts, tmp_path / "tok2", vocab_size=120, seed=0)
    assert (first / "bpe.model").read_bytes() == (second / "bpe.model").read_bytes()
    assert (first / "tokens.txt").read_text() == (second / "tokens.txt").read_text()
    assert sorted(p.name for p in first.iterdir()) == ["bpe.model", "tokens.txt"]  # no temp files left

    tokenizer = Tokenizer.load(first)
    tokens = (first / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert tokens[:2] == ["<blank>", "<unk>"] and len(tokens) == tokenizer.vocab_size == 120
    assert tokenizer.blank_id == 0
    for path in texts:
        for line in path.read_text(encoding="utf-8").splitlines()[:40]:
            text = line.partition(" ")[2]
            ids = tokenizer.encode(text)
            assert 0 not in ids and all(0 < i < 120 for i in ids)
            assert tokenizer.decode(ids) == text
    assert tokenizer.decode([0, *tokenizer.encode("¿Dónde está"), 0]) == "¿Dónde está"  # blanks are dropped
    assert tokenizer.unk_id in tokenizer.encode("日本")  # unseen characters map to <unk>, still not blank


def test_tokenizer_char_and_bpe(tmp_path):
    texts = write_texts(tmp_path, n=60)
    # char: vocab_size is an upper bound, every character seen (73) + <blank>; bpe: exactly vocab_size
    for model_type, vocab_size, expected in (("char", 500, 74), ("bpe", 100, 100)):
        tokenizer = Tokenizer.load(train_tokenizer(texts, tmp_path / model_type, vocab_size, model_type=model_type))
        assert tokenizer.tokens[0] == "<blank>" and tokenizer.vocab_size == expected
        assert tokenizer.decode(tokenizer.encode("Les garçons")) == "Les garçons"


def test_tokenizer_vocab_too_large_is_a_clear_error(tmp_path):
    texts = write_texts(tmp_path, n=20)
    with pytest.raises(ValueError, match=r"vocab_size 5000 is too large .* lower vocab_size") as err:
        train_tokenizer(texts, tmp_path / "tok", vocab_size=5000)
    assert "at most" in str(err.value) and str(texts[0]) in str(err.value)
    assert not (tmp_path / "tok" / "bpe.model").exists()
    with pytest.raises(ValueError, match=r"vocab_size 20 is too small .* raise vocab_size to at least \d+"):
        train_tokenizer(texts, tmp_path / "tok", vocab_size=20)


def test_tokenizer_load_checks_tokens_txt(tmp_path):
    out = train_tokenizer(write_texts(tmp_path, n=60), tmp_path / "tok", vocab_size=100)
    tokens = out / "tokens.txt"
    tokens.write_text("".join(tokens.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="tokens.txt does not list the pieces"):
        Tokenizer.load(out)
    with pytest.raises(FileNotFoundError, match="train the tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")


# ----- training moves the loss -----

@requires_espeak
def test_ctc_training_steps_decrease_loss(tmp_path):
    utts = list(speech_fbank())
    text_file = tmp_path / "text"
    text_file.write_text("".join(f"utt{i} {t}\n" for i, t in enumerate(TEXTS)))
    tokenizer = Tokenizer.load(train_tokenizer([text_file], tmp_path / "tok", vocab_size=30, model_type="char"))
    targets = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(tokenizer.encode(t)) for t in TEXTS], batch_first=True, padding_value=-1)
    target_lens = torch.tensor([len(tokenizer.encode(t)) for t in TEXTS])
    feats, feat_lens = pad(utts)
    model = tiny_model(vocab_size=tokenizer.vocab_size, cmvn_stats=kaldi_stats(np.concatenate(utts)),
                       num_freq_masks=0, num_time_masks=0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        loss = ctc_loss(model(feats, feat_lens), targets, target_lens)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses
