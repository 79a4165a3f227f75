"""Spanish realisation of mini-corpus frames.

Subject pronouns yo/tú/nosotros dropped, él/ella/ellos/ellas kept; negation "no" before the
verb ("ningún/ninguna" for an indefinite object); adjectives after the noun agreeing in
gender and number; "ser" for qualities and "estar" for location; questions inside "¿...?",
verb before the subject after "dónde/qué/cuándo".

Example:
    >>> from speechllm_cli.data.mini_corpus.frames import Clause, Frame, NounPhrase
    >>> realize(Frame(Clause("attr", NounPhrase("key", person="3pl", det="def"), pred_adj="small")))
    'Las llaves son pequeñas.'
"""

from __future__ import annotations

from speechllm_cli.data.mini_corpus.frames import Clause, Frame, NounPhrase

NOUNS = {  # gender, singular, plural
    "man": ("m", "hombre", "hombres"), "woman": ("f", "mujer", "mujeres"),
    "teacher": ("m", "profesor", "profesores"), "child": ("m", "niño", "niños"), "boy": ("m", "chico", "chicos"),
    "girl": ("f", "niña", "niñas"), "dog": ("m", "perro", "perros"), "cat": ("m", "gato", "gatos"),
    "horse": ("m", "caballo", "caballos"), "bird": ("m", "pájaro", "pájaros"), "book": ("m", "libro", "libros"),
    "letter": ("f", "carta", "cartas"), "newspaper": ("m", "periódico", "periódicos"),
    "apple": ("f", "manzana", "manzanas"), "cake": ("m", "pastel", "pasteles"), "egg": ("m", "huevo", "huevos"),
    "coffee": ("m", "café", "cafés"), "tea": ("m", "té", "tés"), "car": ("m", "coche", "coches"),
    "key": ("f", "llave", "llaves"), "bag": ("m", "bolso", "bolsos"),
}
ADJS = {  # masc. sg, fem. sg, masc. pl, fem. pl
    "big": ("grande", "grande", "grandes", "grandes"), "small": ("pequeño", "pequeña", "pequeños", "pequeñas"),
    "old": ("viejo", "vieja", "viejos", "viejas"), "black": ("negro", "negra", "negros", "negras"),
    "white": ("blanco", "blanca", "blancos", "blancas"), "red": ("rojo", "roja", "rojos", "rojas"),
}
VERBS = {  # yo, tú, él/ella, nosotros, ellos/ellas
    "sleep": ("duermo", "duermes", "duerme", "dormimos", "duermen"),
    "run": ("corro", "corres", "corre", "corremos", "corren"),
    "sing": ("canto", "cantas", "canta", "cantamos", "cantan"),
    "work": ("trabajo", "trabajas", "trabaja", "trabajamos", "trabajan"),
    "play": ("juego", "juegas", "juega", "jugamos", "juegan"),
    "wait": ("espero", "esperas", "espera", "esperamos", "esperan"), "see": ("veo", "ves", "ve", "vemos", "ven"),
    "have": ("tengo", "tienes", "tiene", "tenemos", "tienen"),
    "buy": ("compro", "compras", "compra", "compramos", "compran"),
    "want": ("quiero", "quieres", "quiere", "queremos", "quieren"), "read": ("leo", "lees", "lee", "leemos", "leen"),
    "eat": ("como", "comes", "come", "comemos", "comen"), "drink": ("bebo", "bebes", "bebe", "bebemos", "beben"),
    "ser": ("soy", "eres", "es", "somos", "son"), "estar": ("estoy", "estás", "está", "estamos", "están"),
    "think": ("creo", "crees", "cree", "creemos", "creen"), "know": ("sé", "sabes", "sabe", "sabemos", "saben"),
}
PERSON_INDEX = {"1sg": 0, "2sg": 1, "3sg": 2, "1pl": 3, "3pl": 4}
NUMBERS = ("cero", "una", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "once", "doce")
PLACES = {"garden": "en el jardín", "kitchen": "en la cocina", "park": "en el parque", "home": "en casa",
          "school": "en la escuela", "city": "en la ciudad"}
TIMES = {"today": "hoy", "morning": "por la mañana", "evening": "por la tarde", "daily": "todos los días"}


def time_phrase(time: str) -> str:
    hour = int(time[1:]) if time.startswith("h") else 0
    if hour:
        return f"a la {NUMBERS[hour]}" if hour == 1 else f"a las {NUMBERS[hour]}"
    return TIMES[time]


def pronoun(np_: NounPhrase) -> list[str]:
    """Explicit third-person pronoun; first and second person are dropped (the verb shows them)."""
    if np_.person == "3sg":
        return ["él" if np_.gender == "m" else "ella"]
    if np_.person == "3pl":
        return ["ellos" if np_.gender == "m" else "ellas"]
    return []


def gender_of(np_: NounPhrase) -> str:
    return np_.gender if np_.is_pronoun else NOUNS[np_.noun][0]


def adjective(adj: str, gender: str, plural: bool) -> str:
    return ADJS[adj][(gender == "f") + 2 * plural]


def noun_phrase(np_: NounPhrase, negated: bool = False) -> list[str]:
    """Determiner + noun + adjective; ``negated`` turns un/una into ningún/ninguna."""
    if np_.is_pronoun:
        return pronoun(np_)
    gender, singular, plural = NOUNS[np_.noun]
    words = [plural if np_.plural else singular]
    if np_.adj:
        words.append(adjective(np_.adj, gender, np_.plural))
    fem = gender == "f"
    if np_.det == "def":
        det = ("las" if fem else "los") if np_.plural else ("la" if fem else "el")
    elif np_.det == "indef":
        det = ("ninguna" if fem else "ningún") if negated else ("una" if fem else "un")
    else:
        det = NUMBERS[np_.count] if np_.count != 1 else "un"
    return [det, *words]


def finite(c: Clause) -> str:
    verb = c.verb or ("ser" if c.kind == "attr" else "estar")
    return VERBS[verb][PERSON_INDEX[c.subj.person]]


def predicate(c: Clause, with_time: bool = True) -> list[str]:
    """What follows the verb: object or adjective, place, time."""
    if c.kind == "attr":
        return [adjective(c.pred_adj, gender_of(c.subj), c.subj.plural)]
    words = noun_phrase(c.obj, negated=c.neg and c.obj.det == "indef") if c.obj is not None else []
    if c.place:
        words.append(PLACES[c.place])
    if c.time and with_time:
        words.append(time_phrase(c.time))
    return words


def clause_words(c: Clause, with_time: bool = True) -> list[str]:
    return [*noun_phrase(c.subj), *(["no"] if c.neg else []), finite(c), *predicate(c, with_time)]


def sentence_words(frame: Frame) -> list[str]:
    c = frame.clause
    if frame.mood in ("where", "what", "when"):
        wh = {"where": "dónde", "what": "qué", "when": "cuándo"}[frame.mood]
        return [wh, finite(c), *noun_phrase(c.subj), *predicate(c)]
    if frame.matrix_subj is not None:
        m = frame.matrix_subj
        return [*pronoun(m), VERBS[frame.matrix_verb][PERSON_INDEX[m.person]], "que", *clause_words(c)]
    if frame.front_time:
        return [time_phrase(c.time) + ",", *clause_words(c, with_time=False)]
    return clause_words(c)


def realize(frame: Frame) -> str:
    """The Spanish sentence for ``frame``, capitalised and punctuated."""
    text = " ".join(sentence_words(frame))
    text = text[:1].upper() + text[1:]
    return f"¿{text}?" if frame.mood != "decl" else text + "."
