"""CoVoST2 preparation on a fixture in the real Common Voice + CoVoST2 layout: quoted sentences,
an empty translation, a missing clip, a corrupt clip, an unknown split."""

from __future__ import annotations

import subprocess
import sys

import pytest
from speech_synth import requires_espeak, synth_speech

from speechllm_cli.data.covost2 import CorpusError, prepare_covost2, speaker_id
from speechllm_cli.data.kaldi_dir import DataDir, read_table, validate_data_dir

CLIENT_A = "a1b2c3d4" + "0" * 56
CLIENT_B = "a1b2c3d4" + "f" * 56  # shares the 8-char prefix with A: the speaker ids must still differ
CLIENT_C = "99887766" + "1" * 56

ROWS_DE = [  # clip, client, sentence, translation, split
    ("common_voice_de_1.mp3", CLIENT_A, 'Er sagte "Hallo" zu mir.', 'He said "hello" to me.', "train"),
    ("common_voice_de_2.mp3", CLIENT_A, "Die Katze schläft.", "The cat is sleeping.", "train_covost"),
    ("common_voice_de_3.mp3", CLIENT_B, "Das ist \u201egut\u201c.", "That is \u201cgood\u201d.", "dev"),
    ("common_voice_de_4.mp3", CLIENT_C, "Wo ist der Hund?", "Where is the dog?", "test"),
    ("common_voice_de_5.mp3", CLIENT_C, "Leere Übersetzung.", "", "train"),
    ("common_voice_de_6.mp3", CLIENT_C, "Fehlt auf der Platte.", "Missing on disk.", "train"),
    ("common_voice_de_7.mp3", CLIENT_C, "Kaputte Datei.", "Broken file.", "train"),
    ("common_voice_de_8.mp3", CLIENT_C, "Unbekannt.", "Unknown.", "no_split"),
]
ROWS_EN = [
    ("common_voice_en_1.mp3", CLIENT_C, "The dog runs home.", "train"),
    ("common_voice_en_2.mp3", CLIENT_A, "It's \"quoted\" here.", "test"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    cv_header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment\n"
    for lang, rows in (("de", ROWS_DE), ("en", ROWS_EN)):
        lines = [cv_header]
        for row in rows:
            clip, client, sentence = row[0], row[1], row[2]
            lines.append(f"{client}\t{clip}\t{sentence}\t2\t0\t\t\t\t{lang}\t\n")
            path = root / lang / "clips" / clip
            if "_6." in clip:
                continue  # missing clip
            if "_7." in clip:
                path.write_bytes(b"\x00not an mp3\xff" * 50)  # corrupt clip
                continue
            synth_speech(sentence, lang, path, 48000)
        (root / lang / "validated.tsv").write_text("".join(lines), encoding="utf-8")
    table = ["path\tsentence\ttranslation\tclient_id\tsplit\n"]
    table += [f"{c}\t{s}\t{t}\t{cl}\t{sp}\n" for c, cl, s, t, sp in ROWS_DE]
    (root / "covost_v2.de_en.tsv").write_text("".join(table), encoding="utf-8")
    table = ["path\tsentence\ttranslation\tclient_id\tsplit\n"]
    table += [f"{c}\t{s}\tDer Hund.\t{cl}\t{sp}\n" for c, cl, s, sp in ROWS_EN]
    (root / "covost_v2.en_de.tsv").write_text("".join(table), encoding="utf-8")  # only en->X exists
    return root


@requires_espeak
def test_prepare_real_layout(corpus, tmp_path, caplog):
    sizes = prepare_covost2(corpus, corpus, ["de", "en"], tmp_path / "data", norm="tc")
    assert sizes == {"train_de": 2, "train_en": 1, "train": 3, "dev_de": 1, "dev": 1,
                     "test_de": 1, "test_en": 1, "test": 2}
    for name in sizes:
        validate_data_dir(tmp_path / "data" / name)
    train = DataDir.load(tmp_path / "data" / "train")
    texts = sorted(train.tables["text"].values())
    assert texts == ['He said "hello" to me.', "The cat is sleeping.", "The dog runs home."]
    assert 'Er sagte "Hallo" zu mir.' in train.tables["text.src"].values()
    assert set(train.tables["utt2lang"].values()) == {"de", "en"}
    speakers = set(train.utt2spk.values()) | set(DataDir.load(tmp_path / "data" / "dev").utt2spk.values())
    assert speakers == {CLIENT_A, CLIENT_B, CLIENT_C}  # the client ids themselves: they cannot collide
    dev = DataDir.load(tmp_path / "data" / "dev")
    assert list(dev.tables["text"].values()) == ['That is "good".']  # typographic quotes normalised
    test_en = DataDir.load(tmp_path / "data" / "test_en")
    assert list(test_en.tables["text"].values()) == ["It's \"quoted\" here."]  # ASR: target = sentence
    skipped = read_table(tmp_path / "data" / "train_de" / "skipped")
    assert sorted(skipped.values()) == ["empty translation in covost_v2.de_en.tsv", "missing clip",
                                        "not decodable (LibsndfileError)"]
    assert skipped[f"{CLIENT_C}-common_voice_de_5"] == "empty translation in covost_v2.de_en.tsv"
    assert (tmp_path / "data" / "train" / "text_norm").read_text() == "tc\n"
    assert "no_split" in caplog.text
    assert 1.0 < float(next(iter(train.tables["utt2dur"].values()))) < 5.0


@requires_espeak
def test_lc_rm_and_cli(corpus, tmp_path):
    out = tmp_path / "data"
    (tmp_path / "prep.yaml").write_text(f"cv_root: {corpus}\ncovost_dir: {corpus}\nsrc_langs: de\nnorm: lc.rm\n")
    subprocess.run([sys.executable, "-m", "speechllm_cli.cli", "prepare-covost2", "--config",
                    str(tmp_path / "prep.yaml"), "--out", str(out)], check=True, capture_output=True)
    assert sorted(read_table(out / "train" / "text").values()) == ["he said hello to me", "the cat is sleeping"]
    assert (out / "train" / "text_norm").read_text() == "lc.rm\n"
    assert not (out / "test_en").exists()


def test_missing_table_names_the_file(tmp_path):
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "validated.tsv").write_text("client_id\tpath\tsentence\n")
    result = subprocess.run([sys.executable, "-m", "speechllm_cli.cli", "prepare-covost2", "--cv-root", str(tmp_path),
                             "--covost-dir", str(tmp_path), "--src-langs", "de"], capture_output=True, text=True)
    assert result.returncode == 1 and "covost_v2.de_en.tsv: not found" in result.stderr


def test_speaker_ids_are_the_client_ids():
    assert [speaker_id(c) for c in (CLIENT_A, CLIENT_B)] == [CLIENT_A, CLIENT_B]  # same 8-char prefix, distinct
    with pytest.raises(CorpusError, match="client_id 'a b'"):
        speaker_id("a b")
