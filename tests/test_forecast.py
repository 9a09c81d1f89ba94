"""Loss forecasts (hf_wsd/forecast.py) and their log readers (hf_wsd/forecast_logs.py): synthetic curves of known
answer."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest

from hf_wsd import cli, forecast
from hf_wsd.forecast_logs import LossCurve, TrainingLog, read_log, read_run
from hf_wsd.plan import BudgetPlan
from hf_wsd.runs import new_run_record

PEAK = 3e-3
MPL = {"L0": 2.5, "A": 3.0, "alpha": 0.45, "B": 0.4, "C": 0.5, "beta": 0.6, "gamma": 0.5}
MOMENTUM = {"L0": 2.5, "A": 3.0, "alpha": 0.45, "C": 0.004, "lam": 0.99}
LAWS = {"mpl": (forecast.mpl_loss, MPL), "momentum": (forecast.momentum_loss, MOMENTUM)}
PLANS = {
    "wsd-s": lambda: BudgetPlan([100, 200, 300, 400], warmup_steps=10, decay_fraction=0.2),
    "cosine": lambda: BudgetPlan([250], schedule="cosine", warmup_steps=10),
}


def path_lr(plan: BudgetPlan, updates: int, branch: int | None = None) -> np.ndarray:
    start = plan.budgets[branch].decay_start if branch is not None else updates
    return PEAK * np.array([plan.lr_ratio(n, branch if n >= start else None) for n in range(updates)])


def law_losses(law: str, lr: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Loss of update n (weights after n updates) for n = 0 … len(lr)-1 (the first two, of zero LR area, held
    finite)."""
    function, params = LAWS[law]
    with np.errstate(divide="ignore"):
        loss = function(lr / PEAK, np.arange(len(lr)), **params)
    loss[:2] = loss[2]
    return loss * np.exp(noise * np.random.default_rng(seed).standard_normal(len(lr)))


def synthetic_log(plan: BudgetPlan, law: str, noise: float = 0.0, every: int = 1) -> TrainingLog:
    """A log as the Trainer writes it: entry at step s = mean loss of updates p … s-1, every ``every`` updates."""
    lr = path_lr(plan, plan.total_steps)
    loss = law_losses(law, lr, noise)
    ends = np.arange(every, plan.total_steps + 1, every)
    starts = np.concatenate([[0], ends[:-1]])
    means = np.array([loss[s:e].mean() for s, e in zip(starts, ends)])
    return TrainingLog((LossCurve(lr, starts, ends, means),), "synthetic", PEAK, plan)


def write_csv(path, rows, columns=("step", "learning_rate", "loss")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def trainer_rows(plan: BudgetPlan, law: str, every: int = 1, noise: float = 0.0) -> list[dict]:
    """``log_history`` entries of a Trainer logging every ``every`` updates (loss, LR of the entry's last update)."""
    lr = path_lr(plan, plan.total_steps)
    loss = law_losses(law, lr, noise)
    return [
        {
            "step": s,
            "loss": float(loss[s - every : s].mean()),
            "learning_rate": float(lr[s - 1]),
            "grad_norm": 1.0,
            "epoch": s / 1000,
        }
        for s in range(every, plan.total_steps + 1, every)
    ]


def relative(fit: forecast.LawFit, truth: dict) -> dict:
    return {k: abs(fit.params[k] / v - 1) for k, v in truth.items()}


# ------------------------------------------------------------------------------------------------ the fitter
@pytest.mark.parametrize("schedule", PLANS)
@pytest.mark.parametrize("law", LAWS)
def test_fit_recovers_the_parameters_of_a_noise_free_curve_of_its_own_law(law, schedule):
    fit = forecast.fit_law(synthetic_log(PLANS[schedule](), law), law)
    assert fit.law == law
    assert max(relative(fit, LAWS[law][1]).values()) < 1e-3, fit.params


@pytest.mark.parametrize("schedule", PLANS)
@pytest.mark.parametrize("law", LAWS)
def test_fit_recovers_the_curve_and_its_power_law_under_half_a_percent_noise(law, schedule):
    plan = PLANS[schedule]()
    fit = forecast.fit_law(synthetic_log(plan, law, noise=0.005), law)
    errors = relative(fit, LAWS[law][1])
    # L0, A and α are identified on both schedules. On one cosine MPL's (B, C, β, γ) trade off against each other
    # (different values, the same curve), so there only the curve is checked; on WSD-S they are identified too.
    assert max(errors[k] for k in ("L0", "A", "alpha")) < 0.1, fit.params
    if law == "momentum" or schedule == "wsd-s":
        assert errors["lam" if law == "momentum" else "B"] < 0.1, fit.params
    lr = path_lr(plan, plan.total_steps)
    steps = np.arange(20, plan.total_steps + 1)
    truth = LAWS[law][0](lr / PEAK, steps, **LAWS[law][1])
    assert np.max(np.abs(fit.predict(lr, steps) / truth - 1)) < 0.003


def test_forecasts_of_a_plan_are_the_law_evaluated_along_each_budgets_path():
    fit = forecast.fit_law(synthetic_log(PLANS["wsd-s"](), "mpl", noise=0.003), "mpl")
    plan = BudgetPlan([200, 400, 800], schedule="wsd", warmup_steps=10, decay_fraction=0.1)  # side branches
    for budget, row in zip(plan.budgets, forecast.forecast_plan(fit, plan)):
        lr = path_lr(plan, budget.step, budget.index if budget.branch else None) / fit.lr_scale
        direct = forecast.mpl_loss(lr, np.arange(budget.decay_start, budget.step + 1), **fit.params)
        assert row.predicted_loss == pytest.approx(direct[-1], rel=1e-12)
        assert row.predicted_decay_mean == pytest.approx(direct[:-1].mean(), rel=1e-12)
        assert row.low < row.predicted_loss < row.high and row.decay_low < row.predicted_decay_mean < row.decay_high
        assert (row.budget, row.step, row.law, row.fit_until_step) == (budget.name, budget.step, "mpl", 400)
    # A branch decays below the main path at the same step.
    assert fit.predict(path_lr(plan, 200, 0), [200])[0] < fit.predict(path_lr(plan, 200), [200])[0]


def test_auto_chooses_the_law_that_generated_the_curve_on_the_held_out_end():
    plan = BudgetPlan([100, 200, 300, 400, 500], warmup_steps=10, decay_fraction=0.2)
    assert forecast.fit_law(synthetic_log(plan, "mpl", noise=0.002), "auto").law == "mpl"
    assert forecast.fit_law(synthetic_log(plan, "momentum", noise=0.002), "auto").law == "momentum"


def test_fits_and_forecasts_are_deterministic():
    log = synthetic_log(PLANS["wsd-s"](), "mpl", noise=0.01)
    plan = BudgetPlan([100, 200, 300, 400, 600, 800], warmup_steps=10, decay_fraction=0.2)
    first, second = (forecast.forecast_plan(forecast.fit_law(log, "auto"), plan) for _ in range(2))
    assert first == second


def test_a_sparse_log_fits_the_interval_means_with_the_plans_exact_learning_rate(tmp_path):
    plan = PLANS["wsd-s"]()
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": trainer_rows(plan, "momentum", every=10), "global_step": 400}))
    exact = read_log(state, plan=plan)
    assert exact.lr_exact and np.array_equal(exact.main.lr, path_lr(plan, 400))
    assert list(exact.main.start[:3]) == [0, 10, 20] and list(exact.main.end[:3]) == [10, 20, 30]
    fit = forecast.fit_law(exact, "momentum")
    assert max(relative(fit, MOMENTUM).values()) < 1e-3, fit.params
    # Without the plan each interval takes the LR of its last update: approximate, and said so.
    stepwise = read_log(state)
    assert not stepwise.lr_exact
    assert np.all(stepwise.main.lr[90:100] == stepwise.main.lr[99])


def test_fit_rejects_too_few_points_and_a_log_without_decay():
    plan = BudgetPlan([400], warmup_steps=10, decay_fraction=0.2)
    with pytest.raises(ValueError, match="the mpl law .7 parameters. needs at least 28"):
        forecast.fit_law(synthetic_log(plan, "mpl", every=20).cut(200), "mpl")
    with pytest.raises(ValueError, match="never falls more than 10% below its peak"):
        forecast.fit_law(synthetic_log(plan, "momentum").cut(300), "momentum")
    with pytest.raises(ValueError, match="unknown `law` 'power'"):
        forecast.fit_law(synthetic_log(plan, "momentum"), "power")


# ------------------------------------------------------------------------------------------------ readers
def test_reads_a_csv_and_a_trainer_state_ignoring_entries_without_loss(tmp_path):
    plan = PLANS["wsd-s"]()
    rows = trainer_rows(plan, "mpl")
    from_csv = read_log(write_csv(tmp_path / "log.csv", [(r["step"], r["learning_rate"], r["loss"]) for r in rows]))
    history = rows + [{"step": 100, "eval_loss": 9.0}, {"budget/heldout_loss": 1.0, "step": 100}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    from_state = read_log(tmp_path)  # a checkpoint folder
    for log in (from_csv, from_state):
        assert log.lr_exact and log.plan is None and log.peak_lr == pytest.approx(PEAK)
        assert len(log.main.end) == 400 and np.allclose(log.main.lr, path_lr(plan, 400))
    assert np.array_equal(from_csv.main.loss, from_state.main.loss)


def test_readers_reject_logs_without_learning_rates_naming_the_file_and_field(tmp_path):
    path = write_csv(tmp_path / "nolr.csv", [(1, 5.0), (2, 4.9)], columns=("step", "loss"))
    with pytest.raises(ValueError, match=r"nolr.csv has no `learning_rate` column \(columns: step, loss\)"):
        read_log(path)
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"step": 1, "loss": 5.0}]}))
    with pytest.raises(
        ValueError, match=r"trainer_state.json log_history entry at step 1 has a loss but no `learning_rate`"
    ):
        read_log(state)
    with pytest.raises(ValueError, match="no log at"):
        read_log(tmp_path / "missing.csv")


def make_wsd_run(tmp_path, law: str = "momentum") -> tuple:
    """An hf_wsd WSD run: wsd_plan.json, wsd_log.jsonl with branch lines, budget folders; per-update losses exact."""
    plan = BudgetPlan([100, 200, 300, 400], schedule="wsd", warmup_steps=10, decay_fraction=0.2, tokens_per_update=1024)
    run = tmp_path / "run"
    (run / "budgets").mkdir(parents=True)
    (run / "wsd_plan.json").write_text(json.dumps(new_run_record(plan)))
    lines, main_lr = [], path_lr(plan, 400)
    main = law_losses(law, main_lr)
    for budget in plan.budgets:
        lr = path_lr(plan, budget.step, budget.index if budget.branch else None)
        loss = law_losses(law, lr) if budget.branch else main
        steps = range(budget.decay_start + 1, budget.step + 1)
        if budget.branch:
            lines += [
                {
                    "step": s,
                    "loss": loss[s - 1],
                    "learning_rate": lr[s - 1],
                    "branch": budget.index,
                    "tokens_seen": s * 1024,
                    "time": 0.0,
                }
                for s in steps
            ]
        folder = run / "budgets" / budget.name
        folder.mkdir()
        (folder / "budget.json").write_text(
            json.dumps(
                {
                    "name": budget.name,
                    "index": budget.index,
                    "step": budget.step,
                    "tokens": budget.tokens,
                    "schedule": "wsd",
                    "decay_start": budget.decay_start,
                    "branch": budget.branch,
                    "train_loss": float(np.mean([loss[s - 1] for s in steps])),
                    "losses": [[s, loss[s - 1], lr[s - 1]] for s in steps],
                }
            )
        )
    lines += [
        {
            "step": s,
            "loss": main[s - 1],
            "learning_rate": main_lr[s - 1],
            "branch": None,
            "tokens_seen": s * 1024,
            "grad_norm": None,
            "time": 0.0,
        }
        for s in range(1, 401)
    ]
    lines.insert(5, {"step": 150, "loss": 99.0, "learning_rate": PEAK, "branch": None})  # replaced after a resume
    lines.insert(9, {"budget/heldout_loss": 3.0, "step": 100})  # an evaluation line: no loss
    (run / "wsd_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    return run, plan


def test_reads_an_hf_wsd_run_log_with_branches_keeping_the_last_duplicate(tmp_path):
    run, plan = make_wsd_run(tmp_path)
    log = read_log(run)
    assert log.source.endswith("wsd_log.jsonl") and log.plan == plan and log.tokens_per_update == 1024
    assert [c.branch for c in log.curves] == [None, 0, 1, 2]
    assert log.main.loss[149] != 99.0  # the later line for step 150 won
    branch = log.curves[3]  # budget 2: 300 updates, a 60-update decay from 240
    assert (branch.start[0], branch.end[0], branch.end[-1]) == (240, 241, 300)
    assert np.array_equal(branch.lr, path_lr(plan, 300, 2))
    known = log.known_at(1)  # budget 1 (a branch from 160) was written before the main path passed update 160
    assert known.last_step == 160 and [c.branch for c in known.curves] == [None, 0, 1]
    assert [c.branch for c in log.before_decay(2).curves] == [None, 0, 1] and log.before_decay(2).last_step == 240


def test_a_run_without_its_log_falls_back_to_the_newest_checkpoint_and_budget_records(tmp_path):
    run, _ = make_wsd_run(tmp_path)
    from_log = read_run(run)
    rows = [json.loads(line) for line in (run / "wsd_log.jsonl").read_text().splitlines() if line.strip()]
    main = [r for r in rows if "loss" in r and r.get("branch") is None and r["loss"] != 99.0]  # as resumed
    (run / "wsd_log.jsonl").unlink()
    for step in (200, 400):
        (run / f"checkpoint-{step}").mkdir()
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"log_history": [r for r in main if r["step"] <= step]})
        )
    log = read_run(run)
    assert log.source.endswith("checkpoint-400/trainer_state.json") and log.last_step == 400
    assert [c.branch for c in log.curves] == [None, 0, 1, 2]  # branch decays from budgets/*/budget.json
    for curve, same in zip(log.curves, from_log.curves):
        assert np.array_equal(curve.lr, same.lr) and np.array_equal(curve.start, same.start)
        assert np.allclose(curve.loss, same.loss, rtol=1e-12)


def test_plan_must_match_the_logged_learning_rates(tmp_path):
    rows = trainer_rows(PLANS["wsd-s"](), "mpl")
    path = write_csv(tmp_path / "log.csv", [(r["step"], r["learning_rate"], r["loss"]) for r in rows])
    with pytest.raises(ValueError, match="does not follow BudgetPlan"):
        read_log(path, plan=BudgetPlan([100, 200, 300, 400], warmup_steps=10, decay_fraction=0.1))


# ------------------------------------------------------------------------------------------------ runs, scaling
def test_forecast_run_fits_each_budget_on_the_log_before_its_decay(tmp_path):
    run, plan = make_wsd_run(tmp_path)
    rows = forecast.forecast_run(run, law="momentum")
    assert [r["budget"] for r in rows] == [b.name for b in plan.budgets]
    assert rows[0]["predicted_loss"] is None and "never falls" in rows[0]["note"]  # no decay before the first one
    for row, budget in zip(rows[1:], plan.budgets[1:]):
        assert row["fit_until_step"] == budget.decay_start
        assert row["low"] < row["predicted_loss"] < row["high"] and row["law"] == "momentum"
        measured = json.loads((run / "budgets" / budget.name / "budget.json").read_text())["train_loss"]
        assert row["predicted_decay_mean"] == pytest.approx(measured, rel=0.01)  # exact synthetic data
    assert forecast.forecast_run(run, law="momentum", budgets=[plan.budgets[2].name]) == [rows[2]]


def test_scaling_fit_recovers_a_power_law_and_needs_three_budgets():
    sizes = [1e5, 2e5, 4e5, 8e5]
    fit = forecast.fit_budget_scaling(sizes, [2.0 + 300 * s**-0.5 for s in sizes])
    assert (fit.E, fit.B, fit.beta) == pytest.approx((2.0, 300, 0.5), rel=1e-4)
    assert fit.predict(1.6e6) == pytest.approx(2.0 + 300 * 1.6e6**-0.5, rel=1e-6)
    with pytest.raises(ValueError, match="needs the decayed losses of at least 3 budgets; got 2"):
        forecast.fit_budget_scaling(sizes[:2], [3.0, 2.9])


# ------------------------------------------------------------------------------------------------ CLI
def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_forecast_json_lists_every_budget_of_the_given_plan(tmp_path):
    rows = trainer_rows(PLANS["wsd-s"](), "momentum", noise=0.005)
    path = write_csv(tmp_path / "log.csv", [(r["step"], r["learning_rate"], r["loss"]) for r in rows])
    code, out, _ = run_cli(
        "forecast", str(path), "400", "800", "1600", "--warmup-steps", "10", "--json", "--law", "momentum"
    )
    assert code == 0
    payload = json.loads(out)
    assert [r["step"] for r in payload] == [400, 800, 1600]
    for row in payload:
        assert {"budget", "step", "predicted_loss", "low", "high", "law"} <= set(row) and row["law"] == "momentum"
        assert row["low"] < row["predicted_loss"] < row["high"]


def test_cli_forecast_of_a_run_uses_its_plan_prints_a_table_and_plots(tmp_path):
    run, plan = make_wsd_run(tmp_path)
    code, out, _ = run_cli("forecast", str(run), "--law", "momentum", "--plot", str(tmp_path / "forecast.png"))
    assert code == 0 and (tmp_path / "forecast.png").stat().st_size > 0
    assert all(b.name in out for b in plan.budgets)
    assert "scaling fit over 4 budgets' train_loss vs tokens" in out


def test_cli_forecast_errors_exit_2_with_the_message(tmp_path):
    path = write_csv(tmp_path / "nolr.csv", [(1, 5.0)], columns=("step", "loss"))
    code, _, err = run_cli("forecast", str(path), "100")
    assert code == 2 and "hf-wsd forecast:" in err and "no `learning_rate` column" in err
    rows = trainer_rows(PLANS["wsd-s"](), "mpl")
    path = write_csv(tmp_path / "log.csv", [(r["step"], r["learning_rate"], r["loss"]) for r in rows])
    code, _, err = run_cli("forecast", str(path))
    assert code == 2 and "give the budgets to forecast" in err
