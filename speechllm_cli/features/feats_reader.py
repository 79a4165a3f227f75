"""Feature matrices of a ``feats.scp``, read one at a time, with errors that say which utterance, ark and
offset failed and what to do.

kaldiio alone reports a truncated or overwritten ark as e.g. "cannot reshape array of size 16050 into shape
(210,80)"; :class:`FeatsReader` turns every read failure into a :class:`FeatsReadError` naming the scp, the
utterance, the ark file and byte offset, the ark's size and the stage to re-run.

Example:
    >>> reader = FeatsReader("dump/train/feats.scp")          # doctest: +SKIP
    >>> reader["spk1-utt1"].shape                             # (T, 80) float32  # doctest: +SKIP
    (312, 80)
    >>> for utt, feats in reader:                             # scp order, arks kept open  # doctest: +SKIP
    ...     pass
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import kaldiio
import numpy as np

from speechllm_cli.data.kaldi_dir import DataDirError, read_table

# what re-makes the arks of a dump dir (the stage that wrote them)
REDO_FBANK = "re-run the stage that wrote it (stage 2: `speechllm fbank data/<set> dump/<set>`; it redoes only the " \
             "jobs whose ark is damaged)"


class FeatsReadError(DataDirError):
    """A feature matrix cannot be read; the message names the utterance, the ark, the offset and the fix."""


def describe_entry(entry: str) -> str:
    """``<ark> at byte <offset> (<size> bytes long)`` for an scp value ``ark:offset`` (or the value as it is)."""
    ark, sep, offset = entry.rpartition(":")
    if not sep or not offset.isdigit():
        return entry
    size = f"{os.path.getsize(ark)} bytes long" if os.path.isfile(ark) else "missing"
    return f"{ark} at byte {offset} ({size})"


class FeatsReader:
    """Read the matrices of ``feats_scp`` by utterance id or in scp order (each (T, D) float32).

    Reading by id opens the ark each time (safe in forked DataLoader workers); iterating keeps each ark open
    while its matrices follow one another. ``how_to_fix`` ends the error message (default: re-run fbank).
    """

    def __init__(self, feats_scp: str | os.PathLike, how_to_fix: str = REDO_FBANK, entries: dict | None = None):
        self.feats_scp = Path(feats_scp)
        self.entries = entries if entries is not None else read_table(self.feats_scp)  # utt -> "ark:offset"
        self.how_to_fix = how_to_fix

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, utt: str) -> bool:
        return utt in self.entries

    def __getitem__(self, utt: str) -> np.ndarray:
        return self._read(utt, None)

    def _read(self, utt: str, open_files: dict | None) -> np.ndarray:
        entry = self.entries[utt]
        try:
            feats = np.asarray(kaldiio.load_mat(entry, fd_dict=open_files), dtype=np.float32)
        except Exception as exc:  # kaldiio raises ValueError, OSError, struct.error... for a damaged ark
            raise FeatsReadError(
                f"{self.feats_scp}: cannot read the features of '{utt}' from {describe_entry(entry)}: "
                f"{type(exc).__name__}: {exc}. The ark was cut short or overwritten (a stage killed while "
                f"writing it?); {self.how_to_fix}"
            ) from exc
        if feats.ndim != 2:
            raise FeatsReadError(f"{self.feats_scp}: '{utt}' ({describe_entry(entry)}) is not a (frames, dims) matrix "
                                 f"but has shape {feats.shape}; {self.how_to_fix}")
        return feats

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        open_files: dict = {}  # ark path -> open file, reused by kaldiio
        try:
            for utt in self.entries:
                yield utt, self._read(utt, open_files)
        finally:
            for handle in open_files.values():
                handle.close()
