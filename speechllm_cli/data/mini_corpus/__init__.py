"""Embedded synthetic corpus in the Common Voice + CoVoST2 layout (``speechllm make-mini-corpus``).

German, French and Spanish speech with English translations, and English speech for ASR:
sentences from small seeded grammars (:mod:`.grammar`), spoken by espeak-ng voices
(:mod:`.speakers`), written as Common Voice clips and CoVoST2 tables (:mod:`.build`).

Example:
    >>> from speechllm_cli.data.mini_corpus import generate_pairs
    >>> generate_pairs("fr", 1, seed=0)[0][1].endswith((".", "?"))
    True
"""

from speechllm_cli.data.mini_corpus.build import make_mini_corpus
from speechllm_cli.data.mini_corpus.grammar import generate_pairs

__all__ = ["generate_pairs", "make_mini_corpus"]
