"""Instruction-style (SFT) data built offline: prompt/completion pairs from KJV verses, or rows of a local JSONL.

- ``"kjv-verses"``: for every pair of consecutive verses of a chapter, ``{"prompt": "Continue the verse: {v}\\n",
  "completion": "{next verse}"}``. Chapters are split with the pretraining corpus's hash split
  (:func:`~hf_wsd.data.split_documents` on the chapter text), so with the same ``heldout_fraction`` and seed the
  held-out pairs come from exactly the chapters the pretraining run held out: none of their text was trained on.
- a local ``.jsonl`` file: one object per line in any format TRL's ``SFTTrainer`` takes (``prompt`` /
  ``completion``, ``messages``, or a text field); rows are split by a hash of their content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .split import is_heldout, split_documents

if TYPE_CHECKING:
    from datasets import Dataset

KJV_VERSES = "kjv-verses"
VERSE_PROMPT = "Continue the verse: {verse}\n"


@dataclass
class InstructionData:
    """Training and held-out rows of an instruction dataset, as ``datasets.Dataset`` objects."""

    train: "Dataset"
    heldout: "Dataset"
    source: str

    def describe(self) -> str:
        return f"{self.source}: {len(self.train):,} training rows, {len(self.heldout):,} held out"


def verse_pairs(chapters: Sequence[Sequence[str]], template: str = VERSE_PROMPT) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` for each pair of consecutive verses within a chapter (``template`` holds
    ``{verse}``)."""
    return [
        {"prompt": template.format(verse=verse), "completion": following}
        for verses in chapters
        for verse, following in zip(verses, verses[1:])
    ]


def kjv_verse_split(
    heldout_fraction: float, seed: int, template: str = VERSE_PROMPT
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Verse pairs of the training chapters and of the held-out chapters (the pretraining corpus's split)."""
    from .corpora import kjv_chapter_verses

    chapters = kjv_chapter_verses()
    train, heldout = split_documents([" ".join(verses) for verses in chapters], heldout_fraction, seed)
    return verse_pairs([chapters[i] for i in train], template), verse_pairs([chapters[i] for i in heldout], template)


def read_jsonl_rows(path: str | Path) -> list[dict]:
    """The objects of a JSONL file, one per non-empty line; a line that is not an object is an error naming it."""
    path = Path(path).expanduser()
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON ({error}); `sft_data` must be a JSONL file.") from error
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} holds a {type(row).__name__}, not an object (`sft_data`).")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows (`sft_data`).")
    keys = set(rows[0])
    for number, row in enumerate(rows[1:], 2):
        if set(row) != keys:
            raise ValueError(
                f"{path}: row {number} has fields {sorted(row)}, the first row {sorted(keys)}; every row of `sft_data` "
                "needs the same fields."
            )
    return rows


def split_rows(rows: Sequence[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows by a seeded hash of each row's content (duplicates land on one side)."""
    train, heldout = [], []
    for row in rows:
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        (heldout if is_heldout(key, heldout_fraction, seed) else train).append(row)
    if not heldout or not train:
        side = "none" if not heldout else "all"
        raise ValueError(
            f"`heldout_fraction`={heldout_fraction} holds out {side} of the {len(rows)} rows of `sft_data`; change it "
            "or add rows."
        )
    return train, heldout


def load_instruction_data(
    source: str, heldout_fraction: float = 0.05, seed: int = 0, template: str = VERSE_PROMPT,
    max_train_rows: int | None = None, max_heldout_rows: int | None = None,
) -> InstructionData:
    """``source`` (``"kjv-verses"`` or a local JSONL path) → training and held-out datasets, each in source order
    and cut to ``max_*_rows`` (``None``: all)."""
    from datasets import Dataset

    if source == KJV_VERSES:
        train, heldout = kjv_verse_split(heldout_fraction, seed, template)
        description = f"KJV verse pairs ({template.strip()!r} → the next verse), chapters split as in pretraining"
    elif Path(source).expanduser().is_file():
        train, heldout = split_rows(read_jsonl_rows(source), heldout_fraction, seed)
        description = f"local JSONL {Path(source).expanduser().resolve()}"
    else:
        raise ValueError(f"`sft_data`={source!r} is neither {KJV_VERSES!r} nor a local JSONL file.")
    train = train if max_train_rows is None else train[:max_train_rows]
    heldout = heldout if max_heldout_rows is None else heldout[:max_heldout_rows]
    return InstructionData(Dataset.from_list(train), Dataset.from_list(heldout), description)
