"""Decode engines: ``export-gguf`` and ``decode --engine llamacpp`` (a tiny LLaMA speech model, LoRA with non-zero
weights so merging matters, exported to GGUF decodes in llama.cpp to the same tokens as the PyTorch engine, on a real
dump dir), and the PyTorch engine in bfloat16."""

from __future__ import annotations

import sys

import pytest
import torch
from _speech_llm_fixtures import (
    UTTS,
    feats_batch,
    make_dump_dir,
    make_model,
    make_tokenizer,
    save_speech_llm_dir,
    save_tiny_llm,
    tiny_llama,
)
from typer.testing import CliRunner

from speechllm_cli.cli import app
from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.decode.decode import decode
from speechllm_cli.decode.decode_io import read_nbest
from speechllm_cli.decode.llm_scorer import LLMScorer
from speechllm_cli.decode.search import search
from speechllm_cli.models.gguf_export import (
    GGUFExportError,
    default_gguf_path,
    export_gguf,
    merged_llm,
    read_gguf_source,
    write_llm_gguf,
)
from speechllm_cli.models.model_dir import model_fingerprint
from speechllm_cli.models.speech_llm_layout import PrefixBatch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by make install")
from speechllm_cli.decode.llamacpp_scorer import LlamaCppScorer  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from _speech_llm_fixtures import speech_feats

    root = tmp_path_factory.mktemp("gguf")
    model_dir = save_speech_llm_dir(root)
    dump = make_dump_dir(root / "dump", dict(zip(UTTS, speech_feats())))
    return model_dir, dump


@pytest.mark.parametrize("beam", [1, 3])
def test_llamacpp_decode_equals_pytorch_decode(saved, tmp_path, beam):
    model_dir, dump = saved
    common = {"beam": beam, "nbest": beam, "max_new_tokens": 8, "batch_size": 2}
    torch_out = decode(model_dir, dump, tmp_path / "pytorch", **common)
    cpp_out = decode(model_dir, dump, tmp_path / "llamacpp", engine="llamacpp", **common)
    assert (cpp_out / "hyp.txt").read_text() == (torch_out / "hyp.txt").read_text()
    torch_nbest, cpp_nbest = read_nbest(torch_out / "nbest.txt"), read_nbest(cpp_out / "nbest.txt")
    for utt in UTTS:
        for a, b in zip(torch_nbest[utt], cpp_nbest[utt], strict=True):
            assert a["text"] == b["text"] and a["num_tokens"] == b["num_tokens"]
            assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-3, abs=2e-3)  # the default export is f16
    assert default_gguf_path(model_dir).is_file()  # exported on first use, inside the model dir
    record = (cpp_out / "decode.yaml").read_text()
    assert "engine: llamacpp" in record and str(default_gguf_path(model_dir)) in record


def test_llamacpp_engine_loads_only_the_audio_side_of_the_llm(saved):
    """With the LLM in llama.cpp, PyTorch holds the LLM's input embeddings and nothing else of it (a 7B LLM costs its
    embedding table), and the prefixes are those of the full model."""
    from _speech_llm_fixtures import speech_feats

    from speechllm_cli.decode.decode import pad_feats
    from speechllm_cli.models.load import load_model

    model_dir, _ = saved
    full, audio = load_model(model_dir), load_model(model_dir, audio_only=True)
    embedding = audio.hf_llm.get_input_embeddings().weight
    held = [name for name, p in audio.hf_llm.named_parameters() if not p.is_meta]
    assert held == [next(n for n, p in audio.hf_llm.named_parameters() if p is embedding)]
    assert torch.equal(embedding, full.hf_llm.get_input_embeddings().weight)
    feats, lens = pad_feats(list(speech_feats()), "cpu")
    with torch.no_grad():
        tasks = ["asr", "st", "st"]
        a, b = full.decoding_prefix(feats, lens, tasks), audio.decoding_prefix(feats, lens, tasks)
    assert all(torch.equal(x, y) for x, y in zip(a.embeds, b.embeds)) and a.text_ids == b.text_ids


def test_gguf_records_its_model_and_a_changed_model_refuses_it(tmp_path):
    model_dir = save_speech_llm_dir(tmp_path)
    before = model_fingerprint(model_dir)
    gguf = export_gguf(model_dir, tmp_path / "llm-f32.gguf", "f32")
    source = read_gguf_source(gguf)
    assert source["model_fingerprint"] == before and source["type"] == "f32"
    default = export_gguf(model_dir, default_gguf_path(model_dir), "f16")
    assert model_fingerprint(model_dir) == before, "the model dir's own gguf/ is not part of the model"
    dump = make_dump_dir(tmp_path / "dump", dict(zip(UTTS, _feats())))
    audio = model_dir / "audio.safetensors"
    audio.write_bytes(audio.read_bytes()[:-4] + b"\0\0\0\0")  # the model changed (retrained) after the export
    with pytest.raises(GGUFExportError, match="re-export it"):
        decode(model_dir, dump, tmp_path / "out", engine="llamacpp", gguf=str(gguf), max_new_tokens=2)
    stale = default.stat().st_mtime_ns
    decode(model_dir, dump, tmp_path / "out2", engine="llamacpp", max_new_tokens=2)
    assert default.stat().st_mtime_ns != stale, "the default export is redone for the changed model"
    assert read_gguf_source(default)["model_fingerprint"] == model_fingerprint(model_dir)


def _feats():
    from _speech_llm_fixtures import speech_feats

    return speech_feats()


@pytest.mark.parametrize("out_type", ["f32", "f16", "q8_0"])
def test_gguf_types_score_like_transformers(tmp_path, out_type):
    """The exported LLM alone: llama.cpp's next-token log-probs over mixed text/embedding prefixes against
    transformers' (q8_0 rounds weights to 8 bits: a looser bound)."""
    llm = tiny_llama()
    path = write_llm_gguf(llm, make_tokenizer(), tmp_path / f"llm-{out_type}.gguf", out_type)
    embed = llm.get_input_embeddings()
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, 300, (n,), generator=generator) for n in (9, 4, 13)]
    ids[2][:3] = ids[0][:3]  # the same task prompt as utterance 0: computed once, its cells copied
    with torch.no_grad():
        embeds = [embed(i) for i in ids]
    # utterances 0 and 2: 3 prompt tokens, "audio" rows, 2 (0) text tokens; utterance 1: all embeddings
    batch = PrefixBatch(embeds, text_ids=[(ids[0][:3].tolist(), ids[0][7:].tolist()), ([], []),
                                          (ids[2][:3].tolist(), [])])
    scorer = LlamaCppScorer(path, n_threads=1)
    scorer.reserve([len(e) for e in embeds], [6, 6, 6], beam=1)
    ours, state = scorer.init(batch)
    reference, ref_state = LLMScorer(llm).init(embeds)
    tolerance = {"f32": 1e-3, "f16": 1e-2, "q8_0": 0.2}[out_type]
    assert (ours - reference).abs().max() < tolerance
    tokens = reference.argmax(-1)
    ours, _ = scorer.step(state, tokens)
    reference, _ = LLMScorer(llm).step(ref_state, tokens)
    assert (ours - reference).abs().max() < tolerance
    if out_type == "f32":  # the whole beam, n-best order included (f16 may swap near-ties of this random model)
        caps = [10, 7, 12]
        scorer.reserve([len(e) for e in embeds], caps, beam=4)
        cpp = search(scorer, batch, caps, [2], beam=4, nbest=4)
        hf = search(LLMScorer(llm), embeds, caps, [2], beam=4, nbest=4)
        assert [[h.tokens for h in hyps] for hyps in cpp] == [[h.tokens for h in hyps] for hyps in hf]


def test_a_prefix_longer_than_n_batch_is_fed_in_parts(tmp_path):
    llm = tiny_llama()
    path = write_llm_gguf(llm, make_tokenizer(), tmp_path / "llm.gguf", "f32")
    with torch.no_grad():
        embeds = [llm.get_input_embeddings()(torch.arange(3, 3 + n) % 300) for n in (70, 45)]
    scorer = LlamaCppScorer(path, n_threads=1, n_batch=32)
    scorer.reserve([70, 45], [5, 5], beam=2)
    ours, _ = scorer.init(embeds)
    reference, _ = LLMScorer(llm).init(embeds)
    assert (ours - reference).abs().max() < 2e-3


def test_decoder_only_model_exports_with_its_unigram_tokenizer(tmp_path):
    """A decoder-only model (a scratch LLaMA on a sentencepiece unigram list, trained whole) has no base GGUF: the
    tokenizer metadata comes from its Hugging Face tokenizer."""
    import gguf
    import yaml

    from speechllm_cli.text.tokenizer import train_tokenizer

    text = tmp_path / "text"
    text.write_text("".join(f"u{i} {t}\n" for i, (_, t) in enumerate(list(UTTS.values()) * 3)), encoding="utf-8")
    token_dir = train_tokenizer([text], tmp_path / "tokens", vocab_size=25, model_type="unigram")
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}), encoding="utf-8")
    result = CliRunner().invoke(app, ["init-llm", "--out", str(tmp_path / "llm"), "--config",
                                      str(tmp_path / "llm.yaml"), "--tokenizer", str(token_dir)])
    assert result.exit_code == 0, result.output
    model_dir = save_speech_llm_dir(tmp_path / "m", llm_dir=tmp_path / "llm", train_llm=True, lora={"rank": 0},
                            use_chat_template=False, prompts={"st": "translate", "asr": "transcribe"})
    result = CliRunner().invoke(app, ["export-gguf", "--model", str(model_dir), "--out", str(tmp_path / "d.gguf"),
                                      "--type", "f32"])
    assert result.exit_code == 0, result.output
    reader = gguf.GGUFReader(str(tmp_path / "d.gguf"))
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(reader.fields["tokenizer.ggml.scores"].data)
    dump = make_dump_dir(tmp_path / "dump", dict(zip(UTTS, _feats())))
    torch_out = decode(model_dir, dump, tmp_path / "pt", max_new_tokens=6, task="asr")
    cpp_out = decode(model_dir, dump, tmp_path / "cpp", max_new_tokens=6, task="asr", engine="llamacpp",
                     gguf=str(tmp_path / "d.gguf"))
    assert read_table(cpp_out / "hyp.txt", allow_empty_value=True) == read_table(torch_out / "hyp.txt",
                                                                                 allow_empty_value=True)


def test_bidirectional_audio_is_refused(tmp_path):
    model = make_model(save_tiny_llm(tmp_path / "llm"), audio_attention="bidirectional")
    feats, lens = feats_batch((0, 1))
    with torch.no_grad():
        prefix = model.decoding_prefix(feats, lens, ["asr", "st"])
    path = write_llm_gguf(merged_llm(model), model.tokenizer, tmp_path / "llm.gguf", "f32")
    scorer = LlamaCppScorer(path, n_threads=1)
    with pytest.raises(ValueError, match="--engine pytorch"):
        scorer.init(prefix)


def test_models_without_an_llm_are_refused(saved, tmp_path, caplog):
    model_dir, dump = saved
    ctc_dir = model_dir.parent / "ctc"
    with pytest.raises(GGUFExportError, match="no LLM to export"):
        decode(ctc_dir, dump, tmp_path / "out", engine="llamacpp")
    result = CliRunner().invoke(app, ["decode", "--model", str(model_dir), "--data", str(dump), "--engine", "vllm"])
    assert result.exit_code == 1 and "--engine must be one of pytorch, llamacpp" in caplog.text


def test_pytorch_engine_decodes_in_bfloat16(saved, tmp_path):
    from speechllm_cli.decode.decode import load_decode_model

    model_dir, dump = saved
    assert load_decode_model(model_dir, dtype="bfloat16").scorer.dtype == torch.bfloat16
    out = decode(model_dir, dump, tmp_path / "bf16", dtype="bfloat16", max_new_tokens=6)
    assert set(read_table(out / "hyp.txt", allow_empty_value=True)) == set(UTTS)
    assert "dtype: bfloat16" in (out / "decode.yaml").read_text()
    with pytest.raises(ValueError, match="--dtype is for --engine pytorch"):
        decode(model_dir, dump, tmp_path / "x", dtype="bfloat16", engine="llamacpp")


def test_missing_llama_cpp_names_the_install_command(monkeypatch, tmp_path):
    from speechllm_cli.decode.llamacpp_scorer import import_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(ImportError, match="pip install llama-cpp-python"):
        import_llama_cpp()


@pytest.mark.slow
def test_embedded_smollm2_exports_with_the_base_gguf_tokenizer(tmp_path):
    """The real LLM: an export of the exported SmolLM2 takes the base GGUF's tokenizer metadata (noted in SOURCE) and
    llama.cpp scores a real prompt like transformers."""
    import gguf

    from speechllm_cli.models.llm import export_llm, find_embedded_gguf, load_llm

    hf_dir = export_llm(find_embedded_gguf(), tmp_path / "smollm2_hf")
    llm, tokenizer = load_llm(hf_dir, attn_implementation="sdpa")
    path = write_llm_gguf(llm, tokenizer, tmp_path / "llm.gguf", "f32", hf_dir)
    base = gguf.GGUFReader(str(find_embedded_gguf()))
    ours = gguf.GGUFReader(str(path))
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.model", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == base.fields[key].contents()
    ids = tokenizer("Translate into English: Der Zug hat Verspätung.").input_ids
    with torch.no_grad():
        embeds = [llm.get_input_embeddings()(torch.tensor(ids))]
    scorer = LlamaCppScorer(path, n_threads=2)
    scorer.reserve([len(ids)], [4], beam=1)
    ours_lp, _ = scorer.init(PrefixBatch(embeds, text_ids=[(ids, [])]))
    reference, _ = LLMScorer(llm).init(embeds)
    assert (ours_lp - reference).abs().max() < 1e-2
