"""French realisation of mini-corpus frames.

Negation "ne ... pas" (with "pas de" for an indefinite object), questions with "est-ce que"
(and "Où est le chat ?" / "Où est-il ?" for location), adjectives agreeing in gender and
number, "grand/petit/vieux" before the noun ("vieil" before a vowel) and colours after it,
elision of je/ne/le/la/de/que before a vowel or mute h.

Example:
    >>> from speechllm_cli.data.mini_corpus.frames import Clause, Frame, NounPhrase
    >>> realize(Frame(Clause("act", NounPhrase(person="1sg"), verb="have",
    ...                      obj=NounPhrase("car", det="indef", adj="red"), neg=True)))
    "Je n'ai pas de voiture rouge."
"""

from __future__ import annotations

from speechllm_cli.data.mini_corpus.frames import Clause, Frame, NounPhrase

NOUNS = {  # gender, singular, plural
    "man": ("m", "homme", "hommes"), "woman": ("f", "femme", "femmes"),
    "teacher": ("m", "professeur", "professeurs"), "child": ("m", "enfant", "enfants"),
    "boy": ("m", "garçon", "garçons"), "girl": ("f", "fille", "filles"), "dog": ("m", "chien", "chiens"),
    "cat": ("m", "chat", "chats"), "horse": ("m", "cheval", "chevaux"), "bird": ("m", "oiseau", "oiseaux"),
    "book": ("m", "livre", "livres"), "letter": ("f", "lettre", "lettres"),
    "newspaper": ("m", "journal", "journaux"), "apple": ("f", "pomme", "pommes"),
    "cake": ("m", "gâteau", "gâteaux"), "egg": ("m", "œuf", "œufs"), "coffee": ("m", "café", "cafés"),
    "tea": ("m", "thé", "thés"), "car": ("f", "voiture", "voitures"), "key": ("f", "clé", "clés"),
    "bag": ("m", "sac", "sacs"),
}
ADJS = {  # masc. sg, fem. sg, masc. pl, fem. pl, masc. sg before a vowel; placed before the noun?
    "big": (("grand", "grande", "grands", "grandes", "grand"), True),
    "small": (("petit", "petite", "petits", "petites", "petit"), True),
    "old": (("vieux", "vieille", "vieux", "vieilles", "vieil"), True),
    "black": (("noir", "noire", "noirs", "noires", "noir"), False),
    "white": (("blanc", "blanche", "blancs", "blanches", "blanc"), False),
    "red": (("rouge", "rouge", "rouges", "rouges", "rouge"), False),
}
VERBS = {  # je, tu, il/elle, nous, ils/elles
    "sleep": ("dors", "dors", "dort", "dormons", "dorment"), "run": ("cours", "cours", "court", "courons", "courent"),
    "sing": ("chante", "chantes", "chante", "chantons", "chantent"),
    "work": ("travaille", "travailles", "travaille", "travaillons", "travaillent"),
    "play": ("joue", "joues", "joue", "jouons", "jouent"),
    "wait": ("attends", "attends", "attend", "attendons", "attendent"),
    "see": ("vois", "vois", "voit", "voyons", "voient"), "have": ("ai", "as", "a", "avons", "ont"),
    "buy": ("achète", "achètes", "achète", "achetons", "achètent"),
    "want": ("veux", "veux", "veut", "voulons", "veulent"), "read": ("lis", "lis", "lit", "lisons", "lisent"),
    "eat": ("mange", "manges", "mange", "mangeons", "mangent"),
    "drink": ("bois", "bois", "boit", "buvons", "boivent"), "be": ("suis", "es", "est", "sommes", "sont"),
    "think": ("crois", "crois", "croit", "croyons", "croient"), "know": ("sais", "sais", "sait", "savons", "savent"),
}
PERSON_INDEX = {"1sg": 0, "2sg": 1, "3sg": 2, "1pl": 3, "3pl": 4}
PRONOUNS = {"1sg": "je", "2sg": "tu", "1pl": "nous"}
INVERTED_BE = {"1sg": "suis-je", "2sg": "es-tu", "1pl": "sommes-nous"}
NUMBERS = ("zéro", "une", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze", "douze")
PLACES = {"garden": "dans le jardin", "kitchen": "dans la cuisine", "park": "dans le parc",
          "home": "à la maison", "school": "à l'école", "city": "en ville"}
TIMES = {"today": "aujourd'hui", "morning": "le matin", "evening": "le soir", "daily": "chaque jour"}
ELIDING = {"je", "ne", "le", "la", "de", "que"}
MUTE_H = {"homme", "hommes", "heure", "heures"}
VOWELS = "aeiouyéèêëàâîïôûœæ"


def time_phrase(time: str) -> str:
    hour = int(time[1:]) if time.startswith("h") else 0
    if hour:
        return f"à {NUMBERS[hour]} heure" + ("s" if hour > 1 else "")
    return TIMES[time]


def pronoun(np_: NounPhrase) -> str:
    if np_.person in ("3sg", "3pl"):
        return ("il" if np_.gender == "m" else "elle") + ("s" if np_.person == "3pl" else "")
    return PRONOUNS[np_.person]


def gender_of(np_: NounPhrase) -> str:
    return np_.gender if np_.is_pronoun else NOUNS[np_.noun][0]


def adjective(adj: str, gender: str, plural: bool, before_vowel: bool = False) -> str:
    forms, _ = ADJS[adj]
    if gender == "m" and not plural and before_vowel:
        return forms[4]
    return forms[(gender == "f") + 2 * plural]


def starts_with_vowel(word: str) -> bool:
    return word[:1].lower() in VOWELS or word.lower() in MUTE_H


def noun_phrase(np_: NounPhrase, negated: bool = False) -> list[str]:
    """Determiner + noun + adjective in its place; ``negated`` makes an indefinite "de" (pas de)."""
    if np_.is_pronoun:
        return [pronoun(np_)]
    gender, singular, plural = NOUNS[np_.noun]
    noun = plural if np_.plural else singular
    words = [noun]
    if np_.adj:
        before = ADJS[np_.adj][1]
        form = adjective(np_.adj, gender, np_.plural, before_vowel=before and starts_with_vowel(noun))
        words = [form, noun] if before else [noun, form]
    if np_.det == "def":
        det = "les" if np_.plural else ("le" if gender == "m" else "la")
    elif np_.det == "indef":
        det = "de" if negated else ("un" if gender == "m" else "une")
    else:
        det = NUMBERS[np_.count] if np_.count != 1 else "un"
    return [det, *words]


def finite(c: Clause) -> str:
    return VERBS[c.verb or "be"][PERSON_INDEX[c.subj.person]]


def clause_words(c: Clause, with_time: bool = True) -> list[str]:
    """Subject [ne] verb [pas] object/predicate place time."""
    words = [*noun_phrase(c.subj), *(["ne"] if c.neg else []), finite(c), *(["pas"] if c.neg else [])]
    if c.kind == "attr":
        return [*words, adjective(c.pred_adj, gender_of(c.subj), c.subj.plural)]
    if c.obj is not None:
        words += noun_phrase(c.obj, negated=c.neg and c.obj.det == "indef")
    if c.place:
        words.append(PLACES[c.place])
    if c.time and with_time:
        words.append(time_phrase(c.time))
    return words


def join(words: list[str]) -> str:
    """Join words, eliding je/ne/le/la/de/que before a vowel or mute h (l'homme, n'ai, qu'il)."""
    out: list[str] = []
    for word in words:
        if out and out[-1].lower() in ELIDING and starts_with_vowel(word):
            out[-1] = out[-1][:-1] + "'" + word
        else:
            out.append(word)
    return " ".join(out)


def sentence_words(frame: Frame) -> list[str]:
    c = frame.clause
    if frame.mood == "where" and c.kind == "loc":
        subj = c.subj
        if subj.is_pronoun:
            be = finite(c)
            inverted = INVERTED_BE.get(subj.person) or f"{be}-{pronoun(subj)}"
            return ["où", inverted]
        return ["où", finite(c), *noun_phrase(subj)]
    if frame.mood != "decl":
        wh = {"yn": [], "where": ["où"], "what": ["qu'est-ce"], "when": ["quand"]}[frame.mood]
        lead = [*wh, "est-ce"] if frame.mood != "what" else wh
        return [*lead, "que", *clause_words(c)]
    if frame.matrix_subj is not None:
        m = frame.matrix_subj
        return [pronoun(m), VERBS[frame.matrix_verb][PERSON_INDEX[m.person]], "que", *clause_words(c)]
    if frame.front_time:
        return [time_phrase(c.time) + ",", *clause_words(c, with_time=False)]
    return clause_words(c)


def realize(frame: Frame) -> str:
    """The French sentence for ``frame``, capitalised and punctuated."""
    text = join(sentence_words(frame))
    return text[:1].upper() + text[1:] + ("." if frame.mood == "decl" else " ?")
