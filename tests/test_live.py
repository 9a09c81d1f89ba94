"""Live runs: budgets added or removed while a run trains (bitwise equal to planning them up front), refusals that
name the update a change needed, crash and resume after a change, `hf-wsd status`, the progress bar, 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from helpers import (
    RequestAt, assert_bitwise_equal, budget_dirs, tiny_trainer, weights, write_budget_folders,
)
from hf_wsd import live, runs
from hf_wsd.plan import BudgetPlan
from hf_wsd.status import phase_label, read_status

TINY = Path(__file__).parent / "helpers.py"
CLI = [sys.executable, "-m", "hf_wsd.cli"]


def plan(budgets, schedule="wsd-s", **kwargs):
    return BudgetPlan([str(b) for b in budgets], schedule=schedule, warmup_steps=4, tokens_per_update=64, **kwargs)


def decisions(out) -> list[dict]:
    return runs.read_run(out).get("changes", [])


# ----------------------------------------------------------------------------------------------- plan changes
def test_a_budget_between_two_moves_the_next_wsd_s_window_and_a_late_request_names_the_update_it_needed():
    old = plan([20, 60])
    new = live.changed_plan(old, "add", "40", "steps")
    assert new == plan([20, 40, 60])
    live.check_timing(old, new, 38)  # updates 0…37 are the same under both plans
    with pytest.raises(ValueError) as refused:
        live.check_timing(old, new, 45)
    message = str(refused.value)
    assert "needed to arrive by update 38" in message and "done 45 updates" in message
    assert "step60-tokens3.84K's decay window would move from 56–60 to 58–60" in message
    assert "share of the period" in message
    fixed = plan([20, 60], decay_steps=2)  # fixed decay lengths: the next window stays where it is
    assert "would move" not in "; ".join(t for _, t in live.plan_changes(fixed, live.changed_plan(fixed, "add", 40,
                                                                                                   "steps")))


def test_token_budgets_convert_with_the_runs_tokens_per_update():
    steps = plan([20, 60])
    assert [b.step for b in live.changed_plan(steps, "add", "2.56K", "tokens").budgets] == [20, 40, 60]
    tokens = BudgetPlan(["1280", "3840"], budget_unit="tokens", tokens_per_update=64, warmup_steps=4)
    added = live.changed_plan(tokens, "add", "40", "steps")
    assert added.budget_values == ("1280", "2560", "3840")  # the plan's unit
    assert live.changed_plan(tokens, "add", "2.56K", "tokens").budgets == added.budgets
    with pytest.raises(ValueError, match="tokens per update"):
        live.changed_plan(BudgetPlan(["20"]), "add", "1K", "tokens")


def test_a_budget_whose_decay_started_cannot_be_removed_and_the_last_one_cannot_go():
    old = plan([20, 40, 60])
    shorter = live.changed_plan(old, "remove", "60", "steps")
    live.check_timing(old, shorter, 40)  # the run may end at 40: nothing of 60's window has run yet
    with pytest.raises(ValueError, match="needed to arrive by update 40"):
        live.check_timing(old, shorter, 57)
    with pytest.raises(ValueError, match="already in the plan"):
        live.changed_plan(old, "add", "40", "steps")
    with pytest.raises(ValueError, match="no budget at update 50"):
        live.changed_plan(old, "remove", "50", "steps")
    with pytest.raises(ValueError, match="at least one budget"):
        live.changed_plan(plan([20]), "remove", "20", "steps")


def test_a_wsd_branch_inserted_before_a_checkpoint_is_not_resumed_past():
    # Main-path LRs agree up to 54, but a run resumed past 36 would never take the new branch of budget 40.
    assert runs.first_divergence(plan([20, 60], "wsd"), plan([20, 40, 60], "wsd")) == 36
    assert runs.first_divergence(plan([20, 40], "wsd"), plan([20, 40, 60], "wsd")) == 36  # 40 becomes a branch


def test_progress_labels_name_the_phase_and_the_next_budget():
    wsd_s, wsd = plan([20, 40, 60]), plan([20, 40, 60], "wsd")
    assert phase_label(wsd_s, 0) == "warmup → step20 (1/3)"
    assert phase_label(wsd_s, 10) == "stable → step20 (1/3)"
    assert phase_label(wsd_s, 39) == "decay step40 (2/3)"
    assert phase_label(wsd_s, 60) == "done (3/3)"
    assert phase_label(wsd, 19, branch=0) == "branch decay step20 (1/3)"
    assert phase_label(wsd, 30) == "stable → step40 (2/3)"


def test_requests_for_another_run_or_not_requests_at_all_are_refused_and_recorded(tmp_path):
    record = runs.new_run_record(plan([20, 60]))
    runs.write_json(tmp_path / runs.PLAN_FILE, record)
    request = live.write_request(tmp_path, "add", "40")
    (tmp_path / runs.REQUESTS_DIR / "9-junk.json").write_text("{not json")
    updated = live.process_pending(tmp_path, plan([20, 60]), {**record, "run_id": "another"}, step=3)
    assert [e["status"] for e in updated["changes"]] == ["refused", "refused"]
    assert f"written for run {request.run_id}" in updated["changes"][0]["message"]
    assert "not a budget request" in updated["changes"][1]["message"]
    assert [p.name for p in (tmp_path / runs.REQUESTS_DIR).iterdir()] == [live.REFUSED_DIR]  # the junk, kept aside
    assert live.pending_requests(tmp_path) == []


def test_budget_cli_writes_requests_in_the_runs_unit_and_refuses_what_the_plan_cannot_take(tmp_path, capsys):
    from hf_wsd.cli import main

    runs.write_json(tmp_path / runs.PLAN_FILE, runs.new_run_record(plan([20, 40, 60])))
    assert main(["budget", "remove", str(tmp_path), "60"]) == 0
    assert main(["budget", "add", str(tmp_path), "3.2K", "--unit", "tokens", "--wait", "--timeout", "0.2"]) == 3
    assert [(r.action, r.value, r.unit) for r in live.pending_requests(tmp_path)] == [
        ("remove", "60", "steps"), ("add", "3.2K", "tokens")]
    assert main(["budget", "remove", str(tmp_path), "60"]) == 2  # already removed by the pending request
    assert "no budget at update 60" in capsys.readouterr().err
    assert main(["budget", "add", str(tmp_path), "41"]) == 2  # a decay of 0 updates (10 % of a 1-update period)
    capsys.readouterr()
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "not started" and len(status["requests"]["pending"]) == 2


def test_status_names_evaluated_and_published_budgets_with_their_headline_metric(tmp_path):
    out = tmp_path / "run"
    folders = write_budget_folders(out, None, steps=(100, 200, 400))
    saved = runs.read_budget(folders[0])
    runs.write_json(out / runs.PLAN_FILE, {"run_id": "run0", "plan": saved["plan"]})
    (folders[2] / runs.EVAL_FILE).unlink()
    runs.write_json(out / "budgets" / runs.LEDGER_FILE, {"repo_id": "me/m", "published": [
        {"repo_id": "me/m", "budget": folders[0].name, "branch": folders[0].name, "step": 100, "commit": "c"}]})
    status = read_status(out)
    assert [b["state"] for b in status["budgets"]] == ["published", "evaluated", "written"]
    assert status["state"] == "finished" and {p["state"] for p in status["phases"]} == {"done"}
    assert status["budgets"][1]["metric"]["metric"] == "perplexity"  # no held-out loss: the first result


# ----------------------------------------------------------------------------------------------- live changes
@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
def test_a_budget_added_at_update_5_equals_a_run_planned_with_it(reference_runs, tmp_path, schedule):
    tiny_trainer(tmp_path, [20, 60], schedule, callbacks=[RequestAt(5, tmp_path, "40")]).train()
    reference = reference_runs(schedule, (20, 40, 60))
    assert sorted(budget_dirs(tmp_path)) == [20, 40, 60]
    for step in (20, 40, 60):
        assert_bitwise_equal(weights(tmp_path, step), weights(reference, step))
    [change] = decisions(tmp_path)
    assert change["status"] == "accepted" and change["step"] == 5
    assert runs.read_run(tmp_path)["plan"]["budgets"] == ["20", "40", "60"]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
def test_a_budget_added_beyond_the_last_extends_the_run(reference_runs, tmp_path, schedule):
    trainer = tiny_trainer(tmp_path, [20, 40], schedule, callbacks=[RequestAt(30, tmp_path, "60")])
    trainer.train()
    assert trainer.state.global_step == 60 and sorted(budget_dirs(tmp_path)) == [20, 40, 60]
    reference = reference_runs(schedule, (20, 40, 60))
    for step in (20, 40, 60):
        assert_bitwise_equal(weights(tmp_path, step), weights(reference, step))


@pytest.mark.slow
def test_removing_the_last_budget_before_its_decay_ends_the_run_at_the_one_before(reference_runs, tmp_path):
    trainer = tiny_trainer(tmp_path, [20, 40, 60], callbacks=[RequestAt(30, tmp_path, "60", action="remove")])
    trainer.train()
    assert trainer.state.global_step == 40 and sorted(budget_dirs(tmp_path)) == [20, 40]
    assert_bitwise_equal(weights(tmp_path, 40), weights(reference_runs("wsd-s", (20, 40, 60)), 40))
    assert read_status(tmp_path)["state"] == "finished"


@pytest.mark.slow
def test_a_request_too_late_for_its_decay_window_is_refused_and_the_run_goes_on(reference_runs, tmp_path):
    tiny_trainer(tmp_path, [20, 60], callbacks=[RequestAt(45, tmp_path, "40")]).train()
    assert sorted(budget_dirs(tmp_path)) == [20, 60]
    assert_bitwise_equal(weights(tmp_path, 60), weights(reference_runs("wsd-s", (20, 60)), 60))
    [refused] = read_status(tmp_path)["requests"]["decided"]
    assert refused["status"] == "refused" and refused["step"] == 45
    assert "add 40 refused after update 45" in refused["message"]
    assert "needed to arrive by update 38" in refused["message"]


@pytest.mark.slow
def test_the_progress_bar_names_the_phase_and_the_next_budget(tmp_path):
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            bars = [c.training_bar for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)]
            seen.append((state.global_step, bars[0].desc.removesuffix(": ")))  # tqdm appends ": "

    trainer = tiny_trainer(tmp_path, [20, 40], "wsd", disable_tqdm=False, callbacks=[RequestAt(5, tmp_path, "30")])
    trainer.add_callback(Watch())  # after the trainer's own callbacks: it sees this update's label
    trainer.train()
    seen = set(seen)
    assert {(2, "warmup → step20 (1/2)"), (10, "stable → step20 (1/3)"), (22, "stable → step30 (2/3)")} <= seen
    assert {(19, "branch decay step20 (1/3)"), (28, "branch decay step30 (2/3)"), (38, "decay step40 (3/3)")} <= seen


# ----------------------------------------------------------------------------------------------- other processes
@pytest.mark.slow
def test_kill_and_resume_after_an_accepted_request_keeps_the_new_plan(reference_runs, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(TINY), str(out), "--budgets", "20", "60", "--schedule", "wsd"]
    killed = subprocess.run([*command, "--request-at", "5", "40", "--kill-at", "39"], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]  # killed inside the new budget's branch
    assert sorted(budget_dirs(out)) == [20] and (out / "checkpoint-36").is_dir()  # the new branch point's

    tiny_trainer(out, [20, 60], "wsd").train(resume_from_checkpoint=True)  # the launch config, without 40

    assert runs.read_run(out)["plan"]["budgets"] == ["20", "40", "60"]
    reference = reference_runs("wsd", (20, 40, 60))
    for step in (40, 60):
        assert_bitwise_equal(weights(out, step), weights(reference, step))


@pytest.mark.slow
def test_status_and_budget_add_from_the_cli_while_a_run_trains_and_after(reference_runs, tmp_path):
    out, flag = tmp_path / "run", tmp_path / "go"
    training = subprocess.Popen([sys.executable, str(TINY), str(out), "--budgets", "20", "60", "--wait-at", "5",
                                 str(flag)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{flag}.waiting").exists():
            assert training.poll() is None and time.monotonic() < deadline, training.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        running = json.loads(subprocess.run([*CLI, "status", str(out), "--json"], capture_output=True,
                                            check=True).stdout)
        assert running["state"] == "training" and running["step"] == 4  # the last log before the pause
        assert running["phase"]["kind"] == "stable" and running["label"] == "stable → step20 (1/2)"
        assert [p["state"] for p in running["phases"]][:3] == ["done", "current", "planned"]
        assert [b["state"] for b in running["budgets"]] == ["planned", "planned"]
        assert all(b["eta_seconds"] is not None for b in running["budgets"])

        added = subprocess.run([*CLI, "budget", "add", str(out), "40"], capture_output=True, text=True)
        assert added.returncode == 0 and "request written" in added.stdout, added.stderr
        assert len(json.loads(subprocess.run([*CLI, "status", str(out), "--json"], capture_output=True,
                                             check=True).stdout)["requests"]["pending"]) == 1
        flag.touch()
        assert training.wait(timeout=300) == 0, training.stderr.read().decode()[-2000:]
    finally:
        training.kill()

    finished = json.loads(subprocess.run([*CLI, "status", str(out), "--json"], capture_output=True,
                                         check=True).stdout)
    assert finished["state"] == "finished" and finished["step"] == 60 and finished["phase"] is None
    assert [b["state"] for b in finished["budgets"]] == ["written"] * 3
    assert {p["state"] for p in finished["phases"]} == {"done"} and not finished["requests"]["pending"]
    assert [c["step"] for c in finished["requests"]["decided"]] == [5]
    reference = reference_runs("wsd-s", (20, 40, 60))
    for step in (20, 40, 60):
        assert_bitwise_equal(weights(out, step), weights(reference, step))
    late = subprocess.run([*CLI, "budget", "add", str(out), "50"], capture_output=True, text=True)
    assert late.returncode == 2 and "needed to arrive by update 49" in late.stderr
    text = subprocess.run([*CLI, "status", str(out)], capture_output=True, text=True, check=True).stdout
    assert "finished, update 60 of 60" in text and "step40-tokens2.56K" in text

    # A finished run takes a request when it resumes: WSD-S trains on from its last budget.
    assert subprocess.run([*CLI, "budget", "add", str(out), "80"], capture_output=True).returncode == 0
    tiny_trainer(out, [20, 60]).train(resume_from_checkpoint=True)
    assert [c["status"] for c in decisions(out)] == ["accepted", "accepted"]
    assert_bitwise_equal(weights(out, 80), weights(reference_runs("wsd-s", (20, 40, 60, 80)), 80))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_take_a_request_once(tmp_path):
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"), "--dynamo_backend", "no",
              "--main_process_port", "0"]
    result = subprocess.run([*launch, str(TINY), str(out), "--budgets", "10", "30", "--request-at", "3", "20"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [change] = decisions(out)
    assert change["status"] == "accepted" and change["step"] == 3
    assert sorted(budget_dirs(out)) == [10, 20, 30]
    single = tmp_path / "single"
    tiny_trainer(single, [10, 20, 30], per_device_train_batch_size=8).train()  # the same global batch
    for step in (20, 30):
        two, one = weights(out, step), weights(single, step)
        for key in one:
            assert torch.allclose(two[key], one[key], atol=1e-5, rtol=0), f"{step}/{key}"
