"""Two processes on CPU (gloo DDP) through the real recipe: same budgets, one writer, one publisher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import HUB_TOKEN, write_parquet_shards
from conftest import REPO, TINY_RECIPE

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
# The shipped CPU config: --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no, on gloo.
LAUNCH_2 = [
    sys.executable, "-m", "accelerate.commands.launch", "--config_file",
    str(REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"), "--dynamo_backend", "no",
    "--main_process_port", "0",
]


def run_recipe(prefix: list[str], out, corpus, schedule: str, per_device_batch: int, env=None, extra=()):
    command = [*prefix, str(REPO / "recipes" / "pretrain.py"), "--corpus", str(corpus), "--output_dir", str(out),
               "--budgets", "10", "20", "--schedule", schedule, "--budget_eval", "false",
               "--per_device_train_batch_size", str(per_device_batch), *TINY_RECIPE, *extra]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_same_weights(ddp, single, names) -> None:
    """Budget folders of a 2-process and a 1-process run with the same global batch agree to 1e-5."""
    for name in names:
        two = load_file(ddp / "budgets" / name / "model.safetensors")
        one = load_file(single / "budgets" / name / "model.safetensors")
        for key in one:
            assert torch.allclose(two[key], one[key], atol=1e-5, rtol=0), f"{name}/{key}"


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, small_corpus, local_hub, schedule):
    publish = schedule == "wsd"  # one publisher for the harder case (branches restart training)
    env = {"HF_ENDPOINT": local_hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": HUB_TOKEN} if publish else None
    extra = ["--push_to_hub", "true", "--hub_model_id", "tester/ddp"] if publish else []
    ddp = run_recipe(LAUNCH_2, tmp_path / "ddp", small_corpus, schedule, 4, env, extra)
    run_recipe([sys.executable], tmp_path / "single", small_corpus, schedule, 8)

    names = sorted(p.name for p in (tmp_path / "single" / "budgets").iterdir() if p.name.startswith("step"))
    assert names == sorted(p.name for p in (tmp_path / "ddp" / "budgets").iterdir() if p.name.startswith("step"))
    assert [n.split("-")[0] for n in names] == ["step10", "step20"]
    assert names[0].endswith("tokens2.56K")  # 10 updates × 2 processes × 4 × 32 tokens
    assert ddp.stdout.count("Decayed checkpoints (") == 1  # one summary: the main process
    assert_same_weights(tmp_path / "ddp", tmp_path / "single", names)
    if publish:
        for name in names:  # one publisher: exactly one commit per budget branch
            assert local_hub.commit_count("tester/ddp", name) == 1


@pytest.fixture(scope="module")
def parquet_shards(tmp_path_factory):
    """The first 120 KJV chapters as 3 local parquet shards (not a multiple of 2 ranks): a stand-in for fineweb-edu."""
    from hf_wsd.data import kjv_documents

    return write_parquet_shards(tmp_path_factory.mktemp("parquet"), kjv_documents()[:120], n_shards=3)


def test_two_processes_on_a_stream_prepare_nothing_and_match_one_process(tmp_path, parquet_shards):
    """The README's fineweb example, offline: a sharded parquet corpus streamed (`--streaming true`)."""
    cache = tmp_path / "cache"
    stream = ["--streaming", "true", "--heldout_fraction", "0.1", "--cache_dir", str(cache)]
    run_recipe(LAUNCH_2, tmp_path / "ddp", parquet_shards, "wsd", 4, extra=stream)
    run_recipe([sys.executable], tmp_path / "single", parquet_shards, "wsd", 8, extra=stream)
    assert not (cache / "prepared").exists()  # streamed: nothing was tokenized ahead of training
    names = sorted(p.name for p in (tmp_path / "single" / "budgets").iterdir() if p.name.startswith("step"))
    assert [n.split("-")[0] for n in names] == ["step10", "step20"]
    assert_same_weights(tmp_path / "ddp", tmp_path / "single", names)
    # Each rank kept its own stream position in every checkpoint.
    checkpoints = sorted((tmp_path / "ddp").glob("checkpoint-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        assert {"feed-rank0.pt", "feed-rank1.pt"} <= {p.name for p in (checkpoint / "wsd_state").iterdir()}


def test_two_processes_prepare_the_dataset_once(tmp_path, small_corpus):
    """Two ranks race on an empty cache: one prepares under the lock, the other loads what it wrote."""
    cache = tmp_path / "cache"
    # INFO on both ranks (the recipe logs INFO on the main process only): either rank may win the race for the lock
    ddp = run_recipe(LAUNCH_2, tmp_path / "ddp", small_corpus, "wsd-s", 4,
                     extra=["--cache_dir", str(cache), "--log_level_replica", "info"])
    assert (ddp.stdout + ddp.stderr).count("reusing prepared dataset") == 1
    prepared = [p.name for p in (cache / "prepared").iterdir()]
    assert len(prepared) == 1 and not prepared[0].startswith("."), prepared  # one entry, no leftover temp folder
