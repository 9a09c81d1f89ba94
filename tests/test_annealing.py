"""Annealing end to end on a tiny Llama: decay windows draw from their mixture (and only they do), WSD branch
invariants and kill-and-resume stay bitwise with a mixture, 2-process DDP matches one process, budget.json and the
card record the mixture, and bad input fails before step 0.

Also the script the kill-and-resume test SIGKILLs:
    python tests/test_annealing.py OUTPUT_DIR --budgets 20 40 60 --schedule wsd --source stream [--kill-at 39]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import KillAt, SEQ, assert_bitwise_equal, budget_dirs, tiny_config, tiny_model, weights

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve()
BUDGETS = (20, 40, 60)
MIXTURE = {"main": 0.5, "decay": 0.5}
SPLIT = 32  # main data holds token ids below, decay data at or above: every row tells its source


def blocks(n: int, low: int, high: int, seed: int):
    import torch
    from datasets import Dataset

    ids = torch.randint(low, high, (n, SEQ), generator=torch.Generator().manual_seed(seed)).tolist()
    return Dataset.from_dict({"input_ids": ids})


def main_data():
    return blocks(96, 0, SPLIT, 0)


def decay_data(source: str = "map"):
    data = blocks(40, SPLIT, 64, 1)
    return data.to_iterable_dataset() if source == "stream" else data


def anneal_trainer(out, budgets, schedule="wsd-s", source="map", callbacks=None, collator=None, **overrides):
    from hf_wsd import WSDTrainer

    overrides.setdefault("decay_mixture", MIXTURE)
    args = tiny_config(out, budgets, schedule, **overrides)
    return WSDTrainer(model=tiny_model(), args=args, train_dataset=main_data(), decay_dataset=decay_data(source),
                      callbacks=callbacks, data_collator=collator)


@pytest.fixture(scope="module")
def anneal_runs(tmp_path_factory):
    """Uninterrupted annealing runs, built on first use: {(schedule, budgets, source): output_dir}."""
    cache: dict = {}

    def get(schedule: str, budgets: tuple[int, ...], source: str = "map") -> Path:
        key = (schedule, tuple(budgets), source)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"anneal-{schedule}")
            anneal_trainer(out, budgets, schedule, source, save_steps=10).train()
            cache[key] = out
        return cache[key]

    return get


class SourceRecorder:
    """The default collator, recording for each micro-batch where the trainer was and where each row came from."""

    def __init__(self):
        from hf_wsd.data import BlockCollator

        self.collate, self.trainer, self.seen = BlockCollator(), None, []

    def __call__(self, rows):
        where = (self.trainer.state.global_step, self.trainer.lr_scheduler_branch)
        self.seen.append((where, ["decay" if max(row["input_ids"]) >= SPLIT else "main" for row in rows]))
        return self.collate(rows)


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
def test_batches_inside_decay_windows_come_from_the_mixture_and_outside_from_the_main_data(tmp_path, schedule):
    recorder = SourceRecorder()
    mixture = {"main": 0.75, "decay": 0.25}
    trainer = anneal_trainer(tmp_path, BUDGETS, schedule, collator=recorder, decay_mixture=mixture)
    recorder.trainer = trainer
    trainer.train()
    mixture = trainer.mixture
    updates = {}
    for where, sources in recorder.seen:
        updates.setdefault(where, []).extend(sources)
    expected_updates = 60 + (2 + 4 if schedule == "wsd" else 0)  # WSD: the branches of 20 and 40 on top
    assert len(updates) == expected_updates and all(len(s) == 4 for s in updates.values())
    for (step, branch), sources in updates.items():
        if mixture.window_at(step, branch) is None:
            assert sources == ["main"] * 4, (step, branch)
        else:
            assert sources.count("decay") == list(mixture.slots(step, branch)[0]).count(1), (step, branch)
    for window in mixture.windows:  # exactly a quarter of every window's examples are decay data
        branch = window.budget if window.branch else None
        drawn = [s for t in range(window.start, window.end) for s in updates[(t, branch)]]
        assert drawn.count("decay") == len(drawn) // 4


def test_budget_json_and_the_card_record_the_decay_mixture(anneal_runs):
    out = anneal_runs("wsd", BUDGETS)
    folder = budget_dirs(out)[40]
    record = json.loads((folder / "budget.json").read_text())["decay_mixture"]
    assert record["window"] == [36, 40]  # WSD: a tenth of the budget, on a side branch
    assert {s["name"]: (s["weight"], s["examples"], s["tokens"]) for s in record["sources"]} == {
        "decay": (0.5, 8, 8 * SEQ), "main": (0.5, 8, 8 * SEQ)}
    assert record["drawn_on_path"]["decay"]["examples"] == 8  # a branch anneals on the first decay examples
    card = (folder / "README.md").read_text()
    assert ("| decay data mixture | decay 50 % (128 tokens), main (the training data) 50 % (128 tokens), "
            "updates 36–40 |") in card
    saved = json.loads((out / "wsd_plan.json").read_text())["decay_mixture"]
    assert [w["start"] for w in saved["windows"]] == [18, 36, 54]


@pytest.mark.parametrize("source", ["map", "stream"])
def test_wsd_with_a_decay_mixture_keeps_the_branch_invariants_bitwise(anneal_runs, source):
    branched = anneal_runs("wsd", BUDGETS, source)
    final = weights(anneal_runs("wsd", (60,), source), 60)
    assert_bitwise_equal(weights(branched, 60), final)  # the branches change nothing on the main branch
    for step in BUDGETS[:-1]:  # each branch equals a one-budget run to its budget
        assert_bitwise_equal(weights(branched, step), weights(anneal_runs("wsd", (step,), source), step))


def test_branches_restarted_from_checkpoints_anneal_like_the_in_memory_ones(anneal_runs, tmp_path):
    anneal_trainer(tmp_path, BUDGETS, "wsd", "stream", save_steps=10, branch_restore="checkpoint").train()
    for step in BUDGETS:  # the FSDP / DeepSpeed path: the feed's streams come back from the branch point's checkpoint
        assert_bitwise_equal(weights(tmp_path, step), weights(anneal_runs("wsd", BUDGETS, "stream"), step))


def test_wsd_s_budgets_with_a_decay_mixture_equal_the_runs_of_their_prefix(anneal_runs):
    full, prefix = anneal_runs("wsd-s", BUDGETS), anneal_runs("wsd-s", BUDGETS[:2])
    for step in BUDGETS[:2]:
        assert_bitwise_equal(weights(full, step), weights(prefix, step))


def test_a_decay_mixture_changes_the_decayed_weights(anneal_runs, reference_runs):
    import torch

    annealed, plain = weights(anneal_runs("wsd-s", BUDGETS), 20), weights(reference_runs("wsd-s", BUDGETS), 20)
    assert any(not torch.equal(annealed[k], plain[k]) for k in annealed)


@pytest.mark.parametrize(
    ("schedule", "source", "kill_at"),
    [("wsd-s", "map", 38), ("wsd", "stream", 39)],  # inside budget 40's in-line window / its branch's window
)
def test_sigkill_inside_an_annealing_window_then_resume_equals_the_uninterrupted_run(
    anneal_runs, tmp_path, schedule, source, kill_at
):
    out = tmp_path / "run"
    command = [sys.executable, str(HERE), str(out), "--budgets", *map(str, BUDGETS), "--schedule", schedule,
               "--source", source]
    killed = subprocess.run([*command, "--kill-at", str(kill_at)], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert 20 in budget_dirs(out) and 60 not in budget_dirs(out)
    anneal_trainer(out, BUDGETS, schedule, source, save_steps=10).train(resume_from_checkpoint=True)
    reference = anneal_runs(schedule, BUDGETS, source)
    for step in BUDGETS:
        assert_bitwise_equal(weights(out, step), weights(reference, step))


def test_resuming_with_another_mixture_for_a_trained_window_fails_before_step_0(anneal_runs, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(anneal_runs("wsd-s", BUDGETS[:2]), out)
    changed = anneal_trainer(out, BUDGETS, "wsd-s", decay_mixture={"main": 0.9, "decay": 0.1}, save_steps=10)
    with pytest.raises(ValueError, match="decay mixture of the windows before update 40"):
        changed.train(resume_from_checkpoint=True)
    # a new mixture for a budget not trained yet is an extension like any other
    extended = anneal_trainer(out, BUDGETS, "wsd-s", decay_mixture_per_budget={"60": {"decay": 1.0}}, save_steps=10)
    extended.train(resume_from_checkpoint=True)
    assert 60 in budget_dirs(out)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decay_mixture": {"main": 0.5, "decay": -0.5}}, "negative"),
        ({"decay_mixture": ["main=0", "decay=0"]}, "sum to 0"),
        ({"decay_mixture": {"main": 0.5, "decay": 0.5}, "schedule": "cosine", "budgets": ["40"]}, "decay_mixture_tail"),
        ({"decay_mixture_per_budget": {"30": {"decay": 1.0}}}, "not in `budgets`"),
    ],
)
def test_bad_mixture_fields_fail_when_the_config_is_built(tmp_path, overrides, message):
    overrides = {"budgets": BUDGETS, "schedule": "wsd-s", **overrides}
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, overrides.pop("budgets"), overrides.pop("schedule"), **overrides)


@pytest.mark.parametrize(
    ("decay", "mixture", "message"),
    [
        (lambda: decay_data(), {"main": 0.5, "quality": 0.5}, "unknown source 'quality'"),
        (lambda: blocks(8, SPLIT, 64, 1).map(lambda r: {"input_ids": r["input_ids"] * 2}), MIXTURE, "32\\] tokens"),
        (lambda: blocks(8, 64, 100, 1), MIXTURE, "vocab_size` is 64"),
    ],
)
def test_bad_decay_sources_fail_when_the_trainer_is_built(tmp_path, decay, mixture, message):
    from hf_wsd import WSDTrainer

    args = tiny_config(tmp_path, BUDGETS, decay_mixture=mixture)
    with pytest.raises(ValueError, match=message):
        WSDTrainer(model=tiny_model(), args=args, train_dataset=main_data(), decay_dataset=decay())


def test_decay_dataset_and_decay_datasets_together_are_refused(tmp_path):
    from hf_wsd import WSDTrainer

    with pytest.raises(ValueError, match="not both"):
        WSDTrainer(model=tiny_model(), args=tiny_config(tmp_path, BUDGETS), train_dataset=main_data(),
                   decay_dataset=decay_data(), decay_datasets={"q": decay_data()})


# ----------------------------------------------------------------------------------------------- the recipe
@pytest.fixture(scope="module")
def second_corpus(tmp_path_factory) -> Path:
    """KJV chapters 121-240 as a local JSONL: the decay corpus of the recipe tests (no package needed)."""
    from hf_wsd.data import kjv_documents

    path = tmp_path_factory.mktemp("decay-corpus") / "later.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in kjv_documents()[120:240]))
    return path


def test_the_recipe_reads_mixtures_and_decay_corpora_from_yaml_and_the_command_line(tmp_path, second_corpus):
    from hf_wsd.scripts import pretrain
    from hf_wsd.scripts.setup import named_corpora

    config = tmp_path / "config.yaml"
    config.write_text(f"budgets: ['100', '200']\ndecay_mixture: {{main: 0.7, later: 0.3}}\n"
                      f"decay_mixture_per_budget: {{'200': {{later: 1.0}}}}\n"
                      f"decay_corpora: {{later: {second_corpus}}}\n")
    data_args, _, args = pretrain.parser().parse([str(config)])
    assert args.decay_mixture == {"main": 0.7, "later": 0.3}
    assert args.decay_mixture_per_budget == {"200": {"later": 1.0}}
    assert named_corpora(data_args.decay_corpora, "decay_corpora") == {"later": str(second_corpus)}
    data_args, _, args = pretrain.parser().parse(
        [str(config), "--decay_mixture", "main=0.5", "later=0.5", "--decay_corpora", "later=x.jsonl",
         "--decay_mixture_per_budget", "100:later=1"])
    assert args.decay_mixture == {"main": 0.5, "later": 0.5} and args.decay_mixture_per_budget == {"100": {"later": 1}}
    assert named_corpora(data_args.decay_corpora, "decay_corpora") == {"later": "x.jsonl"}


def test_the_comparison_recipe_reports_every_arm_on_every_corpus(tmp_path, small_corpus, second_corpus):
    from conftest import TINY_RECIPE

    from hf_wsd.scripts import anneal

    argv = ["--corpus", str(small_corpus), "--decay_corpora", f"later={second_corpus}", "--decay_mixture",
            "main=0.7", "later=0.3", "--output_dir", str(tmp_path), "--budgets", "8", "16", "--bundled_tasks", "false",
            "--per_device_train_batch_size", "4", "--arms", "plain", "anneal", "all:later=1", "spread", *TINY_RECIPE]
    rows, text = anneal.main(argv)
    arms = ("plain", "anneal", "all", "spread")
    assert {(r["arm"], r["step"]) for r in rows} == {(a, s) for a in arms for s in (8, 16)}
    plain = {r["step"]: r for r in rows if r["arm"] == "plain"}
    assert all(set(r["heldout_loss"]) == {"kjv120", "later"} for r in rows)  # the same held-out sets in every arm
    assert plain[16]["tokens_by_source"] == {"main": 16 * 4 * 32}
    annealed = {r["step"]: r for r in rows if r["arm"] == "all"}
    assert annealed[16]["tokens_by_source"]["later"] == 2 * 2 * 4 * 32  # two 2-update windows, every slot
    spread = {r["step"]: r for r in rows if r["arm"] == "spread"}
    assert spread[16]["tokens_by_source"]["later"] > 0  # decay-corpus blocks shuffled into the training data
    assert sum(spread[16]["tokens_by_source"].values()) == 16 * 4 * 32  # the same compute
    assert "| all | 16 |" in text and (tmp_path / "annealing.png").is_file()
    again, _ = anneal.main([*argv, "--report_only", "true"])  # the report alone, from the runs on disk
    assert again == rows


@pytest.mark.multiprocess
def test_two_processes_anneal_like_one_process_with_the_same_global_batch(tmp_path, small_corpus, second_corpus):
    from safetensors.torch import load_file
    import torch

    from test_multiprocess import LAUNCH_2, run_recipe

    extra = ["--decay_corpora", f"later={second_corpus}", "--decay_mixture", "main=0.7", "later=0.3"]
    run_recipe(LAUNCH_2, tmp_path / "ddp", small_corpus, "wsd", 4, extra=extra)
    run_recipe([sys.executable], tmp_path / "single", small_corpus, "wsd", 8, extra=extra)
    for step in (10, 20):
        two, one = budget_dirs(tmp_path / "ddp")[step], budget_dirs(tmp_path / "single")[step]
        assert json.loads((two / "budget.json").read_text())["decay_mixture"] == json.loads(
            (one / "budget.json").read_text())["decay_mixture"]
        a, b = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
        for key in b:
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), f"{step}/{key}"
    record = json.loads((budget_dirs(tmp_path / "single")[10] / "budget.json").read_text())["decay_mixture"]
    start, end = record["window"]
    drawn = {s["name"]: s["examples"] for s in record["sources"]}
    assert drawn == {"later": int(0.3 * 8 * (end - start)), "main": 8 * (end - start) - int(0.3 * 8 * (end - start))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--budgets", nargs="+", type=int, required=True)
    parser.add_argument("--schedule", default="wsd-s")
    parser.add_argument("--source", default="map", choices=["map", "stream"])
    parser.add_argument("--kill-at", type=int)
    cli = parser.parse_args()
    callbacks = [KillAt(cli.kill_at)] if cli.kill_at is not None else None
    anneal_trainer(cli.output_dir, cli.budgets, cli.schedule, cli.source, callbacks=callbacks, save_steps=10).train()
