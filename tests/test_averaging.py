"""EMA previews (hf_wsd/averaging.py): the feeding rule, exact resume, no leak from WSD branches, preview folders
that load and hold the average, labels that keep previews apart from budgets, publishing, and config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import HUB_TOKEN, _char_tokenizer, assert_bitwise_equal, tiny_config, tiny_data, tiny_model, tiny_trainer
from helpers import weights as budget_weights

BUDGETS = (20, 40, 60)
BETA = 0.9
TINY = Path(__file__).parent / "helpers.py"


def _previews(output_dir) -> dict[int, Path]:
    from hf_wsd import runs

    return {p.step: p.folder for p in runs.preview_records(output_dir)}


def _preview_weights(output_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(_previews(output_dir)[step] / "model.safetensors")


def _ema_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "wsd_state" / "ema.pt", weights_only=True)


# ----------------------------------------------------------------------------------------------- the rule
def test_only_stable_phase_updates_of_the_main_path_feed_the_average():
    from hf_wsd.averaging import ema_weight, feeds_average, stable_ranges
    from hf_wsd.plan import BudgetPlan

    wsd_s = BudgetPlan(list(BUDGETS), schedule="wsd-s", warmup_steps=4, rewarmup_steps=1)
    # warmup [0, 4), decays [18, 20) [38, 40) [58, 60), rewarmups at 20 and 40: none of them feeds
    assert stable_ranges(wsd_s) == (range(4, 18), range(21, 38), range(41, 58))
    wsd = BudgetPlan(list(BUDGETS), schedule="wsd", warmup_steps=4)
    # the main branch never decays before the last budget; branch decays are not main-path updates
    assert stable_ranges(wsd) == (range(4, 54),)
    assert [u for u in range(60) if feeds_average(wsd, u)] == list(range(4, 54))
    assert ema_weight(0.99, 1) == 1.0 and ema_weight(0.99, 2) == pytest.approx(0.01 / (1 - 0.99**2))
    assert ema_weight(0.99, 10_000) == pytest.approx(0.01)


# ----------------------------------------------------------------------------------------------- a run with previews
@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A WSD-S run with ema_beta, a tokenizer, held-out evaluation and every update's weights recorded."""
    from transformers import TrainerCallback

    from hf_wsd import WSDTrainer

    class RecordWeights(TrainerCallback):
        def __init__(self):
            self.seen: dict[int, dict[str, torch.Tensor]] = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):  # after the update, before any save
            self.seen[state.global_step - 1] = {n: p.detach().double().clone() for n, p in model.named_parameters()}

    out = tmp_path_factory.mktemp("ema-run")
    recorder = RecordWeights()
    args = tiny_config(out, BUDGETS, ema_beta=BETA, budget_eval=True, per_device_eval_batch_size=8)
    trainer = WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data(), eval_dataset=tiny_data(n=16, seed=1),
                         processing_class=_char_tokenizer(), callbacks=[recorder])
    trainer.train()
    return out, recorder.seen, trainer


def _hand_ema(seen: dict, fed: list[int]) -> dict[str, torch.Tensor]:
    """Σᵢ (1-β)·βⁿ⁻ⁱ·wᵢ / (1-βⁿ) over the fed updates, in float64 (the closed form, not the recursion)."""
    n = len(fed)
    total = {name: torch.zeros_like(t) for name, t in seen[fed[0]].items()}
    for i, update in enumerate(fed, start=1):
        for name, tensor in seen[update].items():
            total[name] += (1 - BETA) * BETA ** (n - i) * tensor
    return {name: t / (1 - BETA**n) for name, t in total.items()}


def test_preview_folders_load_and_hold_the_hand_computed_average(ema_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, seen, _ = ema_run
    previews = _previews(out)
    assert sorted(previews) == list(BUDGETS)  # WSD-S saves a checkpoint at each budget: one preview each
    stable = [u for u in range(60) if 4 <= u < 18 or 20 <= u < 38 or 40 <= u < 58]
    for step, folder in previews.items():
        assert folder.name == f"step{step}-tokens{step * 64 / 1000:.3g}K-ema"
        model = AutoModelForCausalLM.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
        fed = [u for u in stable if u < step]
        expected = _hand_ema(seen, fed)
        for name, tensor in model.named_parameters():
            torch.testing.assert_close(tensor.double(), expected[name], rtol=0, atol=2e-6, msg=name)
        record = json.loads((folder / "budget.json").read_text())["preview"]
        assert record == {"name": folder.name, "step": step, "tokens": step * 64, "beta": BETA, "updates": len(fed),
                          "first_update": 4, "last_update": fed[-1], "kind": "ema"}


def test_previews_never_change_training(ema_run, reference_runs):
    out, _, _ = ema_run
    reference = reference_runs("wsd-s", BUDGETS)  # the same run without ema_beta, evaluation or tokenizer
    for step in BUDGETS:
        assert_bitwise_equal(budget_weights(out, step), budget_weights(reference, step))
    # The checkpoint at 60 is saved right after the preview at 60: the live weights were put back bit for bit.
    assert_bitwise_equal(load_file(Path(out) / "checkpoint-60" / "model.safetensors"), budget_weights(out, 60))


def test_previews_are_labelled_and_kept_apart_from_budgets(ema_run):
    from hf_wsd import runs
    from hf_wsd.summary import budget_table, preview_table, summarize

    out, _, _ = ema_run
    assert [b.step for b in runs.budget_records(out)] == list(BUDGETS)
    assert all(not runs.is_preview(b.record) for b in runs.budget_records(out))
    assert [row["step"] for row in summarize(out)] == list(BUDGETS)
    assert [row["budget"] for row in budget_table(out)] == [b.name for b in runs.budget_records(out)]
    rows = preview_table(out)
    assert [row["step"] for row in rows] == list(BUDGETS) and all(row["ema_beta"] == BETA for row in rows)
    assert all(row["heldout_loss"] > 0 for row in rows)
    for preview in runs.preview_records(out):
        evaluation = preview.evaluation
        assert evaluation["preview"] is True and evaluation["budget"] == preview.name
        card = (preview.folder / "README.md").read_text()
        assert "EMA preview, not a decayed budget" in card and "- ema-preview" in card
    for budget in runs.budget_records(out):
        card = (budget.folder / "README.md").read_text()
        assert "preview" not in card.lower()
    logged = [json.loads(line) for line in (Path(out) / "wsd_log.jsonl").read_text().splitlines()]
    assert sum("preview/heldout_loss" in e for e in logged) == sum("budget/heldout_loss" in e for e in logged) == 3


# ----------------------------------------------------------------------------------------------- exactness
@pytest.mark.slow
@pytest.mark.parametrize(
    ("schedule", "kill_at"),
    [("wsd-s", 38), ("wsd", 39)],  # inside budget 40's decay window / inside the WSD branch of budget 40
)
def test_ema_is_exact_through_sigkill_and_resume(tmp_path, schedule, kill_at):
    out, reference = tmp_path / "run", tmp_path / "reference"
    command = [sys.executable, str(TINY), str(out), "--budgets", *map(str, BUDGETS), "--schedule", schedule,
               "--ema-beta", str(BETA), "--save-steps", "10"]
    killed = subprocess.run([*command, "--kill-at", str(kill_at)], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    written_before = set(_previews(out))
    assert written_before and max(written_before) < kill_at

    tiny_trainer(out, BUDGETS, schedule, save_steps=10, ema_beta=BETA).train(resume_from_checkpoint=True)
    tiny_trainer(reference, BUDGETS, schedule, save_steps=10, ema_beta=BETA).train()

    assert set(_previews(out)) == set(_previews(reference)) > written_before
    for step in _previews(reference):
        assert_bitwise_equal(_preview_weights(out, step), _preview_weights(reference, step))
    resumed, uninterrupted = _ema_state(out / "checkpoint-60"), _ema_state(reference / "checkpoint-60")
    assert resumed["count"] == uninterrupted["count"] > 0
    assert_bitwise_equal(resumed["average"], uninterrupted["average"])


@pytest.mark.slow
@pytest.mark.parametrize("branch_restore", ["device", "checkpoint"])
def test_wsd_branches_never_reach_the_average(tmp_path, branch_restore):
    branched, main_only = tmp_path / "branched", tmp_path / "main-only"
    tiny_trainer(branched, BUDGETS, "wsd", ema_beta=BETA, branch_restore=branch_restore).train()
    tiny_trainer(main_only, BUDGETS[-1:], "wsd", ema_beta=BETA).train()

    # Branch points 18 and 36, the last budget's pre-decay checkpoint 54 and its end 60: a preview at each save.
    assert sorted(_previews(branched)) == [18, 36, 54, 60] and sorted(_previews(main_only)) == [54, 60]
    for step in (54, 60):  # the same main-path steps, with and without the branches of budgets 20 and 40
        assert_bitwise_equal(_preview_weights(branched, step), _preview_weights(main_only, step))
    assert_bitwise_equal(_ema_state(branched / "checkpoint-60")["average"],
                         _ema_state(main_only / "checkpoint-60")["average"])
    record = json.loads((_previews(branched)[36] / "budget.json").read_text())
    assert record["preview"]["updates"] == 32 and record["preview"]["last_update"] == 35  # main path 4…35 only


def test_preview_steps_choose_where_previews_are_written(tmp_path):
    tiny_trainer(tmp_path, BUDGETS[:2], "wsd-s", ema_beta=BETA, preview_steps=[10, 30]).train()
    assert sorted(_previews(tmp_path)) == [10, 30]  # instead of one per checkpoint save (20 and 40)


def test_ema_set_when_extending_a_run_starts_a_fresh_average_with_a_warning(tmp_path, caplog):
    tiny_trainer(tmp_path, BUDGETS[:1], "wsd-s").train()
    with caplog.at_level("WARNING", logger="hf_wsd.averaging"):
        tiny_trainer(tmp_path, BUDGETS[:2], "wsd-s", ema_beta=BETA).train(resume_from_checkpoint=True)
    assert "starting a fresh EMA at update 20" in caplog.text
    record = json.loads((_previews(tmp_path)[40] / "budget.json").read_text())["preview"]
    assert (record["first_update"], record["last_update"], record["updates"]) == (20, 37, 18)


# ----------------------------------------------------------------------------------------------- publishing
def test_previews_get_their_own_hub_branch_and_never_main(local_hub, tmp_path):
    from huggingface_hub import HfApi

    repo = "tester/ema"
    tiny_trainer(tmp_path, BUDGETS[:2], "wsd-s", ema_beta=BETA, push_to_hub=True, hub_model_id=repo,
                 hub_token=HUB_TOKEN, preview_push_to_hub=True).train()
    branches = {ref.name for ref in HfApi(endpoint=local_hub.endpoint).list_repo_refs(repo).branches}
    names = [p.name for p in _previews(tmp_path).values()]
    assert branches == {"main", "step20-tokens1.28K", "step40-tokens2.56K", *names} and len(names) == 2
    main = json.loads(local_hub.branch_files(repo, "main")["budget.json"])
    assert main["name"] == "step40-tokens2.56K" and "preview" not in main


# ----------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("beta", [0, 1, 1.5, -0.1, float("nan")])
def test_ema_beta_outside_0_1_is_a_named_error_before_training(tmp_path, beta):
    with pytest.raises(ValueError, match=r"`ema_beta` must lie in \(0, 1\)"):
        tiny_config(tmp_path, BUDGETS, ema_beta=beta)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"preview_steps": [30]}, "`preview_steps` is set but `ema_beta` is not"),
        ({"ema_beta": BETA, "ema_device": "disk"}, "unknown `ema_device`"),
        ({"ema_beta": BETA, "schedule": "cyclic-cosine"}, "has none"),
        ({"ema_beta": BETA, "preview_push_to_hub": True}, "needs `push_to_hub=True`"),
        ({"ema_beta": BETA, "preview_steps": [3]}, "nothing would be averaged yet"),
        ({"ema_beta": BETA, "preview_steps": [61]}, r"1…60"),
    ],
)
def test_averaging_misconfigurations_are_named_errors(tmp_path, overrides, match):
    settings = {"schedule": "wsd-s", **overrides}
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, BUDGETS, **settings)


# ----------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_keep_one_average_equal_to_one_process(tmp_path, small_corpus):
    from test_multiprocess import LAUNCH_2, run_recipe

    extra = ["--ema_beta", str(BETA)]
    run_recipe(LAUNCH_2, tmp_path / "ddp", small_corpus, "wsd-s", 4, extra=extra)
    run_recipe([sys.executable], tmp_path / "single", small_corpus, "wsd-s", 8, extra=extra)
    assert sorted(_previews(tmp_path / "ddp")) == sorted(_previews(tmp_path / "single")) == [10, 20]
    for step in (10, 20):
        two, one = _preview_weights(tmp_path / "ddp", step), _preview_weights(tmp_path / "single", step)
        for key in one:
            assert torch.allclose(two[key], one[key], atol=1e-5, rtol=0), f"{step}/{key}"
    state = tmp_path / "ddp" / "checkpoint-20" / "wsd_state"
    assert sorted(p.name for p in state.iterdir()) == ["ema.pt"]  # one state for every rank (per_rank = False)
