"""The embedded mini corpus: grammar agreement per language, aligned pairs, and a tiny real build
(espeak-ng speech, mp3 clips, Common Voice + CoVoST2 tables) read back by the CoVoST2 preparation."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile
from speech_synth import requires_espeak

from speechllm_cli.data.covost2 import prepare_covost2
from speechllm_cli.data.kaldi_dir import DataDir
from speechllm_cli.data.mini_corpus import generate_pairs, grammar_de, grammar_es, grammar_fr, make_mini_corpus
from speechllm_cli.data.mini_corpus.build import plan_language
from speechllm_cli.data.mini_corpus.frames import ANIMAL, NOUN_CLASS, Clause, Frame, NounPhrase
from speechllm_cli.data.mini_corpus.grammar import LANGS
from speechllm_cli.data.mini_corpus.speakers import (
    VOICE_SETS,
    WIDE_PITCHES,
    WIDE_RATES,
    WIDE_VARIANTS,
    choose_speakers,
)

N = 400  # pairs per language for the invariant checks (well under a second)


@pytest.fixture(scope="module")
def pairs():
    return {lang: generate_pairs(lang, N, seed=3) for lang in LANGS}


def test_generation_is_deterministic_and_extends(pairs):
    for lang in LANGS:
        assert generate_pairs(lang, N, seed=3) == pairs[lang]
        assert generate_pairs(lang, 50, seed=3) == pairs[lang][:50]  # a bigger corpus extends a smaller one
        assert generate_pairs(lang, 50, seed=4) != pairs[lang][:50]


def test_pairs_aligned_unique_and_punctuated(pairs):
    english_owner = {}
    for lang, items in pairs.items():
        assert len({src for src, _ in items}) == N, f"{lang}: repeated source sentence"
        for src, en in items:
            assert src and en and "\t" not in src + en and "  " not in src + en
            assert src.lstrip("¿")[0].isupper(), src
            assert en[0].isupper() and en[-1] in ".?", en
            assert (src[-1] == "?") == (en[-1] == "?"), (src, en)  # questions stay questions
            assert en not in english_owner or english_owner[en] == lang, f"{en!r} in {lang} and {english_owner[en]}"
            english_owner[en] = lang
            if lang == "es" and src.endswith("?"):
                assert src.startswith("¿")
            if lang == "en":
                assert src == en
            assert len(src.split()) >= 3 and len(src) >= 16
    for src, en in pairs["de"] + pairs["fr"] + pairs["es"]:
        assert ("not" in en.split()) == bool(re.search(r"\b(nicht|kein\w*|pas|no)\b", src, re.I)), (src, en)


def frame(subj, **kw):
    mood = kw.pop("mood", "decl")
    front = kw.pop("front_time", False)
    return Frame(Clause(kw.pop("kind", "act"), subj, **kw), mood=mood, front_time=front)


def test_german_constructions():
    cat = NounPhrase("cat", det="def")
    assert grammar_de.realize(frame(cat, verb="sleep")) == "Die Katze schläft."
    fronted = frame(cat, verb="sleep", time="h7", front_time=True)
    assert grammar_de.realize(fronted) == "Um sieben Uhr schläft die Katze."
    assert grammar_de.realize(frame(cat, verb="sleep", place="garden", mood="yn")) == "Schläft die Katze im Garten?"
    man = NounPhrase("man", det="def", adj="old")
    assert grammar_de.realize(frame(man, verb="see", obj=NounPhrase("apple", det="indef", adj="big"), neg=True)) \
        == "Der alte Mann sieht keinen großen Apfel."
    embedded = Frame(Clause("act", NounPhrase("dog", det="def"), verb="eat", obj=NounPhrase("egg", det="def"),
                            neg=True), matrix_subj=NounPhrase(person="1sg"), matrix_verb="think")
    assert grammar_de.realize(embedded) == "Ich glaube, dass der Hund das Ei nicht frisst."


def test_german_invariants(pairs):
    articles = {"m": {"der", "den", "ein", "einen", "kein", "keinen"}, "f": {"die", "eine", "keine"},
                "n": {"das", "ein", "kein"}}
    endings = {"der": ("e",), "die": ("e",), "das": ("e",), "den": ("en",), "ein": ("er", "es"), "kein": ("er", "es"),
               "eine": ("e",), "keine": ("e",), "einen": ("en",), "keinen": ("en",)}
    adjs = "|".join(grammar_de.ADJS.values())
    finite_forms = {form for forms in grammar_de.VERBS.values() for form in forms}
    for src, _ in pairs["de"]:
        words = src.rstrip(".?").replace(",", "").split()
        for concept, (gender, singular, _) in grammar_de.NOUNS.items():
            for m in re.finditer(rf"\b(\w+) (?:({adjs})(\w*) )?{singular}\b", src):
                det, adj, ending = m.groups()
                if det.lower() in {"zwei", "drei", "vier", "fünf"} or singular == grammar_de.NOUNS[concept][2]:
                    continue
                assert det.lower() in articles[gender], (src, concept)
                if adj:
                    assert ending in endings[det.lower()], (src, adj)
            if NOUN_CLASS[concept] in ANIMAL and re.search(rf"\b{singular}\b", src):
                assert "isst" not in words, src  # animals "fressen"
        if ", dass " in src:
            assert words[-1] in finite_forms, f"verb-final after dass: {src}"
        elif not src.endswith("?") and src.split()[0] in {"Heute", "Um", "Am", "Jeden"}:
            prefield = 1 if words[0] == "Heute" else 2 if words[0] in ("Am", "Jeden") else 3
            assert words[prefield] in finite_forms, f"verb second: {src}"


def test_french_constructions(pairs):
    me = NounPhrase(person="1sg")
    assert grammar_fr.realize(frame(me, verb="have", obj=NounPhrase("car", det="indef", adj="red"), neg=True)) \
        == "Je n'ai pas de voiture rouge."
    assert grammar_fr.realize(frame(NounPhrase("man", det="def", adj="old"), verb="sleep")) == "Le vieil homme dort."
    assert grammar_fr.realize(frame(NounPhrase(person="3pl", gender="f"), kind="loc", mood="where")) \
        == "Où sont-elles ?"
    assert grammar_fr.realize(frame(NounPhrase("key", person="3pl", det="def"), kind="attr", pred_adj="white")) \
        == "Les clés sont blanches."
    for src, en in pairs["fr"]:
        if "not" in en.split():
            assert re.search(r"\b(ne \S+|n'\S+) pas\b", src), f"ne ... pas: {src}"
        assert not re.search(r"\b(le|la|je|ne|de|que) (h?[aeiouéœ])", src, re.IGNORECASE), f"elision: {src}"
        assert not re.search(r"\b(noir|blanc|rouge)\w* (homme|chat|chien|livre|voiture|sac|pomme)", src), src
        assert not re.search(r"\b(le|la|les|un|une) \S+ (grand|petit|vieux|vieil)\w*\b", src), f"order: {src}"


def test_spanish_agreement(pairs):
    assert grammar_es.realize(frame(NounPhrase("key", person="3pl", det="def"), kind="attr", pred_adj="small")) \
        == "Las llaves son pequeñas."
    assert grammar_es.realize(frame(NounPhrase("cat", det="def"), kind="loc", mood="where")) == "¿Dónde está el gato?"
    forms = {form: (adj, i) for adj, fs in grammar_es.ADJS.items() for i, form in enumerate(fs)}
    checked = 0
    for src, en in pairs["es"]:
        words = src.strip("¿?.").replace(",", "").split()
        for noun_word, adj_word in zip(words, words[1:]):
            for gender, singular, plural in grammar_es.NOUNS.values():
                if noun_word in (singular, plural) and adj_word in forms:
                    adj, _ = forms[adj_word]
                    assert adj_word == grammar_es.ADJS[adj][(gender == "f") + 2 * (noun_word == plural)], src
                    checked += 1
        if "not" in en.split():
            assert re.search(r"(^|¿|\s)[Nn]o \w+", src), src
    assert checked > 50


def test_speakers_disjoint_and_stable():
    speakers = choose_speakers("fr", {"train": 12, "dev": 3, "test": 3}, seed=0)
    variants = {split: {s.voice.split("+")[1] for s in spk} for split, spk in speakers.items()}
    assert not variants["train"] & variants["dev"] and not variants["train"] & variants["test"]
    assert not variants["dev"] & variants["test"]
    ids = [s.client_id for spk in speakers.values() for s in spk]
    assert len(set(ids)) == 18 and all(re.fullmatch(r"[0-9a-f]{64}", i) for i in ids)
    assert choose_speakers("fr", {"train": 12, "dev": 3, "test": 3}, seed=0) == speakers


def test_wide_voices_change_train_speakers_only():
    classic = choose_speakers("es", {"train": 12, "dev": 3, "test": 3}, seed=0)
    wide = choose_speakers("es", {"train": 60, "dev": 3, "test": 3}, seed=0, voices="wide")
    assert wide["dev"] == classic["dev"] and wide["test"] == classic["test"]
    variant = {split: {s.voice.split("+")[1] for s in spk} for split, spk in wide.items()}
    assert len(wide["train"]) == len(set(wide["train"])) == 60 and len(variant["train"]) == 60  # a voice each
    assert not variant["train"] & (variant["dev"] | variant["test"])  # test voices never heard in training
    assert variant["train"] <= set(WIDE_VARIANTS)
    assert {s.voice.split("+")[0] for s in wide["train"]} == {"es", "es-419"}  # both accents
    rates, pitches = [s.rate for s in wide["train"]], [s.pitch for s in wide["train"]]
    assert WIDE_RATES[0] <= min(rates) and max(rates) <= WIDE_RATES[1] and len(set(rates)) > 20
    assert WIDE_PITCHES[0] <= min(pitches) and max(pitches) <= WIDE_PITCHES[1] and len(set(pitches)) > 20
    assert {s.gender for s in wide["train"]} == {"male", "female"}
    assert choose_speakers("es", {"train": 60, "dev": 3, "test": 3}, seed=0, voices="wide") == wide
    with pytest.raises(ValueError, match="unknown voice set 'loud'"):
        choose_speakers("es", {"train": 1}, voices="loud")


def test_wide_plan_keeps_sentences_dev_and_test():
    classic, wide = plan_language("fr", seed=0), plan_language("fr", seed=0, voices="wide")
    held_out = {c.name: c for c in classic if c.split != "train"}
    assert {c.name: c for c in wide if c.split != "train"} == held_out  # the same clips: comparable results
    assert sorted(c.sentence for c in wide) == sorted(c.sentence for c in classic)
    train_speakers = {c.speaker for c in wide if c.split == "train"}
    assert len(train_speakers) == 60 and not train_speakers & {c.speaker for c in held_out.values()}
    assert VOICE_SETS == ("classic", "wide", "unheard")


def test_unheard_test_voices_are_in_no_train_set():
    classic, wide = plan_language("en", seed=0), plan_language("en", seed=0, voices="wide")
    unheard = plan_language("en", seed=0, voices="unheard")
    assert [c for c in unheard if c.split != "test"] == [c for c in classic if c.split != "test"]
    heard = {c.speaker.voice.split("+")[1] for c in classic + wide}  # every split of both corpora
    test = [c for c in unheard if c.split == "test"]
    voices = {c.speaker.voice.split("+")[1] for c in test}
    assert len({c.speaker for c in test}) == 8 and len(voices) == 8 and not voices & heard
    assert sorted(c.sentence for c in test) == sorted(c.sentence for c in classic if c.split == "test")


@requires_espeak
def test_every_wide_variant_is_a_distinct_espeak_voice():
    """espeak-ng falls back silently to the base voice for an unknown variant: each listed one must sound
    different from the base voice and from every other."""
    import hashlib

    def sound(voice):
        out = subprocess.run(["espeak-ng", "-v", voice, "--stdout", "hallo welt"], capture_output=True, check=True)
        return hashlib.sha256(out.stdout).hexdigest()

    sounds = {sound(f"de+{v}") for v in WIDE_VARIANTS}
    assert len(sounds) == len(WIDE_VARIANTS) and sound("de") not in sounds


def test_default_plan_has_train_covost_rows():
    clips = plan_language("de", size=1.0, seed=0)
    labels = defaultdict(int)
    for c in clips:
        labels[c.covost_split] += 1
    assert labels["dev"] == 30 and labels["test"] == 30 and 0 < labels["train_covost"] < 30
    assert labels["train"] + labels["train_covost"] == 240
    assert len({c.name for c in clips}) == len(clips)


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "corpus"
    counts = make_mini_corpus(out, size=0.02, seed=0, langs=("es", "en"), jobs=2)
    return out, counts


@requires_espeak
def test_tiny_build_layout(tiny):
    out, counts = tiny
    assert counts == {"es": {"train": 5, "dev": 1, "test": 1}, "en": {"train": 5, "dev": 1, "test": 1}}
    assert sorted(p.name for p in out.iterdir()) == ["covost_v2.en_en.tsv", "covost_v2.es_en.tsv", "en", "es"]
    for lang in ("es", "en"):
        header, validated = read_tsv(out / lang / "validated.tsv")
        assert header == ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent",
                          "locale", "segment"]
        header, table = read_tsv(out / f"covost_v2.{lang}_en.tsv")
        assert header == ["path", "sentence", "translation", "client_id", "split"]
        assert len(table) == len(validated) == 7
        by_path = {row["path"]: row for row in validated}
        clips = sorted(p.name for p in (out / lang / "clips").iterdir())
        assert clips == sorted(by_path) and all(re.fullmatch(rf"common_voice_{lang}_\d{{8}}\.mp3", c) for c in clips)
        split_speakers, split_sentences = defaultdict(set), defaultdict(set)
        for row in table:
            cv = by_path[row["path"]]
            assert cv["sentence"] == row["sentence"] and cv["client_id"] == row["client_id"] and cv["locale"] == lang
            assert row["translation"] and (lang != "en" or row["translation"] == row["sentence"])
            split = row["split"].replace("train_covost", "train")
            split_speakers[split].add(row["client_id"])
            split_sentences[split].add(row["sentence"])
            info = soundfile.info(str(out / lang / "clips" / row["path"]))
            assert info.samplerate == 48000 and info.channels == 1 and 0.8 < info.duration < 6.0, row["path"]
        assert set(split_speakers) == {"train", "dev", "test"}
        assert not split_speakers["train"] & (split_speakers["dev"] | split_speakers["test"])
        assert not split_speakers["dev"] & split_speakers["test"]
        assert not split_sentences["train"] & (split_sentences["dev"] | split_sentences["test"])
    audio, rate = soundfile.read(next((out / "es" / "clips").glob("*.mp3")))
    assert rate == 48000 and audio.ndim == 1 and abs(audio).max() > 0.05  # real speech, not silence


@requires_espeak
def test_tiny_build_resumes_and_is_deterministic(tiny):
    out, counts = tiny
    tables = {p: p.read_bytes() for p in [*out.glob("*.tsv"), *out.glob("*/validated.tsv")]}
    clips = sorted((out / "en" / "clips").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in clips}
    clips[0].unlink()
    assert make_mini_corpus(out, size=0.02, seed=0, langs=("es", "en"), jobs=1) == counts
    assert clips[0].exists() and soundfile.info(str(clips[0])).samplerate == 48000
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in clips[1:])  # kept, not regenerated
    assert {p: p.read_bytes() for p in tables} == tables
    assert not list(out.glob("*/clips/.*"))  # no temporary files left


@requires_espeak
def test_tiny_build_feeds_covost2_preparation(tiny, tmp_path):
    out, _ = tiny
    sizes = prepare_covost2(out, out, ["es", "en"], tmp_path / "data", norm="tc", jobs=1)
    assert sizes["train"] == 10 and sizes["dev"] == 2 and sizes["test"] == 2
    train = DataDir.load(tmp_path / "data" / "train_es")
    assert all(not t.startswith("¿") for t in train.tables["text"].values())  # English targets
    assert set(train.tables["utt2lang"].values()) == {"es"}


@requires_espeak
def test_recipe_stage1_wide_voices_then_speed_perturbation(tmp_path):
    """run.sh stage 1 with --mini-voices wide and --speed-perturb-factors: the train set of the wide corpus,
    perturbed, beside the classic dev and test sets; every data dir passes validate-data inside the stage."""
    recipe = Path(__file__).resolve().parents[1] / "egs" / "covost2"
    work = tmp_path / "egs" / "covost2"
    work.mkdir(parents=True)
    for name in ("run.sh", "path.sh", "db.sh", "cmd.sh"):
        shutil.copy(recipe / name, work / name)
    shutil.copytree(recipe / "utils", work / "utils")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COMMONVOICE": "",
           "COVOST2": ""}
    proc = subprocess.run(["bash", "run.sh", "--stage", "1", "--stop-stage", "1", "--mini-size", "0.02",
                           "--src-langs", "de en", "--mini-voices", "wide", "--speed-perturb-factors", "0.9 1.0"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = work / "data"
    assert not (data / "mini_wide").exists()
    wide, perturbed = DataDir.load(data / "train_wide"), DataDir.load(data / "train_wide_sp")
    test_spk = set(DataDir.load(data / "test").utt2spk.values())
    wide_spk = set(wide.utt2spk.values())
    assert wide_spk and not wide_spk & test_spk
    assert wide_spk != set(DataDir.load(data / "train").utt2spk.values())  # other voices than classic train
    assert all("mini_wide" in line for line in (data / "train_wide" / "wav.scp").read_text().splitlines())
    assert len(perturbed.utt_ids) == 2 * len(wide.utt_ids) and any(u.startswith("sp0.9-") for u in perturbed.utt_ids)
