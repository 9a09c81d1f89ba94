"""The budget model card: YAML metadata (model-index, tags, library), the budgets table, idempotence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import write_budget_folders
from huggingface_hub import ModelCard, constants

from hf_wsd.card import TEMPLATE_PATH, render_model_card, write_model_card

REPO = "my-org/tiny-wsd"


@pytest.fixture(autouse=True)
def _default_endpoint(monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")


@pytest.fixture
def fake_budget_dirs(tmp_path) -> list[Path]:
    """Three evaluated budget folders of a WSD-S run, without weights (the card does not read them)."""
    return write_budget_folders(tmp_path / "run", models=None)


def test_one_template_ships_with_the_package_and_model_cards_names_it():
    repo = Path(__file__).parents[1]
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.parent.name == "hf_wsd"
    assert "templates/*.md" in (repo / "pyproject.toml").read_text()  # shipped as package data
    assert sorted(p.name for p in (repo / "model_cards").iterdir()) == ["README.md"]  # no second copy
    assert "hf_wsd/templates/budget_card.md" in (repo / "model_cards" / "README.md").read_text()


def test_card_metadata_carries_eval_results_tags_and_library(fake_budget_dirs):
    folder = fake_budget_dirs[1]
    card = ModelCard.load(write_model_card(folder, repo_id=REPO))
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    assert data.tags == ["hf-wsd", "wsd-s"]
    assert data.model_name == f"tiny-wsd-{folder.name}"
    assert data.base_model is None
    expected = json.loads((folder / "eval_results.json").read_text())["results"]
    assert [(r.task_type, r.task_name, r.dataset_type, r.dataset_name, r.metric_type, r.metric_value)
            for r in data.eval_results] == [
        (r["task_type"], r["task"], r["dataset_type"], r["dataset_name"], r["metric"], r["value"]) for r in expected
    ]
    assert "model-index" in data.to_dict()


def test_card_tables_the_budgets_so_far_with_revision_links(fake_budget_dirs):
    first, second, third = (folder.name for folder in fake_budget_dirs)
    text = ModelCard.load(write_model_card(fake_budget_dirs[1], repo_id=REPO)).text
    rows = [line for line in text.splitlines() if line.startswith(("| step", "| **step"))]
    assert [row.split("|")[1].strip() for row in rows] == [first, f"**{second}**"]  # later budgets are not listed
    assert f"[`{first}`](https://huggingface.co/{REPO}/tree/{first})" in rows[0]
    assert f"[`{second}`](https://huggingface.co/{REPO}/tree/{second})" in rows[1]
    header = next(line for line in text.splitlines() if line.startswith("| budget | updates"))
    assert "heldout perplexity" in header and "tiny_cloze acc" in header
    assert "| 50 | 0.3 |" in rows[1]  # this budget's eval results in its row
    assert f"tree/{third}" not in text


def test_card_body_has_numbers_plots_loading_and_citation(fake_budget_dirs):
    folder = fake_budget_dirs[1]
    text = ModelCard.load(write_model_card(folder, repo_id=REPO)).text
    assert "| optimizer updates | 200 |" in text
    assert "| tokens | 410K (409,600) |" in text
    assert "| decay window | updates 190–200 (10 updates, linear) |" in text
    assert "peak 0.0003" in text
    assert "![Learning-rate schedule of the run, budgets marked](lr_schedule.png)" in text
    assert "![Training loss up to this budget](loss_curve.png)" in text
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", revision="{folder.name}")' in text
    assert f'AutoTokenizer.from_pretrained("{REPO}", revision="{folder.name}")' in text
    assert "arXiv:2410.05192" in text and "River Valley Loss Landscape" in text


def test_card_before_publishing_points_at_the_local_folder(fake_budget_dirs, tmp_path):
    folder = tmp_path / fake_budget_dirs[0].name
    shutil.copytree(fake_budget_dirs[0], folder)
    (folder / "eval_results.json").unlink()
    (folder / "loss_curve.png").unlink()
    card = ModelCard.load(write_model_card(folder))
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "This budget was not evaluated." in card.text
    assert "loss_curve.png" not in card.text
    assert f'from_pretrained("budgets/{folder.name}")' in card.text
    assert "huggingface.co/" not in card.text.split("## Citation")[0]


def test_rendering_twice_gives_the_same_bytes(fake_budget_dirs):
    path = write_model_card(fake_budget_dirs[2], repo_id=REPO)
    first = path.read_bytes()
    assert write_model_card(fake_budget_dirs[2], repo_id=REPO).read_bytes() == first
    assert str(render_model_card(fake_budget_dirs[2], repo_id=REPO)) + "\n" == first.decode()


def test_base_model_is_in_the_metadata_and_linked(fake_budget_dirs):
    folder = fake_budget_dirs[0]
    record = json.loads((folder / "budget.json").read_text())
    (folder / "budget.json").write_text(json.dumps({**record, "base_model": "HuggingFaceTB/SmolLM2-135M"}))
    card = ModelCard.load(write_model_card(folder, repo_id=REPO))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert "[HuggingFaceTB/SmolLM2-135M](https://huggingface.co/HuggingFaceTB/SmolLM2-135M)" in card.text


def test_a_local_base_model_stays_out_of_the_metadata(fake_budget_dirs):
    folder = fake_budget_dirs[0]
    record = json.loads((folder / "budget.json").read_text())
    local = "runs/llama-tiny-wsd-s/budgets/step800-tokens1.64M"
    (folder / "budget.json").write_text(json.dumps({**record, "base_model": local}))
    card = ModelCard.load(write_model_card(folder, repo_id=REPO))
    assert card.data.base_model is None  # the Hub's base_model metadata must be a repo id
    assert local in card.text


def test_card_without_budget_json_says_what_to_write_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="budget.json does not exist"):
        write_model_card(tmp_path)


def test_the_forecast_made_before_the_decay_is_shown_against_the_measured_loss(fake_budget_dirs):
    folder = fake_budget_dirs[1]  # train_loss 3.5
    forecast = {"predicted_decay_mean": 3.6, "decay_low": 3.4, "decay_high": 3.8, "law": "momentum",
                "fit_until_step": 180}
    (folder / "forecast.json").write_text(json.dumps(forecast))
    text = ModelCard.load(write_model_card(folder, repo_id=REPO)).text
    assert "| training loss forecast before the decay | 3.6000 (90 % band 3.4000–3.8000, momentum law fitted up to " \
           "update 180); measured 3.5000 (-2.9 %) |" in text
    assert "forecast" not in ModelCard.load(write_model_card(fake_budget_dirs[0], repo_id=REPO)).text.lower()
