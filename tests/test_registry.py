"""The plan by scheduler name in a plain Trainer (hf_wsd.register): LR at every update, resume, pickling, errors."""

from __future__ import annotations

import glob
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from helpers import assert_bitwise_equal, tiny_data, tiny_model

pytestmark = pytest.mark.slow
BUDGETS = [20, 40]
PEAK = 1e-2
REPO = Path(__file__).resolve().parents[1]


def plain_trainer(output_dir, max_steps=40, callbacks=None, **overrides):
    """A plain ``Trainer`` / ``TrainingArguments`` with ``lr_scheduler_type="wsd-s"``."""
    import hf_wsd
    from transformers import Trainer, TrainingArguments

    hf_wsd.register()
    settings = dict(
        output_dir=str(output_dir), max_steps=max_steps, warmup_steps=4, learning_rate=PEAK,
        lr_scheduler_type="wsd-s", lr_scheduler_kwargs={"budgets": BUDGETS, "decay_fraction": 0.2},
        per_device_train_batch_size=4, logging_steps=1, save_strategy="steps", save_steps=20, report_to="none",
        use_cpu=True, disable_tqdm=True, seed=0,
    )
    settings.update(overrides)
    return Trainer(model=tiny_model(), args=TrainingArguments(**settings), train_dataset=tiny_data(),
                   callbacks=callbacks)


def logged_lrs(trainer) -> dict[int, float]:
    return {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}


def test_wsd_s_by_name_gives_the_plans_lr_at_every_update_and_resumes(tmp_path):
    from hf_wsd import BudgetPlan, BudgetPlanLR

    full = plain_trainer(tmp_path / "full")
    full.train()
    plan = BudgetPlan(BUDGETS, schedule="wsd-s", warmup_steps=4, decay_fraction=0.2)
    assert isinstance(full.lr_scheduler, BudgetPlanLR) and full.lr_scheduler.plan == plan
    lrs = logged_lrs(full)
    assert sorted(lrs) == list(range(1, 41))
    for step, lr in lrs.items():  # the entry of update t (0-based) is logged at global step t + 1
        assert lr == pytest.approx(PEAK * plan.lr_ratio(step - 1), rel=1e-12), step
    assert lrs[20] < PEAK / 2 and lrs[21] == PEAK  # decayed at the budget, back at peak right after

    resumed = plain_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-20"))
    assert {s: lr for s, lr in logged_lrs(resumed).items() if s > 20} == {s: lrs[s] for s in range(21, 41)}
    assert_bitwise_equal(resumed.model.state_dict(), full.model.state_dict())
    # What resumes the plan: the checkpoint's scheduler state is the step counter; the multiplier pickles.
    saved = torch.load(tmp_path / "full" / "checkpoint-20" / "scheduler.pt", weights_only=True)
    assert saved == {"last_epoch": 20, "branch": None, "_step_count": 21}
    (ratio,) = set(pickle.loads(pickle.dumps(resumed.lr_scheduler.lr_lambdas)))
    assert [ratio(t) for t in range(40)] == [plan.lr_ratio(t) for t in range(40)]


def test_training_args_with_the_name_unpickle_in_a_fresh_process(tmp_path):
    args = plain_trainer(tmp_path).args
    torch.save(args, tmp_path / "training_args.bin")
    code = (
        "import sys, torch; a = torch.load(sys.argv[1], weights_only=False); "
        "assert a.lr_scheduler_type == 'wsd-s', a.lr_scheduler_type; print(a.lr_scheduler_kwargs)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "training_args.bin")], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'budgets': [20, 40]" in done.stdout


def test_the_name_is_a_command_line_choice():
    import hf_wsd
    from transformers import HfArgumentParser, TrainingArguments

    hf_wsd.register()
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "x", "--lr_scheduler_type", "cyclic-cosine", "--lr_scheduler_kwargs",
         '{"budgets": [10, 20]}', "--max_steps", "20", "--report_to", "none"]
    )
    assert args.lr_scheduler_type == "cyclic-cosine" and args.lr_scheduler_kwargs == {"budgets": [10, 20]}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_steps": 30}, "max_steps"),
        ({"lr_scheduler_kwargs": {"decay_fraction": 0.2}}, "budgets"),
        ({"lr_scheduler_kwargs": {"budgets": BUDGETS, "warmup_steps": 4}}, "warmup_steps"),
    ],
)
def test_a_plan_that_does_not_fit_the_run_fails_before_the_first_update(tmp_path, overrides, field):
    trainer = plain_trainer(tmp_path, **overrides)
    with pytest.raises(ValueError, match=field):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_transformers_without_the_scheduler_table_gets_an_error_naming_the_field(monkeypatch):
    from transformers import optimization

    from hf_wsd import registry

    monkeypatch.setattr(registry, "_registered", False)
    monkeypatch.delattr(optimization, "TYPE_TO_SCHEDULER_FUNCTION")
    with pytest.raises(ValueError, match="`lr_scheduler_type`.*optimizers="):
        registry.register()


ENUM_CHECK = """
import enum, pickle
from hf_wsd.registry import add_enum_member

class Names(str, enum.Enum):
    LINEAR = "linear"

member = add_enum_member(Names, "WSD_S", "wsd-s", reduce=lambda m, protocol: (Names, (m.value,)))
assert Names("wsd-s") is member is Names["WSD_S"] is Names.WSD_S and member == "wsd-s"
assert [m.value for m in Names] == ["linear", "wsd-s"] and pickle.loads(pickle.dumps(member)) is member
assert add_enum_member(Names, "WSD_S", "wsd-s") is member
"""


def other_pythons() -> list[str]:
    """Other CPython versions on this machine (pyenv), for the enum check; none is fine."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9]*/bin/python3")))
    return [path for path in found if os.access(path, os.X_OK)]


def test_adding_an_enum_member_works_as_declared_on_this_python(monkeypatch):
    module = types.ModuleType("hf_wsd_enum_check")  # pickle finds the enum class by module and name
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(ENUM_CHECK, "enum_check", "exec"), module.__dict__)


@pytest.mark.skipif(not other_pythons(), reason="no other CPython installed (pyenv) to check the enum extension on")
@pytest.mark.parametrize("python", other_pythons())
def test_adding_an_enum_member_works_on_other_pythons(python):
    # The registry module imports only the standard library, so a bare interpreter runs it.
    done = subprocess.run([python, "-c", ENUM_CHECK], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
