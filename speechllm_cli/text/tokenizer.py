"""The CTC vocabulary: a sentencepiece model trained on source transcripts, with ``<blank>`` at id 0.

Example::

    from pathlib import Path
    from speechllm_cli.text.tokenizer import Tokenizer, train_tokenizer

    train_tokenizer([Path("data/train_de/text.src"), Path("data/train_fr/text.src")],
                    Path("data/token_list/unigram300"), vocab_size=300)
    tokenizer = Tokenizer.load("data/token_list/unigram300")
    ids = tokenizer.encode("guten Morgen")        # CTC ids, never 0 (the blank)
    print(tokenizer.decode(ids))                  # guten Morgen
    print(tokenizer.vocab_size)                   # 300: the CTC output size, blank included

Id mapping: the CTC id of a piece *is* its sentencepiece id. Sentencepiece is trained with its pad
symbol renamed ``<blank>`` and placed at id 0 (a control symbol, so encode never produces it and
decode skips it), ``<unk>`` at id 1, and no ``<s>``/``</s>``. ``vocab_size`` is therefore the full
CTC output size: blank and unk included. ``tokens.txt`` lists every piece in id order, one a line,
``<blank>`` first.

Determinism: every sentence is used in file order (``input_sentence_size=0``, no shuffling) on a
single thread, so the model bytes depend only on the input text and the options. ``seed`` is handed
to sentencepiece's random generator, which these settings leave unused; it is kept so a run records it.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from speechllm_cli.data.kaldi_dir import read_table
from speechllm_cli.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

MODEL_NAME = "bpe.model"
TOKENS_NAME = "tokens.txt"
BLANK = "<blank>"
UNK = "<unk>"
BLANK_ID = 0
UNK_ID = 1
MODEL_TYPES = ("unigram", "bpe", "char")

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _sentences(text_files: list[Path]) -> Iterator[str]:
    """The text of every ``utt text`` line (utt id stripped); utterances with empty text are skipped."""
    for path in text_files:
        for text in read_table(path, allow_empty_value=True).values():
            if text:
                yield text


def train_tokenizer(
    text_files: list[Path],
    out_dir: Path,
    vocab_size: int,
    model_type: str = "unigram",
    seed: int = 0,
    character_coverage: float = 1.0,
) -> Path:
    """Train the CTC sentencepiece model on Kaldi ``text`` files (all languages together); returns ``out_dir``.

    Files are read in the order given; empty transcripts are skipped. Writes ``out_dir/bpe.model``
    and ``out_dir/tokens.txt`` atomically. ``vocab_size`` counts every
    CTC output, ``<blank>`` and ``<unk>`` included (for ``char`` it is an upper bound: the most
    frequent characters are kept). Raises ValueError when ``vocab_size`` is more than the text supports.
    """
    text_files = [Path(p) for p in text_files]
    out_dir = Path(out_dir)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size {vocab_size} is too small: <blank> and <unk> take 2 ids; use at least 3")
    if not text_files:
        raise ValueError("train_tokenizer needs at least one text file")
    for path in text_files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such text file; prepare the data dir first")
    sentences = list(_sentences(text_files))
    if not sentences:
        raise ValueError(f"{', '.join(map(str, text_files))}: no utterance has any text to train the tokenizer on")

    spm.set_random_generator_seed(seed)
    model_bytes = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model_bytes,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=0,  # use every sentence ...
            shuffle_input_sentence=False,  # ... in file order: no sampling, nothing random
            num_threads=1,  # the EM sums depend on the thread split
            pad_id=BLANK_ID,
            pad_piece=BLANK,
            unk_id=UNK_ID,
            unk_piece=UNK,
            bos_id=-1,
            eos_id=-1,
            minloglevel=1,
        )
    except RuntimeError as err:
        if match := _TOO_LOW.search(str(err)):
            raise ValueError(
                f"vocab_size {vocab_size} is too small for the text in {', '.join(map(str, text_files))}: its "
                f"characters (at character_coverage {character_coverage}) and <blank>/<unk> need {match.group(2)} "
                f"ids; raise vocab_size to at least {match.group(2)} or lower character_coverage"
            ) from None
        match = _TOO_HIGH.search(str(err))
        if match is None:
            raise
        raise ValueError(
            f"vocab_size {vocab_size} is too large for the {len(sentences)} sentences in "
            f"{', '.join(map(str, text_files))}: sentencepiece ({model_type}) can build at most {match.group(2)} "
            f"pieces from them; lower vocab_size (e.g. --vocab-size {match.group(2)}) or give more text"
        ) from None

    processor = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces[BLANK_ID] == BLANK and pieces[UNK_ID] == UNK, pieces[:2]
    with atomic_path(out_dir / MODEL_NAME) as tmp:
        tmp.write_bytes(model_bytes.getvalue())
    atomic_write_text(out_dir / TOKENS_NAME, "".join(f"{piece}\n" for piece in pieces))
    logger.info("trained a %s tokenizer of %d pieces on %d sentences from %s -> %s",
                model_type, len(pieces), len(sentences), ", ".join(map(str, text_files)), out_dir)
    return out_dir


class Tokenizer:
    """Text <-> CTC ids with a trained sentencepiece model (see the module docstring for the id mapping)."""

    blank_id = BLANK_ID
    unk_id = UNK_ID

    def __init__(self, processor: spm.SentencePieceProcessor, tokens: list[str]):
        self.processor = processor
        self.tokens = tokens  # CTC id -> piece

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Tokenizer:
        """Load ``out_dir/bpe.model`` and check that ``out_dir/tokens.txt`` matches it."""
        out_dir = Path(out_dir)
        model_path, tokens_path = out_dir / MODEL_NAME, out_dir / TOKENS_NAME
        for path in (model_path, tokens_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; train the tokenizer first (speechllm train-tokenizer)")
        processor = spm.SentencePieceProcessor(model_file=str(model_path))
        tokens = tokens_path.read_text(encoding="utf-8").split("\n")[:-1]
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        if tokens != pieces:
            raise ValueError(f"{tokens_path} does not list the pieces of {model_path} in id order; "
                             "the two come from different runs: retrain the tokenizer")
        if pieces[BLANK_ID] != BLANK or not processor.is_control(BLANK_ID):
            raise ValueError(f"{model_path}: id {BLANK_ID} is {pieces[BLANK_ID]!r}, not the control symbol {BLANK!r}; "
                             "it was not trained by speechllm train-tokenizer")
        return cls(processor, tokens)

    @property
    def vocab_size(self) -> int:
        """Number of CTC outputs, blank included."""
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Text -> CTC ids (never the blank; unseen characters map to ``<unk>``).

        sentencepiece's default NFKC normalisation applies, so ``decode(encode(text))`` is ``text``
        for normalised text (speechllm_cli.text.normalize) and its NFKC form otherwise."""
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        """CTC ids -> text; blanks (and other control ids) are dropped."""
        return self.processor.decode([int(i) for i in ids])
