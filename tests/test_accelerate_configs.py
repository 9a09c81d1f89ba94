"""Every shipped accelerate config parses the way `accelerate launch` parses it (tests/test_sharded.py runs the FSDP
and DeepSpeed ones on two CPU processes)."""

from __future__ import annotations

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from conftest import REPO

CONFIGS = REPO / "recipes" / "accelerate_configs"


def launch_args(name: str):
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "recipes/pretrain.py"])
    return _validate_launch_command(args)[0]


def test_every_config_file_is_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {
        "single.yaml", "cpu_2proc.yaml", "multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
    }


@pytest.mark.parametrize(("name", "processes"), [("single.yaml", 1), ("cpu_2proc.yaml", 2), ("multi_gpu.yaml", 8)])
def test_ddp_configs_start_the_intended_number_of_processes(name, processes):
    args = launch_args(name)
    assert args.num_processes == processes
    assert args.multi_gpu == (processes > 1)
    if name == "cpu_2proc.yaml":  # multi_gpu + use_cpu: `--cpu` alone would silently start one process
        assert args.use_cpu


def test_fsdp_config_builds_the_plugin_accelerate_would_use(monkeypatch):
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_args("fsdp.yaml")
    assert args.use_fsdp
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"  # what the Trainer's checkpoints (and branches) use


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_select_their_zero_stage(name, stage):
    args = launch_args(name)
    assert args.use_deepspeed and args.zero_stage == stage
