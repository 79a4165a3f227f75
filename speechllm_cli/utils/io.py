"""Atomic output: write to a temporary file (or folder) beside the target, then rename.

The temporary file or folder gets the mode a plain ``open()`` / ``mkdir`` would give (0666 / 0777 less the
process umask), not ``tempfile``'s private 0600 / 0700, so a group that shares an experiment can read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (read from /proc where it is, so no other thread ever sees it changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_dir(new_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Move the finished folder ``new_dir`` onto ``out_dir`` (same file system), replacing any old one.

    The old folder is renamed aside before the new one takes its name, so ``out_dir`` is at every moment
    either the old complete folder or the new complete one (a moment between the two renames excepted).
    """
    new_dir, out_dir = Path(new_dir), Path(out_dir)
    if not out_dir.exists():
        os.replace(new_dir, out_dir)
        return
    old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    os.replace(out_dir, old_dir / "x")
    os.replace(new_dir, out_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Fill a fresh temporary folder beside ``out_dir``; on success it replaces ``out_dir`` (see
    :func:`replace_dir`), on an error it is removed and ``out_dir`` is left as it was::

        with atomic_dir("exp/seq2seq/model") as tmp:
            save_file(state, tmp / "model.safetensors")
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp_dir.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700
        yield tmp_dir
        replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def files_sha256(files: list[Path]) -> str:
    """sha256 (hex) over ``files`` in the order given: each file's name, a NUL, then its bytes (streamed)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(Path(file).name.encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """sha256 (hex) of ``text`` (UTF-8): to combine hashes into one."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
