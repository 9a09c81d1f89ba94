"""Forecast accuracy on real runs: fit on what a run had logged when budget K-1 was written, predict budgets K, K+1.

    python benchmarks/forecast_accuracy.py RUN_DIR [RUN_DIR ...] [--json results.json] [--plots docs/]

For every budget K-1 of a run with several budgets, each method sees only the updates the run had done when budget
K-1 was written (``TrainingLog.known_at``: WSD-S and cyclic-cosine: the main path to its step; WSD: the main path to
its branch point plus the branches so far) and predicts budgets K (one ahead) and K+1 (two ahead):

- training loss: the mean loss over the budget's decay updates, ``budget.json``'s ``train_loss``;
- held-out loss: the law's loss of the budget's final weights times the held-out/predicted ratio measured at budget
  K-1 (the only held-out loss the run had then): held-out = train-distribution loss × a generalisation gap.

Methods: ``mpl``, ``momentum``, ``auto`` (hf_wsd.forecast.fit_law), ``scaling`` (L(D) = E + B·D^-β through the decayed
losses of budgets 0 … K-1, tokens; needs 3) and ``persist`` (budget K-1's loss, the no-forecast baseline). A run with
one budget (cosine) is cut at 50 % and 75 % of its updates and predicts the mean training loss of its last 20 updates.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from hf_wsd.forecast import BudgetForecast, budget_lr, fit_budget_scaling, fit_law, forecast_budget, forecast_plan
from hf_wsd.forecast_logs import budget_losses, read_run, read_trainer_state

LAWS = ("mpl", "momentum", "auto")
COSINE_CUTS = (0.5, 0.75)
COSINE_WINDOW = 20
TITLE = "one budget ahead: predicted / measured decay-mean training loss - 1 (clipped at ±10 %)"


def budget_targets(run: Path, stepwise: bool = False) -> list[dict]:
    """One row per (cut, method, target budget) of a multi-budget run.

    ``stepwise``: fit with the piecewise-constant LR a reader without the plan reconstructs (sparse logs), still
    cutting and forecasting along the plan.
    """
    log = read_run(run)
    plan = log.plan
    name = run.name
    if stepwise:
        without_plan = read_trainer_state(log.source)
        log = replace(log, curves=without_plan.curves, lr_exact=without_plan.lr_exact)
        name += " (stepwise LR)"
    records = {r["index"]: r for r in budget_losses(run)}
    rows = []
    for known_index in range(len(plan.budgets) - 1):
        known = log.known_at(known_index)
        targets = [j for j in (known_index + 1, known_index + 2) if j < len(plan.budgets) and j in records]
        base = {"run": name, "schedule": plan.schedule, "known_budget": known_index, "fit_until_step": known.last_step}
        for method in LAWS:
            started = time.perf_counter()
            try:
                fit = fit_law(known, method)
            except ValueError as error:
                rows += [
                    {**base, "method": method, "target": j, "horizon": j - known_index, "error": str(error)}
                    for j in targets
                ]
                continue
            seconds = time.perf_counter() - started
            previous = plan.budgets[known_index]
            fitted_previous = float(fit.predict(budget_lr(plan, previous, log.peak_lr), [previous.step])[0])
            gap = (records[known_index]["heldout_loss"] or np.nan) / fitted_previous
            for j in targets:
                forecast = forecast_budget(fit, plan, plan.budgets[j])
                rows.append(
                    {
                        **base,
                        **_compare(forecast, records[j], gap),
                        "method": method,
                        "law": fit.law,
                        "target": j,
                        "horizon": j - known_index,
                        "fit_seconds": seconds,
                    }
                )
        for j in targets:
            rows += _baselines(base, records, known_index, j)
    return rows


def _compare(forecast: BudgetForecast, record: dict, gap: float) -> dict:
    measured, heldout = record["train_loss"], record["heldout_loss"]
    predicted_heldout = forecast.predicted_loss * gap
    return {
        "predicted_train": forecast.predicted_decay_mean,
        "measured_train": measured,
        "train_error": forecast.predicted_decay_mean / measured - 1,
        "in_band": forecast.decay_low <= measured <= forecast.decay_high,
        "predicted_heldout": predicted_heldout,
        "measured_heldout": heldout,
        "heldout_error": (predicted_heldout / heldout - 1) if heldout else None,
    }


def _baselines(base: dict, records: dict, known_index: int, j: int) -> list[dict]:
    rows = []
    known = [records[i] for i in range(known_index + 1)]
    target = records[j]
    persist = {"predicted_train": known[-1]["train_loss"], "predicted_heldout": known[-1]["heldout_loss"]}
    rows.append({**base, "method": "persist", "target": j, "horizon": j - known_index, **_errors(persist, target)})
    if len(known) >= 3:
        predicted = {}
        for key, metric in (("predicted_train", "train_loss"), ("predicted_heldout", "heldout_loss")):
            if all(r[metric] is not None for r in known):
                fit = fit_budget_scaling([r["tokens"] or r["step"] for r in known], [r[metric] for r in known])
                predicted[key] = fit.predict(target["tokens"] or target["step"])
        rows.append(
            {**base, "method": "scaling", "target": j, "horizon": j - known_index, **_errors(predicted, target)}
        )
    return rows


def _errors(predicted: dict, target: dict) -> dict:
    out = {"measured_train": target["train_loss"], "measured_heldout": target["heldout_loss"]}
    for key, metric, name in (
        ("predicted_train", "train_loss", "train_error"),
        ("predicted_heldout", "heldout_loss", "heldout_error"),
    ):
        value = predicted.get(key)
        out[key] = value
        out[name] = value / target[metric] - 1 if value is not None and target[metric] else None
    return out


def cosine_targets(run: Path) -> list[dict]:
    """A one-budget run: cut at COSINE_CUTS of its updates, predict the mean loss of its last COSINE_WINDOW updates."""
    log = read_run(run)
    plan, budget = log.plan, log.plan.budgets[-1]
    entries = log.main.end > budget.step - COSINE_WINDOW
    measured = float(log.main.loss[entries].mean())
    lr = budget_lr(plan, budget, log.peak_lr)
    rows = []
    for cut in COSINE_CUTS:
        known = log.cut(int(cut * budget.step))
        for method in LAWS:
            started = time.perf_counter()
            base = {
                "run": run.name,
                "schedule": plan.schedule,
                "known_budget": None,
                "fit_until_step": known.last_step,
                "method": method,
                "target": 0,
                "horizon": f"{cut:.0%} → end",
            }
            try:
                fit = fit_law(known, method)
            except ValueError as error:
                rows.append({**base, "error": str(error)})
                continue
            mean, low, high = fit.predict_with_band(lr, budget.step - COSINE_WINDOW, budget.step)
            rows.append(
                {
                    **base,
                    "law": fit.law,
                    "predicted_train": mean,
                    "measured_train": measured,
                    "train_error": mean / measured - 1,
                    "in_band": low <= measured <= high,
                    "fit_seconds": time.perf_counter() - started,
                }
            )
    return rows


def in_sample(run: Path) -> list[dict]:
    """Each law fitted on the whole log: its error at every budget's decay mean (how well the law describes the run)."""
    log = read_run(run)
    records = {r["index"]: r for r in budget_losses(run)}
    rows = []
    for method in LAWS:
        fit = fit_law(log, method)
        errors = [
            f.predicted_decay_mean / records[f.index]["train_loss"] - 1
            for f in forecast_plan(fit, log.plan)
            if f.index in records
        ]
        rows.append(
            {
                "run": run.name,
                "schedule": log.plan.schedule,
                "method": method,
                "law": fit.law,
                "mean_abs_error": float(np.mean(np.abs(errors))),
                "max_abs_error": float(np.max(np.abs(errors))),
                "params": fit.params,
            }
        )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for row in rows:
        groups[(row["run"], row["method"], str(row["horizon"]))].append(row)
    table = []
    for (run, method, horizon), group in groups.items():
        entry = {
            "run": run,
            "method": method,
            "horizon": horizon,
            "n": len(group),
            "failed": sum("error" in r and isinstance(r["error"], str) for r in group),
        }
        for key in ("train_error", "heldout_error"):
            values = [abs(r[key]) for r in group if isinstance(r.get(key), float) and np.isfinite(r[key])]
            entry[f"{key}_mean"] = float(np.mean(values)) if values else None
            entry[f"{key}_max"] = float(np.max(values)) if values else None
        bands = [r["in_band"] for r in group if "in_band" in r]
        entry["coverage"] = float(np.mean(bands)) if bands else None
        table.append(entry)
    return table


def pooled(rows: list[dict]) -> list[dict]:
    """Rows pooled per schedule over the seeds (the sparse-log and default-budget runs are reported on their own),
    for every forecast and for those made from budget index 2 on (three budgets written: what scaling needs)."""
    kept = [r for r in rows if r["horizon"] in (1, 2) and "log10" not in r["run"] and "default" not in r["run"]]
    table = []
    for late in (False, True):
        chosen = [
            {**r, "run": f"{r['schedule']} (seeds 42, 1){', K-1 ≥ 2' if late else ''}"}
            for r in kept
            if not late or r["known_budget"] >= 2
        ]
        table += summarize(chosen)
    return table


def markdown(table: list[dict]) -> str:
    def pct(value):
        return "–" if value is None else f"{100 * value:.2f}"

    header = (
        "| run | method | horizon | n (failed) | train: mean / max abs err % | held-out: mean / max % | in 90 % band |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for e in table:
        coverage = "–" if e["coverage"] is None else f"{100 * e['coverage']:.0f} %"
        lines.append(
            f"| {e['run']} | {e['method']} | {e['horizon']} | {e['n']} ({e['failed']}) | "
            f"{pct(e['train_error_mean'])} / {pct(e['train_error_max'])} | "
            f"{pct(e['heldout_error_mean'])} / {pct(e['heldout_error_max'])} | {coverage} |"
        )
    return "\n".join(lines)


def plot_examples(run: Path, folder: Path, known_index: int) -> Path:
    """The auto forecast of ``run`` from what it had logged at budget ``known_index``, with the measured budgets."""
    from hf_wsd.plots import plot_forecast

    log = read_run(run)
    one_budget = len(log.plan.budgets) == 1  # its "decay" is the whole cosine: no decay-mean marks
    known = log.cut(int(COSINE_CUTS[-1] * log.last_step)) if one_budget else log.known_at(known_index)
    fit = fit_law(known, "auto")
    forecasts = [] if one_budget else forecast_plan(fit, log.plan)
    measured = {} if one_budget else {r["step"]: r["train_loss"] for r in budget_losses(run)}
    return plot_forecast(log, fit, log.plan, forecasts, folder / f"forecast_{run.name}.png", measured=measured)


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    """Signed one-ahead error of the training-loss forecast against the budget fitted up to, one panel per run."""
    from hf_wsd.plots import plot_panels

    panels: dict[str, dict] = {}
    for row in rows:
        if row["horizon"] != 1 or not isinstance(row.get("train_error"), float):
            continue
        curves = panels.setdefault(row["run"], {})
        xs, ys = curves.setdefault(row["method"], ([], []))
        xs.append(row["known_budget"] + 1)
        ys.append(100 * float(np.clip(row["train_error"], -0.1, 0.1)))
    styles = {
        "mpl": {"marker": "o", "color": "C0"},
        "momentum": {"marker": "s", "color": "C1"},
        "auto": {"marker": "x", "ls": "--", "color": "C2"},
        "scaling": {"marker": "^", "color": "C3"},
        "persist": {"marker": ".", "color": "grey"},
    }
    panels = {run: {m: (*curves[m], styles[m]) for m in styles if m in curves} for run, curves in panels.items()}
    return plot_panels(
        panels,
        path,
        xlabel="budget forecast (index K; fitted on what the run had at budget K-1)",
        ylabel="error %",
        title=TITLE,
        marks=(),
        ylim=(-10, 10),
    )


def band_ablation(runs: list[Path]) -> str:
    """One-ahead coverage of the 90 % band with and without its held-out (misspecification) term, ``auto`` fits."""
    full = parametric = count = 0
    ratios = []
    for run in runs:
        log = read_run(run)
        records = {r["index"]: r for r in budget_losses(run)}
        for index in range(len(log.plan.budgets) - 1):
            try:
                fit = fit_law(log.known_at(index), "auto")
            except ValueError:
                continue
            budget = log.plan.budgets[index + 1]
            lr = budget_lr(log.plan, budget, log.peak_lr)
            mean, low, high = fit.predict_with_band(lr, budget.decay_start, budget.step)
            _, low_p, high_p = replace(fit, model_error=None).predict_with_band(lr, budget.decay_start, budget.step)
            measured = records[index + 1]["train_loss"]
            count += 1
            full += low <= measured <= high
            parametric += low_p <= measured <= high_p
            ratios.append(np.log(high / mean) / max(np.log(high_p / mean), 1e-12))
    return (
        f"{count} one-ahead forecasts: in the 90 % band {full / count:.0%}, in its parametric part alone "
        f"{parametric / count:.0%}; the held-out term widens the band {np.median(ratios):.2f}× (median)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--json", type=Path, help="write every row and the summary here")
    parser.add_argument("--plots", type=Path, help="write one example forecast figure per run here")
    parser.add_argument(
        "--stepwise",
        type=Path,
        nargs="*",
        default=[],
        help="also score these runs with the piecewise-constant LR of a reader without the plan",
    )
    parser.add_argument("--example-budget", type=int, default=3, help="budget index the example figures fit up to")
    parser.add_argument(
        "--from-json", type=Path, help="only reprint the tables (and redraw the figure) of a --json file"
    )
    parser.add_argument(
        "--band-ablation",
        action="store_true",
        help="only measure the band with and without its held-out term on the given runs",
    )
    args = parser.parse_args(argv)
    if args.band_ablation:
        print(band_ablation(args.runs))
        return
    if args.from_json:
        rows = json.loads(args.from_json.read_text())["rows"]
        if args.plots:
            print(f"figure: {plot_accuracy(rows, args.plots / 'forecast_accuracy.png')}")
        print(markdown(summarize(rows)) + "\n\nPooled:\n" + markdown(pooled(rows)))
        return
    rows, fits = [], []
    for run in args.runs:
        one_budget = len(read_run(run).plan.budgets) == 1
        rows += cosine_targets(run) if one_budget else budget_targets(run)
        if not one_budget:
            fits += in_sample(run)
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            print(f"figure: {plot_examples(run, args.plots, args.example_budget)}")
    for run in args.stepwise:
        rows += budget_targets(run, stepwise=True)
    table = summarize(rows)
    if args.plots:
        print(f"figure: {plot_accuracy(rows, args.plots / 'forecast_accuracy.png')}")
    print(markdown(table) + "\n\nPooled:\n" + markdown(pooled(rows)))
    print("\nIn-sample (each law fitted on the whole log), decay-mean error over the run's budgets:")
    for f in fits:
        print(
            f"  {f['run']:<22} {f['method']:<9} ({f['law']:<8}) mean {100 * f['mean_abs_error']:.2f} %  "
            f"max {100 * f['max_abs_error']:.2f} %"
        )
    seconds = [r["fit_seconds"] for r in rows if "fit_seconds" in r]
    print(
        f"\nfit time per forecast: median {np.median(seconds):.2f} s, max {np.max(seconds):.2f} s ({len(seconds)} fits)"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": table, "in_sample": fits}, indent=1, default=float))


if __name__ == "__main__":
    main()
