"""On a CUDA GPU (skipped without one; `bash benchmarks/gpu_check.sh` runs them): bf16 budget folders hold exactly
the budget's weights, in-memory WSD branches equal the checkpoint path, FSDP2 / ZeRO-2 / ZeRO-3 write budgets,
branch (FSDP2 in memory, DeepSpeed through checkpoints), resume after a SIGKILL and extend (tests/sharded_runs.py),
bf16 + torch.compile go through an in-memory branch without recompiling, and background checkpoints (pinned
host copies) hold the files of synchronous ones and survive a kill mid-write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_bitwise_equal, budget_dirs, tiny_config, tiny_data, tiny_model, weights
from precision_helpers import compile_counts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REPO = Path(__file__).resolve().parents[1]
GPU = dict(use_cpu=False, bf16=True, full_determinism=True)  # deterministic kernels: bitwise comparisons hold


def gpu_run(out, budgets, schedule="wsd", callbacks=(), **overrides):
    from hf_wsd import WSDTrainer

    args = tiny_config(out, budgets, schedule, **GPU, **overrides)
    trainer = WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data(), callbacks=list(callbacks))
    trainer.train()
    return trainer


def test_bf16_budget_folders_hold_the_budgets_weights_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_wsd import BudgetCallback

    class Keep(BudgetCallback):
        def __init__(self):
            self.weights = {}

        def on_budget_reached(self, args, state, control, *, event, trainer, **kwargs):
            state = trainer.model.state_dict()
            self.weights[event.budget.step] = {k: v.detach().cpu().clone() for k, v in state.items()}

    keep = Keep()
    gpu_run(tmp_path, (10, 20), "wsd-s", callbacks=[keep])
    for step, folder in budget_dirs(tmp_path).items():
        saved = weights(tmp_path, step)
        assert_bitwise_equal(saved, {name: keep.weights[step][name] for name in saved})
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda()
        assert model(torch.tensor([[1, 2, 3]], device="cuda")).logits.isfinite().all()


def test_in_memory_branches_on_the_gpu_equal_the_checkpoint_path(tmp_path):
    memory = gpu_run(tmp_path / "memory", (10, 20, 30), branch_restore="auto")
    assert memory.branch_restore == "device"
    gpu_run(tmp_path / "checkpoint", (10, 20, 30), branch_restore="checkpoint")
    for step in (10, 20, 30):
        assert_bitwise_equal(weights(tmp_path / "memory", step), weights(tmp_path / "checkpoint", step))


@pytest.mark.parametrize(("engine", "config"), [
    ("fsdp2", "fsdp.yaml"), ("zero2", "deepspeed_zero2.yaml"), ("zero3", "deepspeed_zero3.yaml"),
])
def test_sharded_engines_write_budgets_branch_and_resume(tmp_path, engine, config):
    """tests/test_sharded.py's runs on one GPU (tests/sharded_runs.py --gpu): branches in memory = checkpoint
    path, [10, 20] ends like [20] alone, a SIGKILL inside a branch resumes, a finished run extends."""
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate_configs" / config), "--num_processes", "1", "--mixed_precision", "no",
              "--main_process_port", "0", str(REPO / "tests" / "sharded_runs.py"), str(tmp_path), "--engine", engine,
              "--gpu"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"}
    first = subprocess.run([*launch, "--phase", "first"], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode != 0 and "(SIGKILL)" in first.stdout + first.stderr, first.stderr[-3000:]
    second = subprocess.run([*launch, "--phase", "second"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    import json

    ran = json.loads((tmp_path / "memory" / "driver-first.json").read_text())
    assert ran["engine"] == {"fsdp2": "FSDP2", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}[engine]
    assert ran["branch_restore"] == "device"
    pairs = [("memory", "alone", 20), ("memory", "killed", 10), ("memory", "killed", 20), ("memory", "alone30", 30),
             ("memory", "checkpoint", 10), ("memory", "checkpoint", 20)]
    for a, b, step in pairs:  # deterministic kernels; sharded saves and restores may still pick other kernels
        ours, theirs = weights(tmp_path / a, step), weights(tmp_path / b, step)
        for name in theirs:
            assert torch.allclose(ours[name], theirs[name], atol=1e-6, rtol=0), f"{a}/{b} step{step} {name}"


def test_bf16_and_compile_go_through_an_in_memory_branch_without_recompiling(tmp_path):
    from transformers import AutoModelForCausalLM, TrainerCallback

    seen = []

    class CountCompiles(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((state.global_step, compile_counts()))

    trainer = gpu_run(tmp_path, (10, 20), "wsd", callbacks=[CountCompiles()], torch_compile=True, save_steps=5)
    assert trainer.branch_restore == "device" and type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert [step for step, _ in seen].count(10) == 2 and all(counts == seen[0][1] for _, counts in seen)
    for folder in budget_dirs(tmp_path).values():
        for dtype in (torch.bfloat16, torch.float32):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda()
            assert model(torch.tensor([[1, 2, 3]], device="cuda")).logits.isfinite().all()


def test_background_checkpoints_on_the_gpu_hold_the_files_of_synchronous_ones(tmp_path):
    for mode in (True, False):
        gpu_run(tmp_path / str(mode), (10, 20), "wsd", save_steps=5, async_checkpoints=mode)
    for step in (5, 9, 10, 15, 20):
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            ours = (tmp_path / "True" / f"checkpoint-{step}" / name).read_bytes()
            assert ours == (tmp_path / "False" / f"checkpoint-{step}" / name).read_bytes(), f"checkpoint-{step}/{name}"


def test_a_kill_mid_write_on_the_gpu_resumes_bitwise_from_the_previous_checkpoint(tmp_path):
    from hf_wsd import runs

    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "precision_helpers.py"), str(out), "--budgets", "20",
                             "40", "--schedule", "wsd", "--save-steps", "10", "--kill-at", "22",
                             "--slow-write-step", "20", "--gpu"], capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [step for step, _ in runs.checkpoints(out)] == [18, 10] and (out / ".tmp-checkpoint-20").is_dir()
    from hf_wsd import WSDTrainer

    args = tiny_config(out, (20, 40), "wsd", **GPU, save_steps=10)
    WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data()).train(resume_from_checkpoint=True)
    gpu_run(tmp_path / "reference", (20, 40), save_steps=10)
    for step in (20, 40):
        assert_bitwise_equal(weights(out, step), weights(tmp_path / "reference", step))
