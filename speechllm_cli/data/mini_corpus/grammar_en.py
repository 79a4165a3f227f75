"""English realisation of mini-corpus frames: the translation side, and the ASR source for ``en``.

Present simple with do-support for questions and negation, a/an, "little" for small people.

Example:
    >>> from speechllm_cli.data.mini_corpus.frames import Clause, Frame, NounPhrase
    >>> realize(Frame(Clause("act", NounPhrase("cat", det="def"), verb="sleep", neg=True)))
    'The cat does not sleep.'
"""

from __future__ import annotations

from speechllm_cli.data.mini_corpus.frames import HUMAN, NOUN_CLASS, Clause, Frame, NounPhrase

NOUNS = {  # singular, plural
    "man": ("man", "men"), "woman": ("woman", "women"), "teacher": ("teacher", "teachers"),
    "child": ("child", "children"), "boy": ("boy", "boys"), "girl": ("girl", "girls"),
    "dog": ("dog", "dogs"), "cat": ("cat", "cats"), "horse": ("horse", "horses"), "bird": ("bird", "birds"),
    "book": ("book", "books"), "letter": ("letter", "letters"), "newspaper": ("newspaper", "newspapers"),
    "apple": ("apple", "apples"), "cake": ("cake", "cakes"), "egg": ("egg", "eggs"),
    "coffee": ("coffee", "coffees"), "tea": ("tea", "teas"),
    "car": ("car", "cars"), "key": ("key", "keys"), "bag": ("bag", "bags"),
}
ADJS = {"big": "big", "small": "small", "old": "old", "black": "black", "white": "white", "red": "red"}
VERBS = {  # base, third person singular
    "sleep": ("sleep", "sleeps"), "run": ("run", "runs"), "sing": ("sing", "sings"), "work": ("work", "works"),
    "play": ("play", "plays"), "wait": ("wait", "waits"), "see": ("see", "sees"), "have": ("have", "has"),
    "buy": ("buy", "buys"), "want": ("want", "wants"), "read": ("read", "reads"), "eat": ("eat", "eats"),
    "drink": ("drink", "drinks"), "think": ("think", "thinks"), "know": ("know", "knows"),
}
BE = {"1sg": "am", "2sg": "are", "3sg": "is", "1pl": "are", "3pl": "are"}
PRONOUNS = {"1sg": "I", "2sg": "you", "1pl": "we", "3pl": "they"}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve")
PLACES = {"garden": "in the garden", "kitchen": "in the kitchen", "park": "in the park", "home": "at home",
          "school": "at school", "city": "in the city"}
TIMES = {"today": "today", "morning": "in the morning", "evening": "in the evening", "daily": "every day"}


def time_phrase(time: str) -> str:
    return f"at {NUMBERS[int(time[1:])]} o'clock" if time.startswith("h") else TIMES[time]


def pronoun(np_: NounPhrase) -> str:
    if np_.person == "3sg":
        return "he" if np_.gender == "m" else "she"
    return PRONOUNS[np_.person]


def noun_phrase(np_: NounPhrase) -> str:
    if np_.is_pronoun:
        return pronoun(np_)
    words = [NOUNS[np_.noun][np_.plural]]
    if np_.adj:
        human_small = np_.adj == "small" and NOUN_CLASS[np_.noun] in HUMAN
        words.insert(0, "little" if human_small else ADJS[np_.adj])
    if np_.det == "def":
        det = "the"
    elif np_.det == "indef":
        det = "an" if words[0][0] in "aeiou" else "a"
    else:
        det = NUMBERS[np_.count]
    return " ".join([det, *words])


def verb_form(verb: str, person: str) -> str:
    return VERBS[verb][person == "3sg"]


def complement(c: Clause) -> list[str]:
    """What follows the verb: object, place, time (absent parts skipped)."""
    parts = [noun_phrase(c.obj)] if c.obj else []
    if c.place:
        parts.append(PLACES[c.place])
    if c.time:
        parts.append(time_phrase(c.time))
    return parts


def declarative(c: Clause, with_time: bool = True) -> list[str]:
    subj = noun_phrase(c.subj)
    if c.kind == "act":
        rest = complement(c if with_time else _without_time(c))
        if c.neg:
            do = "does" if c.subj.person == "3sg" else "do"
            return [subj, do, "not", VERBS[c.verb][0], *rest]
        return [subj, verb_form(c.verb, c.subj.person), *rest]
    pred = ADJS[c.pred_adj] if c.kind == "attr" else PLACES[c.place]
    return [subj, BE[c.subj.person], *(["not"] if c.neg else []), pred]


def _without_time(c: Clause) -> Clause:
    return Clause(c.kind, c.subj, verb=c.verb, obj=c.obj, place=c.place, neg=c.neg)


def question(frame: Frame) -> list[str]:
    c = frame.clause
    subj = noun_phrase(c.subj)
    if c.kind != "act":
        be = BE[c.subj.person]
        if frame.mood == "where":
            return ["where", be, subj]
        return [be, subj, ADJS[c.pred_adj] if c.kind == "attr" else PLACES[c.place]]
    do = "does" if c.subj.person == "3sg" else "do"
    wh = {"yn": [], "where": ["where"], "what": ["what"], "when": ["when"]}[frame.mood]
    return [*wh, do, subj, VERBS[c.verb][0], *complement(c)]


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def realize(frame: Frame) -> str:
    """The English sentence for ``frame``, capitalised and punctuated."""
    c = frame.clause
    if frame.mood != "decl":
        return capitalize(" ".join(question(frame))) + "?"
    if frame.matrix_subj is not None:
        m = frame.matrix_subj
        words = [pronoun(m), verb_form(frame.matrix_verb, m.person), "that", *declarative(c)]
    elif frame.front_time:
        words = [time_phrase(c.time) + ",", *declarative(c, with_time=False)]
    else:
        words = declarative(c)
    return capitalize(" ".join(words)) + "."
