"""WSDMixin on TRL's SFTTrainer (hf_wsd[trl]): budget folders, evaluation, WSD branch invariants (bitwise)."""

from __future__ import annotations

import importlib
import json
import pickle
import sys

import pytest

from helpers import assert_bitwise_equal, budget_dirs, tiny_sft_config, tiny_sft_trainer, weights

pytest.importorskip("trl", reason="the SFT pairing needs TRL: pip install 'hf_wsd[trl]' (part of the test extra)")
pytestmark = pytest.mark.slow
BUDGETS = (4, 8, 12)  # WSD decays of 1, 2 and 3 updates (decay_fraction 0.25)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """Uninterrupted tiny SFT runs, built on first use: {(schedule, budgets, evaluated): output_dir}."""
    cache: dict = {}

    def get(schedule: str, budgets: tuple[int, ...], evaluated: bool = False):
        key = (schedule, tuple(budgets), evaluated)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"sft-{schedule}")
            trainer = tiny_sft_trainer(out, budgets, schedule, budget_eval=evaluated)
            trainer.train()
            cache[key] = (out, trainer)
        return cache[key]

    return get


def test_sft_budgets_are_decayed_evaluated_from_pretrained_folders(sft_runs):
    from transformers import AutoModelForCausalLM

    from hf_wsd import runs

    out, _ = sft_runs("wsd", BUDGETS, evaluated=True)
    folders = budget_dirs(out)
    assert sorted(folders) == list(BUDGETS)
    log = runs.read_log(out)  # every path: the branches' entries too
    for step, folder in folders.items():
        record = json.loads((folder / "budget.json").read_text())
        assert record["schedule"] == "wsd" and record["step"] == step and record["decay_steps"] > 0
        branch = record["index"] if record["branch"] else None
        last = [e for e in log if "learning_rate" in e and e["step"] == step and e["branch"] == branch]
        assert last and last[0]["learning_rate"] < 1e-2  # the budget's last update ran in its decay
        results = json.loads((folder / "eval_results.json").read_text())["results"]
        losses = {r["task"]: r["value"] for r in results if r["metric"] == "loss"}
        assert set(losses) == {"heldout_downstream", "heldout_upstream"}, losses
        assert (folder / "README.md").is_file()
        AutoModelForCausalLM.from_pretrained(folder)


def test_sft_wsd_branches_leave_the_main_branch_untouched(sft_runs):
    branched, _ = sft_runs("wsd", BUDGETS, evaluated=True)  # evaluating the budgets does not perturb training either
    main_only, _ = sft_runs("wsd", BUDGETS[-1:])
    assert_bitwise_equal(weights(branched, BUDGETS[-1]), weights(main_only, BUDGETS[-1]))
    for step in BUDGETS[:-1]:  # each branch equals a one-budget WSD run to that budget
        assert_bitwise_equal(weights(branched, step), weights(sft_runs("wsd", (step,))[0], step))


def test_sft_token_counters_follow_the_main_branch(sft_runs):
    from hf_wsd import runs

    def main_tokens(out) -> dict[int, float]:
        return {e["step"]: e["num_tokens"] for e in runs.read_log(out) if "loss" in e and e["branch"] is None}

    branched, main_only = main_tokens(sft_runs("wsd", BUDGETS, True)[0]), main_tokens(sft_runs("wsd", BUDGETS[-1:])[0])
    assert branched == main_only and len(branched) == BUDGETS[-1]


def test_sft_resume_extends_the_run_and_continues_the_token_count(sft_runs, tmp_path):
    tiny_sft_trainer(tmp_path, BUDGETS[:2], "wsd").train()  # budget 8 decays in-line after a checkpoint at 6
    resumed = tiny_sft_trainer(tmp_path, BUDGETS, "wsd")
    resumed.train(resume_from_checkpoint=True)  # from that checkpoint: budget 8 is now a (written) branch
    main_only_dir, main_only = sft_runs("wsd", BUDGETS[-1:])
    assert_bitwise_equal(weights(tmp_path, BUDGETS[-1]), weights(main_only_dir, BUDGETS[-1]))
    assert resumed._total_train_tokens == main_only._total_train_tokens  # plain SFTTrainer restarts it at 0


def test_token_budgets_need_packing_or_a_sequence_length(tmp_path):
    packed = tiny_sft_trainer(tmp_path / "packed", ["1.28K", "2.56K"], budget_unit="tokens", packing=True,
                              packing_strategy="wrapped", max_length=32)
    assert packed.plan.tokens_per_update == 4 * 32 and packed.plan.total_steps == 20
    with pytest.raises(ValueError, match="seq_length"):  # rows of varying length: no tokens-per-update figure
        tiny_sft_trainer(tmp_path / "ragged", ["1.28K", "2.56K"], budget_unit="tokens")


def test_the_sft_config_pickles_without_the_hub_token(tmp_path):
    args = tiny_sft_config(tmp_path, BUDGETS, hub_token="hf_secret-for-this-test")
    copy = pickle.loads(pickle.dumps(args))
    assert type(copy) is type(args) and copy.budgets == args.budgets and copy.max_length == 64
    assert copy.hub_token is None


def test_missing_trl_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "hf_wsd.integrations.trl", raising=False)
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` now fails as if it were not installed
    with pytest.raises(ImportError, match=r"hf_wsd\[trl\]"):
        importlib.import_module("hf_wsd.integrations.trl")
