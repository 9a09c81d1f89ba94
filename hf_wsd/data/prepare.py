"""The prepared Arrow cache: packed blocks written once per (corpus, tokenizer, block size, split) and memory-mapped
by every later run, resume and rank.

``{cache_dir}/prepared/{name}-{key[:16]}/``: ``train.arrow`` and ``heldout.arrow`` (``datasets`` Arrow files, one
``input_ids`` column of fixed-size uint16/uint32 lists, no ``labels``), ``heldout_documents.jsonl``,
``train_sample.jsonl`` and ``prepared.json`` (the key's inputs, counts, the largest token id, timings).
One process prepares under a file lock while the others wait; the folder is written under a temporary name and
renamed, so a reader never sees half of one and two independent launches never write into the same folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .packing import BlockCutter, pack_documents
from .pipeline import PassStats, SideDocuments, collect_side_documents, training_token_pieces
from .tokenizer import cache_root, lock_path, token_dtype, tokenizer_fingerprint

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from .sources import CorpusSource

logger = logging.getLogger(__name__)

PREPARED_FORMAT = "hf_wsd-prepared-v1"  # bump when the layout or the packing changes
INFO_FILE = "prepared.json"


@dataclass
class PreparedInfo:
    """``prepared.json``: what a prepared folder holds and how it was made."""

    format: str
    key: str
    corpus: str
    source: str
    block_size: int
    heldout_fraction: float
    seed: int
    dtype: str
    vocab_size: int
    eos_token_id: int
    max_token_id: int
    train_blocks: int
    train_documents: int
    heldout_blocks: int
    heldout_documents: int
    heldout_documents_seen: int
    train_sample_documents: int
    train_sample_complete: bool
    tokens_read: int
    seconds: float
    num_proc: int | None
    settings: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_read / self.seconds if self.seconds else 0.0


def prepared_key(source: "CorpusSource", tokenizer: "PreTrainedTokenizerBase", settings: dict) -> str:
    """Cache key: the corpus fingerprint, the tokenizer's definition and every setting that changes the blocks."""
    payload = {
        "format": PREPARED_FORMAT,
        "corpus": source.fingerprint,
        "text_column": source.text_column,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def block_arrow_writer(path: Path, block_size: int, dtype: str):
    from datasets.arrow_writer import ArrowWriter

    from .streaming import block_features

    return ArrowWriter(features=block_features(block_size, dtype), path=str(path))


def write_blocks(writer, blocks: np.ndarray) -> None:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(blocks).reshape(-1))
    writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(flat, blocks.shape[1])}))


def _write_train_blocks(pieces: Iterable[np.ndarray], path: Path, block_size: int, dtype: str) -> int:
    writer = block_arrow_writer(path, block_size, dtype)
    cutter, n_blocks = BlockCutter(block_size, dtype), 0
    for piece in pieces:
        blocks = cutter.feed(piece)
        if len(blocks):
            write_blocks(writer, blocks)
            n_blocks += len(blocks)
    writer.finalize()
    writer.close()
    return n_blocks


def write_documents(path: Path, documents: list[str]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps(document, ensure_ascii=False) + "\n")


def read_documents(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def heldout_blocks(side: SideDocuments, tokenizer, block_size: int, heldout_fraction: float) -> "Dataset":
    if not side.heldout:
        raise ValueError(
            f"`heldout_fraction`={heldout_fraction} holds out none of the corpus's documents (the split is by a hash "
            "of each text); raise it or add documents."
        )
    try:
        return pack_documents(side.heldout, tokenizer, block_size)
    except ValueError as error:
        raise ValueError(
            f"the {len(side.heldout)} held-out document(s) make no block of `block_size`={block_size}; raise "
            "`heldout_fraction` or lower `block_size`."
        ) from error


def publish_folder(workdir: Path, folder: Path) -> bool:
    """Rename the finished ``workdir`` to ``folder``; ``False`` (and ``workdir`` removed) when another process,
    one that did not see our lock, got there first: its folder holds the same data."""
    try:
        os.rename(workdir, folder)
        return True
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(workdir, ignore_errors=True)
        return False


def prepare_blocks(
    source: "CorpusSource",
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    heldout_fraction: float,
    seed: int,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
    max_heldout_documents: int = 2000,
    max_train_sample_chars: int = 8_000_000,
) -> tuple[Path, bool]:
    """The prepared folder for these settings, written now unless it exists: ``(folder, reused)``."""
    from filelock import FileLock

    settings = {
        "block_size": block_size,
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "max_heldout_documents": max_heldout_documents,
        "max_train_sample_chars": max_train_sample_chars,
    }
    key = prepared_key(source, tokenizer, settings)
    root = cache_root(cache_dir) / "prepared"
    folder = root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', source.name)}-{key[:16]}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(cache_dir, folder.name)):
        if (folder / INFO_FILE).is_file():
            return folder, True
        workdir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            info = _prepare_into(workdir, source, tokenizer, settings, key, num_proc)
            for scratch in workdir.glob("tokenized*.arrow"):
                scratch.unlink()
            (workdir / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
            publish_folder(workdir, folder)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    logger.info(
        "Prepared %s: %d training blocks of %d tokens from %s tokens in %.1f s (%.0f tokens/s, num_proc %s) at %s",
        source.name,
        info.train_blocks,
        block_size,
        f"{info.tokens_read:,}",
        info.seconds,
        info.tokens_per_second,
        num_proc or 1,
        folder,
    )
    return folder, False


def _prepare_into(workdir: Path, source, tokenizer, settings: dict, key: str, num_proc: int | None) -> PreparedInfo:
    started = time.perf_counter()
    block_size, fraction, seed = settings["block_size"], settings["heldout_fraction"], settings["seed"]
    dtype = token_dtype(len(tokenizer))
    side = collect_side_documents(
        source, fraction, seed, settings["max_heldout_documents"], settings["max_train_sample_chars"]
    )
    heldout = heldout_blocks(side, tokenizer, block_size, fraction)
    heldout_writer = block_arrow_writer(workdir / "heldout.arrow", block_size, dtype)
    write_blocks(heldout_writer, np.asarray(heldout.with_format("numpy")["input_ids"], dtype=dtype))
    heldout_writer.finalize()
    heldout_writer.close()
    write_documents(workdir / "heldout_documents.jsonl", side.heldout)
    write_documents(workdir / "train_sample.jsonl", side.train_sample)
    stats = PassStats()
    pieces = training_token_pieces(source, tokenizer, fraction, seed, workdir, stats, num_proc)
    n_blocks = _write_train_blocks(pieces, workdir / "train.arrow", block_size, dtype)
    if n_blocks == 0:
        raise ValueError(
            f"the training documents ({stats.tokens} tokens) make no block of `block_size`={block_size}; lower it "
            "or add documents."
        )
    return PreparedInfo(
        format=PREPARED_FORMAT,
        key=key,
        corpus=source.name,
        source=source.source,
        block_size=block_size,
        heldout_fraction=fraction,
        seed=seed,
        dtype=dtype,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        max_token_id=stats.max_token_id,
        train_blocks=n_blocks,
        train_documents=stats.documents,
        heldout_blocks=len(heldout),
        heldout_documents=len(side.heldout),
        heldout_documents_seen=side.heldout_seen,
        train_sample_documents=len(side.train_sample),
        train_sample_complete=side.train_sample_complete,
        tokens_read=stats.tokens,
        seconds=round(time.perf_counter() - started, 3),
        num_proc=num_proc,
        settings=settings,
    )


def read_prepared_info(folder: str | Path) -> PreparedInfo:
    """``prepared.json`` of a prepared folder."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a prepared dataset: it has no {INFO_FILE}.")
    record = json.loads(path.read_text())
    if record.get("format") != PREPARED_FORMAT:
        raise ValueError(f"{path} has format {record.get('format')!r}; this hf_wsd reads {PREPARED_FORMAT!r}.")
    return PreparedInfo(**record)


def load_prepared(folder: str | Path) -> tuple["Dataset", "Dataset", PreparedInfo]:
    """``(train, heldout, info)`` of a prepared folder: memory-mapped; ``train`` formatted as numpy (fast batched
    reads), ``heldout`` as Python lists."""
    from datasets import Dataset

    folder = Path(folder)
    info = read_prepared_info(folder)
    train = Dataset.from_file(str(folder / "train.arrow")).with_format("numpy")
    heldout = Dataset.from_file(str(folder / "heldout.arrow"))
    return train, heldout, info
