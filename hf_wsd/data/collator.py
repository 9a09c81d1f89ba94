"""Collating packed blocks into causal-LM batches: the only place compact token ids become ``int64``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class BlockCollator:
    """Rows ``{"input_ids": <block_size ints>}`` (numpy arrays, lists or tensors) → ``{"input_ids": LongTensor[b,
    block], "labels": a copy}``. The model shifts the labels itself; blocks are full length, so nothing is padded.

    Use it as the ``data_collator`` of a ``Trainer`` for every dataset of :mod:`hf_wsd.data` (they store no labels).
    """

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict:
        import torch

        if not rows:
            raise ValueError("BlockCollator got an empty batch (`rows`).")
        arrays = [np.asarray(row["input_ids"]) for row in rows]
        lengths = {len(a) for a in arrays}
        if len(lengths) != 1:
            raise ValueError(f"blocks of one batch must have one length; got lengths {sorted(lengths)} (`input_ids`).")
        input_ids = torch.from_numpy(np.stack(arrays).astype(np.int64, copy=False))
        return {"input_ids": input_ids, "labels": input_ids.clone()}
