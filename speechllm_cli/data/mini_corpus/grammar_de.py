"""German realisation of mini-corpus frames.

Verb second in main clauses (a fronted time adverbial moves the subject after the verb),
verb first in yes/no questions, verb last after "dass"; nominative/accusative articles with
weak, mixed and strong adjective endings; "kein" for a negated indefinite object, otherwise
"nicht" after the definite object and time and before the place; animals "fressen".

Example:
    >>> from speechllm_cli.data.mini_corpus.frames import Clause, Frame, NounPhrase
    >>> realize(Frame(Clause("act", NounPhrase("cat", det="def"), verb="sleep", time="h7"), front_time=True))
    'Um sieben Uhr schläft die Katze.'
"""

from __future__ import annotations

from speechllm_cli.data.mini_corpus.frames import ANIMAL, NOUN_CLASS, Clause, Frame, NounPhrase

NOUNS = {  # gender, singular, plural
    "man": ("m", "Mann", "Männer"), "woman": ("f", "Frau", "Frauen"), "teacher": ("m", "Lehrer", "Lehrer"),
    "child": ("n", "Kind", "Kinder"), "boy": ("m", "Junge", "Jungen"), "girl": ("n", "Mädchen", "Mädchen"),
    "dog": ("m", "Hund", "Hunde"), "cat": ("f", "Katze", "Katzen"), "horse": ("n", "Pferd", "Pferde"),
    "bird": ("m", "Vogel", "Vögel"), "book": ("n", "Buch", "Bücher"), "letter": ("m", "Brief", "Briefe"),
    "newspaper": ("f", "Zeitung", "Zeitungen"), "apple": ("m", "Apfel", "Äpfel"),
    "cake": ("m", "Kuchen", "Kuchen"), "egg": ("n", "Ei", "Eier"), "coffee": ("m", "Kaffee", "Kaffees"),
    "tea": ("m", "Tee", "Tees"), "car": ("n", "Auto", "Autos"), "key": ("m", "Schlüssel", "Schlüssel"),
    "bag": ("f", "Tasche", "Taschen"),
}
ADJS = {"big": "groß", "small": "klein", "old": "alt", "black": "schwarz", "white": "weiß", "red": "rot"}
VERBS = {  # ich, du, er/sie, wir/sie
    "sleep": ("schlafe", "schläfst", "schläft", "schlafen"), "run": ("renne", "rennst", "rennt", "rennen"),
    "sing": ("singe", "singst", "singt", "singen"), "work": ("arbeite", "arbeitest", "arbeitet", "arbeiten"),
    "play": ("spiele", "spielst", "spielt", "spielen"), "wait": ("warte", "wartest", "wartet", "warten"),
    "see": ("sehe", "siehst", "sieht", "sehen"), "have": ("habe", "hast", "hat", "haben"),
    "buy": ("kaufe", "kaufst", "kauft", "kaufen"), "want": ("will", "willst", "will", "wollen"),
    "read": ("lese", "liest", "liest", "lesen"), "eat": ("esse", "isst", "isst", "essen"),
    "eat_animal": ("fresse", "frisst", "frisst", "fressen"), "drink": ("trinke", "trinkst", "trinkt", "trinken"),
    "be": ("bin", "bist", "ist", "sind"), "think": ("glaube", "glaubst", "glaubt", "glauben"),
    "know": ("weiß", "weißt", "weiß", "wissen"),
}
PERSON_INDEX = {"1sg": 0, "2sg": 1, "3sg": 2, "1pl": 3, "3pl": 3}
PRONOUNS = {"1sg": "ich", "2sg": "du", "1pl": "wir", "3pl": "sie"}
DEF = {"nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
       "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"}}
INDEF = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}
WEAK = {"nom": {"m": "e", "f": "e", "n": "e", "pl": "en"}, "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"}}
MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}}
NUMBERS = ("null", "ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf")
PLACES = {"garden": "im Garten", "kitchen": "in der Küche", "park": "im Park", "home": "zu Hause",
          "school": "in der Schule", "city": "in der Stadt"}
TIMES = {"today": "heute", "morning": "am Morgen", "evening": "am Abend", "daily": "jeden Tag"}


def time_phrase(time: str) -> str:
    return f"um {NUMBERS[int(time[1:])]} Uhr" if time.startswith("h") else TIMES[time]


def pronoun(np_: NounPhrase) -> str:
    if np_.person == "3sg":
        return "er" if np_.gender == "m" else "sie"
    return PRONOUNS[np_.person]


def noun_phrase(np_: NounPhrase, case: str, negated: bool = False) -> str:
    """Article + declined adjective + noun; ``negated`` turns an indefinite article into "kein"."""
    if np_.is_pronoun:
        return pronoun(np_)
    gender, singular, plural = NOUNS[np_.noun]
    g = "pl" if np_.plural else gender
    noun = plural if np_.plural else singular
    if np_.det == "def":
        det, ending = DEF[case][g], WEAK[case][g]
    elif np_.det == "indef":
        det, ending = ("k" if negated else "") + INDEF[case][g], MIXED[case][g]
    else:  # a cardinal: no article, strong plural ending
        det, ending = NUMBERS[np_.count], "e"
    adj = [ADJS[np_.adj] + ending] if np_.adj else []
    return " ".join([det, *adj, noun])


def finite(c: Clause) -> str:
    verb = c.verb or "be"
    if verb == "eat" and not c.subj.is_pronoun and NOUN_CLASS[c.subj.noun] in ANIMAL:
        verb = "eat_animal"
    return VERBS[verb][PERSON_INDEX[c.subj.person]]


def middle_field(c: Clause, with_time: bool = True) -> list[str]:
    """Everything between the finite verb and the end: object, time, "nicht", place or predicate."""
    if c.kind != "act":
        pred = [ADJS[c.pred_adj]] if c.kind == "attr" else [PLACES[c.place]] if c.place else []
        return [*(["nicht"] if c.neg else []), *pred]
    words = []
    obj = c.obj
    if obj is not None and obj.det == "def":
        words.append(noun_phrase(obj, "acc"))
    if c.time and with_time:
        words.append(time_phrase(c.time))
    kein = c.neg and obj is not None and obj.det == "indef"
    if c.neg and not kein:
        words.append("nicht")
    if obj is not None and obj.det != "def":
        words.append(noun_phrase(obj, "acc", negated=kein))
    if c.place:
        words.append(PLACES[c.place])
    return words


def main_clause(frame: Frame) -> list[str]:
    c = frame.clause
    subj = noun_phrase(c.subj, "nom")
    if frame.mood == "decl" and frame.front_time:
        return [time_phrase(c.time), finite(c), subj, *middle_field(c, with_time=False)]
    if frame.mood == "decl":
        return [subj, finite(c), *middle_field(c)]
    wh = {"yn": [], "where": ["wo"], "what": ["was"], "when": ["wann"]}[frame.mood]
    return [*wh, finite(c), subj, *middle_field(c)]


def subordinate(c: Clause) -> list[str]:
    """Verb-final clause after "dass"."""
    return ["dass", noun_phrase(c.subj, "nom"), *middle_field(c), finite(c)]


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def realize(frame: Frame) -> str:
    """The German sentence for ``frame``, capitalised and punctuated."""
    if frame.matrix_subj is not None:
        m = frame.matrix_subj
        head = [pronoun(m), VERBS[frame.matrix_verb][PERSON_INDEX[m.person]]]
        return capitalize(" ".join(head) + ", " + " ".join(subordinate(frame.clause))) + "."
    end = "." if frame.mood == "decl" else "?"
    return capitalize(" ".join(main_clause(frame))) + end
