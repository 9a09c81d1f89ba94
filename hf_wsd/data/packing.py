"""Packing: documents → token ids with an EOS after each → one stream → fixed blocks (the tail < a block is dropped).

Every input kind (in memory, prepared Arrow, token folder, streaming) cuts the same stream the same way, so on the
same documents, tokenizer and block size they give bitwise the same blocks in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from .split import is_heldout
from .tokenizer import encode_documents, token_dtype

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


def check_block_size(block_size: int) -> int:
    """``block_size`` itself, or a ``ValueError`` unless it is an integer ≥ 2."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"`block_size` must be an integer ≥ 2; got {block_size!r}.")
    return block_size


def tokenize_training_batch(
    batch: dict,
    tokenizer: "PreTrainedTokenizerBase",
    text_column: str,
    heldout_fraction: float,
    seed: int,
    dtype: str,
) -> dict:
    """``datasets.map(batched=True)`` function: the training documents of ``batch`` (stripped, non-empty, not
    held out) → ``{"input_ids": [ids + [eos], ...]}``; held-out and empty documents are dropped."""
    texts = [t.strip() for t in batch[text_column] if t]
    texts = [t for t in texts if t and not is_heldout(t, heldout_fraction, seed)]
    eos = tokenizer.eos_token_id
    return {"input_ids": [np.asarray([*ids, eos], dtype=dtype) for ids in encode_documents(tokenizer, texts)]}


class BlockCutter:
    """Cuts a token stream arriving in pieces into ``block_size`` blocks, carrying the remainder between pieces."""

    def __init__(self, block_size: int, dtype: str, carry: Sequence[int] = ()):
        self.block_size = block_size
        self.dtype = dtype
        self.carry = np.asarray(carry, dtype=dtype)

    def feed(self, tokens: np.ndarray) -> np.ndarray:
        """The complete blocks (``[n, block_size]``) once ``tokens`` are appended; the rest is carried."""
        stream = np.concatenate([self.carry, np.asarray(tokens, dtype=self.dtype)]) if len(self.carry) else tokens
        n_blocks = len(stream) // self.block_size
        cut = n_blocks * self.block_size
        self.carry = np.array(stream[cut:], dtype=self.dtype)
        return np.asarray(stream[:cut], dtype=self.dtype).reshape(n_blocks, self.block_size)


def blocks_from_token_pieces(pieces: Iterable[np.ndarray], block_size: int, dtype: str) -> Iterator[np.ndarray]:
    """``[n, block_size]`` arrays of the blocks of the concatenated ``pieces`` (tail dropped)."""
    cutter = BlockCutter(block_size, dtype)
    for piece in pieces:
        blocks = cutter.feed(piece)
        if len(blocks):
            yield blocks


def pack_documents(documents: Sequence[str], tokenizer: "PreTrainedTokenizerBase", block_size: int) -> "Dataset":
    """Tokenize ``documents`` (EOS after each), concatenate, cut into ``block_size`` blocks (the tail is dropped).

    In memory: the reference packing, for small document lists. Returns a ``datasets.Dataset`` with one column,
    ``input_ids`` (compact ints; collate with :class:`~hf_wsd.data.BlockCollator`, which adds ``labels``).
    """
    from datasets import Dataset, Features, List, Value

    check_block_size(block_size)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; documents need a separator when packed (`tokenizer`).")
    eos = tokenizer.eos_token_id
    dtype = token_dtype(len(tokenizer))
    pieces = [np.asarray([*ids, eos], dtype=dtype) for ids in encode_documents(tokenizer, documents)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens make no block of `block_size`={block_size}; lower it or add documents.")
    blocks = stream[: n_blocks * block_size].reshape(n_blocks, block_size)
    features = Features({"input_ids": List(Value(dtype), length=block_size)})
    return Dataset.from_dict({"input_ids": blocks}, features=features)
