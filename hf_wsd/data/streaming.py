"""Streaming corpora: a ``datasets.IterableDataset`` of packed blocks that resumes exactly where it left off.

``pack_stream`` = drop held-out and empty documents → tokenize (``IterableDataset.map(batched=True)``) → pack.
Packing carries the remainder of each document into the next one, across batches and shards, so its position
is more than a source position: :class:`PackedExamplesIterable` keeps, in the dataset's ``state_dict()``, the
tokenize step's state at the last document boundary after a yielded block, the carried tokens there (fewer
than one block) and the number of blocks cut since. ``load_state_dict`` then re-reads from that boundary — at
most the documents of one block plus one tokenize batch, whatever the position — and yields block n + 1 next.

What lies below that boundary is ``datasets``' own resume (read from its source, datasets 5.2): the batched
``map`` reloads the source at the start of its current batch and re-tokenizes that batch; an Arrow source
skips whole tables; parquet and JSON sources re-read (decode, not tokenize) the current file up to the position.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

import numpy as np
from datasets.iterable_dataset import _BaseExamplesIterable

from .packing import BlockCutter, check_block_size, tokenize_training_batch
from .split import check_heldout_fraction
from .tokenizer import token_dtype

if TYPE_CHECKING:
    from datasets import IterableDataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 64  # documents per tokenize call: a resume re-tokenizes at most this many


def block_features(block_size: int, dtype: str):
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value(dtype), length=block_size)})


class PackedExamplesIterable(_BaseExamplesIterable):
    """Blocks of ``block_size`` tokens cut from a stream of ``{"input_ids": ids}`` documents, with resumable state.

    State: ``previous_state`` (the inner iterable's state at a document boundary), ``carry`` (tokens carried
    there), ``num_blocks_since_previous_state`` (blocks cut since, all yielded).
    """

    def __init__(self, ex_iterable: _BaseExamplesIterable, block_size: int, dtype: str):
        super().__init__()
        self.ex_iterable = ex_iterable
        self.block_size = block_size
        self.dtype = dtype

    @property
    def is_typed(self) -> bool:
        return True

    @property
    def features(self):
        return block_features(self.block_size, self.dtype)

    def _init_state_dict(self) -> dict:
        self.ex_iterable._init_state_dict()
        # carry starts as None, not []: datasets' load_state_dict merges lists element-wise, keeping their length.
        self._state_dict = {
            "previous_state": None,
            "carry": None,
            "num_blocks_since_previous_state": 0,
            "type": self.__class__.__name__,
        }
        return self._state_dict

    def _mark_boundary(self, cutter: BlockCutter) -> None:
        self._state_dict["previous_state"] = self.ex_iterable.state_dict()
        self._state_dict["carry"] = cutter.carry.tolist()
        self._state_dict["num_blocks_since_previous_state"] = 0

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        state = self._state_dict
        to_skip = 0
        if state and state["previous_state"] is not None:
            self.ex_iterable.load_state_dict(state["previous_state"])
            cutter = BlockCutter(self.block_size, self.dtype, state["carry"] or ())
            to_skip = state["num_blocks_since_previous_state"]
            state["num_blocks_since_previous_state"] = 0
        else:
            cutter = BlockCutter(self.block_size, self.dtype)
            if state:
                self._mark_boundary(cutter)
        for key, example in _named_errors(self.ex_iterable):
            for block in cutter.feed(np.asarray(example["input_ids"], dtype=self.dtype)):
                if state:
                    state["num_blocks_since_previous_state"] += 1
                if to_skip:
                    to_skip -= 1
                    continue
                yield key, {"input_ids": block}
            # Every block cut so far has been yielded: a document boundary is a cheap place to resume from.
            if state and state["num_blocks_since_previous_state"] and not to_skip:
                self._mark_boundary(cutter)

    def shuffle_data_sources(self, generator: np.random.Generator) -> "PackedExamplesIterable":
        return PackedExamplesIterable(self.ex_iterable.shuffle_data_sources(generator), self.block_size, self.dtype)

    def shard_data_sources(self, num_shards: int, index: int, contiguous: bool = True) -> "PackedExamplesIterable":
        inner = self.ex_iterable.shard_data_sources(num_shards, index, contiguous=contiguous)
        return PackedExamplesIterable(inner, self.block_size, self.dtype)

    def reshard_data_sources(self) -> "PackedExamplesIterable":
        return PackedExamplesIterable(self.ex_iterable.reshard_data_sources(), self.block_size, self.dtype)

    @property
    def num_shards(self) -> int:
        return self.ex_iterable.num_shards


def _named_errors(ex_iterable) -> Iterator[tuple[str, dict]]:
    """``ex_iterable``'s examples; a read error names the shard file and the row it stopped at (a corrupt shard
    mid-stream), which ``datasets`` leaves out."""
    iterator = iter(ex_iterable)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            where = stream_position(ex_iterable)
            if where is None:
                raise
            raise ValueError(f"reading the training stream failed in {where} ({type(error).__name__}: {error}); "
                             "replace or remove that shard. A resume reads it again.") from error
        yield item


def stream_position(ex_iterable) -> str | None:
    """``"{file}, after row N"`` of the innermost file-reading iterable of a ``datasets`` stream, if it tells."""
    inner = ex_iterable
    while getattr(inner, "ex_iterable", None) is not None:
        inner = inner.ex_iterable
    files = (getattr(inner, "kwargs", None) or {}).get("files")
    state = getattr(inner, "_state_dict", None) or {}
    shard = state.get("shard_idx")
    if not isinstance(files, list) or not isinstance(shard, int) or not 0 <= shard < len(files):
        return None
    return f"{files[shard]}, after row {state.get('shard_example_idx', '?')}"


def pack_stream(
    dataset: "IterableDataset",
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    text_column: str = "text",
    heldout_fraction: float = 0.05,
    seed: int = 0,
) -> "IterableDataset":
    """The training blocks of a streamed corpus: documents held out by :func:`~hf_wsd.data.is_heldout` and empty
    ones dropped, the rest tokenized (EOS after each) and packed into ``block_size`` blocks, in stream order.

    Rows are ``{"input_ids": numpy array of block_size compact ints}``; ``state_dict()`` / ``load_state_dict()``
    resume at the next block. Split it by rank with ``datasets.distributed.split_dataset_by_node`` (before or
    after): with a shard count divisible by the world size each rank packs its own shards.
    """
    from datasets import DatasetInfo, IterableDataset

    check_block_size(block_size)
    check_heldout_fraction(heldout_fraction)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; documents need a separator when packed (`tokenizer`).")
    dtype = token_dtype(len(tokenizer))
    texts = dataset.select_columns([text_column])
    tokenized = texts.map(
        tokenize_training_batch,
        batched=True,
        batch_size=TOKENIZE_BATCH,
        remove_columns=[text_column],
        fn_kwargs={
            "tokenizer": tokenizer,
            "text_column": text_column,
            "heldout_fraction": heldout_fraction,
            "seed": seed,
            "dtype": dtype,
        },
    )
    packed = PackedExamplesIterable(tokenized._ex_iterable, block_size, dtype)
    return IterableDataset(
        ex_iterable=packed,
        info=DatasetInfo(features=block_features(block_size, dtype)),
        split=tokenized.split,
        distributed=tokenized._distributed,
        token_per_repo_id=tokenized._token_per_repo_id,
    )
