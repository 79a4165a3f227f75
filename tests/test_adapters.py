"""Every registered adapter: shapes and lengths, no leak from padding, pool(), gradients and config errors."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechllm_cli.models.adapters import ADAPTERS, adapter_config, build_adapter
from speechllm_cli.utils.config import ConfigError

INPUT_DIM, LLM_DIM = 6, 10
SMALL = {  # small sizes; conv with kernel > stride so its last outputs read past the length
    "transformer": {"num_layers": 1, "d_model": 16, "num_heads": 2, "ff_dim": 32},
    "stack_mlp": {"stack": 3, "hidden_dim": 16},
    "conv": {"stride": 3, "kernel": 5, "channels": 16},
    "qformer": {"window": 4, "queries": 2, "num_layers": 1, "d_model": 16, "num_heads": 2, "ff_dim": 32},
    "unit_embedding": {},  # reads one-hot units (frontends/kmeans_units.py); any frame vectors work
}
TYPES = sorted(ADAPTERS.entries)


def make(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_adapter(adapter_config({"type": name, **SMALL[name], **overrides}), INPUT_DIM, LLM_DIM)


@functools.cache
def eval_adapter(name: str):
    return make(name).eval()


def test_every_registered_type_is_tested():
    assert set(SMALL) == set(TYPES)


@pytest.mark.parametrize("name", TYPES)
def test_shapes_and_lengths_on_a_padded_batch(name):
    adapter = eval_adapter(name)
    lens = torch.tensor([13, 1, 0, 7])
    with torch.no_grad():
        embeds, out_lens = adapter(torch.randn(4, 15, INPUT_DIM), lens)
    assert embeds.shape[0] == 4 and embeds.shape[2] == LLM_DIM
    assert torch.equal(out_lens, adapter.output_lengths(lens))
    assert (out_lens[lens > 0] >= 1).all() and int(out_lens.max()) <= embeds.shape[1]
    assert torch.isfinite(embeds).all()
    assert adapter.pool(torch.rand(4, 15, 3), lens).shape == (4, embeds.shape[1], 3)
    assert isinstance(adapter.output_proj, torch.nn.Linear) and adapter.output_proj.out_features == LLM_DIM


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 40), min_size=1, max_size=4), extra=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_padding_never_leaks(name, lens, extra, seed):
    adapter = eval_adapter(name)
    gen = torch.Generator().manual_seed(seed)
    frames = max(lens) + extra
    x = torch.randn(len(lens), frames, INPUT_DIM, generator=gen)
    lens_t = torch.tensor(lens)
    past = torch.arange(frames)[None, :] >= lens_t[:, None]
    junk = 1e3 * torch.randn(x.shape, generator=gen)
    x = torch.where(past[..., None], junk, x)
    with torch.no_grad():
        embeds, out_lens = adapter(x, lens_t)
        for b, n in enumerate(lens):
            alone, alone_lens = adapter(x[b:b + 1, :n], lens_t[b:b + 1])
            m = int(alone_lens[0])
            assert m == int(out_lens[b])
            torch.testing.assert_close(embeds[b, :m], alone[0, :m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 40), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_pool_of_one_hot_posteriors_sums_to_one(name, lens, seed):
    adapter = eval_adapter(name)
    gen = torch.Generator().manual_seed(seed)
    lens_t = torch.tensor(lens)
    labels = torch.randint(0, 5, (len(lens), max(lens)), generator=gen)
    pooled = adapter.pool(torch.nn.functional.one_hot(labels, 5).float(), lens_t)
    sums = pooled.sum(-1)
    for b, m in enumerate(adapter.output_lengths(lens_t).tolist()):
        torch.testing.assert_close(sums[b, :m], torch.ones(m))


@pytest.mark.parametrize("name", TYPES)
def test_gradients_reach_every_parameter(name):
    adapter = make(name, seed=1).train()
    lens = torch.tensor([11, 6])
    embeds, out_lens = adapter(torch.randn(2, 11, INPUT_DIM), lens)
    valid = torch.arange(embeds.shape[1])[None, :] < out_lens[:, None]
    (embeds[valid] ** 2).sum().backward()
    for param_name, param in adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name, key, value", [
    ("stack_mlp", "stack", 0),
    ("stack_mlp", "hidden_dim", -1),
    ("conv", "stride", 0),
    ("conv", "kernel", 2),  # smaller than stride 3
    ("qformer", "window", 0),
    ("qformer", "queries", 0),
    ("qformer", "num_heads", 3),  # d_model 16 is not divisible by 3
    ("qformer", "dropout", 1.5),
    ("unit_embedding", "init_scale", 0.0),
])
def test_bad_values_name_the_key(name, key, value):
    with pytest.raises(ValueError, match=key):
        make(name, **{key: value})


def test_unknown_type_and_unknown_key_are_config_errors():
    with pytest.raises(ConfigError, match="bogus"):
        adapter_config({"type": "bogus"})
    with pytest.raises(ConfigError, match="stacks"):
        adapter_config({"type": "stack_mlp", "stacks": 4})
    with pytest.raises(ConfigError, match="stack"):
        adapter_config({"type": "stack_mlp", "stack": "four"})


def test_unit_rows_start_like_the_llm_token_embeddings_and_embed_one_hot_units():
    adapter = make("unit_embedding")
    torch.manual_seed(0)
    tokens = 0.5 + 0.1 * torch.randn(5000, LLM_DIM)  # a token embedding table: mean 0.5, std 0.1 per dimension
    adapter.init_from_token_embeddings(tokens)
    rows = adapter.output_proj.weight.T  # (K, H): one row per unit
    assert rows.shape == (INPUT_DIM, LLM_DIM)
    torch.testing.assert_close(rows.mean(), torch.tensor(0.5), atol=0.05, rtol=0)
    units = torch.tensor([[3, 0, 3]])
    embeds, lens = adapter(torch.nn.functional.one_hot(units, INPUT_DIM).float(), torch.tensor([3]))
    torch.testing.assert_close(embeds[0], rows[units[0]])
    assert lens.tolist() == [3]
