"""WSDTrainer end to end on a tiny Llama: budgets, schedules, branches, resume and extension (bitwise)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_bitwise_equal, budget_dirs, tiny_config, tiny_data, tiny_model, tiny_trainer, weights

pytestmark = pytest.mark.slow
BUDGETS = (20, 40, 60)
TINY = Path(__file__).parent / "helpers.py"


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd", "cyclic-cosine"])
def test_budget_folders_appear_at_planned_steps_and_load(reference_runs, schedule):
    from transformers import AutoModelForCausalLM

    out = reference_runs(schedule, BUDGETS)
    folders = budget_dirs(out)
    assert sorted(folders) == list(BUDGETS)
    for step, folder in folders.items():
        record = json.loads((folder / "budget.json").read_text())
        assert folder.name == record["name"] == f"step{step}-tokens{step * 4 * 16 / 1000:.3g}K"
        assert record["schedule"] == schedule and record["tokens"] == step * 64
        for name in ("config.json", "model.safetensors", "generation_config.json", "README.md", "lr_schedule.png"):
            assert (folder / name).is_file(), name
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert_bitwise_equal(load_file(folder / "model.safetensors"), model.state_dict() | {})


def test_logged_learning_rate_equals_the_plan(tmp_path):
    trainer = tiny_trainer(tmp_path, BUDGETS, "wsd-s")
    trainer.train()
    logged = [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "learning_rate" in e]
    assert len(logged) == BUDGETS[-1]
    for step, lr in logged:  # the entry of update t (0-based) is logged at global step t + 1
        assert lr == pytest.approx(1e-2 * trainer.plan.lr_ratio(step - 1), rel=1e-12)
    assert dict(logged)[21] == 1e-2  # right after a WSD-S budget: peak again, no rewarmup


def test_prefix_of_a_plan_gives_the_same_checkpoints(reference_runs):
    full = reference_runs("wsd-s", BUDGETS)
    prefix = reference_runs("wsd-s", BUDGETS[:2])
    for step in BUDGETS[:2]:
        assert_bitwise_equal(weights(full, step), weights(prefix, step))


def test_wsd_branches_leave_the_main_branch_untouched(reference_runs):
    branched = reference_runs("wsd", BUDGETS)
    main_only = reference_runs("wsd", BUDGETS[-1:])
    assert_bitwise_equal(weights(branched, BUDGETS[-1]), weights(main_only, BUDGETS[-1]))
    for step in BUDGETS[:-1]:  # each branch equals a one-budget WSD run to that budget
        assert_bitwise_equal(weights(branched, step), weights(reference_runs("wsd", (step,)), step))


def test_a_wsd_branch_of_one_update_leaves_the_main_branch_untouched(reference_runs):
    # Budget 6 decays for round(0.1 × 6) = 1 update: the branch ends back at the step it left from.
    branched = reference_runs("wsd", (6, 12))
    assert_bitwise_equal(weights(branched, 12), weights(reference_runs("wsd", (12,)), 12))


@pytest.mark.parametrize(
    ("schedule", "kill_at"),
    [("wsd-s", 38), ("wsd", 39)],  # inside budget 40's decay window / inside the branch of budget 40
)
def test_sigkill_then_resume_equals_the_uninterrupted_run(reference_runs, tmp_path, schedule, kill_at):
    out = tmp_path / "run"
    command = [sys.executable, str(TINY), str(out), "--budgets", *map(str, BUDGETS), "--schedule", schedule]
    killed = subprocess.run([*command, "--kill-at", str(kill_at), "--save-steps", "10"], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    before = {step: (f / "budget.json").stat().st_mtime_ns for step, f in budget_dirs(out).items()}
    assert 20 in before and 60 not in before

    tiny_trainer(out, BUDGETS, schedule, save_steps=10).train(resume_from_checkpoint=True)

    after = budget_dirs(out)
    assert sorted(after) == list(BUDGETS)
    for step, mtime in before.items():  # budgets written before the crash are not rewritten
        assert (after[step] / "budget.json").stat().st_mtime_ns == mtime
    reference = reference_runs(schedule, BUDGETS)
    for step in BUDGETS:
        assert_bitwise_equal(weights(out, step), weights(reference, step))


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
def test_resuming_with_more_budgets_extends_the_run(reference_runs, tmp_path, schedule):
    tiny_trainer(tmp_path, BUDGETS[:2], schedule).train()
    first = {step: (f / "budget.json").stat().st_mtime_ns for step, f in budget_dirs(tmp_path).items()}
    tiny_trainer(tmp_path, BUDGETS, schedule).train(resume_from_checkpoint=True)
    folders = budget_dirs(tmp_path)
    assert sorted(folders) == list(BUDGETS)
    assert {s: (folders[s] / "budget.json").stat().st_mtime_ns for s in first} == first
    assert_bitwise_equal(weights(tmp_path, 60), weights(reference_runs(schedule, BUDGETS), 60))


def test_conflicting_max_steps_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        tiny_config(tmp_path, BUDGETS, max_steps=100)


def test_token_budgets_without_a_sequence_length_fail_before_training(tmp_path):
    from hf_wsd import WSDTrainer

    stream = tiny_data().to_iterable_dataset()
    args = tiny_config(tmp_path, ["2K", "4K"], budget_unit="tokens")
    with pytest.raises(ValueError, match="seq_length"):
        WSDTrainer(model=tiny_model(), args=args, train_dataset=stream)
    args = tiny_config(tmp_path, ["2K", "4K"], budget_unit="tokens", seq_length=16)
    trainer = WSDTrainer(model=tiny_model(), args=args, train_dataset=stream)
    assert [b.step for b in trainer.plan.budgets] == [31, 62] and trainer.args.max_steps == 62


def test_an_output_dir_holding_another_run_is_not_silently_reused(tmp_path):
    tiny_trainer(tmp_path, BUDGETS[:1], "wsd-s").train()
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        tiny_trainer(tmp_path, (30,), "wsd-s").train()
    trainer = tiny_trainer(tmp_path, (30,), "wsd-s", overwrite_output_dir=True)
    trainer.train()
    assert 30 in budget_dirs(tmp_path)


def test_a_scheduler_passed_by_the_user_is_rejected(tmp_path):
    from hf_wsd import WSDTrainer

    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(ValueError, match="optimizers"):
        WSDTrainer(model=model, args=tiny_config(tmp_path, BUDGETS), optimizers=(optimizer, scheduler))


def test_a_heldout_set_smaller_than_one_dropped_batch_fails_before_training(tmp_path):
    from hf_wsd import WSDTrainer

    args = tiny_config(tmp_path, BUDGETS, budget_eval=True, dataloader_drop_last=True, per_device_eval_batch_size=32)
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data(), eval_dataset=tiny_data(n=8))
