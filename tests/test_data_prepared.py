"""The prepared Arrow cache: the same blocks as the in-memory packing, reuse, cache keys, races, local shards,
and validation against a model before any compute."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
from helpers import TINY_BLOCK, tiny_corpus, tiny_tokenizer, write_parquet_shards

from hf_wsd import data

FRACTION = 0.2


def reference_blocks(documents, tokenizer, block_size, fraction=FRACTION, seed=0) -> np.ndarray:
    """The in-memory path: split by hash, pack the training documents in corpus order."""
    train, _ = data.split_documents(documents, fraction, seed)
    packed = data.pack_documents([documents[i] for i in train], tokenizer, block_size)
    return np.asarray(packed.with_format("numpy")["input_ids"])


def test_prepared_blocks_equal_the_in_memory_packing_bitwise(tmp_path):
    documents, tokenizer = tiny_corpus(60), tiny_tokenizer()
    lm = data.build_lm_datasets(
        documents, tokenizer=tokenizer, block_size=TINY_BLOCK, heldout_fraction=FRACTION, cache_dir=tmp_path
    )
    assert lm.kind == "prepared" and not lm.reused
    assert np.array_equal(lm.train[:]["input_ids"], reference_blocks(documents, tokenizer, TINY_BLOCK))
    _, heldout = data.split_documents(documents, FRACTION, 0)
    assert lm.heldout_documents == [documents[i] for i in heldout]
    assert (
        lm.heldout[:]["input_ids"] == data.pack_documents(lm.heldout_documents, tokenizer, TINY_BLOCK)[:]["input_ids"]
    )
    assert lm.max_token_id == int(lm.train[:]["input_ids"].max())  # recorded once, for O(1) validation
    assert lm.train_sample_complete and len(lm.train_sample) == len(documents) - len(heldout)


def test_second_call_reuses_the_cache_without_tokenizing(tmp_path, caplog):
    documents, tokenizer = tiny_corpus(40), tiny_tokenizer()
    settings = dict(tokenizer=tokenizer, block_size=TINY_BLOCK, heldout_fraction=FRACTION, cache_dir=tmp_path)
    first = data.build_lm_datasets(documents, **settings)
    calls = []
    original = data.pipeline.training_token_pieces
    data.prepare.training_token_pieces = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with caplog.at_level(logging.INFO, logger="hf_wsd.data"):
            second = data.build_lm_datasets(documents, **settings)
    finally:
        data.prepare.training_token_pieces = original
    assert second.reused and not calls and second.cache_path == first.cache_path
    assert f"reusing prepared dataset at {first.cache_path} ({len(first.train)} blocks)" in caplog.text
    assert np.array_equal(first.train[:]["input_ids"], second.train[:]["input_ids"])


def test_cache_key_changes_with_corpus_tokenizer_and_block_size(tmp_path):
    documents, tokenizer = tiny_corpus(30), tiny_tokenizer()
    base = dict(tokenizer=tokenizer, block_size=TINY_BLOCK, heldout_fraction=FRACTION, cache_dir=tmp_path)
    paths = {data.build_lm_datasets(documents, **base).cache_path}
    paths.add(data.build_lm_datasets(documents[:-1], **base).cache_path)
    paths.add(data.build_lm_datasets(documents, **{**base, "block_size": TINY_BLOCK // 2}).cache_path)
    other = data.train_tokenizer(documents, 300, tmp_path, name="other")
    paths.add(data.build_lm_datasets(documents, **{**base, "tokenizer": other}).cache_path)
    paths.add(data.build_lm_datasets(documents, **{**base, "heldout_fraction": 0.3}).cache_path)
    assert len(paths) == 5
    assert len([p for p in (tmp_path / "prepared").iterdir()]) == 5  # no temporary folder is left behind


def test_racing_preparations_write_one_folder(tmp_path):
    documents, tokenizer = tiny_corpus(30), tiny_tokenizer()
    results, errors = [], []

    def prepare():
        try:
            results.append(
                data.build_lm_datasets(
                    documents, tokenizer=tokenizer, block_size=TINY_BLOCK, heldout_fraction=FRACTION, cache_dir=tmp_path
                )
            )
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(r.reused for r in results) == [False, True]
    assert len(list((tmp_path / "prepared").iterdir())) == 1


def test_two_processes_tokenize_to_the_same_blocks(tmp_path):
    documents, tokenizer = tiny_corpus(30), tiny_tokenizer()
    one = data.build_lm_datasets(
        documents, tokenizer=tokenizer, block_size=TINY_BLOCK, heldout_fraction=FRACTION, cache_dir=tmp_path / "a"
    )
    two = data.build_lm_datasets(
        documents,
        tokenizer=tokenizer,
        block_size=TINY_BLOCK,
        heldout_fraction=FRACTION,
        cache_dir=tmp_path / "b",
        num_proc=2,
    )
    assert np.array_equal(one.train[:]["input_ids"], two.train[:]["input_ids"])


def test_local_parquet_shards_like_fineweb_edu_are_prepared(tmp_path):
    documents, tokenizer = tiny_corpus(60), tiny_tokenizer()
    folder = write_parquet_shards(tmp_path / "fineweb-edu" / "sample" / "10BT", documents)
    lm = data.build_lm_datasets(
        str(folder / "*.parquet"),
        tokenizer=tokenizer,
        block_size=TINY_BLOCK,
        heldout_fraction=FRACTION,
        cache_dir=tmp_path / "cache",
    )
    assert np.array_equal(lm.train[:]["input_ids"], reference_blocks(documents, tokenizer, TINY_BLOCK))
    assert "4 local parquet file(s)" in lm.source


def test_jsonl_text_column_and_trained_tokenizer_on_a_bounded_sample(tmp_path):
    documents = tiny_corpus(40)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents))
    lm = data.build_lm_datasets(
        str(path),
        vocab_size=300,
        block_size=32,
        heldout_fraction=FRACTION,
        text_column="body",
        max_tokenizer_documents=10,
        cache_dir=tmp_path,
    )
    source = data.open_corpus(str(path), text_column="body", cache_dir=tmp_path)
    sample = data.tokenizer_sample(source, 10, FRACTION, 0)
    assert len(sample) <= 10 and set(sample) <= set(documents)
    assert lm.tokenizer.name_or_path.endswith(data.tokenizer_cache_key(sample, 300)[:12])
    assert np.array_equal(lm.train[:]["input_ids"], reference_blocks(documents, lm.tokenizer, 32))
    with pytest.raises(ValueError, match="`text_column`"):
        data.build_lm_datasets(str(path), vocab_size=300, cache_dir=tmp_path)


def test_an_empty_shard_glob_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"`corpus` glob .* matches no file"):
        data.build_lm_datasets(str(tmp_path / "nothing-*.parquet"), tokenizer=tiny_tokenizer(), cache_dir=tmp_path)


def test_validate_for_model_names_the_field_before_compute(tmp_path):
    from transformers import GPT2Config, LlamaConfig

    lm = data.build_lm_datasets(
        tiny_corpus(30),
        tokenizer=tiny_tokenizer(),
        block_size=TINY_BLOCK,
        heldout_fraction=FRACTION,
        cache_dir=tmp_path,
    )
    data.validate_for_model(lm, LlamaConfig(vocab_size=lm.vocab_size, max_position_embeddings=TINY_BLOCK))
    with pytest.raises(ValueError, match=f"token id {lm.max_token_id} .* `vocab_size` is 100"):
        data.validate_for_model(lm, LlamaConfig(vocab_size=100, max_position_embeddings=256))
    with pytest.raises(ValueError, match=f"`block_size`={TINY_BLOCK} .* context \\(32 positions\\)"):
        data.validate_for_model(lm, LlamaConfig(vocab_size=lm.vocab_size, max_position_embeddings=32))
    with pytest.raises(ValueError, match="`block_size`"):
        data.validate_for_model(lm, GPT2Config(vocab_size=lm.vocab_size, n_positions=16))
    data.validate_for_model({"max_token_id": 5, "block_size": 10**6}, object())  # unknown context: skipped
    assert data.model_context_length(GPT2Config(n_positions=77)) == 77
