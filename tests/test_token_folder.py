"""Token folders: written by `hf-wsd prepare`, read as memory-mapped blocks equal to the in-memory packing; every
inconsistency in metadata.json is a ValueError naming the field."""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest
from helpers import TINY_BLOCK, tiny_corpus, tiny_tokenizer
from test_data_prepared import FRACTION, reference_blocks

from hf_wsd import data
from hf_wsd.cli import main as cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A token folder of 60 KJV chapters, its train stream cut into files of 5,000 tokens (blocks span files)."""
    root = tmp_path_factory.mktemp("tokens")
    source = data.open_corpus(tiny_corpus(60), cache_dir=root / "cache")
    return data.write_token_folder(
        source, tiny_tokenizer(), root / "kjv60", heldout_fraction=FRACTION, file_tokens=5000
    )


def test_token_folder_blocks_equal_the_in_memory_packing(folder):
    lm = data.build_lm_datasets(str(folder), block_size=TINY_BLOCK)
    assert lm.kind == "token_folder" and len(list(folder.glob("train-*.bin"))) > 3
    blocks = np.stack([row["input_ids"] for row in lm.train.__getitems__(list(range(len(lm.train))))])
    assert np.array_equal(blocks, reference_blocks(tiny_corpus(60), tiny_tokenizer(), TINY_BLOCK))
    assert lm.train[0]["input_ids"].dtype == np.uint16
    _, heldout = data.split_documents(tiny_corpus(60), FRACTION, 0)
    assert lm.heldout_documents == [tiny_corpus(60)[i] for i in heldout]
    assert (
        lm.heldout[:]["input_ids"]
        == data.pack_documents(lm.heldout_documents, tiny_tokenizer(), TINY_BLOCK)[:]["input_ids"]
    )
    assert lm.tokenizer.get_vocab() == tiny_tokenizer().get_vocab()  # the folder carries its tokenizer
    batch = lm.collator(lm.train.__getitems__([3, 1]))
    assert batch["input_ids"].dtype.is_floating_point is False and batch["input_ids"].shape == (2, TINY_BLOCK)


def test_random_batches_are_cheap_and_the_dataset_pickles(folder):
    train = data.TokenFolder(folder).train(TINY_BLOCK)
    indices = np.random.default_rng(0).integers(0, len(train), 64).tolist()
    started = time.perf_counter()
    for _ in range(20):
        rows = train.__getitems__(indices)
    assert (time.perf_counter() - started) / 20 < 0.005  # memory-mapped: well under 5 ms for 64 blocks
    copy = pickle.loads(pickle.dumps(train))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows, copy.__getitems__(indices)))


def _broken(folder, tmp_path, **changes):
    import shutil

    target = tmp_path / "broken"
    shutil.copytree(folder, target)
    meta = json.loads((target / "metadata.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dtype": "float32"}, "`dtype` 'float32'"),
        ({"vocab_size": 70_000}, "`vocab_size` 70000 does not fit `dtype` uint16"),
        ({"eos_token_id": 600}, "`eos_token_id` 600 is outside"),
        ({"max_token_id": 512}, "`max_token_id` 512"),
        ({"vocab_size": None}, "lacks vocab_size"),
        ({"train_files": [{"path": "train-00000.bin", "tokens": 4999}]}, "holds 5000 tokens; `train_files`"),
        ({"train_files": ["missing.bin"]}, "lists missing.bin, which does not exist"),
        ({"train_files": []}, "`train_files` in metadata.json is empty"),
    ],
)
def test_inconsistent_metadata_names_the_field(folder, tmp_path, changes, message):
    broken = _broken(folder, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        data.build_lm_datasets(str(broken), block_size=TINY_BLOCK)


def test_missing_metadata_and_odd_file_sizes_are_named(folder, tmp_path):
    broken = _broken(folder, tmp_path)
    with (broken / "train-00001.bin").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="not a multiple of 2"):
        data.TokenFolder(broken)
    (broken / "metadata.json").unlink()
    with pytest.raises(ValueError, match="no metadata.json"):
        data.TokenFolder(broken)


def test_external_folder_without_max_token_id_is_scanned_once(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) % 300
    np.save(tmp_path / "train.npy", ids)
    ids[:200].tofile(tmp_path / "val.bin")
    (tmp_path / "metadata.json").write_text(
        json.dumps(
            {
                "dtype": "uint16",
                "eos_token_id": 0,
                "vocab_size": 300,
                "train_files": ["train.npy"],
                "heldout_files": ["val.bin"],
            }
        )
    )
    folder = data.TokenFolder(tmp_path)
    assert folder.max_token_id == 299 and len(folder.train(100)) == 10 and len(folder.heldout(100)) == 2
    with pytest.raises(ValueError, match="`vocab_size` is 299"):
        data.validate_for_model(
            {"max_token_id": folder.max_token_id, "block_size": 100}, type("Config", (), {"vocab_size": 299})()
        )


def test_prepare_command_writes_a_token_folder_and_reports_tokens_per_second(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in tiny_corpus(30)))
    out = tmp_path / "out"
    assert (
        cli(
            [
                "prepare",
                str(corpus),
                str(out),
                "--tokenizer",
                tiny_tokenizer().name_or_path,
                "--heldout-fraction",
                str(FRACTION),
                "--seed",
                "0",  # the reference split's seed (the command's default is the recipes' 42)
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and str(out) in printed
    lm = data.build_lm_datasets(str(out), block_size=TINY_BLOCK)
    assert np.array_equal(
        np.stack([r["input_ids"] for r in lm.train.__getitems__(list(range(len(lm.train))))]),
        reference_blocks(tiny_corpus(30), tiny_tokenizer(), TINY_BLOCK),
    )
    assert cli(["prepare", str(corpus), str(out), "--tokenizer", tiny_tokenizer().name_or_path]) == 2  # exists
