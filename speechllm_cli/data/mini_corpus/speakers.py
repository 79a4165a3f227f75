"""Synthetic speakers of the mini corpus: one espeak-ng voice variant at one rate and pitch.

Each language has a few base voices (accents) and twelve classic variants (``m1``-``m7``, ``f1``-``f5``);
the variants are divided between train, dev and test, so no voice of a test speaker is heard
in training. A speaker's client id is a stable 64-hex-digit hash, as in Common Voice.

``voices="wide"`` keeps the dev and test speakers exactly (the same clips) and draws the train speakers from
every human-sounding variant espeak-ng ships (``WIDE_MALE_VARIANTS``, ``WIDE_FEMALE_VARIANTS``: 79, formant and
Klatt synthesis) except the dev/test ones, at a rate and pitch drawn from wider ranges (``WIDE_RATES``,
``WIDE_PITCHES``), one variant per speaker in turn: more, and more varied, training voices against the same
held-out evaluation.
``voices="unheard"`` keeps train and dev and speaks the test sentences with wide-range speakers whose variants
neither the classic nor the wide train set (same seed and size) uses: voices no system of the recipe has heard.

Example:
    >>> spk = choose_speakers("de", {"train": 3, "dev": 1, "test": 1}, seed=0)
    >>> len(spk["train"]), len(spk["train"][0].client_id)
    (3, 64)
    >>> wide = choose_speakers("de", {"train": 60, "dev": 1, "test": 1}, seed=0, voices="wide")
    >>> wide["test"] == choose_speakers("de", {"train": 12, "dev": 1, "test": 1}, seed=0)["test"]
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

BASE_VOICES = {  # language -> (espeak-ng voice, Common Voice accent label)
    "de": (("de", "germany"),),
    "fr": (("fr-fr", "france"), ("fr-be", "belgium")),
    "es": (("es", "nortepeninsular"), ("es-419", "mexicano")),
    "en": (("en-us", "us"), ("en-gb", "england")),
}
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
RATES = (120, 135, 150, 165)  # words per minute (espeak-ng's default, 175, is brisk)
PITCHES = (35, 50, 65)
# espeak-ng 1.51's other variants (voices/!v), by the gender their pitch and file state. Left out: the
# non-human ones (robosoft*, UniRobot, anikaRobot, Demonic, announcer, fast, RicishayMax*), whispering (whisper,
# whisperf), a child (zac), "Mr serious" (a space in its file name),
# and caleb and klatt6, which speak exactly as klatt.
WIDE_MALE_VARIANTS = MALE_VARIANTS + (
    "m8", "Alex", "Andy", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee",
    "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "Tweaky", "adam", "antonio", "benjamin", "boris",
    "croak", "david", "ed", "edward", "edward2", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4",
    "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "marcelo", "max", "michel",
    "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "travis", "victor")
WIDE_FEMALE_VARIANTS = FEMALE_VARIANTS + (
    "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda", "shelby", "steph", "steph2",
    "steph3")
WIDE_VARIANTS = WIDE_MALE_VARIANTS + WIDE_FEMALE_VARIANTS
WIDE_RATES = (100, 190)  # words per minute, drawn uniformly (integers) for each wide train speaker
WIDE_PITCHES = (15, 85)  # espeak-ng pitch 0-99, likewise
VOICE_SETS = ("classic", "wide", "unheard")
FEMALE = frozenset(WIDE_FEMALE_VARIANTS)
AGES = ("teens", "twenties", "thirties", "fourties", "fifties", "sixties")  # Common Voice's spelling


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: ``espeak-ng -v <voice> -s <rate> -p <pitch>``."""

    lang: str
    voice: str  # e.g. "de+m3"
    rate: int
    pitch: int
    accent: str

    @property
    def client_id(self) -> str:
        key = f"speechllm-mini-corpus\t{self.lang}\t{self.voice}\t{self.rate}\t{self.pitch}"
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def gender(self) -> str:
        return "female" if self.voice.split("+")[1] in FEMALE else "male"

    @property
    def age(self) -> str:
        return AGES[int(self.client_id[:8], 16) % len(AGES)]


def split_variants(rng: random.Random) -> dict[str, list[str]]:
    """Voice variants per split: one male and one female each for dev and test, the rest train."""
    male, female = list(MALE_VARIANTS), list(FEMALE_VARIANTS)
    rng.shuffle(male)
    rng.shuffle(female)
    return {"test": [male[0], female[0]], "dev": [male[1], female[1]], "train": male[2:] + female[2:]}


def choose_speakers(lang: str, counts: dict[str, int], seed: int = 0, voices: str = "classic",
                    wide_train_count: int = 0) -> dict[str, list[Speaker]]:
    """``counts[split]`` distinct speakers per split, voice variants disjoint between splits; ``voices="wide"``
    replaces the train speakers by ones of the wide variant pool (dev and test unchanged); ``voices="unheard"``
    replaces the test speakers by ones of variants that neither the classic train set nor a wide one of
    ``wide_train_count`` speakers uses (train and dev unchanged)."""
    if voices not in VOICE_SETS:
        raise ValueError(f"unknown voice set '{voices}'; choose from {list(VOICE_SETS)}")
    if lang not in BASE_VOICES:
        raise ValueError(f"no espeak-ng voices configured for language '{lang}'; choose from {sorted(BASE_VOICES)}")
    rng = random.Random(f"mini-corpus-speakers\t{lang}\t{seed}")
    variants = split_variants(rng)
    speakers: dict[str, list[Speaker]] = {}
    for split in ("train", "dev", "test"):
        combos = [(v, b, r, p) for v in variants[split] for b in BASE_VOICES[lang] for r in RATES for p in PITCHES]
        if counts.get(split, 0) > len(combos):
            raise ValueError(f"{lang} {split}: {counts[split]} speakers asked, only {len(combos)} voice settings")
        rng.shuffle(combos)
        chosen, used = [], set()
        for i in range(counts.get(split, 0)):
            # variants in turn, so every voice of the split is used before one repeats
            want = variants[split][i % len(variants[split])]
            pick = next(c for c in combos if c[0] == want and c not in used)
            used.add(pick)
            variant, (base, accent), rate, pitch = pick
            chosen.append(Speaker(lang, f"{base}+{variant}", rate, pitch, accent))
        speakers[split] = chosen
    held_out = set(variants["dev"] + variants["test"])
    if voices == "wide":
        speakers["train"] = wide_train_speakers(lang, counts.get("train", 0), held_out, seed)
    elif voices == "unheard":
        wide_train = wide_train_speakers(lang, wide_train_count, held_out, seed)
        heard = {spk.voice.split("+")[1] for spk in speakers["train"] + wide_train} | held_out
        speakers["test"] = unheard_speakers(lang, counts.get("test", 0), heard, seed)
    return speakers


def unheard_speakers(lang: str, count: int, heard: set[str], seed: int) -> list[Speaker]:
    """``count`` distinct speakers of the wide variants not in ``heard``, one per speaker in turn, wide ranges."""
    pool = [v for v in WIDE_VARIANTS if v not in heard]
    if count and not pool:
        raise ValueError(f"{lang}: every espeak-ng variant is heard in training; no unheard voice is left")
    return _draw_speakers(lang, count, pool, random.Random(f"mini-corpus-unheard-speakers\t{lang}\t{seed}"))


def wide_train_speakers(lang: str, count: int, held_out: set[str], seed: int) -> list[Speaker]:
    """``count`` distinct train speakers: the wide variants but ``held_out`` in a seeded order, one per speaker in
    turn, each with a base voice, rate and pitch drawn at random."""
    pool = [v for v in WIDE_VARIANTS if v not in held_out]
    return _draw_speakers(lang, count, pool, random.Random(f"mini-corpus-wide-speakers\t{lang}\t{seed}"))


def _draw_speakers(lang: str, count: int, pool: list[str], rng: random.Random) -> list[Speaker]:
    """``count`` distinct speakers: ``pool``'s variants shuffled, in turn, each with a random base voice (accent),
    rate in ``WIDE_RATES`` and pitch in ``WIDE_PITCHES``."""
    pool = list(pool)
    rng.shuffle(pool)
    chosen: list[Speaker] = []
    while len(chosen) < count:
        base, accent = rng.choice(BASE_VOICES[lang])
        speaker = Speaker(lang, f"{base}+{pool[len(chosen) % len(pool)]}", rng.randint(*WIDE_RATES),
                          rng.randint(*WIDE_PITCHES), accent)
        if speaker not in chosen:
            chosen.append(speaker)
    return chosen
