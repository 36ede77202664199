"""Web alt-text-like captions for pool images.

Captions follow the ICML 2025 DomainNet-caption recipe (its six templates, a term drawn
uniformly from two generic and two domain-specific words, the final period dropped half of the
time) plus a few alt-text-style templates, with correct articles. A share of captions is noisy:
the class name is missing or filler words are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

GENERIC_TERMS = ("image", "picture")

#: domain -> its two domain-specific caption terms.
DOMAIN_TERMS: dict[str, tuple[str, str]] = {
    "clipart": ("clipart", "illustration"),
    "infograph": ("infograph", "informational chart"),
    "painting": ("painting", "art"),
    "quickdraw": ("quickdraw", "doodle"),
    "real": ("photo", "snapshot"),
    "sketch": ("sketch", "drawing"),
    "drawing-photo": ("photo of a drawing", "drawing"),
    "stylised-photo": ("stylised photo", "filtered photo"),
}

#: The article before a term (``{AAN}``), as in the ICML 2025 table: "art" takes none.
TERM_ARTICLES = {"image": "an ", "illustration": "an ", "infograph": "an ", "informational chart": "an ", "art": ""}

ICML_TEMPLATES = (
    "{AAN}{TERM} of {ACLS}.",
    "{ACLS} {TERM}.",
    "{AAN}{TERM} depicting {ACLS}.",
    "{ACLS} depicted in {AAN}{TERM}.",
    "{AAN}{TERM} showing {ACLS}.",
    "{ACLS} is visible in {AAN}{TERM}.",
)
ALT_TEXT_TEMPLATES = (
    "{CLS} {TERM}",
    "{CLS} {TERM}, free download",
    "cute little {CLS} {TERM}",
    "my {CLS} {TERM}",
    "{CLS} - stock {TERM}",
)
TEMPLATES = ICML_TEMPLATES + ALT_TEXT_TEMPLATES

#: Words of noisy captions: none is a class name or a caption term.
FILLERS = ("high quality", "hd", "best", "new", "vintage", "2024", "wallpaper", "royalty free", "set of 3",
           "click to enlarge", "buy online", "sale")
VAGUE = ("something", "this thing", "my stuff", "untitled", "the weekend")
#: Probability that a caption's final period is dropped (as in the ICML 2025 recipe).
DROP_PERIOD = 0.5


@dataclass(frozen=True)
class Caption:
    """A caption and what it names: ``names_class`` (the class name appears as a word) and
    ``names_domain`` (one of the domain's own terms appears, not just "image"/"picture")."""

    text: str
    names_class: bool
    names_domain: bool


def article(word: str) -> str:
    """The indefinite article for ``word``, with its space: 'an ' before a vowel, else 'a '."""
    return "an " if word[:1] in "aeiou" else "a "


def _fill(template: str, cls: str, acls: str, term: str) -> str:
    return template.format(CLS=cls, ACLS=acls, TERM=term, AAN=TERM_ARTICLES.get(term, "a "))


def _without_class(rng: np.random.Generator, template: str, class_name: str, term: str) -> tuple[str, bool]:
    vague = VAGUE[int(rng.integers(len(VAGUE)))]
    return _fill(template, vague, vague, term), False


def _with_filler(rng: np.random.Generator, template: str, class_name: str, term: str) -> tuple[str, bool]:
    words = [FILLERS[int(k)] for k in rng.choice(len(FILLERS), size=int(rng.integers(1, 4)), replace=False)]
    text = _fill(template, class_name, article(class_name) + class_name, term)
    cut = int(rng.integers(len(words) + 1))
    return " ".join(words[:cut] + [text] + words[cut:]), True


#: noise kind -> (rng, template, class name, term) -> (caption, names the class).
NOISE: dict[str, Callable[[np.random.Generator, str, str, str], tuple[str, bool]]] = {
    "no_class": _without_class,
    "filler": _with_filler,
}


def make_caption(rng: np.random.Generator, class_name: str, domain: str, *, noisy_share: float = 0.1,
                 drop_period: float = DROP_PERIOD) -> Caption:
    """A caption for an image of ``class_name`` in ``domain``.

    The term is uniform over ``GENERIC_TERMS + DOMAIN_TERMS[domain]`` (so half of the captions
    name the domain); with probability ``noisy_share`` a :data:`NOISE` kind is applied; a final
    period is dropped with probability ``drop_period``.
    """
    terms = GENERIC_TERMS + DOMAIN_TERMS[domain]
    term = terms[int(rng.integers(len(terms)))]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if rng.random() < noisy_share:
        kind = tuple(NOISE)[int(rng.integers(len(NOISE)))]
        text, names_class = NOISE[kind](rng, template, class_name, term)
    else:
        text, names_class = _fill(template, class_name, article(class_name) + class_name, term), True
    if text.endswith(".") and rng.random() < drop_period:
        text = text[:-1]
    return Caption(text, names_class, term in DOMAIN_TERMS[domain])

