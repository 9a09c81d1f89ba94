"""bf16 (autocast on the CPU) and torch.compile through WSD: an in-memory WSD branch compiles nothing new, a SIGKILL
and a resume give bitwise the budgets of the uninterrupted run, WSD-S decays in-line, and every budget folder loads
with `from_pretrained` in bf16 and fp32. One combined test: compiling costs tens of seconds (later runs in the
process, and the killed one, hit inductor's on-disk cache)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_bitwise_equal, budget_dirs, tiny_trainer, weights
from precision_helpers import compile_counts

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "precision_helpers.py"
BUDGETS = (10, 20)  # WSD: budget 10 is a side branch from update 9, budget 20 decays in-line
BF16_COMPILE = dict(bf16=True, torch_compile=True, save_steps=5)


def compiled_run(out: Path, schedule: str, resume: bool = False):
    """A bf16 + torch.compile run; returns the trainer and the compile counts seen after each update."""
    from transformers import TrainerCallback

    seen: list[tuple[int, int | None, dict]] = []

    class CountCompiles(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((state.global_step, trainer.lr_scheduler_branch, compile_counts()))

    trainer = tiny_trainer(out, BUDGETS, schedule, callbacks=[CountCompiles()], **BF16_COMPILE)
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer, seen


def assert_budgets_load_in_bf16_and_fp32(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    for step, folder in budget_dirs(out).items():
        saved = weights(out, step)
        assert {t.dtype for t in saved.values()} == {torch.float32}  # autocast: the weights stay fp32
        for dtype in (torch.bfloat16, torch.float32):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            assert {p.dtype for p in model.parameters()} == {dtype}
            state = model.state_dict()
            assert_bitwise_equal({k: v.to(dtype) for k, v in saved.items()}, {k: state[k] for k in saved})
            assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_bf16_and_compile_through_a_wsd_branch_a_kill_and_resume_and_wsd_s(tmp_path):
    reference, seen = compiled_run(tmp_path / "reference", "wsd")
    assert reference.accelerator.mixed_precision == "bf16" and reference.branch_restore == "device"
    assert type(reference.model_wrapped).__name__ == "OptimizedModule"  # really compiled
    branch_steps = [step for step, branch, _ in seen if branch is not None]
    assert branch_steps == [10]  # budget 10's decay ran as an in-memory branch …
    first = seen[0][2]
    assert first["frames"] >= 1 and all(counts == first for _, _, counts in seen)  # … and nothing recompiled
    assert [step for step, _, _ in seen].count(10) == 2  # the main branch went on from update 9

    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, str(SCRIPT), str(out), "--budgets", *map(str, BUDGETS), "--schedule",
                             "wsd", "--save-steps", "5", "--kill-at", "17", "--bf16", "--compile"],
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(budget_dirs(out)) == [10]
    resumed, seen = compiled_run(out, "wsd", resume=True)
    assert seen[0][0] <= 16 and all(counts == seen[0][2] for _, _, counts in seen)
    for step in BUDGETS:  # bitwise: the same compiled kernels in the killed, resumed and uninterrupted runs
        assert_bitwise_equal(weights(out, step), weights(tmp_path / "reference", step))

    wsd_s, seen = compiled_run(tmp_path / "wsd-s", "wsd-s")
    assert all(branch is None for _, branch, _ in seen) and all(counts == seen[0][2] for _, _, counts in seen)
    assert sorted(budget_dirs(tmp_path / "wsd-s")) == list(BUDGETS)
    for out in (tmp_path / "reference", tmp_path / "wsd-s"):
        assert_budgets_load_in_bf16_and_fp32(out)
