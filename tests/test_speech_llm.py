"""Speech-LLaMA model: sequence layout, loss, masks, frozen weights, LoRA, saving/loading, LLM export."""

from __future__ import annotations

import time

import pytest
import torch
from _speech_llm_fixtures import (
    TARGETS,
    feats_batch,
    greedy,
    make_model,
    save_tiny_llm,
    tiny_compressor,
    tiny_frontend,
    tiny_llama,
)
from speech_synth import requires_espeak

from speechllm_cli.models.llm import find_embedded_gguf, llm_content_hash, load_llm
from speechllm_cli.models.speech_llm import IGNORE_INDEX, LoraSettings, SpeechLLMConfig, prefix_lm_mask
from speechllm_cli.models.speech_llm_io import LLMMismatchError, load_speech_llm, save_speech_llm

pytestmark = requires_espeak
PIECES = ["<blank>", "<unk>"] + [f"\u2581{w}" for w in "the cat sat on mat hello world good morning how are you to"
                                                       .split()] + ["day"]  # 16: tiny_compressor's CTC vocabulary


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "llm")


def _batch(model, task="asr", indices=(0, 1, 2)):
    feats, feat_lens = feats_batch(indices)
    prompts = [model.prompt_ids(task) for _ in indices]
    targets = [model.encode_target(TARGETS[i]) for i in indices]
    return feats, feat_lens, prompts, targets


def _layout(model, feats, feat_lens, prompts, targets):
    audio_embeds, audio_lens = model.encode_audio(feats, feat_lens)
    return audio_embeds, audio_lens, model.build_inputs(audio_embeds, audio_lens, prompts, targets)


def test_labels_only_on_target_and_end(llm_dir):
    model = make_model(llm_dir)
    feats, feat_lens, prompts, targets = _batch(model)
    _, audio_lens, inputs = _layout(model, feats, feat_lens, prompts, targets)
    labels = inputs["labels"]
    for b, target in enumerate(targets):
        length = len(prompts[b]) + int(audio_lens[b]) + len(model.post_audio_ids) + len(target) + 1
        expected = torch.full((labels.shape[1],), IGNORE_INDEX)
        expected[length - len(target) - 1 : length] = torch.tensor(target + [model.end_id])
        assert torch.equal(labels[b], expected)
    # another prompt and other audio (utterances swapped) move the target but label it the same way
    swapped_feats, swapped_lens = feats_batch((2, 0, 1))
    other = model.build_inputs(*model.encode_audio(swapped_feats, swapped_lens), [model.prompt_ids("st")] * 3, targets)
    for b, target in enumerate(targets):
        assert other["labels"][b][other["labels"][b] != IGNORE_INDEX].tolist() == target + [model.end_id]
    # our loss on one utterance equals transformers' own shifted loss on the same labels
    with torch.no_grad():
        single = model.build_inputs(*model.encode_audio(feats[:1, : feat_lens[0]], feat_lens[:1]), prompts[:1],
                                    targets[:1])
        hf_loss = model.hf_llm(**single).loss
        loss, stats = model(feats[:1, : feat_lens[0]], feat_lens[:1], prompts[:1], targets[:1])
    assert abs(float(hf_loss) - float(loss)) < 1e-5
    assert stats["num_tokens"] == len(targets[0]) + 1


@pytest.mark.parametrize("overrides", [
    {},
    {"audio_attention": "bidirectional"},
    {"audio_attention": "bidirectional", "attn_implementation": "eager"},
    {"use_chat_template": True},
    {"compression": "none", "lora": LoraSettings(rank=0)},
    {"adapter": {"type": "stack_mlp", "stack": 2, "hidden_dim": 32, "dropout": 0.0}, "label_pieces": PIECES},
    {"adapter": {"type": "conv", "stride": 2, "kernel": 3, "channels": 32, "dropout": 0.0}, "compression": "none"},
    {"adapter": {"type": "qformer", "window": 3, "queries": 2, "num_layers": 1, "d_model": 32, "num_heads": 2,
                 "ff_dim": 64, "dropout": 0.0}, "label_pieces": PIECES, "audio_attention": "bidirectional"},
])
def test_batched_loss_is_mean_of_utterance_losses(llm_dir, overrides):
    model = make_model(llm_dir, **overrides)
    feats, feat_lens, prompts, targets = _batch(model)
    with torch.no_grad():
        batch_loss, _ = model(feats, feat_lens, prompts, targets)
        singles = [model(feats[b : b + 1, : feat_lens[b]], feat_lens[b : b + 1], prompts[b : b + 1],
                         targets[b : b + 1])[0] for b in range(3)]
    assert len({round(float(x), 4) for x in singles}) == 3  # utterances differ, so the mean is a real check
    assert abs(float(batch_loss) - float(torch.stack(singles).mean())) < 1e-5


def test_padded_batch_positions_masks_and_inert_padding(llm_dir):
    model = make_model(llm_dir)
    feats, feat_lens, prompts, targets = _batch(model)
    audio_embeds, audio_lens, inputs = _layout(model, feats, feat_lens, prompts, targets)
    embed = model.hf_llm.get_input_embeddings()
    lengths = []
    for b in range(3):
        n_prompt, n_audio = len(prompts[b]), int(audio_lens[b])
        length = n_prompt + n_audio + len(model.post_audio_ids) + len(targets[b]) + 1
        lengths.append(length)
        assert inputs["attention_mask"][b].tolist() == [1] * length + [0] * (inputs["labels"].shape[1] - length)
        assert torch.equal(inputs["position_ids"][b, :length], torch.arange(length))
        assert torch.equal(inputs["inputs_embeds"][b, :n_prompt], embed(torch.tensor(prompts[b])))
        assert torch.equal(inputs["inputs_embeds"][b, n_prompt : n_prompt + n_audio], audio_embeds[b, :n_audio])
    assert len(set(lengths)) == 3 and max(lengths) == inputs["labels"].shape[1]
    # garbage in the padded positions changes nothing
    with torch.no_grad():
        logits = model.hf_llm(**inputs).logits
        noisy = dict(inputs, inputs_embeds=inputs["inputs_embeds"].clone())
        for b, length in enumerate(lengths):
            noisy["inputs_embeds"][b, length:] = 100.0 * torch.randn_like(noisy["inputs_embeds"][b, length:])
        noisy_logits = model.hf_llm(**noisy).logits
    for b, length in enumerate(lengths):
        assert torch.allclose(logits[b, :length], noisy_logits[b, :length], atol=1e-5)


def test_bidirectional_mask_spans_audio_only(llm_dir):
    results = {}
    for mode in ("causal", "bidirectional"):
        model = make_model(llm_dir, audio_attention=mode)
        feats, feat_lens, prompts, targets = _batch(model)
        audio_embeds, audio_lens, inputs = _layout(model, feats, feat_lens, prompts, targets)
        first, last = len(prompts[0]), len(prompts[0]) + int(audio_lens[0]) - 1  # utterance 0's audio span
        assert last - first >= 2
        if mode == "bidirectional":
            mask = inputs["attention_mask"]  # (B, 1, L, L) bool for sdpa
            length = inputs["labels"].shape[1]
            assert mask.shape == (3, 1, length, length) and mask.dtype == torch.bool
            target_pos = int((inputs["labels"][0] != IGNORE_INDEX).nonzero()[0])
            assert mask[0, 0, first, last] and mask[0, 0, last, first]  # audio sees audio both ways
            assert not mask[0, 0, last, last + 1] and not mask[0, 0, first, target_pos]  # but nothing after it
            assert mask[0, 0, target_pos, first] and not mask[0, 0, first - 1, first]
            for b in range(3):  # real positions never attend padded keys; a padded query sees only itself of them
                end = int((inputs["labels"][b] != IGNORE_INDEX).nonzero()[-1]) + 1
                assert not mask[b, 0, :end, end:].any() and mask[b, 0, end - 1, :end].all()
                assert torch.equal(mask[b, 0, end:, end:], torch.eye(length - end, dtype=torch.bool))
        changed = dict(inputs, inputs_embeds=inputs["inputs_embeds"].clone())
        changed["inputs_embeds"][0, last] += 1.0  # only the last audio frame changes
        with torch.no_grad():
            before, after = model.hf_llm(**inputs).logits, model.hf_llm(**changed).logits
        results[mode] = (before[0, first] - after[0, first]).abs().max().item()
    assert results["causal"] == 0.0  # an early audio position cannot see a later one...
    assert results["bidirectional"] > 1e-4  # ...unless the audio span is bidirectional


def test_prefix_lm_mask_small():
    padding = torch.tensor([[1, 1, 1, 1, 1, 0]])
    audio = torch.tensor([[0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],  # the padded query sees the real positions and itself
    ], dtype=torch.bool)
    assert torch.equal(prefix_lm_mask(padding, audio)[0, 0], expected)


def test_training_moves_only_adapter_label_table_and_lora(llm_dir):
    model = make_model(llm_dir, lora=LoraSettings(rank=2, alpha=4.0, dropout=0.0), audio_attention="bidirectional",
                       label_pieces=PIECES)
    feats, feat_lens, prompts, targets = _batch(model)
    frozen = {k: v.clone() for k, v in model.hf_llm.state_dict().items() if "lora_" not in k}
    compressor = {k: v.clone() for k, v in model.frontend.state_dict().items()}
    trainable = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all(k.split(".")[0] in ("adapter", "label_table") or "lora_" in k for k in trainable)
    assert any("lora_" in k for k in trainable) and "label_table.weight" in trainable
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.frontend.compressor.training
    losses = []
    for _ in range(8):
        loss, _ = model(feats, feat_lens, prompts, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3 and sorted(losses, reverse=True) == losses, losses
    after = model.hf_llm.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert all(torch.equal(v, model.frontend.state_dict()[k]) for k, v in compressor.items())
    params = dict(model.named_parameters())
    assert all(not torch.equal(v, params[k]) for k, v in trainable.items())
    assert set(model.trainable_state_dict()) == set(trainable)


def test_gradient_checkpointing_gives_the_same_gradients(llm_dir):
    grads = []
    for checkpointing in (False, True):
        model = make_model(llm_dir, gradient_checkpointing=checkpointing, lora=LoraSettings(dropout=0.0)).train()
        feats, feat_lens, prompts, targets = _batch(model)
        model(feats, feat_lens, prompts, targets)[0].backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])
    assert all(g.abs().sum() > 0 for k, g in grads[0].items() if "lora_A" not in k)  # lora_B starts at 0


def test_rank_zero_has_no_lora(llm_dir):
    model = make_model(llm_dir, lora=LoraSettings(rank=0))
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    assert names and all(k.startswith("adapter.") for k in names)
    assert not any("lora_" in k for k, _ in model.named_parameters())
    feats, feat_lens, prompts, targets = _batch(model)
    loss, _ = model(feats, feat_lens, prompts, targets)
    loss.backward()


def _train_a_little(model, steps=2):
    feats, feat_lens, prompts, targets = _batch(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss, _ = model(feats, feat_lens, prompts, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_saved_lora_loads_with_peft(llm_dir, tmp_path):
    from peft import PeftModel

    model = _train_a_little(make_model(llm_dir, lora=LoraSettings(rank=2, dropout=0.0)))
    out = save_speech_llm(model, tmp_path / "model", extra={"step": 2})
    assert (out / "lora" / "adapter_config.json").is_file()
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    feats, feat_lens, prompts, targets = _batch(model)
    with torch.no_grad():
        inputs = model.build_inputs(*model.encode_audio(feats, feat_lens), prompts, targets)
        inputs.pop("labels")
        ours = model.llm(**inputs).logits
        base, _ = load_llm(llm_dir)
        bare = base(**inputs).logits
        peft_logits = PeftModel.from_pretrained(base, out / "lora").eval()(**inputs).logits
    assert torch.equal(ours, peft_logits)
    assert not torch.allclose(ours, bare)


def test_save_load_roundtrip_and_llm_hash_check(llm_dir, tmp_path):
    llm = save_tiny_llm(tmp_path / "llm", seed=3)
    compressor = tiny_compressor()
    model = _train_a_little(make_model(llm, compressor=compressor, audio_attention="bidirectional"))
    out = save_speech_llm(model, tmp_path / "model")
    feats, feat_lens, prompts, targets = _batch(model)
    loaded = load_speech_llm(out, frontend=tiny_frontend(compressor))
    assert loaded.config == model.config and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(model(feats, feat_lens, prompts, targets)[0], loaded(feats, feat_lens, prompts, targets)[0])
    tasks = ["asr"] * 3
    assert greedy(loaded, feats, feat_lens, tasks, 4) == greedy(model, feats, feat_lens, tasks, 4)
    recorded = llm_content_hash(llm)
    tiny_llama(seed=4).save_pretrained(llm)  # a different LLM where the recorded one was
    with pytest.raises(LLMMismatchError) as error:
        load_speech_llm(out, frontend=tiny_frontend(compressor))
    message = str(error.value)
    assert recorded in message and llm_content_hash(llm) in message and str(llm) in message
    assert "llm_path" in message


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_cached_greedy_decoding_matches_full_recompute(llm_dir, mode):
    """decoding_prefix + the decoder's cached LLM scorer give the tokens a full forward per step gives."""
    model = make_model(llm_dir, audio_attention=mode, use_chat_template=(mode == "causal"))
    feats, feat_lens, prompts, _ = _batch(model)
    hyps = greedy(model, feats, feat_lens, ["asr"] * 3, max_new_tokens=6)
    for b in range(3):
        audio = model.encode_audio(feats[b : b + 1, : feat_lens[b]], feat_lens[b : b + 1])
        tokens: list[int] = []
        for _ in range(6):
            with torch.no_grad():
                inputs = model.build_inputs(*audio, prompts[b : b + 1], [tokens])  # + end id, which comes after
                position = inputs["labels"].shape[1] - 2  # the last target token predicts the next one
                next_id = int(model.hf_llm(**inputs).logits[0, position].argmax())
            if next_id == model.end_id:
                break
            tokens.append(next_id)
        assert hyps[b] == tokens


def test_tokenizer_without_bos_and_prompt_layout(tmp_path):
    llm = save_tiny_llm(tmp_path / "llm", with_bos=False)
    model = make_model(llm)
    assert model.tokenizer.bos_token is None and model.tokenizer.pad_token == model.tokenizer.eos_token
    assert model.prompt_ids("asr") == model.encode_target("Transcribe the audio:")
    assert model.end_id == model.tokenizer.eos_token_id
    chat = make_model(llm, use_chat_template=True)
    text = chat.tokenizer.decode(chat.prompt_ids("st") + chat.post_audio_ids)
    assert text == "<|im_start|>user\nTranslate the audio into English:<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(KeyError, match="known tasks"):
        model.prompt_ids("mt")
    with pytest.raises(ValueError, match="compression"):
        SpeechLLMConfig(frontend={"compression": "average"})
    with pytest.raises(ValueError, match="adapter.type 'mlp' is not one of"):
        SpeechLLMConfig(adapter={"type": "mlp"})


def test_load_llm_frozen_and_hash(tmp_path):
    llm_dir = save_tiny_llm(tmp_path / "llm")
    model, tokenizer = load_llm(llm_dir)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token == tokenizer.eos_token and len(tokenizer) <= model.config.vocab_size
    first = llm_content_hash(llm_dir)
    assert first == llm_content_hash(llm_dir) and len(first) == 64
    tiny_llama(seed=1).save_pretrained(llm_dir)
    assert llm_content_hash(llm_dir) != first
    with pytest.raises(FileNotFoundError, match="neither"):
        load_llm(tmp_path / "missing")


def test_find_embedded_gguf():
    path = find_embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_embedded_smollm2_export_and_training_steps(tmp_path):
    from speechllm_cli.models.llm import export_llm

    start = time.perf_counter()
    hf_dir = export_llm(find_embedded_gguf(), tmp_path / "smollm2_hf")
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    model = make_model(hf_dir, use_chat_template=True, audio_attention="bidirectional")
    reload_s = time.perf_counter() - start
    assert model.tokenizer.bos_token == "<|im_start|>" and model.tokenizer.eos_token == "<|im_end|>"
    frozen = {k: v.clone() for k, v in model.hf_llm.state_dict().items() if "lora_" not in k}
    feats, feat_lens, prompts, targets = _batch(model, task="st", indices=(0, 1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(2):
        loss, stats = model(feats, feat_lens, prompts, targets)
        assert torch.isfinite(loss) and stats["num_tokens"] > 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.hf_llm.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    print(f"export {export_s:.1f} s, reload {reload_s:.2f} s, loss {loss.item():.3f}")
