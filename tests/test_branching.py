"""WSD side branches kept in memory: bitwise the same budgets as the checkpoint path, inside one `train()` call, and
the automatic choice of where the main branch waits (device, host memory, or a checkpoint under FSDP1 / DeepSpeed).

A SIGKILL inside an in-memory branch that resumes bitwise is `test_trainer.py::test_sigkill_then_resume_equals_the_
uninterrupted_run[wsd-39]` (`branch_restore="auto"` is a device copy on the CPU, as asserted below).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers import assert_bitwise_equal, tiny_trainer, weights
from hf_wsd import branching, runs

BUDGETS = (20, 40, 60)


def train_start_counter():
    from transformers import TrainerCallback

    class TrainStarts(TrainerCallback):
        starts = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.starts += 1

    return TrainStarts()


@pytest.mark.parametrize("mode", ["cpu", "checkpoint"])
def test_branches_in_memory_and_from_checkpoints_give_the_same_budgets(reference_runs, tmp_path, mode):
    reference = reference_runs("wsd", BUDGETS)  # branch_restore="auto": a device copy on the CPU
    counter = train_start_counter()
    trainer = tiny_trainer(tmp_path, BUDGETS, "wsd", callbacks=[counter], branch_restore=mode)
    loads, load_from_checkpoint = [], trainer._load_from_checkpoint

    def recording_load(folder, *args, **kwargs):  # the Trainer's checkpoint read, recorded
        loads.append(folder)
        return load_from_checkpoint(folder, *args, **kwargs)

    trainer._load_from_checkpoint = recording_load
    trainer.train()

    assert trainer.branch_restore == mode
    for step in BUDGETS:
        assert_bitwise_equal(weights(tmp_path, step), weights(reference, step))
    branches = [budget for budget in trainer.plan.budgets if budget.branch]
    assert len(branches) == 2
    # The main branch's resumable checkpoint at every branch point is written in both modes (crash safety) ...
    for budget in branches:
        assert runs.checkpoint_folder(tmp_path, budget.decay_start).is_dir()
    # ... but only the checkpoint path reads one back to return from a branch; callbacks see one run either way.
    expected = [] if mode == "cpu" else [str(runs.checkpoint_folder(tmp_path, b.decay_start)) for b in branches]
    assert [str(folder) for folder in loads] == expected
    assert counter.starts == 1


def fake_trainer(device: str = "cpu", fsdp: int | None = None, deepspeed: SimpleNamespace | None = None):
    """``deepspeed``: the engine (see :func:`zero_engine`)."""
    model = torch.nn.Linear(256, 256)  # 65,792 parameters: a snapshot of 263 KB (no optimizer state yet)
    plugin = SimpleNamespace(fsdp_version=fsdp) if fsdp else None
    return SimpleNamespace(model=model, optimizer=torch.optim.AdamW(model.parameters()), is_fsdp_enabled=bool(fsdp),
                           is_deepspeed_enabled=deepspeed is not None, deepspeed=deepspeed,
                           model_wrapped=deepspeed or model, args=SimpleNamespace(device=torch.device(device)),
                           accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))


def test_auto_keeps_the_main_branch_next_to_the_weights_on_the_cpu():
    assert branching.choose_branch_restore(fake_trainer(), "auto")[0] == "device"


def zero_engine(stage: int = 2, nvme: bool = False) -> SimpleNamespace:
    """A stand-in for a DeepSpeed engine with its ZeRO optimizer (the attributes hf_wsd reads; stage 0: none)."""
    fp32, bit16 = torch.zeros(1000), torch.zeros(2000)  # this rank's fp32 partition; ZeRO-2: the whole 16-bit buffer
    if stage == 0:
        optimizer = torch.optim.AdamW([fp32])
    elif stage == 3:
        optimizer = SimpleNamespace(fp32_partitioned_groups_flat=[fp32], fp16_partitioned_groups_flat=[fp32[:500]],
                                    optimizer=torch.optim.AdamW([fp32]), swap_optimizer=nvme)
    else:
        optimizer = SimpleNamespace(single_partition_of_fp32_groups=[fp32], bit16_groups_flat=[bit16],
                                    partition_gradients=stage == 2, optimizer=torch.optim.AdamW([fp32]))
    return SimpleNamespace(optimizer=optimizer, global_steps=0, skipped_steps=0)


@pytest.mark.parametrize(("sharding", "engine"), [
    ({"fsdp": 1}, "FSDP1"),
    ({"deepspeed": zero_engine(stage=0)}, "DeepSpeed without a ZeRO optimizer"),
    ({"deepspeed": zero_engine(stage=3, nvme=True)}, "ZeRO-3 with NVMe offload"),
])
def test_auto_restarts_from_checkpoints_under_fsdp1_and_deepspeed_state_out_of_reach(sharding, engine):
    trainer = fake_trainer(**sharding)
    mode, reason = branching.choose_branch_restore(trainer, "auto")
    assert mode == "checkpoint" and engine in reason
    for requested in ("device", "cpu"):
        with pytest.raises(ValueError, match="`branch_restore`"):
            branching.choose_branch_restore(trainer, requested)
    assert branching.choose_branch_restore(trainer, "checkpoint")[0] == "checkpoint"


@pytest.mark.parametrize(("stage", "partition_bytes"), [(1, 4 * 3000), (2, 4 * 3000), (3, 4 * 1500)])
def test_auto_keeps_this_ranks_zero_partitions_in_memory(stage, partition_bytes):
    """ZeRO-1/2/3 partitions are restored in place (tests/test_sharded.py runs ZeRO-2/3 on two processes)."""
    trainer = fake_trainer(deepspeed=zero_engine(stage))
    mode, reason = branching.choose_branch_restore(trainer, "auto")
    assert mode == "device" and f"ZeRO-{stage} partitions" in reason
    assert branching.snapshot_bytes(trainer) == partition_bytes  # fp32 partition + 16-bit weights, no Adam state yet
    assert branching.choose_branch_restore(trainer, "cpu")[0] == "cpu"


def test_auto_keeps_fsdp2_shards_in_memory():
    """FSDP2's shards are restored in place (tests/test_sharded.py runs it on two processes)."""
    trainer = fake_trainer(fsdp=2)
    mode, reason = branching.choose_branch_restore(trainer, "auto")
    assert mode == "device" and "FSDP2 shards" in reason
    assert branching.choose_branch_restore(trainer, "cpu")[0] == "cpu"


def test_auto_on_a_full_gpu_falls_back_to_host_memory_then_to_checkpoints(monkeypatch):
    trainer = fake_trainer(device="cuda")
    needed = branching.snapshot_bytes(trainer)
    assert needed == 4 * (256 * 256 + 256)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * needed, 100 * needed))
    assert branching.choose_branch_restore(trainer, "auto")[0] == "device"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (needed, 100 * needed))  # no headroom
    monkeypatch.setattr(branching, "_host_available_bytes", lambda: 10 * needed)
    assert branching.choose_branch_restore(trainer, "auto")[0] == "cpu"
    monkeypatch.setattr(branching, "_host_available_bytes", lambda: needed)
    mode, reason = branching.choose_branch_restore(trainer, "auto")
    assert mode == "checkpoint" and "no room" in reason


def test_an_unknown_branch_restore_names_the_field():
    with pytest.raises(ValueError, match="`branch_restore`"):
        branching.choose_branch_restore(fake_trainer(), "disk")
