"""Text normalisation conventions of ESPnet's speech translation recipes.

- ``tc``: true case kept, punctuation normalised (typographic quotes, apostrophes, dashes,
  ellipses and odd spaces mapped to plain ASCII forms; whitespace collapsed; no space inside a pair
  of quotes; no space before ``. , ; : ! ? ) ]``, except in French (``lang="fr"``), whose typography
  puts a space before ``; : ! ?``: a space there is kept, as one plain space).
- ``lc.rm``: lower-cased with punctuation removed (apostrophes inside words are kept).

Example:
    >>> normalize("«Bonjour» – dit-il…", "tc")
    '"Bonjour" - dit-il...'
    >>> normalize("Où est la gare\u202f?", "tc", lang="fr")
    'Où est la gare ?'
    >>> normalize("Where is the cat? It’s here.", "lc.rm")
    "where is the cat it's here"
"""

from __future__ import annotations

import re
import unicodedata

NORMS = ("tc", "lc.rm")
FRENCH_SPACING = ("fr",)  # languages that put a space before ; : ! ?

_PUNCT_MAP = str.maketrans({
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u00b4": "'", "`": "'",
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-",
    "\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u200b": "",
})
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)\]])")
_SPACE_BEFORE_CLOSING = re.compile(r"\s+([.,)\]])")  # French keeps its space before ; : ! ?


def _tidy_quotes(text: str) -> str:
    """No space just inside a pair of ``"`` quotes (paired in order; an odd count is left alone)."""
    parts = text.split('"')
    if len(parts) % 2 == 0:
        return text
    parts[1::2] = [part.strip() for part in parts[1::2]]
    return '"'.join(parts)


def normalize_punctuation(text: str, lang: str | None = None) -> str:
    """The ``tc`` convention: unify punctuation forms and whitespace, keep case (``lang``: the text's language)."""
    text = unicodedata.normalize("NFC", text).translate(_PUNCT_MAP).replace("\u2026", "...")
    text = _tidy_quotes(" ".join(text.split()))
    spacing = _SPACE_BEFORE_CLOSING if lang in FRENCH_SPACING else _SPACE_BEFORE_PUNCT
    return spacing.sub(r"\1", text)


def lowercase_remove_punctuation(text: str) -> str:
    """The ``lc.rm`` convention: lower case, punctuation dropped, in-word apostrophes kept."""
    text = normalize_punctuation(text).lower()
    chars = []
    for i, ch in enumerate(text):
        if ch == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
            chars.append(ch)
        elif unicodedata.category(ch).startswith(("P", "S")):
            chars.append(" ")
        else:
            chars.append(ch)
    return " ".join("".join(chars).split())


def normalize(text: str, norm: str, lang: str | None = None) -> str:
    """Apply the named convention (``tc`` or ``lc.rm``) to ``text`` in language ``lang`` (a Common Voice code)."""
    if norm == "tc":
        return normalize_punctuation(text, lang)
    if norm == "lc.rm":
        return lowercase_remove_punctuation(text)
    raise ValueError(f"unknown text normalisation '{norm}'; choose one of {', '.join(NORMS)}")
