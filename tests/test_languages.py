"""Guessing an export's languages from common words, for the data report and the advice on the encoder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from classifier.data import prepare_data
from classifier.languages import _WORDS, encoder_advice, guess_language
from classifier.options import DataOptions


@pytest.mark.parametrize(("text", "language"), [
    ("I was charged twice for my subscription and would like a refund please", "en"),
    ("Ich kann mich seit gestern nicht mehr anmelden, bitte helfen Sie mir", "de"),
    ("Je ne peux pas me connecter à mon compte depuis hier, merci de votre aide", "fr"),
    ("No puedo iniciar sesión en mi cuenta desde ayer, gracias por la ayuda", "es"),
    ("La factura de este mes tiene un importe incorrecto, por favor revisen", "es"),  # a persona's short one
    ("Non riesco ad accedere al mio account da ieri, grazie per l'aiuto", "it"),
    ("Ik kan sinds gisteren niet inloggen op mijn account, graag hulp", "nl"),
    ("Não consigo entrar na minha conta desde ontem, obrigado pela ajuda", "pt"),
    ("Refund please", None),  # too few common words to tell
    ("Hallo, the app crashes und ich kann not log in to my account", None),  # no language twice the other
])
def test_a_tickets_language_is_told_by_its_common_words(text: str, language: str | None) -> None:
    assert guess_language(text) == language


def test_no_common_word_counts_for_two_languages() -> None:
    counts = Counter(word for words in _WORDS.values() for word in words.split())
    assert [word for word, count in counts.items() if count > 1] == []


def test_a_mostly_german_export_is_reported_and_the_english_encoder_advised_against(tmp_path: Path) -> None:
    german = [("login", f"Ich kann mich seit gestern nicht anmelden, Konto {i} bitte prüfen") for i in range(8)]
    english = [("billing", f"I was charged twice for my order {i}, please refund it") for i in range(6)]
    export = tmp_path / "tickets.csv"
    export.write_text("text,category\n" + "".join(f"\"{text}\",{label}\n" for label, text in german + english),
                      encoding="utf-8")
    report = prepare_data(export, DataOptions(validation_fraction=0.25)).report
    assert report.languages == {"de": 8, "en": 6}
    assert "languages, guessed from common words in 14 tickets: de 8 (57%), en 6 (43%)" in report.summary_lines()
    advice = encoder_advice(report.languages)
    assert advice is not None and advice.startswith("warning: 57% of the tickets look written in other languages "
                                                    "than English (de 57%)")
    assert encoder_advice({"en": 81, "de": 19}) is None and encoder_advice({}) is None
