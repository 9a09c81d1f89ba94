"""Streaming corpora: the same blocks as the in-memory packing, and a state_dict taken after n blocks resumes at
block n + 1 bitwise — across batches and shards, and for each of 2 ranks."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_BLOCK, tiny_corpus, tiny_tokenizer, write_parquet_shards
from test_data_prepared import FRACTION, reference_blocks

from hf_wsd import data

N_DOCUMENTS = 40


def stream(source):
    return data.pack_stream(source, tiny_tokenizer(), TINY_BLOCK, heldout_fraction=FRACTION)


def blocks(dataset) -> np.ndarray:
    return np.stack([row["input_ids"] for row in dataset])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Four local parquet shards (row groups of 7 documents) opened streamed, as the Hub dataset would be."""
    folder = write_parquet_shards(tmp_path_factory.mktemp("parquet"), tiny_corpus(N_DOCUMENTS))
    return data.open_corpus(str(folder / "*.parquet"), streaming=True).dataset


@pytest.fixture(scope="module")
def reference():
    return reference_blocks(tiny_corpus(N_DOCUMENTS), tiny_tokenizer(), TINY_BLOCK)


def test_streamed_blocks_equal_the_in_memory_packing(shards, reference):
    streamed = stream(shards)
    assert shards.num_shards == 4 and streamed.num_shards == 4
    result = blocks(streamed)
    assert result.dtype == np.uint16 and np.array_equal(result, reference)


def test_state_dict_after_n_blocks_resumes_at_block_n_plus_one(shards, reference):
    streamed = stream(shards)
    # positions inside the first batch, at batch and shard boundaries (~15 documents a shard), and the end
    for n in (3, len(reference) // 2, len(reference) - 1, len(reference)):
        iterator = iter(streamed)
        for _ in range(n):
            next(iterator)
        state = streamed.state_dict()
        resumed = stream(shards)
        resumed.load_state_dict(state)
        rest = [row["input_ids"] for row in resumed]
        assert len(rest) == len(reference) - n, n
        if rest:
            assert np.array_equal(np.stack(rest), reference[n:]), n


def test_state_round_trip_for_each_of_two_ranks(shards):
    from datasets.distributed import split_dataset_by_node

    per_rank = []
    for rank in (0, 1):
        ranked = split_dataset_by_node(stream(shards), rank=rank, world_size=2)
        full = blocks(ranked)
        iterator = iter(ranked)
        for _ in range(13):
            next(iterator)
        resumed = split_dataset_by_node(stream(shards), rank=rank, world_size=2)
        resumed.load_state_dict(ranked.state_dict())
        assert np.array_equal(blocks(resumed), full[13:])
        per_rank.append(full)
    # 4 shards, 2 ranks: each rank packs its own two shards; together they hold no block twice
    assert not {b.tobytes() for b in per_rank[0]} & {b.tobytes() for b in per_rank[1]}


def test_streaming_lm_data_has_a_map_style_heldout_and_known_block_size(tmp_path, shards, reference):
    folder = write_parquet_shards(tmp_path / "fineweb", tiny_corpus(N_DOCUMENTS))
    lm = data.build_lm_datasets(
        str(folder),
        tokenizer=tiny_tokenizer(),
        block_size=TINY_BLOCK,
        heldout_fraction=FRACTION,
        streaming=True,
        cache_dir=tmp_path,
    )
    assert lm.streaming and lm.train_tokens is None and lm.block_size == TINY_BLOCK
    assert np.array_equal(blocks(lm.train), reference)
    _, heldout = data.split_documents(tiny_corpus(N_DOCUMENTS), FRACTION, 0)
    assert lm.heldout_documents == [tiny_corpus(N_DOCUMENTS)[i] for i in heldout]
    assert len(lm.heldout) > 0 and lm.heldout[0]["input_ids"]  # map-style
    assert lm.max_token_id == len(lm.tokenizer) - 1  # a stream's bound is its tokenizer
    assert "a stream of 64-token blocks" in lm.describe()
