"""recipes/continual_sft.py on a tiny checkpoint: verse pairs built offline, WSD-S budgets, both held-out sets."""

from __future__ import annotations

import json

import pytest

from helpers import budget_dirs, text_model, tiny_tokenizer

pytest.importorskip("trl", reason="the continual-SFT recipe needs TRL: pip install 'hf_wsd[trl]' (in the test extra)")
pytestmark = pytest.mark.slow
TINY_SFT = [
    "--max_train_examples", "96", "--max_eval_examples", "16", "--max_eval_blocks", "8", "--block_size", "64",
    "--max_length", "64", "--budgets", "4", "8", "--warmup_steps", "1", "--decay_fraction", "0.25",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--logging_steps", "2",
    "--bundled_tasks", "false", "--disable_tqdm", "true", "--dataloader_drop_last", "false",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny "pretrained" checkpoint with its tokenizer, as a budget folder leaves it (no budget.json)."""
    folder = tmp_path_factory.mktemp("base")
    text_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_the_recipe_continues_a_checkpoint_on_verse_pairs_and_scores_both_heldout_sets(checkpoint, tmp_path):
    from hf_wsd.scripts import continual_sft

    out = tmp_path / "run"
    summary = continual_sft.main(["--model_name_or_path", str(checkpoint), "--output_dir", str(out), *TINY_SFT])
    assert sorted(budget_dirs(out)) == [4, 8]
    assert set(summary["start"]) == {"upstream", "downstream"}
    for row in summary["budgets"]:
        assert set(row) >= {"budget", "upstream", "downstream"}
    assert summary["budgets"][-1]["downstream"] < summary["start"]["downstream"]  # it learns the task
    record = json.loads((budget_dirs(out)[8] / "budget.json").read_text())
    assert record["schedule"] == "wsd-s" and record["base_model"] == str(checkpoint)


def test_verse_pairs_hold_out_the_chapters_pretraining_held_out():
    from hf_wsd.data import kjv_documents, split_documents
    from hf_wsd.data.instructions import kjv_verse_split

    train, heldout = kjv_verse_split(0.05, seed=42)
    documents = kjv_documents()
    _, held_chapters = split_documents(documents, 0.05, 42)
    heldout_text = " ".join(documents[i] for i in held_chapters)
    assert all(pair["completion"] in heldout_text for pair in heldout[:200])
    assert train[0] == {"prompt": "Continue the verse: In the beginning God created the heaven and the earth.\n",
                        "completion": "And the earth was without form, and void; and darkness was upon the face of "
                                      "the deep. And the Spirit of God moved upon the face of the waters."}


def test_a_row_longer_than_the_model_context_is_refused_before_any_compute():
    from hf_wsd.scripts.continual_sft import check_lengths

    with pytest.raises(ValueError, match="max_length"):
        check_lengths(1024, 128, context=128)
    with pytest.raises(ValueError, match="block_size"):
        check_lengths(128, 256, context=128)
