"""Collating packed blocks into causal-LM batches: the only place compact token ids become ``int64``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


_COLUMNS = ("input_ids", "labels", "attention_mask")


@dataclass(frozen=True)
class BlockCollator:
    """Rows ``{"input_ids": <block_size ints>}`` (numpy arrays, lists or tensors) → ``{"input_ids": LongTensor[b,
    block], "labels": a copy}``. The model shifts the labels itself; blocks are full length, so nothing is padded.
    Rows that carry their own ``labels`` (or an ``attention_mask``) keep them.

    The default ``data_collator`` of :class:`~hf_wsd.WSDTrainer`, and right for every dataset of :mod:`hf_wsd.data`
    (they store no labels). Rows of other columns or of varying length need a collator of their own.
    """

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict:
        import torch

        if not rows:
            raise ValueError("BlockCollator got an empty batch (`rows`).")
        extra = sorted(set(rows[0]) - set(_COLUMNS))
        if extra:
            raise ValueError(
                f"BlockCollator collates fixed-length token blocks; the rows also hold {extra}: pass a "
                "`data_collator` that knows them (e.g. transformers.default_data_collator), or drop the columns."
            )
        batch = {}
        for column in [c for c in _COLUMNS if c in rows[0]]:
            arrays = [np.asarray(row[column]) for row in rows]
            lengths = {len(a) for a in arrays}
            if len(lengths) != 1:
                raise ValueError(
                    f"blocks of one batch must have one length; got lengths {sorted(lengths)} (`{column}`): pack the "
                    "data into fixed-length blocks, or pass a padding `data_collator`."
                )
            batch[column] = torch.from_numpy(np.stack(arrays).astype(np.int64, copy=False))
        if "labels" not in batch:
            batch["labels"] = batch["input_ids"].clone()
        return batch
