"""``build_lm_datasets``: any corpus → tokenizer → training blocks (prepared Arrow cache, token folder or a stream)
+ bounded held-out blocks and documents: what a pretraining recipe needs, in one ``LMData``."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .collator import BlockCollator
from .packing import check_block_size
from .prepare import heldout_blocks, load_prepared, prepare_blocks, read_documents
from .split import check_heldout_fraction, is_heldout
from .token_folder import TokenFolder, is_token_folder
from .fingerprint import FINGERPRINT_ATTR, stream_fingerprint
from .tokenizer import load_tokenizer, train_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from .sources import CorpusSource

logger = logging.getLogger(__name__)

KINDS = ("prepared", "token_folder", "streaming")


@dataclass
class LMData:
    """What a pretraining recipe needs: training blocks, bounded held-out blocks and texts, the tokenizer.

    ``train``: map-style (``len`` + ``__getitems__``; a memory-mapped ``datasets.Dataset`` or
    :class:`~hf_wsd.data.token_folder.TokenBlocks`) or, for ``kind == "streaming"``, a resumable
    ``datasets.IterableDataset``; rows are ``{"input_ids": block_size compact ints}`` — collate with
    :attr:`collator`. ``heldout`` is always a small map-style ``datasets.Dataset``. ``heldout_documents`` feed
    the bundled benchmarks; ``train_sample`` (the first training documents, bounded; all of them when
    ``train_sample_complete``) lets them drop examples that occur in training.
    """

    train: Any
    heldout: "Dataset"
    tokenizer: "PreTrainedTokenizerBase"
    heldout_documents: list[str]
    train_sample: list[str]
    train_sample_complete: bool
    corpus: str
    source: str
    block_size: int
    kind: str
    max_token_id: int
    train_document_count: int | None = None
    cache_path: Path | None = None
    reused: bool = False
    seconds: float = 0.0
    collator: BlockCollator = field(default_factory=BlockCollator)

    @property
    def streaming(self) -> bool:
        return self.kind == "streaming"

    @property
    def train_documents(self) -> list[str]:
        """Deprecated name of :attr:`train_sample` (complete for small corpora; a bounded sample at scale)."""
        return self.train_sample

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def train_tokens(self) -> int | None:
        """Tokens in the training blocks; ``None`` for a stream (its length is unknown until read)."""
        return None if self.streaming else len(self.train) * self.block_size

    @property
    def heldout_tokens(self) -> int:
        return len(self.heldout) * self.block_size

    def describe(self) -> str:
        where = f"; {self.kind}" + (f" at {self.cache_path}" if self.cache_path else "")
        where += " (reused)" if self.reused else ""
        if self.streaming:
            train = f"a stream of {self.block_size}-token blocks"
        else:
            documents = f"{self.train_document_count:,} training documents → " if self.train_document_count else ""
            train = f"{documents}{len(self.train):,} blocks of {self.block_size} tokens ({self.train_tokens:,} tokens)"
        return (
            f"{self.corpus}: {train}; {len(self.heldout_documents):,} held-out documents → {len(self.heldout):,} "
            f"blocks; vocabulary {self.vocab_size}{where}; source: {self.source}"
        )


def tokenizer_sample(source: "CorpusSource", max_documents: int, heldout_fraction: float, seed: int) -> list[str]:
    """Training documents to train the tokenizer on: all of them, in order, when there are at most
    ``max_documents``; else a seeded uniform sample of that many documents (held-out ones dropped), in corpus
    order — or, for a stream, its first ``max_documents`` training documents."""
    from datasets import IterableDataset

    if isinstance(max_documents, bool) or not isinstance(max_documents, int) or max_documents < 1:
        raise ValueError(f"`max_tokenizer_documents` must be a positive integer; got {max_documents!r}.")
    dataset, column = source.dataset, source.text_column
    if not isinstance(dataset, IterableDataset) and len(dataset) > max_documents:
        rng = np.random.default_rng(seed)
        dataset = dataset.select(np.sort(rng.choice(len(dataset), max_documents, replace=False)))
    sample: list[str] = []
    for batch in dataset.select_columns([column]).iter(batch_size=1000):
        for text in batch[column]:
            text = text.strip() if text else ""
            if text and not is_heldout(text, heldout_fraction, seed):
                sample.append(text)
                if len(sample) >= max_documents:
                    return sample
    return sample


def build_lm_datasets(
    corpus: "str | Sequence[str]" = "kjv",
    tokenizer: "str | PreTrainedTokenizerBase | None" = None,
    vocab_size: int = 4096,
    block_size: int = 128,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
    *,
    streaming: bool = False,
    num_proc: int | None = None,
    max_tokenizer_documents: int = 100_000,
    max_heldout_documents: int = 2000,
    max_train_sample_chars: int = 8_000_000,
) -> LMData:
    """Corpus → held-out split by hash → tokenizer (trained on a bounded training sample, or ``tokenizer``) →
    training blocks (prepared once into the Arrow cache, or streamed) + held-out blocks.

    Args:
        corpus: ``"kjv"`` (embedded), ``"shakespeare"``, a list of documents, a local file, folder or glob
            (.txt/.md/.jsonl/.json/.parquet), a token folder (``hf-wsd prepare``), or a ``datasets`` name.
        tokenizer: ``None`` to train (and cache) a byte-level BPE tokenizer; a name or path for
            ``AutoTokenizer.from_pretrained``; or a tokenizer object. A token folder brings its own.
        vocab_size: vocabulary of the trained tokenizer (ignored when ``tokenizer`` is given).
        block_size: tokens per packed block (the training sequence length).
        heldout_fraction: share of documents held out (whole documents, by a seeded hash of the text).
        seed: seed of the split (and of the tokenizer sample).
        cache_dir: root of the tokenizer and prepared-data caches (default :func:`default_cache_dir`).
        streaming: stream the corpus (an ``IterableDataset`` of blocks) instead of preparing it.
        num_proc: processes tokenizing a map-style corpus (``datasets.map``); default 1.
        max_tokenizer_documents: bound of the tokenizer's training sample.
        max_heldout_documents: held-out documents kept (more are held out by hash but unused).
        max_train_sample_chars: bound of ``train_sample`` (the leakage check of the bundled benchmarks).
    """
    started = time.perf_counter()
    check_block_size(block_size)
    check_heldout_fraction(heldout_fraction)
    if isinstance(corpus, (str, os.PathLike)) and is_token_folder(corpus):
        return _from_token_folder(str(corpus), tokenizer, block_size, started)
    from .sources import open_corpus

    source = open_corpus(corpus, dataset_config, dataset_split, text_column, streaming, cache_dir)
    if tokenizer is None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
            raise ValueError(
                f"`vocab_size` must be an integer ≥ 258 (256 bytes + 2 special tokens); got {vocab_size!r}."
            )
        sample = tokenizer_sample(source, max_tokenizer_documents, heldout_fraction, seed)
        tokenizer = train_tokenizer(sample, vocab_size, cache_dir, name=source.name)
    else:
        tokenizer = load_tokenizer(tokenizer)
    bounds = dict(max_heldout_documents=max_heldout_documents, max_train_sample_chars=max_train_sample_chars)
    if streaming:
        data = _streamed(source, tokenizer, block_size, heldout_fraction, seed, bounds)
    else:
        folder, reused = prepare_blocks(
            source, tokenizer, block_size, heldout_fraction, seed, cache_dir, num_proc, **bounds
        )
        train, heldout, info = load_prepared(folder)
        if reused:
            logger.info("reusing prepared dataset at %s (%d blocks)", folder, len(train))
        data = LMData(
            train=train,
            heldout=heldout,
            tokenizer=tokenizer,
            heldout_documents=read_documents(folder / "heldout_documents.jsonl"),
            train_sample=read_documents(folder / "train_sample.jsonl"),
            train_sample_complete=info.train_sample_complete,
            corpus=source.name,
            source=source.source,
            block_size=block_size,
            kind="prepared",
            max_token_id=info.max_token_id,
            train_document_count=info.train_documents,
            cache_path=folder,
            reused=reused,
        )
    data.seconds = time.perf_counter() - started
    if not data.train_sample_complete:
        logger.info(
            "the leakage check of the bundled benchmarks covers the first %d training documents "
            "(`max_train_sample_chars`=%d)",
            len(data.train_sample),
            max_train_sample_chars,
        )
    logger.info("%s (%.1f s)", data.describe(), data.seconds)
    return data


def _streamed(source, tokenizer, block_size: int, heldout_fraction: float, seed: int, bounds: dict) -> LMData:
    from .pipeline import collect_side_documents
    from .streaming import pack_stream

    side = collect_side_documents(
        source, heldout_fraction, seed, bounds["max_heldout_documents"], bounds["max_train_sample_chars"]
    )
    heldout = heldout_blocks(side, tokenizer, block_size, heldout_fraction)
    train = pack_stream(source.dataset, tokenizer, block_size, source.text_column, heldout_fraction, seed)
    setattr(train, FINGERPRINT_ATTR, stream_fingerprint(source, tokenizer, block_size, heldout_fraction, seed))
    # A stream's largest id is unknown until read; the tokenizer bounds it.
    return LMData(
        train=train,
        heldout=heldout,
        tokenizer=tokenizer,
        heldout_documents=side.heldout,
        train_sample=side.train_sample,
        train_sample_complete=side.train_sample_complete,
        corpus=source.name,
        source=source.source,
        block_size=block_size,
        kind="streaming",
        max_token_id=len(tokenizer) - 1,
    )


def _from_token_folder(path: str, tokenizer, block_size: int, started: float) -> LMData:
    folder = TokenFolder(path)
    if tokenizer is None:
        tokenizer = folder.tokenizer_path()
        if tokenizer is None:
            raise ValueError(f"token folder {folder.folder} names no tokenizer in its metadata: pass `tokenizer`.")
    tokenizer = load_tokenizer(tokenizer)
    if tokenizer.eos_token_id != folder.eos_token_id:
        raise ValueError(
            f"the tokenizer's EOS id {tokenizer.eos_token_id} differs from `eos_token_id` {folder.eos_token_id} of "
            f"token folder {folder.folder}: use the tokenizer it was written with (`tokenizer`)."
        )
    train = folder.train(block_size)
    if len(train) == 0:
        raise ValueError(
            f"token folder {folder.folder} holds {folder.train_tokens} training tokens: no block of "
            f"`block_size`={block_size}."
        )
    heldout_documents = folder.documents("heldout_documents", "heldout_documents.jsonl")
    return LMData(
        train=train,
        heldout=folder.heldout(block_size),
        tokenizer=tokenizer,
        heldout_documents=heldout_documents,
        train_sample=folder.documents("train_sample", "train_sample.jsonl"),
        train_sample_complete=bool(folder.metadata.get("train_sample_complete", False)),
        corpus=str(folder.metadata.get("corpus", folder.folder.name)),
        source=str(folder.metadata.get("source", f"token folder {folder.folder}")),
        block_size=block_size,
        kind="token_folder",
        max_token_id=folder.max_token_id,
        train_document_count=folder.metadata.get("train_documents"),
        cache_path=folder.folder,
        seconds=time.perf_counter() - started,
    )
