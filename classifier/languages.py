"""Which languages a ticket export is written in, guessed from common words, for the data report.

The packaged encoder (all-MiniLM-L6-v2) learnt English: on German or French tickets it reads word pieces,
and a multilingual encoder does better. Training says so when a good share of the tickets is not English.
Function words tell the common European languages apart without a model: each list holds only words that no
other language uses as often ("la" is French, Spanish and Italian, so it is in none).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_WORDS = {  # none in two lists, nor a word of another language or of tech English ("os", "ai", ".com", "Mon")
    "en": "the and to my you it not with for this have please can of are we our your been would could",
    "de": "der die das und ist nicht ich mit für bitte ein eine wir sie auf mein meine kann dem zu ihr uns "
          "wurde habe haben auch noch mir sehr seit gestern hallo konto",
    "fr": "le les et est pas je vous une pour avec ne sur merci au nous votre été depuis hier compte bonjour aide",
    "es": "el los las y por para gracias pero está hola tengo puedo desde ayer cuenta ayuda necesito tiene muy "
          "cuando puede hay factura tarjeta",
    "it": "che è sono ho della grazie mio gli questo anche ciao posso riesco ieri aiuto buongiorno",
    "nl": "het een niet ik mijn voor van dat graag wij hebt heb bij ook sinds gisteren hulp",
    "pt": "não meu minha obrigado uma você estou tenho olá conta ontem ajuda",
}
_LANGUAGE_OF = {word: language for language, words in _WORDS.items() for word in words.split()}
_WORD = re.compile(r"[^\W\d_]+")
MIN_WORDS = 3  # common words a ticket needs before its language is guessed: "Refund please" is no evidence


def guess_language(text: str) -> str | None:
    """The ticket's language ("en", "de", "fr", "es", "it", "nl", "pt"), or None where its common words are
    too few or no language has twice the words of the next."""
    counts = Counter(language for word in _WORD.findall(text.lower()) if (language := _LANGUAGE_OF.get(word)))
    ranked = counts.most_common(2)
    if not ranked or ranked[0][1] < MIN_WORDS or (len(ranked) > 1 and ranked[0][1] < 2 * ranked[1][1]):
        return None
    return ranked[0][0]


def language_counts(texts: Iterable[str]) -> dict[str, int]:
    """Tickets per guessed language, most first; tickets whose language is not told are not counted."""
    return dict(Counter(language for text in texts if (language := guess_language(text))).most_common())


# The share of tickets in other languages than English over which training advises a multilingual encoder.
NOT_ENGLISH_SHARE = 0.2


def encoder_advice(counts: dict[str, int]) -> str | None:
    """A warning for training with the packaged English encoder where a good share of the tickets whose language
    is told (``counts``, :func:`language_counts`) is not English; else None."""
    told = sum(counts.values())
    others = {language: count for language, count in counts.items() if language != "en"}
    if not told or sum(others.values()) / told < NOT_ENGLISH_SHARE:
        return None
    named = ", ".join(f"{language} {count / told:.0%}" for language, count in others.items())
    return (f"warning: {sum(others.values()) / told:.0%} of the tickets look written in other languages than English "
            f"({named}), and the default encoder learnt English: a multilingual one reads them better; give it "
            "with --base-model (a local copy of paraphrase-multilingual-MiniLM-L12-v2 or xlm-roberta-base)")
