"""Checks of data against a model, before any compute: token ids inside the model's vocabulary, blocks inside its
context. O(1): the largest token id is recorded when the data is prepared."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Names of the context length across architectures (Llama/Mistral/Qwen, GPT-2, BLOOM-likes, ChatGLM, MPT, ...).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx", "max_seq_len")


def model_context_length(config: Any) -> int | None:
    """The longest sequence ``config`` (a ``PretrainedConfig``, or a model) accepts, or ``None`` when unknown."""
    config = _text_config(config)
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _text_config(config: Any) -> Any:
    config = getattr(config, "config", config)  # a model
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _field(data: Any, name: str) -> Any:
    return data.get(name) if isinstance(data, dict) else getattr(data, name, None)


def validate_for_model(data: Any, model_config: Any) -> None:
    """Raise a ``ValueError`` naming the field when ``data`` does not fit the model.

    ``data``: an ``LMData``, a ``TokenFolder``, a ``PreparedInfo`` or a dict with ``max_token_id`` and
    ``block_size``; ``model_config``: a ``PretrainedConfig`` or a model. Checks: the largest token id is below
    the model's ``vocab_size``; ``block_size`` is at most the model's context length (its field name varies by
    architecture; an unknown one skips the check with a debug log).
    """
    config = _text_config(model_config)
    max_token_id, block_size = _field(data, "max_token_id"), _field(data, "block_size")
    vocab = getattr(config, "vocab_size", None)
    if max_token_id is not None and isinstance(vocab, int) and max_token_id >= vocab:
        raise ValueError(
            f"the data holds token id {max_token_id} but the model's `vocab_size` is {vocab}: build the model with "
            f"vocab_size ≥ {max_token_id + 1} (e.g. `vocab_size=len(tokenizer)`) or use the tokenizer the data was "
            "prepared with."
        )
    context = model_context_length(config)
    if context is None:
        logger.debug(
            "model config %s names no context length (%s); block size not checked",
            type(config).__name__,
            ", ".join(CONTEXT_FIELDS),
        )
    elif block_size is not None and block_size > context:
        raise ValueError(
            f"`block_size`={block_size} is longer than the model's context ({context} positions): lower "
            f"`block_size` to ≤ {context} or build the model with a longer context."
        )


_COLLATED = ("input_ids", "labels", "attention_mask")
PROBE_ROWS = 64


def probe_rows(dataset: Any, limit: int = PROBE_ROWS) -> list[dict]:
    """The first rows of a dataset without consuming it: up to ``limit`` of a map-style dataset, the first example
    of a re-iterable stream (``datasets.IterableDataset``), none of a one-shot iterator."""
    from .feed import is_map_style

    if is_map_style(dataset):
        count = min(limit, len(dataset))
        getitems = getattr(dataset, "__getitems__", None)
        return list(getitems(list(range(count)))) if getitems is not None else [dataset[i] for i in range(count)]
    iterator = iter(dataset)
    if iterator is dataset:  # reading it would lose the example for training
        return []
    first = next(iterator, None)
    return [] if first is None else [first]


def _profile(rows: list[dict]) -> tuple[set[int], int | None, frozenset[str]]:
    """Row lengths, largest token id and collated columns of probed rows."""
    lengths, largest, columns = set(), None, frozenset()
    for row in rows:
        if not isinstance(row, dict) or "input_ids" not in row:
            continue
        ids = np.asarray(row["input_ids"])
        lengths.add(int(ids.shape[-1]) if ids.ndim else 1)
        if ids.size:
            largest = int(ids.max()) if largest is None else max(largest, int(ids.max()))
        columns = frozenset(c for c in _COLLATED if c in row)
    return lengths, largest, columns


def check_decay_sources(
    train_dataset: Any, sources: dict[str, Any], vocab_size: int | None = None, seq_length: int | None = None
) -> None:
    """Decay datasets must fit the main data and the model, before step 0: the same sequence length (rows of one
    length, that of ``train_dataset`` or ``seq_length``), the same collated columns, token ids inside the model's
    vocabulary. The first rows are probed (a stream: its first example)."""
    main_lengths, _, main_columns = _profile(probe_rows(train_dataset))
    expected = seq_length if seq_length is not None else (next(iter(main_lengths)) if len(main_lengths) == 1 else None)
    for name, dataset in sources.items():
        field = f"decay_datasets[{name!r}]"
        if dataset is None:
            raise ValueError(f"`{field}` is None: pass a dataset of token blocks.")
        if hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(f"`{field}` is empty: it has no example to anneal on.")
        lengths, largest, columns = _profile(probe_rows(dataset))
        if expected is not None and lengths and lengths != {expected}:
            raise ValueError(
                f"`{field}` holds rows of {sorted(lengths)} tokens but the training data's sequence length is "
                f"{expected}: pack the decay data into blocks of {expected} tokens (the same `block_size`)."
            )
        if main_columns and columns and columns != main_columns:
            raise ValueError(
                f"`{field}` rows hold {sorted(columns)} but the training rows hold {sorted(main_columns)}: one batch "
                "mixes both, so give them the same columns."
            )
        if vocab_size is not None and largest is not None and largest >= vocab_size:
            raise ValueError(
                f"`{field}` holds token id {largest} but the model's `vocab_size` is {vocab_size}: tokenize the "
                "decay data with the training data's tokenizer."
            )
