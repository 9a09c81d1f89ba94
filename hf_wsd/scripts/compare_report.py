"""The schedule comparison's report: tables (markdown, CSV, JSON) and figures from the finished runs.

Read from the runs on disk (each run's ``compare_run.json`` record and its budget folders), so
``--report_only`` rebuilds everything without training.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

from .. import runs
from ..plan import BudgetPlan, format_tokens
from ..plots import plot_panels
from ..runs import plan_from_dict

logger = logging.getLogger(__name__)

METHODS = ("wsd-s", "wsd", "cyclic-cosine", "cosine")
LABELS = {"wsd-s": "WSD-S", "wsd": "WSD", "cyclic-cosine": "cyclic-cosine", "cosine": "cosine oracle"}
RUN_RECORD = "compare_run.json"  # written when a run is complete; lets a re-launch skip it


# ------------------------------------------------------------------------------------------------ results
def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_dirs(output_dir: Path, method: str, budgets: list[str]) -> list[tuple[Path, list[str]]]:
    """``(output_dir, budgets)`` of each run of ``method``: one run, or one per budget for the cosine oracle."""
    if method == "cosine":
        return [(output_dir / "cosine" / str(b), [b]) for b in budgets]
    return [(output_dir / method, list(budgets))]


def collect(output_dir: Path, methods: list[str], budgets: list[str], reference: BudgetPlan) -> tuple[list[dict], dict]:
    """One row per method and budget, and each method's run records."""
    index_of = {b.step: b.index for b in reference.budgets}
    rows, records = [], {}
    for method in methods:
        records[method] = []
        for run_dir, _ in run_dirs(output_dir, method, budgets):
            record = load_json(run_dir / RUN_RECORD)
            if record is None:
                raise ValueError(
                    f"{run_dir} holds no finished run ({RUN_RECORD} is missing): run without --report_only."
                )
            records[method].append(record)
            plan = plan_from_dict(record["plan"])
            for budget in plan.budgets:
                folder = runs.budget_folder(run_dir, budget)
                info = load_json(folder / runs.BUDGET_FILE) or {}
                evaluation = load_json(folder / runs.EVAL_FILE) or {"results": []}
                row = {
                    "method": method,
                    "seed": record["seed"],
                    "budget": index_of[budget.step] + 1,
                    "name": budget.name,
                    "step": budget.step,
                    "tokens": budget.tokens,
                    "compute": budget.compute,
                    "train_loss": info.get("train_loss"),
                }
                for result in evaluation["results"]:
                    row[f"{result['task']}_{result['metric']}"] = result["value"]
                rows.append(row)
        total = sum(r["updates"] for r in records[method])
        for row in rows:
            if row["method"] == method:
                row["total_compute"] = total
    oracle = {r["step"]: r.get("heldout_loss") for r in rows if r["method"] == "cosine"}
    for row in rows:
        base, loss = oracle.get(row["step"]), row.get("heldout_loss")
        row["gap_vs_cosine_pct"] = None if base is None or loss is None else 100 * (loss - base) / base
    return rows, records


# The columns of every row, first in the CSV; the benchmarks' metrics follow, sorted.
CSV_COLUMNS = ("method", "seed", "budget", "name", "step", "tokens", "compute", "total_compute", "heldout_loss",
               "heldout_perplexity", "gap_vs_cosine_pct", "train_loss")


def metric_columns(rows: list[dict]) -> list[str]:
    return sorted({key for row in rows for key in row if key not in CSV_COLUMNS})


def write_csv(rows: list[dict], path: Path) -> None:
    columns = [*CSV_COLUMNS, *metric_columns(rows)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _num(value, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(rows: list[dict], records: dict, methods: list[str], reference: BudgetPlan, describe: str) -> str:
    """The comparison as markdown tables: held-out loss, task metrics, compute, measured cost."""
    by = {(r["method"], r["step"]): r for r in rows}
    budgets = reference.budgets
    lines = [
        f"# Schedule comparison\n\n{describe}\n",
        "## Held-out loss per budget\n",
        "Updates spent to obtain each checkpoint in parentheses (WSD counts its earlier branches; the cosine "
        "oracle is a separate run per budget)."
        + (" Last column: WSD-S relative to the cosine oracle." if {"wsd-s", "cosine"} <= set(methods) else "")
        + "\n",
    ]
    gap = {"wsd-s", "cosine"} <= set(methods)
    header = ["budget", *[LABELS[m] for m in methods]] + (["WSD-S vs cosine"] if gap else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for budget in budgets:
        cells = [budget.name]
        for method in methods:
            row = by.get((method, budget.step))
            cells.append("–" if row is None else f"{_num(row.get('heldout_loss'))} ({row['compute']})")
        if gap:
            value = by.get(("wsd-s", budget.step), {}).get("gap_vs_cosine_pct")
            cells.append("–" if value is None else f"{value:+.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    metrics = metric_columns(rows)
    if metrics:
        lines += [
            "\n## Bundled tasks per budget\n",
            "| budget | metric | " + " | ".join(LABELS[m] for m in methods) + " |",
            "|" + "---|" * (len(methods) + 2),
        ]
        for budget in budgets:
            for metric in metrics:
                values = [_num(by.get((m, budget.step), {}).get(metric)) for m in methods]
                lines.append(f"| {budget.name} | {metric} | " + " | ".join(values) + " |")
    lines += [
        "\n## Compute for all K checkpoints\n",
        "| method | updates for all K | × WSD-S | × cosine oracle |",
        "|---|---|---|---|",
    ]
    totals = {m: sum(r["updates"] for r in records[m]) for m in methods}
    for method in methods:
        ratio_s = f"{totals[method] / totals['wsd-s']:.2f}" if "wsd-s" in totals else "–"
        ratio_c = f"{totals[method] / totals['cosine']:.2f}" if "cosine" in totals else "–"
        lines.append(f"| {LABELS[method]} | {totals[method]} | {ratio_s} | {ratio_c} |")
    lines += [
        "\n## Measured cost\n",
        "| run | updates | wall s | of which evaluating s | updates/s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for method in methods:
        for record in records[method]:
            run = LABELS[method] + (f" {record['plan']['budgets'][0]}" if method == "cosine" else "")
            lines.append(
                f"| {run} | {record['updates']} | {record['wall_seconds']:.0f} | {record['eval_seconds']:.0f} | "
                f"{record['updates_per_second']:.2f} | {record['tokens_per_second']:,.0f} |"
            )
    wall = sum(r["wall_seconds"] for m in methods for r in records[m])
    lines.append(f"\nAll runs: {wall / 60:.1f} min of wall time.")
    return "\n".join(lines) + "\n"


def _loss_points(history: list[dict], up_to: int | None = None) -> tuple[list[int], list[float]]:
    points = [(e["step"], e["loss"]) for e in history if "loss" in e and (up_to is None or e["step"] <= up_to)]
    return tuple(map(list, zip(*points))) if points else ([], [])


def write_plots(output_dir: Path, rows: list[dict], records: dict, methods: list[str], reference: BudgetPlan) -> None:
    marks = [b.step for b in reference.budgets]
    # Held-out loss of each checkpoint against the updates spent to obtain it, and relative to the cosine oracle.
    losses, gaps = {}, {}
    for number, method in enumerate(methods):
        mine = sorted((r["compute"], r["heldout_loss"], r["gap_vs_cosine_pct"]) for r in rows if r["method"] == method)
        style = {"marker": "o", "ms": 4, "color": f"C{number}"}
        losses[LABELS[method]] = ([c for c, _, _ in mine], [loss for _, loss, _ in mine], style)
        gaps["_" + LABELS[method]] = (
            [c for c, _, g in mine if g is not None],
            [g for _, _, g in mine if g is not None],
            style,
        )
    panels = {"held-out loss of each decayed checkpoint": losses}
    if "cosine" in methods:
        panels["relative to the cosine oracle of the same budget"] = gaps
    plot_panels(
        panels,
        output_dir / "heldout_vs_compute.png",
        "updates spent to obtain the checkpoint (log scale)",
        "held-out loss",
        marks=marks,
        sharey=False,
        logx=True,
        ylabels=["held-out loss", "Δ loss (%)"][: len(panels)],
    )

    # LR curves: one panel per method; WSD's side branches dashed, the cosine oracle's runs overlaid.
    peak = records[methods[0]][0]["peak_lr"]
    lr_panels: dict[str, dict] = {}
    for method in methods:
        panel = {}
        for number, record in enumerate(records[method]):
            plan = plan_from_dict(record["plan"])
            steps = list(range(plan.total_steps + 1))
            label = LABELS[method] if number == 0 else f"_{method}{number}"
            color = f"C{number}" if method == "cosine" else "C0"
            panel[label] = (steps, [plan.lr_ratio(t) * peak for t in steps], {"color": color})
            for budget in plan.budgets:
                if budget.branch:
                    # From the main path's last update before the branch to the branch's last update.
                    window = list(range(budget.decay_start - 1, budget.step))
                    name = "branch decays" if budget.index == 0 else f"_branch{budget.index}"
                    panel[name] = (
                        window,
                        [plan.lr_ratio(t, budget.index) * peak for t in window],
                        {"color": "C1", "ls": "--"},
                    )
        lr_panels[LABELS[method]] = panel
    plot_panels(
        lr_panels,
        output_dir / "lr_schedules.png",
        "optimizer update",
        "LR",
        marks=marks,
        title="learning rate of each method (dotted: budgets)",
    )

    # Training loss (mean of each logging interval). Every run sees the same batches in the same order, so
    # subtracting the constant-LR run's loss (WSD's main branch) on the same update cancels the batch-to-batch
    # noise and leaves what the schedule did: the river-valley signature (a drop in each decay, lost again when
    # the LR goes back up).
    pieces: dict[str, list[tuple]] = {}  # method → [(label, xs, ys, style)]
    for method in methods:
        pieces[method] = []
        for number, record in enumerate(records[method]):
            plan = plan_from_dict(record["plan"])
            xs, ys = _loss_points(record["log_history"], plan.total_steps)
            style = {"color": f"C{number}" if method == "cosine" else "C0"}
            pieces[method].append((LABELS[method] if number == 0 else f"_{method}{number}", xs, ys, style))
            run_dir = (
                output_dir / method if method != "cosine" else output_dir / "cosine" / str(record["plan"]["budgets"][0])
            )
            for budget in plan.budgets:
                if budget.branch:
                    info = load_json(runs.budget_folder(run_dir, budget) / runs.BUDGET_FILE) or {"losses": []}
                    # Start the branch at the main path's last logged point before it leaves.
                    start = [(x, y) for x, y in zip(xs, ys) if x <= budget.decay_start][-1:]
                    branch = start + [(step, loss) for step, loss, _ in info["losses"]]
                    if branch:
                        name = "branch decays" if budget.index == 0 else f"_branch{budget.index}"
                        pieces[method].append((name, *map(list, zip(*branch)), {"color": "C1", "ls": "--"}))
    first = marks[0] / 2  # leave out the first updates: their loss (~ln vocab) would flatten everything else
    overlay = {}
    for number, method in enumerate(methods):
        label, xs, ys, _ = pieces[method][-1 if method == "cosine" else 0]  # the oracle's longest run
        kept = [(x, y) for x, y in zip(xs, ys) if x >= first]
        overlay[label.lstrip("_") if method != "cosine" else f"{LABELS[method]} {marks[-1]}"] = (
            *map(list, zip(*kept)),
            {"color": f"C{number}", "lw": 0.9},
        )
    panels = {"training loss" + (" (cosine oracle: its longest run)" if "cosine" in methods else ""): overlay}
    ylabels, ylims = ["train loss"], [None]
    if "wsd" in methods:
        reference = dict(zip(*_loss_points(records["wsd"][0]["log_history"])))
        last_stable = plan_from_dict(records["wsd"][0]["plan"]).budgets[-1].decay_start
        lows, highs = [], []
        for method in methods:
            panel = {}
            for label, xs, ys, style in pieces[method]:
                points = [(x, y - reference[x]) for x, y in zip(xs, ys) if x in reference and x >= first]
                if points:
                    panel[label] = (*map(list, zip(*points)), style)
                    lows.append(min(p[1] for p in points))
                    highs.append(max(p[1] for p in points))
            panels[f"{LABELS[method]}: minus WSD's main branch (constant LR until update {last_stable})"] = panel
            ylabels.append("Δ train loss")
        ylims += [(min(lows) - 0.02, max(highs) + 0.02)] * len(methods)
    plot_panels(
        panels,
        output_dir / "train_loss.png",
        "optimizer update",
        "train loss",
        marks=marks,
        sharey=False,
        ylabels=ylabels,
        ylims=ylims,
        title="training loss, mean of each logging interval (dotted: budgets)",
    )


def report(
    output_dir: Path, methods: list[str], budgets: list[str], reference: BudgetPlan, setup
) -> tuple[list[dict], str]:
    """Tables (results.md, results.csv, compare.json) and figures from the finished runs; returns rows and markdown."""
    rows, records = collect(output_dir, methods, budgets, reference)
    describe = describe_setup(*setup, reference, records)
    write_csv(rows, output_dir / "results.csv")
    text = markdown(rows, records, methods, reference, describe)
    (output_dir / "results.md").write_text(text)
    write_plots(output_dir, rows, records, methods, reference)
    costs = {
        m: [
            {
                k: r[k]
                for k in (
                    "updates",
                    "wall_seconds",
                    "eval_seconds",
                    "train_seconds",
                    "updates_per_second",
                    "tokens_per_second",
                    "num_parameters",
                )
            }
            for r in records[m]
        ]
        for m in methods
    }
    totals = {m: sum(r["updates"] for r in records[m]) for m in methods}
    (output_dir / "compare.json").write_text(
        json.dumps(
            {
                "description": describe,
                "methods": methods,
                "budgets": budgets,
                "rows": rows,
                "total_updates": totals,
                "costs": costs,
            },
            indent=1,
        )
        + "\n"
    )
    logger.info(
        "written: %s/results.md, results.csv, compare.json, heldout_vs_compute.png, lr_schedules.png, train_loss.png",
        output_dir,
    )
    return rows, text


def describe_setup(data_args, model_args, args, reference: BudgetPlan, records: dict) -> str:
    """The setup in a paragraph, with each method's decay lengths read from its plan."""
    steps = ", ".join(str(b.step) for b in reference.budgets)
    tokens = (
        ""
        if reference.tokens_per_update is None
        else (
            f" ({', '.join(format_tokens(b.tokens) for b in reference.budgets)} tokens; "
            f"{reference.tokens_per_update} per update)"
        )
    )
    n_parameters = next(iter(records.values()))[0]["num_parameters"]
    decays = []
    for method, method_runs in records.items():
        if method in ("wsd-s", "wsd"):
            plan = plan_from_dict(method_runs[0]["plan"])
            fraction = plan.decay_fraction if plan.decay_fraction is not None else 0.1
            lengths = "/".join(str(b.decay_steps) for b in plan.budgets)
            span = "period" if method == "wsd-s" else "budget"
            decays.append(
                f"{LABELS[method]} decays {fraction:g} of each {span} ({lengths} updates, {plan.decay_shape} to "
                f"{plan.min_lr_ratio:g}× peak)"
            )
    return (
        f"A {n_parameters:,}-parameter Llama (hidden {model_args.hidden_size}, {model_args.num_hidden_layers} layers) "
        f"trained on `{data_args.corpus}` (blocks of {data_args.block_size} tokens, "
        f"batch {args.per_device_train_batch_size}), "
        f"seed {args.seed}, peak LR {args.learning_rate:g}, warmup {reference.warmup_steps} updates, budgets {steps} "
        f"updates{tokens}. "
        + "; ".join(decays)
        + ("." if decays else "")
        + " Cyclic-cosine runs one cosine per period, the oracle one cosine per budget from scratch. Held-out loss: "
        f"the same {data_args.max_eval_blocks or 'all'} held-out blocks for every checkpoint."
    )
