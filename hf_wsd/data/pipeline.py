"""One preparation pass, shared by the prepared Arrow cache and the token folder: the side documents (held-out
texts and a bounded training sample) and the training token stream, tokenized in parallel, in corpus order."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .packing import tokenize_training_batch
from .split import is_heldout
from .tokenizer import token_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .sources import CorpusSource

logger = logging.getLogger(__name__)

MAP_BATCH = 1000  # documents per tokenize call of the map-style pass
PIECE_TOKENS = 1 << 22  # the streamed pass hands tokens on in pieces of about this many


@dataclass
class SideDocuments:
    """Held-out documents (the first ``max_heldout_documents`` in corpus order) and a training sample (the first
    training documents up to ``max_train_sample_chars`` characters); ``train_sample_complete`` when the sample
    holds every training document."""

    heldout: list[str]
    train_sample: list[str]
    train_sample_complete: bool
    heldout_seen: int


def _text_batches(source: "CorpusSource", batch_size: int = MAP_BATCH) -> Iterator[list[str]]:
    column = source.text_column
    for batch in source.dataset.select_columns([column]).iter(batch_size=batch_size):
        yield batch[column]


def collect_side_documents(
    source: "CorpusSource", heldout_fraction: float, seed: int, max_heldout_documents: int, max_train_sample_chars: int
) -> SideDocuments:
    """Read ``source`` from the start until both bounds are met (or it ends); nothing is tokenized.

    Held-out documents past ``max_heldout_documents`` are not kept — and, held out by their hash, never trained on.
    """
    heldout: list[str] = []
    sample: list[str] = []
    chars, seen, complete = 0, 0, True
    for texts in _text_batches(source):
        for text in texts:
            text = text.strip() if text else ""
            if not text:
                continue
            if is_heldout(text, heldout_fraction, seed):
                seen += 1
                if len(heldout) < max_heldout_documents:
                    heldout.append(text)
            elif chars + len(text) <= max_train_sample_chars and complete:
                sample.append(text)
                chars += len(text)
            else:
                complete = False
        if not complete and len(heldout) >= max_heldout_documents:
            break
    return SideDocuments(heldout, sample, complete, seen)


@dataclass
class PassStats:
    """What the training pass read: documents, tokens, the largest id, seconds."""

    documents: int = 0
    tokens: int = 0
    max_token_id: int = -1
    seconds: float = 0.0


def training_token_pieces(
    source: "CorpusSource",
    tokenizer: "PreTrainedTokenizerBase",
    heldout_fraction: float,
    seed: int,
    workdir: Path,
    stats: PassStats,
    num_proc: int | None = None,
) -> Iterator[np.ndarray]:
    """The training token stream (each document's ids + EOS, held-out and empty documents dropped) in pieces.

    Map-style sources are tokenized with ``Dataset.map(batched=True, num_proc=num_proc)`` into Arrow files under
    ``workdir`` (memory-mapped, deleted by the caller with ``workdir``), then read in order; streamed sources are
    tokenized batch by batch in this process. ``stats`` is filled in as the pieces go.
    """
    from datasets import Features, IterableDataset, List, Value

    started = time.perf_counter()
    num_proc = num_proc if num_proc and num_proc > 1 else None  # datasets starts a worker pool even for 1
    dtype = token_dtype(len(tokenizer))
    fn_kwargs = {
        "tokenizer": tokenizer,
        "text_column": source.text_column,
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "dtype": dtype,
    }
    texts = source.dataset.select_columns([source.text_column])
    if isinstance(texts, IterableDataset):
        from tqdm.auto import tqdm

        tokenized = texts.map(
            tokenize_training_batch,
            batched=True,
            batch_size=MAP_BATCH,
            remove_columns=[source.text_column],
            fn_kwargs=fn_kwargs,
        )
        buffer, held = [], 0
        with tqdm(desc="Tokenizing (streamed)", unit=" tok", unit_scale=True) as progress:
            for example in tokenized:
                ids = example["input_ids"]
                buffer.append(ids)
                held += len(ids)
                stats.documents += 1
                if held >= PIECE_TOKENS:
                    progress.update(held)
                    yield _account(np.concatenate(buffer), stats)
                    buffer, held = [], 0
            progress.update(held)
        if buffer:
            yield _account(np.concatenate(buffer), stats)
    else:
        features = Features({"input_ids": List(Value(dtype))})
        tokenized = texts.map(
            tokenize_training_batch,
            batched=True,
            batch_size=MAP_BATCH,
            num_proc=num_proc,
            remove_columns=[source.text_column],
            features=features,
            fn_kwargs=fn_kwargs,
            cache_file_name=str(workdir / "tokenized.arrow"),
            desc="Tokenizing",
        )
        stats.documents = len(tokenized)
        files = [f["filename"] for f in tokenized.cache_files]
        del tokenized
        for path in files:
            yield from (_account(piece, stats) for piece in _read_token_lists(path))
    stats.seconds = time.perf_counter() - started


def _account(piece: np.ndarray, stats: PassStats) -> np.ndarray:
    stats.tokens += len(piece)
    if len(piece):
        stats.max_token_id = max(stats.max_token_id, int(piece.max()))
    return piece


def _read_token_lists(path: str) -> Iterator[np.ndarray]:
    """The flattened ``input_ids`` of each record batch of a ``datasets`` Arrow file, read with plain file reads:
    a memory map would keep every page read resident (and counted in RSS) until unmapped."""
    import pyarrow as pa

    with pa.OSFile(path) as handle:
        for batch in pa.ipc.open_stream(handle):
            yield batch.column("input_ids").flatten().to_numpy(zero_copy_only=False)
