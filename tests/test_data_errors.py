"""Data errors name the shard and the offset: token ids outside the vocabulary as blocks are read, corrupt parquet
shards before launch and mid-stream, empty parquet shards skipped (hf_wsd/data)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import SEQ, VOCAB, tiny_trainer, write_parquet_shards

from hf_wsd.data.token_folder import TokenFolder

DOCUMENTS = [f"document {i} about the shard and its rows " * 8 for i in range(60)]


def test_a_token_id_outside_the_vocabulary_names_the_file_and_the_offset(tmp_path):
    folder = tmp_path / "tokens"
    folder.mkdir()
    ids = np.random.default_rng(0).integers(0, VOCAB, 96 * SEQ, dtype=np.uint16)
    ids[1000] = VOCAB + 5  # the metadata below says every id is < VOCAB
    ids.tofile(folder / "train-00000.bin")
    meta = {"dtype": "uint16", "eos_token_id": 0, "vocab_size": VOCAB, "max_token_id": VOCAB - 1,
            "train_files": ["train-00000.bin"]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    blocks = TokenFolder(folder).train(SEQ)
    with pytest.raises(ValueError, match=r"train-00000\.bin holds token id 69 at token offset 1,000, outside the "
                                         r"vocabulary \(`vocab_size` 64"):
        blocks[1000 // SEQ]
    with pytest.raises(ValueError, match=r"token offset 1,000"):  # a run stops at the read, not in the embedding
        tiny_trainer(tmp_path / "run", (30,), train_dataset=blocks).train()


def _corrupt_pages(path) -> None:
    data = bytearray(path.read_bytes())
    data[8:len(data) // 2] = bytes(len(data) // 2 - 8)  # the pages, not the footer: the file still opens
    path.write_bytes(bytes(data))


def test_parquet_shards_corrupt_or_empty_are_named_before_launch_and_mid_stream(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_wsd.data.sources import open_corpus

    corpus = write_parquet_shards(tmp_path / "corpus", DOCUMENTS, n_shards=3)
    shards = sorted(corpus.glob("*.parquet"))
    empty = pa.table({"text": pa.array([], pa.string()), "id": pa.array([], pa.string()),
                      "score": pa.array([], pa.float64())})
    pq.write_table(empty, shards[1])
    stream = open_corpus(str(corpus), streaming=True).dataset  # the empty shard is skipped, not fatal
    assert len(list(stream)) == len(DOCUMENTS) - 20

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / shards[2].name).write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(ValueError, match=rf"corpus shard .*{shards[2].name} is not a readable parquet file"):
        open_corpus(str(broken))

    shutil.copytree(corpus, tmp_path / "pages")
    _corrupt_pages(tmp_path / "pages" / shards[2].name)
    with pytest.raises(ValueError, match=rf"corpus shard .*{shards[2].name} cannot be read"):
        open_corpus(str(tmp_path / "pages"), cache_dir=tmp_path / "cache")
    stream = open_corpus(str(tmp_path / "pages"), streaming=True)
    from hf_wsd.data.streaming import pack_stream
    from helpers import tiny_tokenizer

    packed = pack_stream(stream.dataset, tiny_tokenizer(), 32)
    with pytest.raises(ValueError, match=rf"training stream failed in .*{shards[2].name}, after row \d+"):
        list(packed)
