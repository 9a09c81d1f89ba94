"""FSDP2 and DeepSpeed ZeRO-2/3 on two CPU processes (gloo), through the shipped accelerate configs, and two
"machines" of one process each on 127.0.0.1.

Each engine gets two launches of tests/sharded_runs.py (several tiny WSD runs each; a launch costs ~10-20 s of
imports): the first ends with a SIGKILL inside a WSD branch, the second resumes it and extends a finished run. The
two-"machine" DDP launch trains the reference the sharded budgets are compared with.

What the comparisons hold to: FSDP2 and ZeRO-2 budgets (weights, held-out loss) equal DDP's within 1e-6 (the
gradient reductions differ: reduce-scatter vs all-reduce); ZeRO-3 builds the model under ``zero.Init``, so it is
compared with ZeRO-3 only; everything within one engine is bitwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from helpers import HUB_TOKEN, assert_bitwise_equal

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
CONFIGS = REPO / "recipes" / "accelerate_configs"
DRIVER = REPO / "tests" / "sharded_runs.py"
CONFIG_OF = {"fsdp2": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}
ENGINE_NAME = {"fsdp2": "FSDP2", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
DDP_TOLERANCE = 1e-6


def launch_prefix(config: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--mixed_precision", "no", "--dynamo_backend", "no", *extra]


def driver_env(**extra: str) -> dict:
    # HF_WSD_CPU_FSDP=1: FSDP2 on CPU processes (hf_wsd/engines.py); ignored by the other engines.
    path = f"{REPO}:{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, "HF_WSD_CPU_FSDP": "1", **extra}


def run(command: list[str], expect_kill: bool = False, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=env or driver_env(), timeout=900)
    if expect_kill:
        assert done.returncode != 0 and "(SIGKILL)" in done.stdout + done.stderr, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def budget_folder(run_dir: Path, step: int) -> Path:
    [folder] = [p for p in (run_dir / "budgets").iterdir() if p.name.split("-")[0] == f"step{step}"]
    return folder


def budget_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(budget_folder(run_dir, step) / "model.safetensors")


def record(run_dir: Path, phase: str = "first") -> dict:
    return json.loads((run_dir / f"driver-{phase}.json").read_text())


def heldout_loss(run_dir: Path, step: int) -> float:
    results = json.loads((budget_folder(run_dir, step) / "eval_results.json").read_text())["results"]
    [loss] = [r["value"] for r in results if r["task"] == "heldout" and r["metric"] == "loss"]
    return loss


@pytest.fixture(scope="module", params=["fsdp2", "zero2", "zero3"])
def sharded(request, tmp_path_factory):
    """``(engine, root)``: both launches of one engine done."""
    engine, root = request.param, tmp_path_factory.mktemp(request.param)
    prefix = launch_prefix(CONFIG_OF[engine], "--num_processes", "2", "--main_process_port", "0")
    first = run([*prefix, str(DRIVER), str(root), "--engine", engine, "--phase", "first"], expect_kill=True)
    assert f"Distributed engine: {ENGINE_NAME[engine]} over 2 process(es)" in first.stderr
    run([*prefix, str(DRIVER), str(root), "--engine", engine, "--phase", "second"])
    return engine, root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory):
    """Two "machines" of one process each on 127.0.0.1 (DDP over gloo): the reference runs, one of them published."""
    from hub_server import LocalHub

    root = tmp_path_factory.mktemp("machines")
    with LocalHub(token=HUB_TOKEN) as hub:
        env = driver_env(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_TOKEN=HUB_TOKEN)
        port = str(free_port())
        machines = []
        for rank in (0, 1):
            command = [*launch_prefix("cpu_2proc.yaml", "--num_processes", "2", "--num_machines", "2",
                                      "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                                      "--main_process_port", port),
                       str(DRIVER), str(root), "--engine", "ddp", "--phase", "machines", "--push", "tester/machines"]
            machines.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             env=env))
        outputs = [machine.communicate(timeout=900) for machine in machines]
        for machine, (out, err) in zip(machines, outputs):
            assert machine.returncode == 0, out[-2000:] + err[-4000:]
        commits = {name: hub.commit_count("tester/machines", name)
                   for name in (budget_folder(root / "stream", s).name for s in (10, 20))}
    return root, outputs, commits


def test_each_engine_runs_as_launched_and_shards_what_it_should(sharded):
    engine, root = sharded
    memory = record(root / "memory")
    assert memory["engine"] == ENGINE_NAME[engine] and memory["world_size"] == 2
    # ZeRO-3 partitions every parameter (stage3_param_persistence_threshold 0), FSDP2 shards them; ZeRO-2 keeps them.
    assert memory["partitioned"] == (engine != "zero2")
    # Each rank keeps its own shards / ZeRO partitions in memory: no checkpoint restart of train(). The checkpoint
    # path restarts train() once (after the branch of budget 10).
    assert (memory["branch_restore"], memory["train_starts"]) == ("device", 1)
    assert (record(root / "checkpoint")["branch_restore"], record(root / "checkpoint")["train_starts"]) == (
        "checkpoint", 2)


def test_budget_folders_are_full_from_pretrained_folders_with_tied_weights_and_tokenizer(sharded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine, root = sharded
    folder = budget_folder(root / "memory", 20)
    saved = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in saved  # tied, as the model declares: stored once
    assert saved["model.embed_tokens.weight"].shape == (64, 32)  # full, not a shard
    assert not [p for p in folder.iterdir() if "fsdp" in p.name or p.name.startswith(("global_step", "pytorch_model"))]
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_bitwise_equal({k: v for k, v in model.state_dict().items() if k in saved}, saved)
    assert AutoTokenizer.from_pretrained(folder)("abc")["input_ids"] == [3, 4, 5]
    assert json.loads((folder / "budget.json").read_text())["step"] == 20
    assert (folder / "README.md").is_file() and heldout_loss(root / "memory", 20) > 0  # carded and evaluated


def test_a_wsd_run_ends_with_the_same_last_budget_as_that_budget_alone(sharded):
    engine, root = sharded
    assert_bitwise_equal(budget_weights(root / "memory", 20), budget_weights(root / "alone", 20))


def test_sigkill_inside_a_branch_then_resume_is_bitwise(sharded):
    engine, root = sharded
    for step in (10, 20):
        assert_bitwise_equal(budget_weights(root / "killed", step), budget_weights(root / "memory", step))


def test_extending_a_finished_run_adds_the_budget_a_fresh_run_would_write(sharded):
    engine, root = sharded
    assert sorted(p.name.split("-")[0] for p in (root / "memory" / "budgets").glob("step*")) == [
        "step10", "step20", "step30"]
    assert_bitwise_equal(budget_weights(root / "memory", 30), budget_weights(root / "alone30", 30))


def test_branches_in_memory_equal_the_checkpoint_path(sharded):
    engine, root = sharded
    for step in (10, 20):
        assert_bitwise_equal(budget_weights(root / "memory", step), budget_weights(root / "checkpoint", step))


def test_fsdp2_and_zero2_budgets_equal_ddps(sharded, two_machines):
    engine, root = sharded
    if engine == "zero3":
        pytest.skip("ZeRO-3 builds the model under zero.Init: compared with ZeRO-3 only")
    ddp = two_machines[0] / "ddp"
    for step in (10, 20):
        ours, reference = budget_weights(root / "memory", step), budget_weights(ddp, step)
        assert ours.keys() == reference.keys()
        for name in reference:
            assert torch.allclose(ours[name], reference[name], atol=DDP_TOLERANCE, rtol=0), f"step{step}/{name}"
        assert heldout_loss(root / "memory", step) == pytest.approx(heldout_loss(ddp, step), abs=DDP_TOLERANCE)


def test_two_machines_train_one_run_with_one_publisher_and_per_rank_data_state(two_machines):
    root, outputs, commits = two_machines
    for name in ("ddp", "stream"):
        assert record(root / name, "machines")["engine"] == "DDP" and record(root / name, "machines")["world_size"] == 2
    assert sum(out.count("Distributed engine: DDP over 2 process(es)") for out in (o[1] for o in outputs)) == 4
    assert commits == {name: 1 for name in commits}  # one publisher: one commit per budget branch
    budgets = sorted(p.name for p in (root / "stream" / "budgets").iterdir() if p.name.startswith("step"))
    assert [b.split("-")[0] for b in budgets] == ["step10", "step20"]
    assert not [p for p in (root / "stream" / "budgets").iterdir() if p.name.startswith(".")]  # no leftovers
    for checkpoint in sorted((root / "stream").glob("checkpoint-*")):  # each rank's stream position, every time
        assert {"feed-rank0.pt", "feed-rank1.pt"} <= {p.name for p in (checkpoint / "wsd_state").iterdir()}
