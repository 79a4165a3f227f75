"""Text normalisation conventions of ESPnet's speech translation recipes.

- ``tc``: true case kept, punctuation normalised (typographic quotes, apostrophes, dashes,
  ellipses and odd spaces mapped to plain ASCII forms; whitespace collapsed).
- ``lc.rm``: lower-cased with punctuation removed (apostrophes inside words are kept).

Example:
    >>> normalize("«Bonjour» – dit-il…", "tc")
    '"Bonjour" - dit-il...'
    >>> normalize("Where is the cat? It's here.", "lc.rm")
    "where is the cat it's here"
"""

from __future__ import annotations

import re
import unicodedata

NORMS = ("tc", "lc.rm")

_PUNCT_MAP = str.maketrans({
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u00b4": "'", "`": "'",
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-",
    "\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u200b": "",
})
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)\]])")
_QUOTE_INNER_SPACE = re.compile(r'"\s+(.*?)\s+"')


def normalize_punctuation(text: str) -> str:
    """The ``tc`` convention: unify punctuation forms and whitespace, keep case."""
    text = unicodedata.normalize("NFC", text).translate(_PUNCT_MAP).replace("\u2026", "...")
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _QUOTE_INNER_SPACE.sub(r'"\1"', text)


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


def normalize(text: str, norm: str) -> str:
    """Apply the named convention (``tc`` or ``lc.rm``)."""
    if norm == "tc":
        return normalize_punctuation(text)
    if norm == "lc.rm":
        return lowercase_remove_punctuation(text)
    raise ValueError(f"unknown text normalisation '{norm}'; choose one of {', '.join(NORMS)}")
