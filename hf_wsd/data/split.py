"""The held-out split by hash: a document is held out when a seeded hash of its text falls below the fraction.

A document's side depends on its own text and the seed only, never on the corpus size, order, sharding or rank,
so the split is decided in one streaming pass without materialising the corpus, adding documents never moves
existing ones across it, and exact duplicates always land on the same side (no duplicate leaks into training).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

_SCALE = float(1 << 64)


def check_heldout_fraction(heldout_fraction: float) -> float:
    """``heldout_fraction`` itself, or a ``ValueError`` unless it lies in (0, 1)."""
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)):
        raise ValueError(f"`heldout_fraction` must be a number in (0, 1); got {heldout_fraction!r}.")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"`heldout_fraction` must be in (0, 1); got {heldout_fraction}.")
    return float(heldout_fraction)


def heldout_score(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from ``key`` (a document's text or id) and ``seed`` (BLAKE2b, 64 bits)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=str(seed).encode()[:16].ljust(16, b"\0"))
    return int.from_bytes(digest.digest(), "little") / _SCALE


def is_heldout(key: str, heldout_fraction: float, seed: int = 0) -> bool:
    """Whether the document with text (or id) ``key`` is held out."""
    return heldout_score(key, seed) < heldout_fraction


def split_documents(
    documents: Sequence[str], heldout_fraction: float = 0.05, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices of training and held-out ``documents`` (texts, stripped), both in corpus order.

    About ``heldout_fraction`` of the documents are held out, chosen by :func:`is_heldout`: the same text and
    seed give the same side on any machine, whatever else the corpus holds.
    """
    if isinstance(documents, int):
        raise ValueError(
            f"`documents` must be the document texts (the split is by a hash of each text); got the count "
            f"{documents}: pass the documents, e.g. `split_documents(corpus.documents, ...)`."
        )
    check_heldout_fraction(heldout_fraction)
    train, heldout = [], []
    for index, document in enumerate(documents):
        (heldout if is_heldout(document, heldout_fraction, seed) else train).append(index)
    if not heldout:
        raise ValueError(
            f"`heldout_fraction`={heldout_fraction} holds out none of {len(documents)} documents (the split is by "
            "a hash of each text); raise it or add documents."
        )
    if not train:
        raise ValueError(
            f"`heldout_fraction`={heldout_fraction} holds out all {len(documents)} documents; lower it or add "
            "documents."
        )
    return train, heldout
