"""``speechllm decode`` orchestration: a dump dir of real espeak-ng fbank, a tiny Speech-LLaMA, the decode dir files."""

from __future__ import annotations

import time

import pytest
import torch
from _speech_llm_fixtures import UTTS, make_dump_dir

from speechllm_cli.data.kaldi_dir import DataDirError, read_table
from speechllm_cli.decode.decode import DecodeOptions, decode_data_dir, pad_feats
from speechllm_cli.decode.decode_io import PartialOutput, read_nbest
from speechllm_cli.decode.llm_scorer import LLMScorer, eos_ids_for
from speechllm_cli.decode.search import Hypothesis, search

# ----- decode_io: partial output and n-best files (no model needed)

def test_partial_output_resumes_and_drops_a_torn_line(tmp_path):
    partial = PartialOutput(tmp_path, {"beam": 2})
    partial.append({"a-1": "one", "a-2": ""}, ["a-1 1 -0.1 -0.2 2 1 one", "a-2 1 -0.3 -0.3 1 1 "])
    with open(partial.hyp_path, "a", encoding="utf-8") as f:
        f.write("a-3 cut in the mid")  # a crash mid-write: no newline
    with open(partial.nbest_path, "a", encoding="utf-8") as f:
        f.write("a-3 1 -0.5 -1.0 2 1 cut in the mid\n")  # n-best written, hyp not committed
    again = PartialOutput(tmp_path, {"beam": 2})
    assert again.done == {"a-1": "one", "a-2": ""}
    assert [line.split()[0] for line in again.nbest_lines()] == ["a-1", "a-2"]
    other = PartialOutput(tmp_path, {"beam": 3})  # other options: start over
    assert other.done == {} and other.nbest_lines() == []


def test_read_nbest_round_trip(tmp_path):
    from speechllm_cli.decode.decode_io import nbest_line

    hyp = Hypothesis([5, 6], -2.5, -0.8333, 3, 2)
    cut = Hypothesis([7], -1.0, -1.0, 1, None)
    path = tmp_path / "nbest.txt"
    path.write_text(nbest_line("u-1", 1, hyp, "two  words\nhere") + "\n" + nbest_line("u-1", 2, cut, "") + "\n")
    parsed = read_nbest(path)["u-1"]
    assert parsed[0] == {"rank": 1, "score": pytest.approx(-0.8333), "logprob": -2.5, "num_tokens": 3, "ended": True,
                         "text": "two words here"}
    assert parsed[1]["ended"] is False and parsed[1]["text"] == ""


# ----- the orchestration, on a tiny Speech-LLaMA

@pytest.fixture(scope="module")
def speech_model(tmp_path_factory):
    from _speech_llm_fixtures import make_model, save_tiny_llm

    llm_dir = save_tiny_llm(tmp_path_factory.mktemp("llm") / "llm")
    return make_model(llm_dir, use_chat_template=True)


@pytest.fixture(scope="module")
def feats():
    from _speech_llm_fixtures import speech_feats

    return dict(zip(UTTS, speech_feats()))


def test_decode_dir_outputs(speech_model, feats, tmp_path):
    dump = make_dump_dir(tmp_path / "dump", feats)
    options = DecodeOptions(beam=3, nbest=3, max_new_tokens=8)
    stats = decode_data_dir(speech_model, dump, tmp_path / "decode", options, batch_size=2, command="test")
    out = tmp_path / "decode"
    hyps = read_table(out / "hyp.txt", allow_empty_value=True)
    assert list(hyps) == sorted(UTTS) and list(read_table(out / "ref.txt")) == sorted(UTTS)
    assert read_table(out / "utt2lang") == {u: lang for u, (lang, _) in UTTS.items()}
    # the hypotheses are what the search gives on the same prefixes (ASR prompt for en, ST otherwise)
    scorer = LLMScorer(speech_model.hf_llm)
    prefixes = speech_model.decoding_prefix(*pad_feats([feats[u] for u in sorted(UTTS)], "cpu"), ["asr", "st", "st"])
    vocab = speech_model.tokenizer.get_vocab()
    eos = eos_ids_for(speech_model.tokenizer)
    assert eos == sorted({vocab["<|im_end|>"], vocab["<|endoftext|>"]}) and speech_model.end_id in eos
    expected = search(scorer, prefixes, [8] * 3, eos, beam=3, nbest=3)
    for utt, hyp_list in zip(sorted(UTTS), expected):
        assert hyps[utt] == " ".join(speech_model.decode_target(hyp_list[0].tokens).split())
    nbest = read_nbest(out / "nbest.txt")
    for utt, hyp_list in zip(sorted(UTTS), expected):
        assert [e["rank"] for e in nbest[utt]] == [1, 2, 3]
        assert [e["score"] for e in nbest[utt]] == pytest.approx([h.score for h in hyp_list], abs=1e-4)
        assert nbest[utt][0]["text"] == hyps[utt]
    assert stats["num_utts"] == 3 and stats["audio_seconds"] == pytest.approx(sum(len(f) for f in feats.values()) / 100)
    assert stats["rtf"] > 0 and stats["output_tokens"] > 0
    assert not (out / ".partial").exists()
    record = (out / "decode.yaml").read_text()
    assert "beam: 3" in record and "command: test" in record
    # the same options again: nothing to do, nothing rewritten
    mtime = (out / "hyp.txt").stat().st_mtime_ns
    time.sleep(0.01)
    decode_data_dir(speech_model, dump, out, options, batch_size=2)
    assert (out / "hyp.txt").stat().st_mtime_ns == mtime
    # a model dir that changes (retrained) makes the decode stale
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights").write_text("1")
    decode_data_dir(speech_model, dump, out, options, batch_size=2, model_dir=str(model_dir))
    mtime = (out / "hyp.txt").stat().st_mtime_ns
    decode_data_dir(speech_model, dump, out, options, batch_size=2, model_dir=str(model_dir))
    assert (out / "hyp.txt").stat().st_mtime_ns == mtime
    (model_dir / "weights").write_text("22")
    decode_data_dir(speech_model, dump, out, options, batch_size=2, model_dir=str(model_dir))
    assert (out / "hyp.txt").stat().st_mtime_ns != mtime


def test_decode_resumes_after_a_failure(speech_model, feats, tmp_path):
    dump = make_dump_dir(tmp_path / "dump", feats)
    options = DecodeOptions(max_new_tokens=6)
    fresh = tmp_path / "fresh"
    decode_data_dir(speech_model, dump, fresh, options, batch_size=1)
    shortest = min(feats, key=lambda u: len(feats[u]))  # decoded last (longest first)
    scp = (dump / "feats.scp").read_text()
    good_entry = next(line for line in scp.splitlines() if line.startswith(shortest))
    (dump / "feats.scp").write_text(scp.replace(good_entry, f"{shortest} {tmp_path}/missing.ark:12"))
    out = tmp_path / "decode"
    with pytest.raises(DataDirError, match=shortest):
        decode_data_dir(speech_model, dump, out, options, batch_size=1)
    committed = (out / ".partial" / "hyp").read_text().splitlines()
    assert not (out / "hyp.txt").exists() and len(committed) == 2 and shortest not in "".join(committed)
    (dump / "feats.scp").write_text(scp)
    stats = decode_data_dir(speech_model, dump, out, options, batch_size=1)
    assert stats["num_utts"] == 1, "only the utterance that failed is decoded again"
    assert (out / "hyp.txt").read_text() == (fresh / "hyp.txt").read_text()


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory, feats):
    """A speech-LLM saved to disk (tiny LLaMA, tiny random CTC compressor dir), as `speechllm decode` loads it."""
    from _speech_llm_fixtures import TINY_ADAPTER, save_tiny_llm
    from _train_fixtures import save_ctc_dir

    from speechllm_cli.models.ctc_compressor import CTCCompressor, CTCCompressorConfig
    from speechllm_cli.models.speech_llm import SpeechLLMConfig
    from speechllm_cli.models.speech_llm_io import build_speech_llm, save_speech_llm
    from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("saved")
    (root / "text").write_text("".join(f"{u} {t}\n" for u, (_, t) in UTTS.items()), encoding="utf-8")
    token_dir = train_tokenizer([root / "text"], root / "token_list", vocab_size=20, model_type="char")
    model_config = CTCCompressorConfig(d_model=32, num_heads=2, ff_dim=64, num_layers=1, dropout=0.0,
                                       vocab_size=Tokenizer.load(token_dir).vocab_size)
    torch.manual_seed(0)
    save_ctc_dir(root / "ctc", CTCCompressor(model_config), token_dir)
    config = SpeechLLMConfig(llm=str(save_tiny_llm(root / "llm")), use_chat_template=True,
                             frontend={"dir": str(root / "ctc"), "compression": "none"},
                             audio_attention="bidirectional", adapter=TINY_ADAPTER)
    return save_speech_llm(build_speech_llm(config), root / "model")


# ~15 s: two job processes each load torch, transformers and the tiny model
def test_nj_2_equals_nj_1(saved_model_dir, feats, tmp_path):
    from speechllm_cli.decode.decode import decode

    dump = make_dump_dir(tmp_path / "dump", feats)
    common = {"beam": 2, "nbest": 2, "max_new_tokens": 6, "batch_size": 2}
    one = decode(saved_model_dir, dump, tmp_path / "nj1", nj=1, **common)
    two = decode(saved_model_dir, dump, tmp_path / "nj2", nj=2, **common)
    for name in ("hyp.txt", "ref.txt", "utt2lang", "utt2spk"):
        assert (one / name).read_text() == (two / name).read_text(), name
    nbest_one, nbest_two = read_nbest(one / "nbest.txt"), read_nbest(two / "nbest.txt")
    assert list(nbest_one) == list(nbest_two) == sorted(UTTS)
    for utt in UTTS:  # other batch-mates (other padding): scores agree to float rounding
        for a, b in zip(nbest_one[utt], nbest_two[utt], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            a["score"], a["logprob"], b["score"], b["logprob"] = 0.0, 0.0, 0.0, 0.0
            assert a == b
    assert sorted(p.name for p in (two / "split2").iterdir()) == ["1", "2"]
    assert (two / "log" / "decode.1.log").is_file()
    stats = (two / "stats.yaml").read_text()
    assert "num_jobs: 2" in stats and "num_utts: 3" in stats
