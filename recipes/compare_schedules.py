"""Compare WSD-S, WSD, cyclic-cosine and a per-budget cosine "oracle" at small scale (Wen et al., 2024).

    python recipes/compare_schedules.py                  # recipes/llama-tiny/compare/config.yaml (30-40 min, 2 CPU cores)
    python recipes/compare_schedules.py --quick          # recipes/llama-tiny/compare/config_quick.yaml (under a minute)
    python recipes/compare_schedules.py CONFIG.yaml --seed 1 --output_dir runs/compare-seed1

Every method trains the same model from the same initialisation on the same data order with the same peak LR,
warmup and budgets; only `schedule` differs. The cosine oracle is one separate run per budget. Every decayed
checkpoint is scored on the same held-out blocks (and the bundled tasks) by hf_wsd's BudgetEvaluator.

The YAML holds the pretraining recipe's fields (recipes/pretrain.py: data, model, WSDConfig; `schedule` is set
per method) plus this script's own (`methods`, `torch_threads`, `reuse_runs`, `report_only`, `wsd_decay_fraction`;
`--quick` picks config_quick.yaml). Any field can be overridden on the command line (`--field value`). Measured
results and costs: docs/results.md. Written under `output_dir`:

    {method}/                       one WSDTrainer run per method; cosine/{budget}/ one run per budget
    eval_tasks/                     the bundled benchmarks, built once and shared by every run
    results.csv, results.md         one row per method and budget: held-out loss, task metrics, compute
    heldout_vs_compute.png          held-out loss of each checkpoint vs the updates spent to obtain it
    lr_schedules.png, train_loss.png
    compare.json                    the rows, the compute totals and the measured costs (updates/s, tokens/s)
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain import add_bundled_tasks, build_model, parse as parse_recipe  # noqa: E402  (the pretraining recipe, reused)

from hf_wsd import WSDTrainer  # noqa: E402
from hf_wsd.data import build_lm_datasets  # noqa: E402
from hf_wsd.plan import BudgetPlan, format_tokens  # noqa: E402
from hf_wsd.plots import plot_panels  # noqa: E402
from hf_wsd.runs import plan_from_dict  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "llama-tiny" / "compare" / "config.yaml"
QUICK_CONFIG = HERE / "llama-tiny" / "compare" / "config_quick.yaml"
METHODS = ("wsd-s", "wsd", "cyclic-cosine", "cosine")
LABELS = {"wsd-s": "WSD-S", "wsd": "WSD", "cyclic-cosine": "cyclic-cosine", "cosine": "cosine oracle"}
RUN_RECORD = "compare_run.json"  # written when a run is complete; lets a re-launch skip it


@dataclass
class CompareArguments:
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": "Schedules to compare: wsd-s wsd cyclic-cosine cosine (one cosine run per budget)."})
    quick: bool = field(default=False, metadata={"help": "Without a YAML argument, use config_quick.yaml (a minute or two)."})
    torch_threads: int | None = field(default=None, metadata={"help": "torch intra-op threads (1 is fastest on a busy machine); None: torch's default."})
    reuse_runs: bool = field(default=True, metadata={"help": "Skip a method whose run in output_dir finished with the same settings."})
    report_only: bool = field(default=False, metadata={"help": "Train nothing: rebuild the tables and plots from the runs in output_dir."})
    wsd_decay_fraction: float | None = field(default=None, metadata={"help": "decay_fraction of the WSD run only (None: decay_fraction). WSD decays a fraction of each budget, WSD-S of each period: with budgets doubling, half of WSD-S's fraction gives both the same decay lengths from the second budget on."})


# ------------------------------------------------------------------------------------------------ config
def parse(argv: list[str], workdir: Path) -> tuple[CompareArguments, list[str], dict]:
    """Split the arguments into this script's fields and the pretraining recipe's.

    Returns the comparison's fields, the recipe's argv (a YAML of the recipe's fields in ``workdir`` first,
    then the command-line overrides) and a fingerprint of both for reusing finished runs.
    """
    has_yaml = bool(argv) and argv[0].endswith((".yaml", ".yml"))
    overrides = list(argv[1:] if has_yaml else argv)
    # allow_abbrev=False: `--seed` must reach the recipe, not be read as a prefix of one of our fields.
    parser = HfArgumentParser(CompareArguments, allow_abbrev=False, add_help=False)
    if "-h" in overrides or "--help" in overrides:
        print(parser.format_help().replace("usage:", "comparison fields:", 1))
        parse_recipe(["--help"])  # prints the recipe's fields and exits
    first, _ = parser.parse_args_into_dataclasses(args=overrides, return_remaining_strings=True)
    config_path = Path(argv[0]) if has_yaml else QUICK_CONFIG if first.quick else DEFAULT_CONFIG
    settings = yaml.safe_load(config_path.read_text()) or {}
    own = {f.name for f in fields(CompareArguments)}
    parser.set_defaults(**{key: settings.pop(key) for key in list(settings) if key in own})
    compare, rest = parser.parse_args_into_dataclasses(args=overrides, return_remaining_strings=True)
    unknown = [m for m in compare.methods if m not in METHODS]
    if unknown or not compare.methods:
        raise ValueError(f"`methods`: unknown {unknown or 'empty list'}; choose among {', '.join(METHODS)}.")
    recipe_yaml = workdir / "recipe.yaml"
    recipe_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
    # Where a run is written is not part of what it computes: finished runs can be copied and reused elsewhere.
    kept = [a for i, a in enumerate(rest) if a != "--output_dir" and (i == 0 or rest[i - 1] != "--output_dir")]
    fingerprint = {"config": settings, "overrides": kept}
    return compare, [str(recipe_yaml), *rest], fingerprint


def run_config(recipe_argv: list[str], **overrides):
    """The recipe's (data, model, WSDConfig) for one run: the shared settings with ``overrides`` on top."""
    extra: list[str] = []
    for key, value in overrides.items():
        extra += [f"--{key}", *([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)])]
    return parse_recipe([*recipe_argv, *extra])


def run_dirs(output_dir: Path, method: str, budgets: list[str]) -> list[tuple[Path, list[str]]]:
    """``(output_dir, budgets)`` of each run of ``method``: one run, or one per budget for the cosine oracle."""
    if method == "cosine":
        return [(output_dir / "cosine" / str(b), [b]) for b in budgets]
    return [(output_dir / method, list(budgets))]


# ------------------------------------------------------------------------------------------------ training
def train_run(recipe_argv, fingerprint, schedule, budgets, run_dir: Path, get_data, reuse: bool, **overrides) -> dict:
    """Train one run (unless an identical one already finished in ``run_dir``); returns its record.

    ``get_data()`` returns the shared (data, held-out blocks, (task paths, task names)); called only to train.
    ``overrides`` are this run's own recipe fields (e.g. WSD's ``decay_fraction``).
    """
    signature = {**fingerprint, "schedule": schedule, "budgets": budgets, **({"run_overrides": overrides} if overrides else {})}
    record_path = run_dir / RUN_RECORD
    if reuse and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("signature") == signature:
            print(f"[compare] {schedule} {budgets}: reusing the finished run in {run_dir}", flush=True)
            return record
    data_args, model_args, args = run_config(
        recipe_argv, schedule=schedule, budgets=budgets, output_dir=run_dir, overwrite_output_dir=True, **overrides
    )
    if not args.budget_eval:
        raise ValueError("the comparison scores every checkpoint: `budget_eval` must be true.")
    data, heldout, tasks = get_data()
    args.eval_task_paths, args.eval_tasks = tasks
    set_seed(args.seed)  # identical initial weights for every run
    model = build_model(model_args, data.tokenizer, data_args.block_size)
    trainer = WSDTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=heldout, processing_class=data.tokenizer, data_collator=data.collator)
    trainer.base_model = model_args.model_name_or_path
    plan = trainer.plan
    print(f"[compare] {schedule} {budgets}: {plan.total_compute} updates → {run_dir}", flush=True)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    eval_seconds = 0.0
    for budget in plan.budgets:
        results = run_dir / "budgets" / budget.name / "eval_results.json"
        if results.is_file():
            eval_seconds += json.loads(results.read_text()).get("seconds") or 0.0
    train_seconds = wall - eval_seconds
    record = {
        "signature": signature,
        "schedule": schedule,
        "seed": args.seed,
        "peak_lr": args.learning_rate,
        "plan": plan.to_dict(),
        "updates": plan.total_compute,
        "tokens_per_update": plan.tokens_per_update,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "wall_seconds": round(wall, 2),
        "eval_seconds": round(eval_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "updates_per_second": plan.total_compute / train_seconds,
        "tokens_per_second": plan.total_compute * (plan.tokens_per_update or 0) / train_seconds,
        "log_history": [e for e in trainer.state.log_history if "loss" in e],
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"[compare] {schedule} {budgets}: {wall:.0f} s ({eval_seconds:.0f} s evaluating), "
          f"{record['updates_per_second']:.2f} updates/s, {record['tokens_per_second']:,.0f} tokens/s", flush=True)
    return record


def prepare_data(data_args, args):
    """The recipe's data (corpus, split, tokenizer, packed blocks), the held-out blocks and the shared tasks."""
    data = build_lm_datasets(
        corpus=data_args.corpus, tokenizer=data_args.tokenizer_name, vocab_size=data_args.vocab_size,
        block_size=data_args.block_size, heldout_fraction=data_args.heldout_fraction, seed=args.seed,
        dataset_config=data_args.dataset_config, dataset_split=data_args.dataset_split, text_column=data_args.text_column,
    )
    heldout = data.heldout
    if data_args.max_eval_blocks is not None:
        heldout = heldout.select(range(min(len(heldout), data_args.max_eval_blocks)))
    # Built once into output_dir/eval_tasks (decontaminated against the training documents) and shared:
    # every method is scored on the same items.
    add_bundled_tasks(args, data_args, data)
    paths, names = list(args.eval_task_paths), list(args.eval_tasks)
    print(data.describe(), flush=True)
    print(f"held-out evaluation: {len(heldout)} blocks of {data.block_size} tokens; tasks: {names or 'none'}", flush=True)
    return data, heldout, (paths, names)


# ------------------------------------------------------------------------------------------------ results
def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(output_dir: Path, methods: list[str], budgets: list[str], reference: BudgetPlan) -> tuple[list[dict], dict]:
    """One row per method and budget, and each method's run records."""
    index_of = {b.step: b.index for b in reference.budgets}
    rows, records = [], {}
    for method in methods:
        records[method] = []
        for run_dir, _ in run_dirs(output_dir, method, budgets):
            record = load_json(run_dir / RUN_RECORD)
            if record is None:
                raise ValueError(f"{run_dir} holds no finished run ({RUN_RECORD} is missing): run without --report_only.")
            records[method].append(record)
            plan = plan_from_dict(record["plan"])
            for budget in plan.budgets:
                folder = run_dir / "budgets" / budget.name
                info = load_json(folder / "budget.json") or {}
                evaluation = load_json(folder / "eval_results.json") or {"results": []}
                row = {
                    "method": method, "seed": record["seed"], "budget": index_of[budget.step] + 1, "name": budget.name,
                    "step": budget.step, "tokens": budget.tokens, "compute": budget.compute,
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


def metric_columns(rows: list[dict]) -> list[str]:
    fixed = {"method", "seed", "budget", "name", "step", "tokens", "compute", "total_compute", "train_loss",
             "gap_vs_cosine_pct", "heldout_loss", "heldout_perplexity"}
    return sorted({key for row in rows for key in row if key not in fixed})


def write_csv(rows: list[dict], path: Path) -> None:
    columns = ["method", "seed", "budget", "name", "step", "tokens", "compute", "total_compute", "heldout_loss",
               "heldout_perplexity", "gap_vs_cosine_pct", "train_loss", *metric_columns(rows)]
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
    lines = [f"# Schedule comparison\n\n{describe}\n",
             "## Held-out loss per budget\n",
             "Updates spent to obtain each checkpoint in parentheses (WSD counts its earlier branches; the cosine "
             "oracle is a separate run per budget)." + (" Last column: WSD-S relative to the cosine oracle." if
                                                         {"wsd-s", "cosine"} <= set(methods) else "") + "\n"]
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
        lines += ["\n## Bundled tasks per budget\n", "| budget | metric | " + " | ".join(LABELS[m] for m in methods) + " |",
                  "|" + "---|" * (len(methods) + 2)]
        for budget in budgets:
            for metric in metrics:
                values = [_num(by.get((m, budget.step), {}).get(metric)) for m in methods]
                lines.append(f"| {budget.name} | {metric} | " + " | ".join(values) + " |")
    lines += ["\n## Compute for all K checkpoints\n", "| method | updates for all K | × WSD-S | × cosine oracle |", "|---|---|---|---|"]
    totals = {m: sum(r["updates"] for r in records[m]) for m in methods}
    for method in methods:
        ratio_s = f"{totals[method] / totals['wsd-s']:.2f}" if "wsd-s" in totals else "–"
        ratio_c = f"{totals[method] / totals['cosine']:.2f}" if "cosine" in totals else "–"
        lines.append(f"| {LABELS[method]} | {totals[method]} | {ratio_s} | {ratio_c} |")
    lines += ["\n## Measured cost\n", "| run | updates | wall s | of which evaluating s | updates/s | tokens/s |",
              "|---|---|---|---|---|---|"]
    for method in methods:
        for record in records[method]:
            run = LABELS[method] + (f" {record['plan']['budgets'][0]}" if method == "cosine" else "")
            lines.append(f"| {run} | {record['updates']} | {record['wall_seconds']:.0f} | {record['eval_seconds']:.0f} | "
                         f"{record['updates_per_second']:.2f} | {record['tokens_per_second']:,.0f} |")
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
        losses[LABELS[method]] = ([c for c, _, _ in mine], [l for _, l, _ in mine], style)
        gaps["_" + LABELS[method]] = ([c for c, _, g in mine if g is not None], [g for _, _, g in mine if g is not None], style)
    panels = {"held-out loss of each decayed checkpoint": losses}
    if "cosine" in methods:
        panels["relative to the cosine oracle of the same budget"] = gaps
    plot_panels(panels, output_dir / "heldout_vs_compute.png", "updates spent to obtain the checkpoint (log scale)",
                "held-out loss", marks=marks, sharey=False, logx=True, ylabels=["held-out loss", "Δ loss (%)"][: len(panels)])

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
                    panel[name] = (window, [plan.lr_ratio(t, budget.index) * peak for t in window], {"color": "C1", "ls": "--"})
        lr_panels[LABELS[method]] = panel
    plot_panels(lr_panels, output_dir / "lr_schedules.png", "optimizer update", "LR", marks=marks,
                title="learning rate of each method (dotted: budgets)")

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
            run_dir = output_dir / method if method != "cosine" else output_dir / "cosine" / str(record["plan"]["budgets"][0])
            for budget in plan.budgets:
                if budget.branch:
                    info = load_json(run_dir / "budgets" / budget.name / "budget.json") or {"losses": []}
                    # Start the branch at the main path's last logged point before it leaves.
                    start = [(x, y) for x, y in zip(xs, ys) if x <= budget.decay_start][-1:]
                    branch = start + [(s, l) for s, l, _ in info["losses"]]
                    if branch:
                        name = "branch decays" if budget.index == 0 else f"_branch{budget.index}"
                        pieces[method].append((name, *map(list, zip(*branch)), {"color": "C1", "ls": "--"}))
    first = marks[0] / 2  # leave out the first updates: their loss (~ln vocab) would flatten everything else
    overlay = {}
    for number, method in enumerate(methods):
        label, xs, ys, _ = pieces[method][-1 if method == "cosine" else 0]  # the oracle's longest run
        kept = [(x, y) for x, y in zip(xs, ys) if x >= first]
        overlay[label.lstrip("_") if method != "cosine" else f"{LABELS[method]} {marks[-1]}"] = (
            *map(list, zip(*kept)), {"color": f"C{number}", "lw": 0.9})
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
    plot_panels(panels, output_dir / "train_loss.png", "optimizer update", "train loss", marks=marks, sharey=False,
                ylabels=ylabels, ylims=ylims, title="training loss, mean of each logging interval (dotted: budgets)")


def report(output_dir: Path, methods: list[str], budgets: list[str], reference: BudgetPlan, setup) -> list[dict]:
    rows, records = collect(output_dir, methods, budgets, reference)
    describe = describe_setup(*setup, reference, records)
    write_csv(rows, output_dir / "results.csv")
    text = markdown(rows, records, methods, reference, describe)
    (output_dir / "results.md").write_text(text)
    write_plots(output_dir, rows, records, methods, reference)
    costs = {m: [{k: r[k] for k in ("updates", "wall_seconds", "eval_seconds", "train_seconds", "updates_per_second",
                                     "tokens_per_second", "num_parameters")} for r in records[m]] for m in methods}
    totals = {m: sum(r["updates"] for r in records[m]) for m in methods}
    (output_dir / "compare.json").write_text(json.dumps(
        {"description": describe, "methods": methods, "budgets": budgets, "rows": rows, "total_updates": totals,
         "costs": costs}, indent=1) + "\n")
    print("\n" + text)
    print(f"written: {output_dir}/results.md, results.csv, compare.json, heldout_vs_compute.png, lr_schedules.png, train_loss.png")
    return rows


def describe_setup(data_args, model_args, args, reference: BudgetPlan, records: dict) -> str:
    """The setup in a paragraph, with each method's decay lengths read from its plan."""
    steps = ", ".join(str(b.step) for b in reference.budgets)
    tokens = "" if reference.tokens_per_update is None else (
        f" ({', '.join(format_tokens(b.tokens) for b in reference.budgets)} tokens; {reference.tokens_per_update} per update)")
    n_parameters = next(iter(records.values()))[0]["num_parameters"]
    decays = []
    for method, runs in records.items():
        if method in ("wsd-s", "wsd"):
            plan = plan_from_dict(runs[0]["plan"])
            fraction = plan.decay_fraction if plan.decay_fraction is not None else 0.1
            lengths = "/".join(str(b.decay_steps) for b in plan.budgets)
            span = "period" if method == "wsd-s" else "budget"
            decays.append(f"{LABELS[method]} decays {fraction:g} of each {span} ({lengths} updates, {plan.decay_shape} to "
                          f"{plan.min_lr_ratio:g}× peak)")
    return (
        f"A {n_parameters:,}-parameter Llama (hidden {model_args.hidden_size}, {model_args.num_hidden_layers} layers) "
        f"trained on `{data_args.corpus}` (blocks of {data_args.block_size} tokens, batch {args.per_device_train_batch_size}), "
        f"seed {args.seed}, peak LR {args.learning_rate:g}, warmup {reference.warmup_steps} updates, budgets {steps} "
        f"updates{tokens}. " + "; ".join(decays) + ("." if decays else "") +
        " Cyclic-cosine runs one cosine per period, the oracle one cosine per budget from scratch. Held-out loss: the "
        f"same {data_args.max_eval_blocks or 'all'} held-out blocks for every checkpoint."
    )


def main(argv: list[str]) -> list[dict]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with tempfile.TemporaryDirectory() as workdir:
        compare, recipe_argv, fingerprint = parse(argv, Path(workdir))
        data_args, model_args, args = parse_recipe(recipe_argv)
        if compare.torch_threads:
            import torch

            torch.set_num_threads(compare.torch_threads)
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        budgets = list(args.budgets)
        tokens_per_update = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * data_args.block_size
        reference = run_config(recipe_argv, schedule="wsd-s")[2].build_plan(tokens_per_update)
        if not compare.report_only:
            get_data = functools.cache(lambda: prepare_data(data_args, args))
            for method in compare.methods:
                for run_dir, run_budgets in run_dirs(output_dir, method, budgets):
                    own = {"decay_fraction": compare.wsd_decay_fraction} if method == "wsd" and compare.wsd_decay_fraction else {}
                    train_run(recipe_argv, fingerprint, method, run_budgets, run_dir, get_data, compare.reuse_runs, **own)
        return report(output_dir, compare.methods, budgets, reference, (data_args, model_args, args))


if __name__ == "__main__":
    main(sys.argv[1:])
