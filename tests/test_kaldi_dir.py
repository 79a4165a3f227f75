"""Kaldi data dirs: round trips, validation (hand-written and hypothesis-generated malformed
files), splitting by speaker and filtering."""

from __future__ import annotations

import string
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechllm_cli.data.kaldi_dir import (
    DataDir,
    DataDirError,
    filter_data_dir,
    fix_data_dir,
    read_table,
    split_by_speaker,
    validate_data_dir,
    write_split,
)


def make_dir(path: Path, speakers: dict[str, int]) -> DataDir:
    tables = {n: OrderedDict() for n in ("wav.scp", "text", "text.src", "utt2spk", "utt2lang")}
    for spk, n in speakers.items():
        for i in range(n):
            utt = f"{spk}-utt{i:03d}"
            tables["wav.scp"][utt] = f"/corpus/{utt}.mp3"
            tables["text"][utt] = f"The cat number {i} sleeps."
            tables["text.src"][utt] = f"Die Katze Nummer {i} schläft."
            tables["utt2spk"][utt] = spk
            tables["utt2lang"][utt] = "de"
    return DataDir(path, tables).save(path)


def test_round_trip_sorted_c_order(tmp_path):
    data = make_dir(tmp_path / "d", {"spkB": 2, "spkA": 3, "Zed": 1, "spk_ü": 1})
    validate_data_dir(data.path)
    loaded = DataDir.load(data.path)
    assert loaded.tables == {k: OrderedDict(sorted(v.items())) for k, v in data.tables.items()}
    keys = [line.split()[0] for line in (data.path / "utt2spk").read_text().splitlines()]
    assert keys == sorted(keys, key=lambda k: k.encode("utf-8"))  # LC_ALL=C byte order
    assert (data.path / "spk2utt").read_text().splitlines()[0] == "Zed Zed-utt000"


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: (d / "text").write_text((d / "text").read_text().replace("The cat number 1 sleeps.", "")),
     "empty text"),
    (lambda d: (d / "utt2spk").write_text("".join(reversed((d / "utt2spk").read_text().splitlines(True)))),
     "not sorted"),
    (lambda d: (d / "text").write_text("\n".join((d / "text").read_text().splitlines()[:-1]) + "\n"),
     "covers other utterances"),
    (lambda d: (d / "utt2spk").write_text((d / "utt2spk").read_text().replace("spkA-utt000 spkA", "spkA-utt000 bob")),
     "does not start with its speaker"),
    (lambda d: (d / "spk2utt").write_text("spkA spkA-utt000\n"), "spk2utt"),
    (lambda d: (d / "wav.scp").unlink(), "missing"),
    (lambda d: (d / "text.src").write_text((d / "text.src").read_text() + "spkB-utt001 again\n"), "duplicate"),
])
def test_validation_failures_name_the_file(tmp_path, corrupt, message):
    data = make_dir(tmp_path / "d", {"spkA": 2, "spkB": 2})
    corrupt(data.path)
    with pytest.raises(DataDirError, match=message) as err:
        validate_data_dir(data.path)
    assert str(data.path) in str(err.value)


ids = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(ids, st.text(alphabet=string.ascii_letters + " ", max_size=8)), max_size=8),
       file=st.sampled_from(["text", "utt2spk", "wav.scp"]))
def test_generated_tables_validate_iff_well_formed(tmp_path_factory, lines, file):
    """Replace one table by generated lines: validation passes exactly when Kaldi's rules hold."""
    d = make_dir(tmp_path_factory.mktemp("h") / "d", {"s": 3})
    if file == "utt2spk":
        lines = [(f"s-{k}", v) for k, v in lines]
    (d.path / file).write_text("".join(f"{k} {v}\n" for k, v in lines))
    keys = [k for k, _ in lines]
    utts = {f"s-utt{i:03d}" for i in range(3)}
    values_ok = all(v.strip() for _, v in lines)
    if file == "utt2spk":
        values_ok = values_ok and all(v.strip() and len(v.split()) == 1 and k.startswith(v.strip()) for k, v in lines)
        utts = set(keys)
    well_formed = keys == sorted(set(keys)) and values_ok and set(keys) == utts and file != "utt2spk"
    if well_formed:
        validate_data_dir(d.path)
    else:
        with pytest.raises(DataDirError):
            validate_data_dir(d.path)


def test_fix_data_keeps_the_intersection(tmp_path):
    data = make_dir(tmp_path / "d", {"spkA": 3})
    (data.path / "text").write_text("spkA-utt002 b\nspkA-utt000 a\n")  # unsorted, one missing
    (data.path / "text.src").write_text("spkA-utt000 x\nspkA-utt001 y\nspkA-utt002 \n")  # one empty
    removed = fix_data_dir(data.path, max_drop=1.0)
    assert removed == {"spkA-utt001": "not in text", "spkA-utt002": "empty text.src"}
    validate_data_dir(data.path)
    assert read_table(data.path / "text") == {"spkA-utt000": "a"}


def test_split_by_speaker_balanced_and_complete(tmp_path):
    data = make_dir(tmp_path / "d", {"a": 5, "b": 1, "c": 4, "d": 2, "e": 3})
    parts = split_by_speaker(data, 3)
    seen = [u for p in parts for u in p.utt_ids]
    assert sorted(seen) == data.utt_ids and len(seen) == len(set(seen))
    for p in parts:  # whole speakers per part
        assert all(set(data.utt2spk[u] for u in p.utt_ids).isdisjoint(data.utt2spk[u] for u in q.utt_ids)
                   for q in parts if q is not p)
        assert p.utt_ids
    with pytest.raises(DataDirError, match="lower --nj"):
        split_by_speaker(data, 6)
    dirs = write_split(data, 2)
    for d in dirs:
        validate_data_dir(d)
    assert sum(len(DataDir.load(d).utt_ids) for d in dirs) == 15


def test_filter_by_duration_and_empty_text(tmp_path):
    data = make_dir(tmp_path / "d", {"s": 5})
    data.tables["text"]["s-utt004"] = " "
    durations = {"s-utt000": 0.05, "s-utt001": 1.0, "s-utt002": 25.0, "s-utt004": 2.0}
    kept, report = filter_data_dir(data, durations, 0.1, 20.0)
    assert kept.utt_ids == ["s-utt001"]
    assert set(report.removed) == {"s-utt000", "s-utt002", "s-utt003", "s-utt004"}
    assert "too short" in report.removed["s-utt000"] and "too long" in report.removed["s-utt002"]
    assert report.removed["s-utt004"] == "empty text"
