"""The recipe end to end on a tiny model: every budget evaluated (lm-eval) and published to a local Hub."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from helpers import HUB_TOKEN
from conftest import TINY_RECIPE

from hf_wsd.scripts import pretrain

pytestmark = pytest.mark.slow


def test_recipe_evaluates_and_publishes_every_budget(tmp_path, small_corpus, local_hub, monkeypatch, caplog):
    from huggingface_hub import HfApi, ModelCard, hf_hub_download
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    trainer = pretrain.main([
        "--corpus", str(small_corpus), "--output_dir", str(out), "--budgets", "10", "20", "30",
        "--per_device_train_batch_size", "8", "--push_to_hub", "true", "--hub_model_id", "tester/tiny-wsd",
        *TINY_RECIPE, "--block_size", "128",  # the bundled tasks' passages need a 128-token context
    ])
    folders = sorted((p for p in (out / "budgets").iterdir() if p.name.startswith("step")),
                     key=lambda p: json.loads((p / "budget.json").read_text())["step"])
    assert [json.loads((f / "budget.json").read_text())["step"] for f in folders] == [10, 20, 30]

    # Evaluation: held-out loss and both bundled lm-eval tasks, in the file and in the Trainer's log.
    heldout = []
    for folder in folders:
        results = json.loads((folder / "eval_results.json").read_text())
        metrics = {(r["task"], r["metric"]): r for r in results["results"]}
        assert {("wsd_next_passage", "acc"), ("wsd_cloze", "acc")} <= metrics.keys()
        assert metrics[("wsd_next_passage", "acc")]["samples"] == 24
        assert ModelCard.load(folder / "README.md").data.eval_results  # the local card shows them too
        heldout.append(next(r["value"] for r in results["results"] if r["task"] == "heldout" and r["metric"] == "loss"))
    assert heldout[-1] < heldout[0]  # later budgets are better models
    logged = [e for e in trainer.state.log_history if any(k.startswith("budget/") for k in e)]
    assert len({e.get("budget/step") for e in logged if "budget/step" in e}) == 3

    # Publishing: a branch per budget + main (= the newest), weights equal to the local folders.
    refs = {ref.name for ref in HfApi(endpoint=local_hub.endpoint).list_repo_refs("tester/tiny-wsd").branches}
    assert refs == {"main", *(f.name for f in folders)}
    for folder in folders:
        remote = AutoModelForCausalLM.from_pretrained("tester/tiny-wsd", revision=folder.name)
        local = load_file(folder / "model.safetensors")
        assert all(torch.equal(remote.state_dict()[k], v) for k, v in local.items())
        card = ModelCard.load(hf_hub_download("tester/tiny-wsd", "README.md", revision=folder.name))
        assert card.data.eval_results and any(r.dataset_name for r in card.data.eval_results)
        assert hf_hub_download("tester/tiny-wsd", "lr_schedule.png", revision=folder.name)
    main = local_hub.branch_files("tester/tiny-wsd", "main")
    assert main["budget.json"] == (folders[-1] / "budget.json").read_bytes()

    # The token reaches no file of the run and no log line.
    for path in out.rglob("*"):
        if path.is_file():
            assert HUB_TOKEN.encode() not in path.read_bytes(), path
    assert HUB_TOKEN not in caplog.text
