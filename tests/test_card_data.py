"""What a budget's card says it is: the data it was trained on (``datasets``, name, license, language), the
training loss of exactly its decay window, and the learning rate its last update really had."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from helpers import tiny_trainer

from hf_wsd import card_data
from hf_wsd.card import render_model_card
from hf_wsd.card_data import decay_data_text

BUDGETS = (20, 40)


def _budget(out, step):
    folder = next((out / "budgets").glob(f"step{step}-*"))
    return folder, json.loads((folder / "budget.json").read_text())


@pytest.mark.slow
def test_the_card_says_what_the_run_was_trained_on_and_what_its_numbers_are(tmp_path):
    """Logged every 7 updates, the budget's train_loss is still the mean over exactly its decay window: the same
    number as the per-update losses of a run logged every update (logging changes no weight)."""
    fields = dict(card_dataset_name="tiny random blocks", card_datasets=["someone/tiny-blocks"],
                  card_license="public domain", card_language=["en"], decay_fraction=0.2, schedule="wsd")
    every = tiny_trainer(tmp_path / "every", BUDGETS, logging_steps=1, **fields)
    every.train()
    sparse = tiny_trainer(tmp_path / "sparse", BUDGETS, logging_steps=7, **fields)
    sparse.train()
    for step in BUDGETS:
        _, reference = _budget(tmp_path / "every", step)
        folder, record = _budget(tmp_path / "sparse", step)
        start = record["decay_start"]
        per_update = [loss for s, loss, _ in reference["losses"]]
        assert [s for s, _, _ in reference["losses"]] == list(range(start + 1, step + 1))
        assert record["train_loss_updates"] == [start + 1, step]  # logged at the decay start: the window exactly
        assert record["train_loss"] == pytest.approx(sum(per_update) / len(per_update), rel=1e-6)
        assert record["training_data"] == {"name": "tiny random blocks", "datasets": ["someone/tiny-blocks"],
                                           "license": "public domain", "language": ["en"]}

        card = str(render_model_card(folder))
        metadata = yaml.safe_load(card.split("---")[1])
        assert metadata["datasets"] == ["someone/tiny-blocks"] and metadata["language"] == ["en"]
        assert (metadata["license"], metadata["license_name"]) == ("other", "public-domain")
        assert "| trained on | tiny random blocks (public domain; en) |" in card
        assert f"training loss over the decay window (mean of updates {start + 1}–{step})" in card
        last_lr = reference["losses"][-1][2]  # the LR of the budget's last update: 1/(D+1) of the peak (linear), not 0
        share = 1 / (record["decay_steps"] + 1)
        assert last_lr == pytest.approx(1e-2 * share)
        assert f"last update at {last_lr:.3g} ({100 * share:.3g} % of peak); decay floor 0" in card
        assert "decayed to 0" not in card


def test_a_card_without_a_log_at_the_decay_start_says_which_updates_its_loss_covers(tmp_path, fake_budget_dirs):
    folder = fake_budget_dirs[1]
    record = json.loads((folder / "budget.json").read_text())
    start, step = record["decay_start"], record["step"]
    record["train_loss_updates"] = [start - 5, step]
    (folder / "budget.json").write_text(json.dumps(record))
    card = str(render_model_card(folder))
    assert f"training loss over updates {start - 5:,}–{step:,} (its logging intervals; the decay window is " in card
    assert "trained on" not in card  # nothing recorded, nothing claimed


def test_recipes_fill_what_they_know_of_the_corpus_and_never_overwrite_the_user():
    args = SimpleNamespace(card_dataset_name=None, card_datasets=None, card_license=None, card_language=None)
    card_data.fill_known(args, "kjv", ["HuggingFaceTB/smollm-corpus", "./local_texts"])
    assert "King James" in args.card_dataset_name and args.card_license == "public domain"
    assert args.card_language == ["en"] and args.card_datasets == ["HuggingFaceTB/smollm-corpus"]
    mine = SimpleNamespace(card_dataset_name="mine", card_datasets=None, card_license="mit", card_language=["fr"])
    card_data.fill_known(mine, "HuggingFaceFW/fineweb-edu")
    assert (mine.card_dataset_name, mine.card_datasets, mine.card_license, mine.card_language) == (
        "mine", ["HuggingFaceFW/fineweb-edu"], "mit", ["fr"])
    assert card_data.license_metadata("apache-2.0") == {"license": "apache-2.0"}
    assert card_data.hub_datasets({"datasets": ["a/b", "../x", "local"]}) == ["a/b"]


def test_a_mixtures_main_source_is_named():
    mixture = {"window": [90, 100], "sources": [{"name": "main", "weight": 0.7, "tokens": 14300},
                                                 {"name": "quality", "weight": 0.3}]}
    assert decay_data_text(mixture, "kjv").startswith("main (kjv) 70 % (14.3K tokens), quality 30 %")
    assert decay_data_text(mixture).startswith("main (the training data) 70 %")
