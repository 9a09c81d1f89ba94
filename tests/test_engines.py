"""No silent fallback: the engine in use is named, and a launch that asked for FSDP or DeepSpeed but would run
something else is an error before any compute (the real two-process runs are in tests/test_sharded.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from helpers import tiny_trainer
from hf_wsd import engines
from hf_wsd.scripts.setup import machine_defaults


def fake_trainer(processes: int = 2, fsdp: int | None = None, zero: int | None = None, gather: bool = True):
    zero_config = {"zero_optimization": {"stage3_gather_16bit_weights_on_model_save": gather}}
    state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=fsdp),
                            deepspeed_plugin=SimpleNamespace(zero_stage=zero, deepspeed_config=zero_config))
    return SimpleNamespace(is_fsdp_enabled=fsdp is not None, is_deepspeed_enabled=zero is not None,
                           accelerator=SimpleNamespace(num_processes=processes, state=state),
                           args=SimpleNamespace(device=torch.device("cpu")))


@pytest.fixture
def launch(monkeypatch):
    """What `accelerate launch` exports, set per test."""
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return lambda **env: [monkeypatch.setenv(k, v) for k, v in env.items()]


@pytest.mark.parametrize(("trainer", "name"), [
    (fake_trainer(1), "single process"), (fake_trainer(2), "DDP"), (fake_trainer(fsdp=2), "FSDP2"),
    (fake_trainer(zero=2), "ZeRO-2"), (fake_trainer(zero=3), "ZeRO-3"),
])
def test_the_engine_in_use_is_named_and_logged(launch, caplog, trainer, name):
    launch(WORLD_SIZE=str(trainer.accelerator.num_processes))
    with caplog.at_level(logging.INFO, logger="hf_wsd.engines"):
        assert engines.check_engine(trainer) == name
    assert f"Distributed engine: {name}" in caplog.text


def test_an_fsdp_launch_that_would_run_ddp_on_cpu_is_an_error_naming_the_opt_in(launch):
    launch(ACCELERATE_USE_FSDP="true", WORLD_SIZE="2")
    with pytest.raises(ValueError, match="asks for FSDP.*would train with DDP.*HF_WSD_CPU_FSDP=1"):
        engines.check_engine(fake_trainer(2))


def test_a_deepspeed_launch_that_would_run_ddp_is_an_error_naming_what_it_needs(launch):
    launch(ACCELERATE_USE_DEEPSPEED="true", WORLD_SIZE="2")
    with pytest.raises(ValueError, match="asks for DeepSpeed.*use_cpu=False.*ddp_backend='gloo'"):
        engines.check_engine(fake_trainer(2))


def test_independent_runs_racing_on_one_output_dir_are_an_error(launch):
    launch(WORLD_SIZE="2")
    with pytest.raises(ValueError, match="2 independent runs would race"):
        engines.check_engine(fake_trainer(1))


def test_zero3_without_gathered_weights_cannot_write_budget_folders(launch):
    with pytest.raises(ValueError, match="zero3_save_16bit_model: true"):
        engines.check_engine(fake_trainer(zero=3, gather=False))


def test_a_real_trainer_refuses_an_fsdp_launch_it_would_run_without_fsdp(tmp_path, launch):
    launch(ACCELERATE_USE_FSDP="true")
    with pytest.raises(ValueError, match="asks for FSDP"):
        tiny_trainer(tmp_path, (10,))
    assert not (tmp_path / "budgets").exists()  # nothing computed, nothing written


def test_the_recipes_set_what_deepspeed_needs_on_a_cpu_machine(launch):
    if torch.cuda.is_available():
        pytest.skip("the CPU defaults")
    assert machine_defaults() == {"use_cpu": True}
    launch(ACCELERATE_USE_DEEPSPEED="true")
    assert machine_defaults() == {"use_cpu": False, "ddp_backend": "gloo"}
