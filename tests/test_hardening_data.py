"""Bad inputs at the data stages (issue 15): text as strict as Kaldi's validate_text.pl, fix-data that says why
and refuses wholesale removal, unscored hypotheses, Common Voice punctuation, skipped rows, speaker ids."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
from speech_synth import requires_espeak, synth_speech

from speechllm_cli.data.covost2 import prepare_covost2
from speechllm_cli.data.kaldi_dir import DataDir, DataDirError, fix_data_dir, read_table, validate_data_dir
from speechllm_cli.score.score import score_decode_dir
from speechllm_cli.text.normalize import normalize

TEXTS = {"spkA-u1": "the cat sleeps", "spkA-u2": "a dog runs", "spkB-u3": "où est la gare ?"}


def make_dir(path: Path) -> Path:
    tables = {"wav.scp": {u: f"/corpus/{u}.wav" for u in TEXTS}, "text": dict(TEXTS),
              "utt2spk": {u: u.split("-")[0] for u in TEXTS}}
    DataDir(path, {k: OrderedDict(sorted(v.items())) for k, v in tables.items()}).save(path)
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechllm_cli.cli", *args], capture_output=True, text=True)


# ----- 1. text as Kaldi's validator wants it: UTF-8, no CR, no BOM, space or tab between the fields

@pytest.mark.parametrize("raw, message", [
    (b"spkA-u1 the cat sleeps\r\nspkA-u2 a dog runs\r\nspkB-u3 x\r\n", r"text:1: contains a carriage return"),
    (b"\xef\xbb\xbfspkA-u1 the cat sleeps\nspkA-u2 a dog runs\nspkB-u3 x\n", r"text:1: starts with a UTF-8 byte order"),
    (b"spkA-u1 the cat sleeps\nspkA-u2 a dog runs\nspkB-u3 o\xf9 est la gare\n", r"text:3: not UTF-8 \(byte 0xf9"),
    (b"spkA-u1 the cat sleeps\nspkA-u2 a dog\xc2\xa0runs\nspkB-u3 x\n", r"text:2: 'spkA-u2' holds U\+00A0"),
    (b"spkA-u1 the cat sleeps\nspkA-u2 a dog runs\nspkB-u3 x", r"text:3: the last line has no newline"),
])
def test_validate_rejects_what_kaldi_rejects_naming_file_line_and_fix(tmp_path, raw, message):
    data = make_dir(tmp_path / "d")
    (data / "text").write_bytes(raw)
    with pytest.raises(DataDirError, match=message) as error:
        validate_data_dir(data)
    assert str(data / "text") in str(error.value)
    assert any(fix in str(error.value) for fix in ("sed -i", "iconv", "replace it", "add one"))
    result = cli("validate-data", str(data))  # the command line: our message, exit 1, no traceback
    assert result.returncode == 1 and "Traceback" not in result.stderr and "text:" in result.stderr


def test_fbank_refuses_crlf_text_instead_of_stripping_it(tmp_path):
    from speechllm_cli.features.fbank import make_fbank

    data = make_dir(tmp_path / "d")
    (data / "text").write_bytes((data / "text").read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(DataDirError, match="carriage return"):
        make_fbank(data, tmp_path / "dump")
    assert not (tmp_path / "dump" / "text").exists()


def test_tab_separated_tables_are_accepted_like_kaldi(tmp_path):
    data = make_dir(tmp_path / "d")
    (data / "text").write_text("".join(f"{u}\t{t}\n" for u, t in TEXTS.items()), encoding="utf-8")
    (data / "utt2spk").write_text("".join(f"{u}\t\t{u.split('-')[0]}\n" for u in TEXTS), encoding="utf-8")
    validate_data_dir(data)
    loaded = DataDir.load(data)
    assert dict(loaded.tables["text"]) == TEXTS and set(loaded.utt2spk.values()) == {"spkA", "spkB"}


# ----- 2. fix-data: every removal with its reason, and no wholesale removal

def test_fix_data_on_tab_separated_text_keeps_every_utterance(tmp_path):
    data = make_dir(tmp_path / "d")
    (data / "text").write_text("".join(f"{u}\t{t}\n" for u, t in TEXTS.items()), encoding="utf-8")
    assert fix_data_dir(data) == {}
    assert read_table(data / "text") == TEXTS and (data / "text").read_text().startswith("spkA-u1 the cat")


def test_fix_data_says_why_each_utterance_goes(tmp_path, caplog):
    data = make_dir(tmp_path / "d")
    (data / "text").write_text("spkA-u1 the cat sleeps\nspkB-u3 \n", encoding="utf-8")  # u2 missing, u3 empty
    with caplog.at_level(logging.WARNING):
        removed = fix_data_dir(data, max_drop=1.0)
    assert removed == {"spkA-u2": "not in text", "spkB-u3": "empty text"}
    assert (data / ".backup" / "removed").read_text() == "spkA-u2 not in text\nspkB-u3 empty text\n"
    assert "removed spkA-u2: not in text" in caplog.text
    assert (data / ".backup" / "text").read_text() == "spkA-u1 the cat sleeps\nspkB-u3 \n"  # the old table kept
    validate_data_dir(data)


def test_fix_data_refuses_to_remove_more_than_the_stated_share(tmp_path):
    data = make_dir(tmp_path / "d")
    (data / "text").write_text("".join(f"{u.upper()} {t}\n" for u, t in sorted(TEXTS.items())), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    with pytest.raises(DataDirError, match=r"would remove 3 of 3 utterances \(100%, more than --max-drop 0.1\)"):
        fix_data_dir(data)
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before  # nothing changed
    result = cli("fix-data", str(data), "--max-drop", "0.5")
    assert result.returncode == 1 and "spkA-u1: not in text" in result.stderr and "Traceback" not in result.stderr
    assert cli("fix-data", str(data), "--max-drop", "1").returncode == 0
    assert read_table(data / ".backup" / "removed", allow_empty_value=True)["spkA-u1"] == "not in text"


# ----- 7. hypotheses that have no reference are reported

def test_score_reports_hypotheses_absent_from_the_reference(tmp_path, caplog):
    (tmp_path / "ref.txt").write_text("a-1 the cat sat\na-2 a dog ran\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("a-1 the cat sat\na-2 a dog ran\nb-7 stray\nb-8 other\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        result = score_decode_dir(tmp_path)
    assert result["unscored_hyps"] == {"count": 2, "first": ["b-7", "b-8"]}
    assert "2 hypothesis id(s) have no reference" in caplog.text and "b-7, b-8" in caplog.text
    assert "2 hypothesis id(s) absent from the reference, not scored (first: b-7, b-8)" in \
        (tmp_path / "result.txt").read_text()
    assert result["groups"]["all"]["num_utts"] == 2


# ----- 8. punctuation of Common Voice sentences, per language (tc: source side; lc.rm: scoring)

CV_SENTENCES = [  # (lang, sentence as Common Voice ships it, tc)
    ("fr", "Où est la gare ?", "Où est la gare ?"),
    ("fr", "Où est la gare\u202f?", "Où est la gare ?"),  # narrow no-break space: French typography
    ("fr", "Il a dit\u00a0: «\u00a0Non\u00a0!\u00a0»", 'Il a dit : "Non !"'),
    ("fr", "C’est l’heure d’aller à l’école.", "C'est l'heure d'aller à l'école."),
    ("fr", "« Bonjour », dit-il.", '"Bonjour", dit-il.'),
    ("de", "Er sagte: „Das ist gut.“", 'Er sagte: "Das ist gut."'),
    ("de", "Wie geht’s dir ?", "Wie geht's dir?"),
    ("es", "¿Dónde está la estación?", "¿Dónde está la estación?"),
    ("es", "«Hola», dijo ella .", '"Hola", dijo ella.'),
    ("ca", "L’àvia diu: «Vine aquí».", "L'àvia diu: \"Vine aquí\"."),
    ("it", "Com’è andata ?", "Com'è andata?"),
    ("en", "Joe Keaton disapproved of films, and Buster also had reservations about the medium.",
     "Joe Keaton disapproved of films, and Buster also had reservations about the medium."),
    ("en", "“It’s fine ,” she said.", '"It\'s fine," she said.'),
    ("en", 'He said "hello " and " bye" .', 'He said "hello" and "bye".'),
]


@pytest.mark.parametrize("lang, sentence, expected", CV_SENTENCES)
def test_source_normalisation_keeps_each_languages_typography(lang, sentence, expected):
    assert normalize(sentence, "tc", lang=lang) == expected
    assert normalize(normalize(sentence, "tc", lang=lang), "tc", lang=lang) == expected  # idempotent
    lc = normalize(sentence, "lc.rm")
    assert lc == lc.lower() and '"' not in lc and "?" not in lc and "  " not in lc
    if "’" in sentence:
        assert "'" in lc  # in-word apostrophes survive lc.rm


@requires_espeak
def test_prepare_french_source_and_empty_rows_listed_as_skipped(tmp_path):
    client = "c0ffee" + "0" * 58
    rows = [("common_voice_fr_1.mp3", "Où est la gare\u202f?", "Where is the station?"),
            ("common_voice_fr_2.mp3", "Il a dit\u00a0: «\u00a0Non\u00a0!\u00a0»", "He said: \"No!\""),
            ("common_voice_fr_3.mp3", "Une phrase sans traduction.", " ")]
    lines = ["client_id\tpath\tsentence\n"] + [f"{client}\t{clip}\t{s}\n" for clip, s, _ in rows]
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "validated.tsv").write_text("".join(lines), encoding="utf-8")
    table = ["path\tsentence\ttranslation\tclient_id\tsplit\n"] + [f"{c}\t{s}\t{t}\t{client}\ttrain\n"
                                                                  for c, s, t in rows]
    (tmp_path / "covost_v2.fr_en.tsv").write_text("".join(table), encoding="utf-8")
    for clip, sentence, _ in rows:
        synth_speech(sentence, "fr", tmp_path / "fr" / "clips" / clip, 48000)
    prepare_covost2(tmp_path, tmp_path, ["fr"], tmp_path / "data", jobs=1)
    train = DataDir.load(tmp_path / "data" / "train_fr")
    assert list(train.tables["text.src"].values()) == ["Où est la gare ?", 'Il a dit : "Non !"']
    assert list(train.tables["text"].values()) == ["Where is the station?", 'He said: "No!"']
    assert set(train.utt2spk.values()) == {client}
    validate_data_dir(tmp_path / "data" / "train_fr")
    skipped = read_table(tmp_path / "data" / "train_fr" / "skipped")
    assert skipped == {f"{client}-common_voice_fr_3": "empty translation in covost_v2.fr_en.tsv"}
