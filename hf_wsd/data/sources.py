"""Corpus sources of any size as ``datasets`` objects: embedded corpora, lists of strings, local text / JSONL /
parquet files, folders and globs (many shards), and ``datasets`` names — map-style (memory-mapped Arrow) or
streamed (``IterableDataset``, one shard per file)."""

from __future__ import annotations

import glob as globlib
import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from .corpora import EMBEDDED_CORPORA, load_corpus, text_file_documents
from .tokenizer import cache_root

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class CorpusSource:
    """A corpus as a ``datasets`` object with a text column, a fingerprint that changes with its content, and
    a description of where it came from."""

    name: str
    dataset: "Dataset | IterableDataset"
    text_column: str
    fingerprint: str
    source: str
    streaming: bool


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("json", JSON_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def is_glob(corpus: str) -> bool:
    return any(c in corpus for c in "*?[")


def resolve_local_files(corpus: str) -> tuple[str, list[Path]]:
    """``(kind, files)`` of a local file, folder or glob: kind ``"json"``, ``"parquet"``, ``"text"`` (one document
    per file) or ``"paragraphs"`` (one single text file: one document per paragraph); files sorted."""
    if is_glob(corpus):
        files = sorted(
            Path(p) for p in globlib.glob(str(Path(corpus).expanduser()), recursive=True) if Path(p).is_file()
        )
        if not files:
            raise ValueError(f"`corpus` glob {corpus!r} matches no file; check the pattern (quote it in a shell).")
    else:
        path = Path(corpus).expanduser().resolve()
        if path.is_file():
            kind = _kind(path)
            return ("paragraphs" if kind in (None, "text") else kind), [path]
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
        if not files:
            raise ValueError(f"`corpus` folder {path} holds no .txt, .md, .jsonl, .json or .parquet file.")
    kinds = {_kind(p) for p in files} - {None}
    if not kinds:
        raise ValueError(f"`corpus` {corpus!r} matches {len(files)} file(s) but none is .txt, .md, .jsonl or .parquet.")
    if len(kinds) > 1:
        raise ValueError(
            f"`corpus` {corpus!r} mixes file kinds {sorted(kinds)}; point it at one kind (e.g. a '*.parquet' glob)."
        )
    kind = kinds.pop()
    return kind, [p.resolve() for p in files if _kind(p) == kind]


def _local_name(corpus: str) -> str:
    """A short name for a local corpus: the file's stem, the folder's name, or the glob's fixed folder."""
    path = Path(corpus).expanduser()
    while is_glob(str(path)) and path != path.parent:
        path = path.parent
    return path.resolve().stem or "corpus"


def files_fingerprint(files: Sequence[Path], *extra: str) -> str:
    """SHA-256 over each file's path, size, modification time (as ``datasets`` does for local data files) and a
    sampled content digest (three 64 KiB windows: an edit that keeps the size and mtime is seen when it touches one;
    :func:`~hf_wsd.data.fingerprint.sampled_digest`)."""
    from .fingerprint import sampled_digest

    stamps = [(str(p), p.stat().st_size, p.stat().st_mtime_ns, sampled_digest(p)) for p in files]
    return hashlib.sha256(json.dumps([stamps, *extra]).encode()).hexdigest()


def check_parquet_shards(files: Sequence[Path]) -> list[Path]:
    """Parquet shards with their footers read (cheap: metadata only) before any compute: an unreadable one is a
    ``ValueError`` naming it; an empty one (0 rows) is dropped with a warning (``datasets`` fails on it)."""
    import pyarrow.parquet as pq

    kept = []
    for path in files:
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as error:  # noqa: BLE001 - pyarrow raises several kinds; re-raised naming the file
            raise ValueError(f"corpus shard {path} is not a readable parquet file ({type(error).__name__}: {error}); "
                             "replace it or remove it from the corpus.") from error
        if rows == 0:
            logger.warning("corpus shard %s holds no rows: skipped", path)
            continue
        kept.append(path)
    if not kept:
        raise ValueError(f"every parquet shard of the corpus is empty ({', '.join(str(p) for p in files[:3])}, …).")
    return kept


def raise_unreadable_parquet(files: Sequence[str], error: BaseException) -> None:
    """Name the shard whose pages cannot be read (each read in full, one after the other), or re-raise ``error``."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            pq.read_table(path)
        except Exception as bad:  # noqa: BLE001
            raise ValueError(f"corpus shard {path} cannot be read ({type(bad).__name__}: {bad}); replace it or remove "
                             "it from the corpus.") from error
    raise error


def documents_fingerprint(documents: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for document in documents:
        digest.update(hashlib.sha256(document.encode("utf-8")).digest())
    return digest.hexdigest()


def _text_file_generator(files: list[str], stamps: list[str], sample_by: str) -> Iterator[dict]:
    """Generator of ``{"text": document}`` over text files (``stamps`` only key the ``datasets`` cache)."""
    for path in files:
        for document in text_file_documents(path, sample_by):
            yield {"text": document}


def _from_documents(documents: list[str], streaming: bool) -> "Dataset | IterableDataset":
    from datasets import Dataset

    dataset = Dataset.from_dict({"text": documents})
    return dataset.to_iterable_dataset(num_shards=min(len(documents), 8)) if streaming else dataset


def _check_text_column(dataset, text_column: str, corpus: str) -> None:
    columns = dataset.column_names
    if columns is None:  # a streamed JSON source: look at its first record
        first = next(iter(dataset), None)
        columns = [] if first is None else list(first)
    if text_column not in columns:
        raise ValueError(f"corpus {corpus!r} has no column {text_column!r} (`text_column`); it has {columns}.")


def open_corpus(
    corpus: "str | Sequence[str]" = "kjv",
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
    streaming: bool = False,
    cache_dir: str | Path | None = None,
) -> CorpusSource:
    """Open ``corpus`` as a ``datasets.Dataset`` (memory-mapped Arrow) or, with ``streaming``, an ``IterableDataset``.

    ``corpus``: ``"kjv"``, ``"shakespeare"``, a list of strings, a local ``.txt``/``.md`` folder (one document per
    file), a single text file (one per paragraph), ``.jsonl``/``.json``/``.parquet`` files, folders or globs (one
    record per document, field ``text_column``; one shard per file), or a ``datasets`` name
    (``load_dataset(corpus, dataset_config, split=dataset_split, streaming=streaming)``).
    Local files are converted to Arrow under ``{cache_dir}/datasets`` (map-style only).
    """
    from datasets import Dataset, Features, IterableDataset, Value, load_dataset

    datasets_cache = str(cache_root(cache_dir) / "datasets")
    if not isinstance(corpus, str) or corpus in EMBEDDED_CORPORA:
        loaded = load_corpus(corpus, text_column=text_column)
        dataset = _from_documents(loaded.documents, streaming)
        return CorpusSource(
            loaded.name, dataset, "text", documents_fingerprint(loaded.documents), loaded.source, streaming
        )
    if is_glob(corpus) or Path(corpus).expanduser().exists():
        kind, files = resolve_local_files(corpus)
        fingerprint = files_fingerprint(files, kind, text_column)
        name = _local_name(corpus)
        where = f"{len(files)} local {kind} file(s) ({files[0].parent if len(files) > 1 else files[0]})"
        if kind in ("text", "paragraphs"):
            gen_kwargs = {
                "files": [str(p) for p in files],
                "stamps": [files_fingerprint([p]) for p in files],
                "sample_by": "document" if kind == "text" else "paragraph",
            }
            features = Features({"text": Value("string")})
            if streaming:
                dataset = IterableDataset.from_generator(_text_file_generator, features=features, gen_kwargs=gen_kwargs)
            else:
                dataset = Dataset.from_generator(
                    _text_file_generator, features=features, gen_kwargs=gen_kwargs, cache_dir=datasets_cache
                )
            return CorpusSource(name, dataset, "text", fingerprint, where, streaming)
        data_files = [str(p) for p in (check_parquet_shards(files) if kind == "parquet" else files)]
        try:
            dataset = load_dataset(
                kind,
                data_files=data_files,
                split="train",
                streaming=streaming,
                **({} if streaming else {"cache_dir": datasets_cache}),
            )
        except Exception as error:
            if kind == "parquet":  # datasets does not say which file: find it (only on this failure path)
                raise_unreadable_parquet(data_files, error)
            raise
        _check_text_column(dataset, text_column, corpus)
        return CorpusSource(name, dataset, text_column, fingerprint, where, streaming)
    try:
        dataset = load_dataset(corpus, dataset_config, split=dataset_split, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - re-raised with the field named
        raise ValueError(
            f"`corpus`={corpus!r} is neither {', '.join(EMBEDDED_CORPORA)}, a local path or glob, a token folder, nor "
            f"a loadable `datasets` name ({type(error).__name__}: {error})."
        ) from error
    _check_text_column(dataset, text_column, corpus)
    if streaming:
        fingerprint = hashlib.sha256(
            json.dumps([corpus, dataset_config, dataset_split, text_column]).encode()
        ).hexdigest()
    else:
        fingerprint = hashlib.sha256(f"{dataset._fingerprint}\0{text_column}".encode()).hexdigest()
    source = f"datasets: {corpus}" + (f" ({dataset_config})" if dataset_config else "") + f", split {dataset_split}"
    try:
        source += f" (datasets {importlib.metadata.version('datasets')})"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        pass
    return CorpusSource(corpus.replace("/", "--"), dataset, text_column, fingerprint, source, streaming)
