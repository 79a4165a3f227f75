"""Seeded sentence pairs (source, English) for the mini corpus, one grammar per language.

Every pair comes from one sampled meaning (:mod:`.frames`) realised twice: in the source
language and in English. Each meaning belongs to exactly one language, decided by a seeded
hash of its English sentence, so the English targets never repeat across languages, splits or
pairs (a test translation is never a training translation) and a language's sentences do not
depend on which other languages are built. Source sentences are unique within a language.

Example:
    >>> pairs = generate_pairs("de", 3, seed=0)
    >>> len(pairs), all(src and en for src, en in pairs)
    (3, True)
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from speechllm_cli.data.mini_corpus import grammar_de, grammar_en, grammar_es, grammar_fr
from speechllm_cli.data.mini_corpus.frames import Frame, sample_frame

LANGS = ("de", "fr", "es", "en")
REALIZERS: dict[str, Callable[[Frame], str]] = {
    "de": grammar_de.realize, "fr": grammar_fr.realize, "es": grammar_es.realize, "en": grammar_en.realize,
}
# other lengths are re-drawn, so clips stay within about 1.5-4 s of espeak-ng speech
MIN_WORDS, MAX_WORDS, MIN_CHARS = 3, 10, 16


def owner(english: str, seed: int) -> str:
    """The language a meaning (named by its English sentence) belongs to under ``seed``."""
    digest = hashlib.sha256(f"{seed}\t{english}".encode()).digest()
    return LANGS[int.from_bytes(digest[:8], "big") % len(LANGS)]


def realize_pair(frame: Frame, lang: str) -> tuple[str, str]:
    """(source sentence in ``lang``, English sentence) for one frame."""
    return REALIZERS[lang](frame), grammar_en.realize(frame)


def generate_pairs(lang: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (source, English) pairs for ``lang``, the same for the same (lang, seed).

    The first pairs do not change when ``n`` grows, so a bigger corpus extends a smaller one.
    Raises ValueError for an unknown language or when the grammar cannot give ``n`` pairs.
    """
    if lang not in REALIZERS:
        raise ValueError(f"no mini-corpus grammar for language '{lang}'; choose from {', '.join(LANGS)}")
    rng = random.Random(f"mini-corpus\t{lang}\t{seed}")
    pairs: list[tuple[str, str]] = []
    seen_src: set[str] = set()
    seen_en: set[str] = set()
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"the {lang} grammar gave only {len(pairs)} distinct sentences of {n} asked; "
                             "ask for a smaller size")
        frame = sample_frame(rng)
        english = grammar_en.realize(frame)
        if english in seen_en or owner(english, seed) != lang:
            continue
        source = REALIZERS[lang](frame)
        if source in seen_src or len(source) < MIN_CHARS or not MIN_WORDS <= len(source.split()) <= MAX_WORDS:
            continue
        seen_src.add(source)
        seen_en.add(english)
        pairs.append((source, english))
    return pairs
