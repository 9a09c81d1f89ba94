"""A resume checks the data it resumes on: a token folder or corpus that gained a shard, or a shard edited in place
with its size and modification time kept, is refused unless allow_data_change=True (hf_wsd/data/fingerprint.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import SEQ, VOCAB, budget_dirs, tiny_trainer, write_parquet_shards

from hf_wsd import runs
from hf_wsd.data.fingerprint import sampled_digest
from hf_wsd.data.token_folder import TokenFolder


def _token_folder(folder, n_files: int):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_files):
        rng.integers(0, VOCAB, 24 * SEQ, dtype=np.uint16).tofile(folder / f"train-{i:05d}.bin")
    meta = {"dtype": "uint16", "eos_token_id": 0, "vocab_size": VOCAB, "max_token_id": VOCAB - 1,
            "train_files": [f"train-{i:05d}.bin" for i in range(n_files)]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def _edit_in_place(path, offset: int = -4) -> None:
    """Change a byte, keep the size and the modification time (a copy tool that preserves stamps, a bit flip)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 1  # token folders: an id ±1 (little-endian low byte), still inside the vocabulary
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def _run(out, folder, budgets, **overrides):
    return tiny_trainer(out, budgets, save_steps=5, train_dataset=TokenFolder(folder).train(SEQ), **overrides)


def test_a_token_folder_that_gained_or_changed_a_shard_is_refused_on_resume(tmp_path):
    folder, out = _token_folder(tmp_path / "tokens", 2), tmp_path / "run"
    _run(out, folder, (10,)).train()
    assert runs.read_run(out)[runs.DATA_KEY]["kind"] == "token folder"

    _token_folder(folder, 3)  # a shard added between a crash and its resume
    with pytest.raises(ValueError, match=r"training data changed .*added: train-00002\.bin.*allow_data_change=True"):
        _run(out, folder, (10, 20)).train(resume_from_checkpoint=True)
    _token_folder(folder, 2)
    _edit_in_place(folder / "train-00001.bin")
    with pytest.raises(ValueError, match=r"changed in place: train-00001\.bin"):
        _run(out, folder, (10, 20)).train(resume_from_checkpoint=True)

    _run(out, folder, (10, 20), allow_data_change=True).train(resume_from_checkpoint=True)  # the user says so
    assert sorted(budget_dirs(out)) == [10, 20]
    _run(out, folder, (10, 20, 30)).train(resume_from_checkpoint=True)  # the run now records the new data


def test_the_corpus_key_sees_a_same_size_same_mtime_edit(tmp_path):
    from hf_wsd.data.sources import open_corpus

    corpus = write_parquet_shards(tmp_path / "corpus", [f"document {i} " * 20 for i in range(40)], n_shards=2)
    before = open_corpus(str(corpus)).fingerprint
    shard = sorted(corpus.glob("*.parquet"))[0]
    digest = sampled_digest(shard)
    _edit_in_place(shard, shard.stat().st_size // 2)  # a value in a page; the footer still reads
    assert sampled_digest(shard) != digest
    assert open_corpus(str(corpus)).fingerprint != before  # the prepared cache is not reused
