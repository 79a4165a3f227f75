"""The shared semantic inventory of the mini corpus and a seeded sampler of sentence meanings.

A :class:`Frame` is one sentence meaning (who does what, where, when, asked or negated);
each language module (``grammar_de``, ``grammar_fr``, ``grammar_es``, ``grammar_en``) turns
the same frame into its own sentence, so a source sentence and its English translation come
from one choice. Concepts are plain ids (``"dog"``, ``"sleep"``, ``"garden"``); only the
classes below decide which combinations make sense.

Example:
    >>> import random
    >>> frame = sample_frame(random.Random(0))
    >>> frame.clause.kind in ("act", "attr", "loc")
    True
"""

from __future__ import annotations

import dataclasses
import random

PERSONS = ("1sg", "2sg", "3sg", "1pl", "3pl")

# noun -> semantic class; classes decide verbs, objects and adjectives
NOUN_CLASS = {
    "man": "adult", "woman": "adult", "teacher": "adult",
    "child": "young", "boy": "young", "girl": "young",
    "dog": "beast", "cat": "beast", "horse": "beast", "bird": "bird",
    "book": "text", "letter": "text", "newspaper": "text",
    "apple": "food", "cake": "food", "egg": "food",
    "coffee": "drink", "tea": "drink",
    "car": "thing", "key": "thing", "bag": "thing",
}
HUMAN = ("adult", "young")
ANIMAL = ("beast", "bird")
THINGS = ("text", "food", "drink", "thing")
MASS = ("drink",)  # singular only (no plural, no numbers)

NOUN_ADJS = {  # adjectives that make sense with each noun
    "man": ("old",), "woman": ("old",), "teacher": ("old",),
    "child": ("small",), "boy": ("small",), "girl": ("small",),
    "dog": ("big", "small", "old", "black", "white"), "cat": ("big", "small", "old", "black", "white"),
    "horse": ("big", "small", "old", "black", "white"), "bird": ("small", "black", "white"),
    "book": ("big", "small", "old", "red", "black"), "letter": ("old",), "newspaper": ("old",),
    "apple": ("big", "small", "red"), "cake": ("big", "small"), "egg": ("big", "small", "white"),
    "coffee": (), "tea": (),
    "car": ("big", "small", "old", "red", "black", "white"), "key": ("small", "old"),
    "bag": ("big", "small", "old", "red", "black", "white"),
}
PRONOUN_ADJS = ("old", "small")

# verb -> (subject classes, object classes or () when intransitive, takes a place, takes a time)
VERBS = {
    "sleep": (HUMAN + ANIMAL, (), True, True),
    "run": (HUMAN + ("beast",), (), True, True),
    "sing": (HUMAN + ("bird",), (), True, True),
    "work": (("adult",), (), True, True),
    "play": (HUMAN + ("beast",), (), True, True),
    "wait": (HUMAN, (), True, True),
    "see": (HUMAN + ANIMAL, ("text", "food", "thing"), True, True),
    "have": (HUMAN, THINGS, False, False),
    "buy": (HUMAN, THINGS, False, True),
    "want": (HUMAN, THINGS, False, False),
    "read": (HUMAN, ("text",), True, True),
    "eat": (HUMAN + ANIMAL, ("food",), True, True),
    "drink": (HUMAN, ("drink",), True, True),
}
PLACES = ("garden", "kitchen", "park", "home", "school", "city")
ANIMAL_PLACES = ("garden", "kitchen", "park", "home")
THING_PLACES = ("garden", "kitchen", "home", "school")
CAR_PLACES = ("garden", "park", "city")
TIMES = ("today", "morning", "evening", "daily") + tuple(f"h{h}" for h in range(1, 13))
COUNTS = (2, 3, 4, 5)
MATRIX_VERBS = ("think", "know")


@dataclasses.dataclass(frozen=True)
class NounPhrase:
    """A noun phrase, or a personal pronoun when ``noun`` is empty."""

    noun: str = ""  # concept id; "" for a pronoun
    person: str = "3sg"  # one of PERSONS (a noun phrase is 3sg or 3pl)
    gender: str = "m"  # pronoun gender for agreement (fr/es); nouns take theirs from the lexicon
    det: str = ""  # "def" | "indef" | "num"; "" for a pronoun
    count: int = 0  # the cardinal when det == "num"
    adj: str = ""  # attributive adjective

    def __post_init__(self) -> None:
        if self.noun and self.person not in ("3sg", "3pl") or self.det == "num" and self.person != "3pl":
            raise ValueError(f"noun phrase {self}: a noun is 3sg or 3pl, and a counted noun 3pl")

    @property
    def plural(self) -> bool:
        return self.person in ("1pl", "3pl")

    @property
    def is_pronoun(self) -> bool:
        return not self.noun


@dataclasses.dataclass(frozen=True)
class Clause:
    """One clause: ``act`` (verb [object]), ``attr`` (be + adjective) or ``loc`` (be + place)."""

    kind: str
    subj: NounPhrase
    verb: str = ""
    obj: NounPhrase | None = None
    pred_adj: str = ""
    place: str = ""
    time: str = ""
    neg: bool = False


@dataclasses.dataclass(frozen=True)
class Frame:
    """A sentence meaning: a clause, its mood, and an optional "I think that ..." frame around it."""

    clause: Clause
    mood: str = "decl"  # decl | yn | where | what | when
    front_time: bool = False  # time adverbial first ("At seven o'clock, ...")
    matrix_subj: NounPhrase | None = None
    matrix_verb: str = ""  # think | know


def places_for(subj: NounPhrase) -> tuple[str, ...]:
    """Places where the subject can plausibly be (people anywhere, a car not in the kitchen)."""
    if subj.is_pronoun or NOUN_CLASS[subj.noun] in HUMAN:
        return PLACES
    if subj.noun == "car":
        return CAR_PLACES
    return ANIMAL_PLACES if NOUN_CLASS[subj.noun] in ANIMAL else THING_PLACES


def _pick(rng: random.Random, weighted: dict[str, float]) -> str:
    keys = list(weighted)
    return rng.choices(keys, weights=[weighted[k] for k in keys])[0]


def sample_pronoun(rng: random.Random) -> NounPhrase:
    return NounPhrase(person=rng.choice(PERSONS), gender=rng.choice("mf"))


def sample_noun_phrase(rng: random.Random, classes: tuple[str, ...], dets: dict[str, float],
                       adj_prob: float = 0.3) -> NounPhrase:
    """A noun phrase whose noun belongs to one of ``classes``, with a determiner drawn from ``dets``."""
    noun = rng.choice(sorted(n for n, c in NOUN_CLASS.items() if c in classes))
    mass = NOUN_CLASS[noun] in MASS
    dets = {d: w for d, w in dets.items() if not (mass and d in ("num", "defpl"))}
    det = _pick(rng, dets)
    adjs = NOUN_ADJS[noun]
    adj = rng.choice(adjs) if adjs and rng.random() < adj_prob else ""
    if det == "num":
        return NounPhrase(noun=noun, person="3pl", det="num", count=rng.choice(COUNTS), adj=adj)
    return NounPhrase(noun=noun, person="3pl" if det == "defpl" else "3sg", det=det.removesuffix("pl"), adj=adj)


SUBJ_DETS = {"def": 0.45, "defpl": 0.2, "indef": 0.15, "num": 0.2}
OBJ_DETS = {"def": 0.4, "defpl": 0.15, "indef": 0.3, "num": 0.15}


def sample_act(rng: random.Random, mood: str, embedded: bool) -> Clause:
    usable = {"what": lambda spec: bool(spec[1]), "where": lambda spec: spec[2], "when": lambda spec: spec[3]}
    verb = rng.choice(sorted(v for v, spec in VERBS.items() if usable.get(mood, bool)(spec)))
    subj_classes, obj_classes, takes_place, takes_time = VERBS[verb]
    if any(c in HUMAN for c in subj_classes) and rng.random() < 0.35:
        subj = sample_pronoun(rng)
    else:
        subj = sample_noun_phrase(rng, subj_classes, SUBJ_DETS)
    neg = mood == "decl" and subj.det in ("", "def") and rng.random() < 0.3
    obj = None
    if obj_classes and mood != "what":
        obj_dets = {k: v for k, v in OBJ_DETS.items() if not (neg and k == "num")}
        obj = sample_noun_phrase(rng, obj_classes, obj_dets, adj_prob=0.25)
    budget = 1 if embedded or obj is not None and obj.adj else 2  # keep utterances short
    place = rng.choice(places_for(subj)) if takes_place and mood != "where" and rng.random() < 0.4 else ""
    time = ""
    if takes_time and mood != "when" and rng.random() < 0.4 and (budget > 1 or not place):
        time = rng.choice(TIMES)
    return Clause("act", subj, verb=verb, obj=obj, place=place, time=time, neg=neg)


def sample_copula(rng: random.Random, kind: str, mood: str) -> Clause:
    neg = mood == "decl" and rng.random() < 0.3
    if kind == "attr":
        if rng.random() < 0.3:
            subj = sample_pronoun(rng)
            return Clause("attr", subj, pred_adj=rng.choice(PRONOUN_ADJS), neg=neg)
        classes = tuple(sorted({c for n, c in NOUN_CLASS.items() if NOUN_ADJS[n]}))
        subj = sample_noun_phrase(rng, classes, {"def": 0.7, "defpl": 0.3}, adj_prob=0.0)
        while not NOUN_ADJS[subj.noun]:
            subj = sample_noun_phrase(rng, classes, {"def": 0.7, "defpl": 0.3}, adj_prob=0.0)
        return Clause("attr", subj, pred_adj=rng.choice(NOUN_ADJS[subj.noun]), neg=neg)
    if rng.random() < 0.3:
        subj = sample_pronoun(rng)
    else:
        subj = sample_noun_phrase(rng, tuple(sorted(set(NOUN_CLASS.values()))), {"def": 0.7, "defpl": 0.3})
    place = "" if mood == "where" else rng.choice(places_for(subj))
    return Clause("loc", subj, place=place, neg=neg)


def sample_frame(rng: random.Random) -> Frame:
    """Draw one sentence meaning; every language can realise every frame this returns."""
    shape = _pick(rng, {"act": 0.55, "attr": 0.13, "loc": 0.14, "embedded": 0.18})
    if shape == "embedded":
        inner = _pick(rng, {"act": 0.6, "attr": 0.2, "loc": 0.2})
        clause = sample_act(rng, "decl", True) if inner == "act" else sample_copula(rng, inner, "decl")
        return Frame(clause, matrix_subj=sample_pronoun(rng), matrix_verb=rng.choice(MATRIX_VERBS))
    if shape == "act":
        mood = _pick(rng, {"decl": 0.62, "yn": 0.14, "where": 0.09, "what": 0.08, "when": 0.07})
        clause = sample_act(rng, mood, False)
    else:
        mood = _pick(rng, {"decl": 0.65, "yn": 0.2, "where": 0.15} if shape == "loc" else {"decl": 0.7, "yn": 0.3})
        clause = sample_copula(rng, shape, mood)
    front = mood == "decl" and bool(clause.time) and rng.random() < 0.35
    return Frame(clause, mood=mood, front_time=front)
