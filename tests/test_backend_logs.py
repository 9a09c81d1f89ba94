"""What the logging backends see of a WSD run: main curves with strictly increasing steps, each side branch under
its own tags, budget metrics once, ``epoch`` as passes over the training data."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from helpers import tiny_run

pytestmark = pytest.mark.slow
BUDGETS = (20, 40)  # WSD: budget 20 is a side branch (updates 17–20), then the main branch trains 17–40


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` in write order, read back from TensorBoard's event files."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(logdir), size_guidance={accumulator.SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


class RecordingCallback:
    """What a backend's ``on_log`` receives: ``(global_step, logs)``."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Recorder(TrainerCallback):
            def __init__(self):
                self.calls = []

            def on_log(self, args, state, control, logs=None, **kwargs):
                self.calls.append((state.global_step, dict(logs or {})))

        return Recorder()


def test_wsd_branches_log_under_their_own_tags_and_main_steps_increase(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    recorder = RecordingCallback()
    trainer = tiny_run(tmp_path / "run", BUDGETS, "wsd", callbacks=[recorder], evaluate=True, report_to=["tensorboard"],
                       eval_strategy="steps", eval_steps=6, decay_fraction=0.2)
    trainer.train()
    branch = trainer.plan.budgets[0]
    assert branch.branch and (branch.decay_start, branch.step) == (16, 20)

    scalars = _scalars(logdir)
    prefix = f"train/branch/{branch.name}/"
    main = {tag: points for tag, points in scalars.items() if not tag.startswith(prefix)}
    for tag in ("train/loss", "train/learning_rate", "eval/loss", "train/epoch"):
        assert tag in main, sorted(scalars)
    for tag, points in scalars.items():  # the branch's tags too; `epoch` once per step though in every log
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: steps {steps}"  # strictly increasing: no repeat, no going back
    assert [v for _, v in main["train/epoch"]] == sorted(v for _, v in main["train/epoch"])
    assert [s for s, _ in main["train/loss"]] == list(range(1, 41))
    # The branch: its own loss and LR at updates 17–20, the LR decaying to the plan's floor.
    assert [s for s, _ in scalars[prefix + "loss"]] == [17, 18, 19, 20]
    assert [s for s, _ in scalars[prefix + "eval_loss"]] == [18]  # eval_steps=6 fell inside the branch
    branch_lr = [v for _, v in scalars[prefix + "learning_rate"]]
    assert branch_lr == sorted(branch_lr, reverse=True) and branch_lr[0] < 1e-2
    assert all(v == pytest.approx(1e-2) for s, v in main["train/learning_rate"] if 5 <= s <= 24)  # main stays at peak
    # Budget metrics: once, one point per budget, under budget/ (not also budget_heldout_*).
    assert [s for s, _ in scalars["train/budget/heldout_loss"]] == [20, 40]
    assert not [tag for tag in scalars if "budget_heldout" in tag]

    # The run's own record keeps everything under the original keys, with the branch index.
    lines = [json.loads(line) for line in (tmp_path / "run" / "wsd_log.jsonl").read_text().splitlines()]
    branch_losses = [e["step"] for e in lines if "loss" in e and e["branch"] == 0]
    assert branch_losses == [17, 18, 19, 20]
    assert sum("budget/heldout_loss" in e for e in lines) == 2 and not any("budget_heldout_loss" in e for e in lines)
    # Every callback saw the branch under its prefix, the budget metrics unrenamed.
    seen = defaultdict(list)
    for step, logs in recorder.calls:
        for key in logs:
            seen[key].append(step)
    assert seen["loss"] == list(range(1, 41)) and seen[f"branch/{branch.name}/loss"] == [17, 18, 19, 20]


def test_epoch_counts_passes_over_the_training_data(tmp_path):
    """96 examples at 4 per update: 24 updates per epoch. The branch's epochs go to its own tag; the main path's
    epoch never goes back, across the branch and a resume."""
    recorder = RecordingCallback()
    trainer = tiny_run(tmp_path, BUDGETS, "wsd", callbacks=[recorder], decay_fraction=0.2)
    trainer.train()
    epochs = [(step, logs["epoch"]) for step, logs in recorder.calls if "loss" in logs]
    assert epochs == [(step, step * 4 / 96) for step in range(1, 41)]
    state = json.loads((tmp_path / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(40 / 24)

    resumed_recorder = RecordingCallback()
    resumed = tiny_run(tmp_path, (20, 40, 50), "wsd", callbacks=[resumed_recorder], decay_fraction=0.2)
    resumed.train(resume_from_checkpoint=True)
    later = [(step, logs["epoch"]) for step, logs in resumed_recorder.calls if "loss" in logs]
    assert [e for _, e in later] == sorted(set(e for _, e in later))  # through the resume and the new branch
    assert later[-1] == (50, 50 * 4 / 96) and all(e == s * 4 / 96 for s, e in later)
