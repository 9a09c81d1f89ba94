"""Lean WSD runs: LoRA adapters and bitsandbytes 8-bit AdamW through budgets, WSD branches, resume, and the
continual-pretraining recipe (bitwise on CPU).

Also a script for the kill-and-resume test: python tests/test_peft_bnb.py OUTPUT_DIR --budgets 6 12 --kill-at 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import KillAt, assert_bitwise_equal, budget_dirs, tiny_config, tiny_data, tiny_model

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve()
BUDGETS = (6, 12)
# bitsandbytes keeps 8-bit state only for tensors of at least 4096 elements: 32×128 MLP weights (and LoRA
# matrices of rank 32 on them) qualify; the tiny model's own tensors (≤ 2048) would all stay 32-bit.
INTERMEDIATE = 128
LORA_8BIT = dict(use_peft=True, lora_r=32, lora_alpha=32, lora_target_modules=["gate_proj", "up_proj", "down_proj"])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models run ~7× faster on a busy 2-core machine. Every run here, and the killed
    subprocess, uses one, so bitwise comparisons compare like with like; the previous setting is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def bnb_trainer(output_dir, budgets, kind: str = "full", schedule: str = "wsd", callbacks=None, **overrides):
    """A WSD run with 8-bit AdamW: ``kind`` "full" trains all weights, "lora" a rank-32 adapter on the MLP."""
    from hf_wsd import WSDTrainer

    settings = dict(optim="adamw_bnb_8bit", decay_steps=2, logging_steps=3, **(LORA_8BIT if kind == "lora" else {}))
    args = tiny_config(output_dir, budgets, schedule, **{**settings, **overrides})
    model = tiny_model(intermediate_size=INTERMEDIATE)
    return WSDTrainer(model=model, args=args, train_dataset=tiny_data(), callbacks=callbacks)


@pytest.fixture(scope="module")
def bnb_runs(tmp_path_factory):
    """Uninterrupted 8-bit runs, built on first use: {(kind, budgets): (output_dir, trainer)}."""
    cache: dict = {}

    def get(kind: str, budgets: tuple[int, ...]):
        if (kind, budgets) not in cache:
            out = tmp_path_factory.mktemp(f"bnb-{kind}")
            trainer = bnb_trainer(out, budgets, kind)
            trainer.train()
            cache[kind, budgets] = out, trainer
        return cache[kind, budgets]

    return get


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(folder / name)


def optimizer_state_dtypes(trainer) -> set[torch.dtype]:
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {state["state1"].dtype for state in optimizer.state.values() if "state1" in state}


# --------------------------------------------------------------------------------------------------- LoRA
def test_lora_wsd_s_budgets_hold_the_adapter_of_that_budget_and_load_with_peft(tmp_path, local_hub, monkeypatch):
    import huggingface_hub.hf_api
    from helpers import HUB_TOKEN
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    # PEFT calls huggingface_hub's module-level `file_exists`, bound to an HfApi made at import time.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", local_hub.endpoint)

    from hf_wsd import BudgetCallback, WSDTrainer

    tiny_model().save_pretrained(tmp_path / "base")  # a named base model, as from the Hub

    def base():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base")

    class Snapshot(BudgetCallback):
        def __init__(self):
            self.adapters = {}

        def on_budget_reached(self, args, state, control, *, event, trainer, **kwargs):
            weights = get_peft_model_state_dict(trainer.model)
            self.adapters[event.budget.step] = {k: v.detach().clone() for k, v in weights.items()}

    args = tiny_config(tmp_path / "run", (6, 12), "wsd-s", decay_steps=2, use_peft=True, lora_r=4,
                       lora_target_modules=["all-linear"], save_merged_budgets=True,
                       push_to_hub=True, hub_model_id="tester/tiny-lora", hub_token=HUB_TOKEN)
    snapshot = Snapshot()
    trainer = WSDTrainer(model=base(), args=args, train_dataset=tiny_data(), callbacks=[snapshot])
    trainer.train()

    folders = budget_dirs(tmp_path / "run")
    assert sorted(folders) == [6, 12]
    for step, folder in folders.items():
        assert not (folder / "model.safetensors").exists()  # adapter only
        assert_bitwise_equal(saved_weights(folder), snapshot.adapters[step])
        loaded = PeftModel.from_pretrained(base(), folder)
        assert_bitwise_equal(get_peft_model_state_dict(loaded), snapshot.adapters[step])
        # merged/ loads without peft and equals PEFT's own merge of the saved adapter
        merged = AutoModelForCausalLM.from_pretrained(folder / "merged")
        assert_bitwise_equal(merged.state_dict(), loaded.merge_and_unload().state_dict())
        record = json.loads((folder / "budget.json").read_text())
        assert record["base_model"] == str(tmp_path / "base")
        assert record["adapter"]["peft_type"] == "LORA" and record["adapter"]["r"] == 4
        assert record["adapter"]["merged"] == "merged" and record["optim"] == args.optim
        card = (folder / "README.md").read_text()
        assert "library_name: peft" in card
        assert f'base = AutoModelForCausalLM.from_pretrained("{tmp_path / "base"}")' in card
    assert_bitwise_equal(snapshot.adapters[12], get_peft_model_state_dict(trainer.model))  # the end of training

    # Published: each budget's branch holds the adapter and merged/; the card's snippet loads it at that revision.
    cache = tmp_path / "hub-cache"
    for step, folder in folders.items():
        remote = PeftModel.from_pretrained(base(), "tester/tiny-lora", revision=folder.name, cache_dir=cache)
        assert_bitwise_equal(get_peft_model_state_dict(remote), snapshot.adapters[step])
        merged = AutoModelForCausalLM.from_pretrained(  # as the card says: not redirected to the base by the adapter
            "tester/tiny-lora", revision=folder.name, subfolder="merged", adapter_kwargs={"subfolder": "merged"},
            cache_dir=cache)
        assert_bitwise_equal(merged.state_dict(), AutoModelForCausalLM.from_pretrained(folder / "merged").state_dict())
        files = local_hub.branch_files("tester/tiny-lora", folder.name)
        assert "merged/model.safetensors" in files and "model.safetensors" not in files
        card = files["README.md"].decode()
        assert f'PeftModel.from_pretrained(base, "tester/tiny-lora", revision="{folder.name}")' in card
        assert 'subfolder="merged", adapter_kwargs={"subfolder": "merged"}' in card


def test_adapter_settings_given_twice_are_rejected(tmp_path):
    from peft import LoraConfig

    from hf_wsd import WSDTrainer

    args = tiny_config(tmp_path, (8,), use_peft=True)
    with pytest.raises(ValueError, match="use_peft"):
        WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data(), peft_config=LoraConfig(r=2))


# --------------------------------------------------------------------------------------------------- 8-bit AdamW
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_wsd_branches_with_8bit_adamw_leave_the_main_branch_untouched(bnb_runs, kind):
    branched_dir, branched = bnb_runs(kind, BUDGETS)
    main_dir, main_only = bnb_runs(kind, BUDGETS[-1:])
    assert optimizer_state_dtypes(branched) == {torch.uint8, torch.float32}  # 8-bit and 32-bit states both exercised
    assert sorted(budget_dirs(branched_dir)) == list(BUDGETS)
    assert_bitwise_equal(saved_weights(budget_dirs(branched_dir)[12]), saved_weights(budget_dirs(main_dir)[12]))


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sigkill_then_resume_with_8bit_adamw_equals_the_uninterrupted_run(bnb_runs, tmp_path, kind):
    out = tmp_path / "run"
    command = [sys.executable, str(HERE), str(out), "--budgets", *map(str, BUDGETS), "--kind", kind, "--kill-at", "5",
               "--save-steps", "3"]
    killed = subprocess.run(command, capture_output=True)  # killed inside the branch of budget 6 (updates 5-6)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    # The branch point of budget 6 (checkpoint-4) is written in the background: a kill may find it still in flight,
    # and the resume then starts from checkpoint-3. Either way it ends bitwise equal to the uninterrupted run.
    assert not budget_dirs(out) and any((out / f"checkpoint-{step}").is_dir() for step in (3, 4))

    bnb_trainer(out, BUDGETS, kind, save_steps=3).train(resume_from_checkpoint=True)  # a fresh optimizer and adapter

    reference, _ = bnb_runs(kind, BUDGETS)
    for step in BUDGETS:
        assert_bitwise_equal(saved_weights(budget_dirs(out)[step]), saved_weights(budget_dirs(reference)[step]))


def test_a_run_with_8bit_adamw_does_not_depend_on_earlier_runs_in_the_process(tmp_path):
    """bitsandbytes' positional overrides ("embeddings in 32-bit") of an earlier optimizer must not leak."""
    from bitsandbytes.optim import GlobalOptimManager

    def first_step_dtypes(trainer):
        optimizer = trainer.create_optimizer()
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        optimizer.step()
        return [optimizer.state[p]["state1"].dtype for group in optimizer.param_groups for p in group["params"]]

    first_step_dtypes(bnb_trainer(tmp_path / "full", (8,)))  # registers the embedding override at position (0, 0)
    assert GlobalOptimManager.get_instance().index2config
    # Position (0, 0) is now lora_A of down_proj (32×128 elements): 8-bit, as in a fresh process.
    lora = first_step_dtypes(bnb_trainer(tmp_path / "lora", (8,), "lora", lora_target_modules=["down_proj"]))
    assert lora[0] == torch.uint8


# --------------------------------------------------------------------------------------------------- recipe
def test_continual_recipe_reports_upstream_and_downstream_loss_per_budget(tmp_path, monkeypatch):
    from hf_wsd.data import load_corpus
    from hf_wsd.scripts import continual, pretrain

    monkeypatch.setenv("HF_WSD_CACHE", str(tmp_path / "cache"))

    chapters = load_corpus("kjv").documents[:60]
    upstream, downstream = tmp_path / "kjv60.jsonl", tmp_path / "shouting.jsonl"
    upstream.write_text("".join(json.dumps({"text": c}) + "\n" for c in chapters))
    downstream.write_text("".join(json.dumps({"text": c.upper()}) + "\n" for c in chapters))  # new text
    tiny = ["--block_size", "32", "--max_eval_blocks", "4", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "4", "--heldout_fraction", "0.2",
            "--logging_steps", "2", "--save_steps", "1000", "--disable_tqdm", "true", "--bundled_tasks", "false"]

    pretrain.main([
        "--corpus", str(upstream), "--vocab_size", "300", "--hidden_size", "32", "--intermediate_size", "64",
        "--num_hidden_layers", "1", "--num_attention_heads", "2", "--num_key_value_heads", "2", "--budgets", "6",
        "--warmup_steps", "2", "--output_dir", str(tmp_path / "pre"), *tiny,
    ])
    start = budget_dirs(tmp_path / "pre")[6]
    summary = continual.main([
        "--model_name_or_path", str(start), "--corpus", str(downstream), "--upstream_corpus", str(upstream),
        "--upstream_heldout_fraction", "0.2",
        "--budgets", "4", "8", "--warmup_steps", "2", "--decay_fraction", "0.5", "--lora_r", "4",
        "--learning_rate", "1e-2",
        "--output_dir", str(tmp_path / "continual"), *tiny,
    ])

    # The upstream held-out set is the original run's: the start scores exactly as the original budget did.
    original = json.loads((start / "eval_results.json").read_text())["results"]
    assert summary["start"]["upstream"] == pytest.approx(
        next(r["value"] for r in original if r["task"] == "heldout" and r["metric"] == "loss"), rel=1e-6)
    assert [row["step"] for row in summary["budgets"]] == [4, 8]
    for row in summary["budgets"]:
        assert set(row) >= {"upstream", "downstream"}
    assert summary["budgets"][-1]["downstream"] < summary["start"]["downstream"]
    assert json.loads((tmp_path / "continual" / "continual_summary.json").read_text()) == summary
    folder = budget_dirs(tmp_path / "continual")[8]
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "merged" / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").read_text() == (start / "tokenizer.json").read_text()  # the original tokenizer
    assert json.loads((folder / "budget.json").read_text())["base_model"] == str(start)
    printed = continual.format_report(summary)
    assert "upstream" in printed and "downstream" in printed and "start (step 0)" in printed


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--budgets", nargs="+", type=int, required=True)
    parser.add_argument("--kind", default="full", choices=["full", "lora"])
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--save-steps", type=int, default=1000)
    cli = parser.parse_args()
    torch.set_num_threads(1)  # as the tests' in-process runs
    callbacks = [KillAt(cli.kill_at)] if cli.kill_at is not None else None
    bnb_trainer(cli.output_dir, tuple(cli.budgets), cli.kind, callbacks=callbacks, save_steps=cli.save_steps).train()
