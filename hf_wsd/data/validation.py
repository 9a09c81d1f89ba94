"""Checks of data against a model, before any compute: token ids inside the model's vocabulary, blocks inside its
context. O(1): the largest token id is recorded when the data is prepared."""

from __future__ import annotations

import logging
from typing import Any

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
