"""Nothing lost at any kill point: SIGKILL a tiny run between a budget's folder and its evaluation, inside a WSD
branch's budget, and with an upload in flight; `train(resume_from_checkpoint=True)` then leaves every budget once,
bitwise equal to the uninterrupted run, evaluated, carded, and published once with `main` on the newest."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HUB_TOKEN, assert_bitwise_equal, budget_dirs, tiny_run, weights

pytestmark = pytest.mark.slow
BUDGETS = (20, 40, 60)
SCRIPT = Path(__file__).parent / "helpers.py"
BEFORE_EVALUATION, AFTER_PUBLISHER_QUEUED = 200, -300  # subscriber priorities of the kill


def killed_run(out: Path, schedule: str, budget: int, priority: int, *extra: str, env=None) -> None:
    command = [sys.executable, str(SCRIPT), str(out), "--budgets", *map(str, BUDGETS), "--schedule", schedule,
               "--save-steps", "10", "--eval", "--kill-on-budget", str(budget), "--kill-priority", str(priority),
               *extra]
    result = subprocess.run(command, capture_output=True, env={**os.environ, **(env or {})})
    assert result.returncode == -9, result.stderr.decode()[-3000:]


def assert_complete_and_equal(out: Path, reference: Path) -> None:
    folders = budget_dirs(out)
    assert sorted(folders) == list(BUDGETS)
    for step, folder in folders.items():
        assert_bitwise_equal(weights(out, step), weights(reference, step))
        assert (folder / "eval_results.json").is_file(), folder.name
        assert "heldout" in (folder / "README.md").read_text(), folder.name  # the card shows the evaluation


def test_a_kill_between_a_budget_folder_and_its_evaluation_loses_nothing(tmp_path, reference_runs, caplog):
    out = tmp_path / "run"
    killed_run(out, "wsd-s", 40, BEFORE_EVALUATION)
    assert sorted(budget_dirs(out)) == [20, 40]
    assert not (budget_dirs(out)[40] / "eval_results.json").exists()
    # The folder is complete before the checkpoint that would let a resume skip past the budget.
    assert not (out / "checkpoint-40").exists() and (out / "checkpoint-30").is_dir()
    (out / "budgets" / ".tmp-step60-tokens3.84K").mkdir()  # what a kill while writing a folder leaves behind

    with caplog.at_level(logging.INFO, logger="hf_wsd"):
        tiny_run(out, BUDGETS, "wsd-s", evaluate=True, save_steps=10).train(resume_from_checkpoint=True)

    assert "half-written" in caplog.text and not (out / "budgets" / ".tmp-step60-tokens3.84K").exists()
    assert "step40-tokens2.56K was written before this resume" in caplog.text  # recomputed, not rewritten
    assert_complete_and_equal(out, reference_runs("wsd-s", BUDGETS))


def test_a_kill_in_a_wsd_branch_budget_before_its_evaluation_loses_nothing(tmp_path, reference_runs, caplog):
    out = tmp_path / "run"
    killed_run(out, "wsd", 20, BEFORE_EVALUATION)  # the branch of budget 20: updates 18–20, after checkpoint-18
    assert sorted(budget_dirs(out)) == [20] and not (budget_dirs(out)[20] / "eval_results.json").exists()

    with caplog.at_level(logging.INFO, logger="hf_wsd"):
        tiny_run(out, BUDGETS, "wsd", evaluate=True, save_steps=10).train(resume_from_checkpoint=True)

    # A written branch is not run again: the budget is evaluated from its folder when the run resumes.
    assert "written before the interruption but not evaluated or carded" in caplog.text
    assert_complete_and_equal(out, reference_runs("wsd", BUDGETS))


def test_uploads_cut_short_by_a_kill_are_published_on_resume(tmp_path, reference_runs, local_hub, monkeypatch):
    repo, out = "tester/chaos", tmp_path / "run"
    local_hub.commit_delay = 0.5  # a slow Hub: the kill lands while an upload is in flight
    env = {"HF_ENDPOINT": local_hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": HUB_TOKEN}
    killed_run(out, "wsd-s", 40, AFTER_PUBLISHER_QUEUED, "--push", repo, env=env)
    assert local_hub.commit_count(repo, "main") < 2  # main was not yet moved to budget 40

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    tiny_run(out, BUDGETS, "wsd-s", evaluate=True, push=repo, save_steps=10).train(resume_from_checkpoint=True)

    assert_complete_and_equal(out, reference_runs("wsd-s", BUDGETS))
    for folder in budget_dirs(out).values():  # one commit per branch, holding exactly the local folder
        remote = {k: v for k, v in local_hub.branch_files(repo, folder.name).items() if k != ".gitattributes"}
        local = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "training_args.bin"}
        assert remote == local, folder.name
        assert local_hub.commit_count(repo, folder.name) == 1, folder.name
    newest = budget_dirs(out)[60]
    assert local_hub.branch_files(repo, "main")["budget.json"] == (newest / "budget.json").read_bytes()


def test_a_finished_run_resumed_trains_nothing_and_publishes_what_it_could_not(tmp_path, local_hub, monkeypatch):
    from hf_wsd.publishing import UnpublishedBudgetsError

    from transformers import TrainerCallback

    class RevokeAccess(TrainerCallback):  # after the check before step 0: every budget is refused, stays on disk
        def on_train_begin(self, *args, **kwargs):
            local_hub.forbidden_namespaces.add("tester")

    repo, out = "tester/outage", tmp_path / "run"
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    with pytest.raises(UnpublishedBudgetsError):
        tiny_run(out, BUDGETS[:2], "wsd-s", push=repo, save_steps=10, callbacks=[RevokeAccess()]).train()
    local_hub.forbidden_namespaces.clear()
    trainer = tiny_run(out, BUDGETS[:2], "wsd-s", push=repo, save_steps=10)
    output = trainer.train(resume_from_checkpoint=True)
    assert output.global_step == 40 and not (out / "checkpoint-41").exists()  # no update past the plan
    for folder in budget_dirs(out).values():
        assert local_hub.commit_count(repo, folder.name) == 1
    assert local_hub.branch_files(repo, "main")["budget.json"] == (budget_dirs(out)[40] / "budget.json").read_bytes()
