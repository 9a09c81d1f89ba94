"""Checkpoints written in the background (`async_checkpoints`): the same files as a synchronous save, bitwise; a
SIGKILL mid-write leaves the previous checkpoint as the resume point and the resume bitwise equal to the
uninterrupted run; a failed write is raised; rotation only ever removes checkpoints older than a complete one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import assert_bitwise_equal, budget_dirs, tiny_trainer, weights

from hf_wsd import async_checkpoints, runs

SCRIPT = Path(__file__).parent / "precision_helpers.py"
THROUGHPUT = ("tokens_per_second", "tokens_per_second_per_device", "tflops_per_device", "mfu")


def files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def trainer_state_without_timings(path: Path) -> dict:
    state = json.loads(path.read_text())
    for entry in state["log_history"]:
        for key in THROUGHPUT:
            entry.pop(key, None)
    return state


def test_background_checkpoints_hold_the_files_of_synchronous_ones_bitwise(tmp_path, caplog, monkeypatch):
    # The host copy runs while the next update's forward and backward do; slowed, so that its optimizer step
    # surely has to wait for it (a copy taken after that step would hold the next update's weights).
    copy = async_checkpoints.HostBuffers.copy

    def slowed(self, *args, **kwargs):
        time.sleep(0.2)
        return copy(self, *args, **kwargs)

    monkeypatch.setattr(async_checkpoints.HostBuffers, "copy", slowed)
    # A WSD run with an EMA: branch point, in-line budget, save_steps and hf_wsd's wsd_state/ parts.
    for mode in (True, False):
        with caplog.at_level("INFO", logger="hf_wsd"):
            tiny_trainer(tmp_path / str(mode), (10, 20), "wsd", save_steps=5, ema_beta=0.9,
                         async_checkpoints=mode).train()
    assert "Checkpoints are written in the background" in caplog.text
    assert "synchronously (async_checkpoints=False)" in caplog.text
    background, synchronous = tmp_path / "True", tmp_path / "False"
    steps = [step for step, _ in runs.checkpoints(synchronous)]
    assert steps == [step for step, _ in runs.checkpoints(background)] and {5, 9, 10, 20} <= set(steps)
    assert not [p for p in background.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for step in steps:
        ours, theirs = files(runs.checkpoint_folder(background, step)), files(runs.checkpoint_folder(synchronous, step))
        assert ours.keys() == theirs.keys() and "optimizer.pt" in ours and "wsd_state/ema.pt" in ours, step
        for name, path in ours.items():
            if name == "trainer_state.json":  # tokens/s differ from run to run; all else is equal
                assert trainer_state_without_timings(path) == trainer_state_without_timings(theirs[name])
            elif name != "training_args.bin":  # it holds output_dir and async_checkpoints
                assert path.read_bytes() == theirs[name].read_bytes(), f"checkpoint-{step}/{name}"


@pytest.mark.slow
def test_a_kill_mid_write_leaves_the_previous_checkpoint_and_the_resume_is_bitwise(tmp_path, reference_runs, caplog):
    out, budgets = tmp_path / "run", (20, 40)
    # checkpoint-20 (save_steps and the in-line budget) stops mid-write; the kill comes two updates later.
    killed = subprocess.run([sys.executable, str(SCRIPT), str(out), "--budgets", *map(str, budgets), "--schedule",
                             "wsd-s", "--save-steps", "10", "--kill-at", "22", "--slow-write-step", "20"],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    half_written = out / ".tmp-checkpoint-20"
    assert (half_written / "model.safetensors").is_file() and not (half_written / "optimizer.pt").exists()
    assert not (out / "checkpoint-20").exists() and (out / "checkpoint-10" / "trainer_state.json").is_file()
    from transformers.trainer_utils import get_last_checkpoint

    assert [step for step, _ in runs.checkpoints(out)] == [10]  # a folder mid-write is never chosen …
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-10")  # … by hf_wsd or by the Trainer

    with caplog.at_level("INFO"):
        trainer = tiny_trainer(out, budgets, "wsd-s", save_steps=10)
        trainer.train(resume_from_checkpoint=True)
    assert "checkpoint an interrupted launch left half-written" in caplog.text and not half_written.exists()
    assert "step20-tokens1.28K was written before this resume" in caplog.text  # the budget before the kill is kept
    reference = reference_runs("wsd-s", budgets)
    assert sorted(budget_dirs(out)) == list(budgets)
    for step in budgets:
        assert_bitwise_equal(weights(out, step), weights(reference, step))
    assert [step for step, _ in runs.checkpoints(out)] == [40, 30, 20, 10]


def test_a_failed_background_write_is_raised_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    write_model = async_checkpoints.write_model

    def failing(trainer, folder, state_dict):
        if folder.name.endswith("-6"):
            raise OSError(28, "No space left on device")
        write_model(trainer, folder, state_dict)

    monkeypatch.setattr(async_checkpoints, "write_model", failing)
    trainer = tiny_trainer(tmp_path, (8,), "wsd-s", save_steps=3)
    with pytest.raises(async_checkpoints.CheckpointWriteError, match="checkpoint-6.*No space left on device"):
        trainer.train()
    assert [step for step, _ in runs.checkpoints(tmp_path)] == [3]  # raised at the next save (update 8)
    assert (tmp_path / ".tmp-checkpoint-6").is_dir()  # removed by the next launch (see the kill test)


def test_rotation_removes_only_checkpoints_older_than_a_complete_one(tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Watch(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # the new checkpoint may still be in flight here
            seen.append([step for step, _ in runs.checkpoints(tmp_path)])

    tiny_trainer(tmp_path, (8,), "wsd-s", save_steps=2, save_total_limit=1, callbacks=[Watch()]).train()
    assert len(seen) >= 4 and all(seen[1:])  # from the second save on, a complete checkpoint always exists
    assert [step for step, _ in runs.checkpoints(tmp_path)] == [8]  # train() returned with the last one in place


def fake_trainer(**overrides) -> SimpleNamespace:
    args = dict(async_checkpoints=True, load_best_model_at_end=False, metric_for_best_model=None)
    flags = {key: overrides.pop(key) for key in ("is_fsdp_enabled", "is_deepspeed_enabled") if key in overrides}
    return SimpleNamespace(args=SimpleNamespace(**{**args, **overrides}), hp_search_backend=None, **flags)


@pytest.mark.parametrize(("setting", "reason"), [
    ({}, None),
    ({"async_checkpoints": False}, "async_checkpoints=False"),
    ({"is_fsdp_enabled": True}, "FSDP / DeepSpeed"),
    ({"is_deepspeed_enabled": True}, "FSDP / DeepSpeed"),
    ({"metric_for_best_model": "loss"}, "best-model tracking"),
])
def test_checkpoints_stay_synchronous_where_the_state_is_sharded_or_best_model_tracked(setting, reason):
    found = async_checkpoints.sync_reason(fake_trainer(**setting))
    assert found == reason if reason is None else reason in found
