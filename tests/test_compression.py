"""compress(): hand-built label sequences and random batches against a plain Python reference loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechllm_cli.models.compression import compress

BLANK = 0


def reference(hidden: torch.Tensor, lens: torch.Tensor, labels: torch.Tensor, mode: str, blank: int = BLANK):
    """One utterance and one frame at a time: list of (L_b, D) float64 tensors."""
    outputs = []
    for b in range(hidden.shape[0]):
        n = int(lens[b])
        groups: list[list[int]] = []  # frame indices per output vector
        previous = blank
        for t in range(n):
            label = int(labels[b, t])
            if label != blank:
                if mode == "blank_remove" or label != previous:
                    groups.append([t])
                else:
                    groups[-1].append(t)
            previous = label
        if not groups:
            groups = [list(range(n))]
        vectors = []
        for group in groups:
            if group:
                vectors.append(torch.stack([hidden[b, t].double() for t in group]).mean(0))
            else:
                vectors.append(torch.zeros(hidden.shape[2], dtype=torch.float64))
        outputs.append(torch.stack(vectors))
    return outputs


def check_against_reference(hidden, lens, labels, mode):
    compressed, compressed_lens = compress(hidden, lens, labels, mode, BLANK)
    expected = reference(hidden, lens, labels, mode)
    assert compressed.dtype == hidden.dtype
    assert compressed_lens.tolist() == [len(e) for e in expected]
    assert compressed.shape == (hidden.shape[0], max(len(e) for e in expected), hidden.shape[2])
    for b, exp in enumerate(expected):
        n = len(exp)
        torch.testing.assert_close(compressed[b, :n].double(), exp, rtol=1e-6, atol=1e-6)
        assert torch.all(compressed[b, n:] == 0), "padding past the compressed length must be zero"
    return compressed, compressed_lens


def batch_of(label_rows: list[list[int]], dim: int = 3, pad_label: int = 7, seed: int = 0):
    """Right-padded labels (padding frames get ``pad_label``, which is not blank), lens, and random hidden."""
    torch.manual_seed(seed)
    frames = max(len(r) for r in label_rows)
    labels = torch.full((len(label_rows), frames), pad_label, dtype=torch.long)
    for b, row in enumerate(label_rows):
        labels[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    lens = torch.tensor([len(r) for r in label_rows])
    hidden = torch.randn(len(label_rows), frames, dim, dtype=torch.float64)
    hidden[labels == pad_label] += 100.0  # padding values would show up in any output they leaked into
    return hidden, lens, labels


def test_worked_example():
    hidden = torch.arange(6.0)[None, :, None]
    labels = torch.tensor([[0, 3, 3, 0, 3, 5]])
    lens = torch.tensor([6])
    out, out_lens = compress(hidden, lens, labels, "blank_remove")
    assert out.flatten().tolist() == [1, 2, 4, 5] and out_lens.tolist() == [4]
    out, out_lens = compress(hidden, lens, labels, "frame_average")
    assert out.flatten().tolist() == [1.5, 4, 5] and out_lens.tolist() == [3]


HAND_BUILT = {
    "runs": [[0, 2, 2, 2, 0, 0, 3, 3, 4, 0]],
    "blank_splits_a_run": [[5, 0, 5, 5, 0, 5]],
    "all_blank": [[0, 0, 0, 0], [1, 1, 0, 2]],
    "padding": [[1, 1, 2], [0, 3, 3, 3, 0, 1, 1], [4]],
    "single_frame": [[0], [6], [2, 2]],
    "alternating": [[1, 2, 1, 2, 1, 2], [1, 0, 1, 0, 1, 0]],
    "no_blank_one_label": [[3, 3, 3, 3, 3]],
    "leading_trailing_blanks": [[0, 0, 4, 4, 0, 0], [0, 1, 0]],
}


@pytest.mark.parametrize("mode", ["blank_remove", "frame_average"])
@pytest.mark.parametrize("case", sorted(HAND_BUILT))
def test_hand_built_cases(case, mode):
    check_against_reference(*batch_of(HAND_BUILT[case]), mode)


def test_hand_built_lengths():
    """The lengths themselves, written out, so the reference cannot be wrong in the same way."""
    cases = {
        "runs": ([6], [3]),
        "blank_splits_a_run": ([4], [3]),
        "all_blank": ([1, 3], [1, 2]),
        "padding": ([3, 5, 1], [2, 2, 1]),
        "alternating": ([6, 3], [6, 3]),
        "no_blank_one_label": ([5], [1]),
    }
    for case, (removed, averaged) in cases.items():
        hidden, lens, labels = batch_of(HAND_BUILT[case])
        assert compress(hidden, lens, labels, "blank_remove")[1].tolist() == removed, case
        assert compress(hidden, lens, labels, "frame_average")[1].tolist() == averaged, case


def test_all_blank_keeps_mean_of_valid_frames_only():
    hidden, lens, labels = batch_of([[0, 0, 0], [0, 0, 0, 0, 0]])
    for mode in ("blank_remove", "frame_average"):
        out, out_lens = compress(hidden, lens, labels, mode)
        assert out_lens.tolist() == [1, 1]
        torch.testing.assert_close(out[0, 0], hidden[0, :3].mean(0))
        torch.testing.assert_close(out[1, 0], hidden[1, :5].mean(0))


def test_zero_length_utterance_gives_one_zero_vector():
    hidden, _, labels = batch_of([[1, 2, 0], [3, 3, 3]])
    out, out_lens = compress(hidden, torch.tensor([3, 0]), labels, "frame_average")
    assert out_lens.tolist() == [2, 1]
    assert torch.all(out[1] == 0)


def test_padding_labels_never_count():
    """Labels past a length (here: real-looking tokens) change nothing."""
    hidden, lens, labels = batch_of([[1, 1, 0, 2], [3]])
    other = labels.clone()
    other[1, 1:] = torch.tensor([3, 0, 5])
    for mode in ("blank_remove", "frame_average"):
        a, a_lens = compress(hidden, lens, labels, mode)
        b, b_lens = compress(hidden, lens, other, mode)
        assert torch.equal(a, b) and torch.equal(a_lens, b_lens)


def test_none_is_passthrough():
    hidden, lens, labels = batch_of([[1, 0, 2]])
    out, out_lens = compress(hidden, lens, labels, "none")
    assert out is hidden and out_lens is lens


def test_unknown_mode_and_bad_shape():
    hidden, lens, labels = batch_of([[1, 0, 2]])
    with pytest.raises(ValueError, match="not one of"):
        compress(hidden, lens, labels, "average")
    with pytest.raises(ValueError, match="labels have shape"):
        compress(hidden, lens, labels[:, :2], "blank_remove")


def test_gradient_reaches_the_averaged_frames():
    hidden, lens, labels = batch_of([[0, 2, 2, 0, 3], [0, 0]])
    hidden = hidden.float().requires_grad_(True)
    out, out_lens = compress(hidden, lens, labels, "frame_average")
    out.sum().backward()
    expected = torch.zeros_like(hidden)
    expected[0, 1:3] = 0.5  # one run of 2 frames
    expected[0, 4] = 1.0
    expected[1, :2] = 0.5  # all blank: mean of both valid frames
    torch.testing.assert_close(hidden.grad, expected)


def test_bfloat16_accumulates_in_float32():
    """400 ones summed in bfloat16 stall at 256 (spacing 2 there); the mean must still be 1."""
    hidden = torch.ones(1, 400, 4, dtype=torch.bfloat16)
    labels = torch.ones(1, 400, dtype=torch.long)
    out, _ = compress(hidden, torch.tensor([400]), labels, "frame_average")
    assert out.dtype == torch.bfloat16
    assert torch.all(out[0, 0] == 1.0)


@st.composite
def random_batches(draw):
    batch = draw(st.integers(1, 5))
    frames = draw(st.integers(1, 30))
    vocab = draw(st.integers(2, 5))  # small vocabularies: many runs and repeats
    lens = draw(st.lists(st.integers(0, frames), min_size=batch, max_size=batch))
    labels = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=frames, max_size=frames),
                           min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**16))
    return torch.tensor(labels), torch.tensor(lens), seed


@settings(max_examples=200, deadline=None)
@given(random_batches(), st.sampled_from(["blank_remove", "frame_average"]))
def test_random_batches_match_reference(drawn, mode):
    labels, lens, seed = drawn
    hidden = torch.randn(*labels.shape, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    check_against_reference(hidden, lens, labels, mode)
