"""On a CUDA GPU (skipped without one; `bash benchmarks/gpu_check.sh` runs them): bf16 budget folders hold exactly
the budget's weights, in-memory WSD branches equal the checkpoint path, and FSDP branches round-trip through
checkpoints (the automatic choice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_bitwise_equal, budget_dirs, tiny_config, tiny_data, tiny_model, weights

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


def test_fsdp_branches_round_trip_through_checkpoints(tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate_configs" / "fsdp.yaml"), "--num_processes", "1",
              "--main_process_port", "0", str(REPO / "tests" / "helpers.py")]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"}
    for out, budgets in ((tmp_path / "branched", ["10", "20", "30"]), (tmp_path / "main", ["30"])):
        done = subprocess.run([*launch, str(out), "--budgets", *budgets, "--schedule", "wsd", "--gpu"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "branches restart from a checkpoint" in done.stderr + done.stdout  # the automatic choice under FSDP
    branched, main = weights(tmp_path / "branched", 30), weights(tmp_path / "main", 30)
    for name in main:  # sharded save and restore: the same numbers, not necessarily the same kernels
        assert torch.allclose(branched[name], main[name], atol=1e-6, rtol=0), name
