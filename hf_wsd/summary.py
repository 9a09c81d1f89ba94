"""The run summary: one row per decayed budget, as a table, CSV/JSON and one plot per metric.

Read from the budget folders on disk (``budget.json`` + ``eval_results.json``), so it is right after any
resume and can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

from . import runs

logger = logging.getLogger(__name__)

_NOT_METRICS = ("budget", "step", "tokens", "eval_seconds")


def summarize(output_dir: str | Path) -> list[dict]:
    """One row per evaluated budget under ``{output_dir}/budgets/``, ordered by step (from ``eval_results.json``).

    Decayed budgets only; :func:`preview_table` lists the EMA previews.
    """
    rows = []
    for path in runs.budgets_dir(output_dir).glob(f"*/{runs.EVAL_FILE}"):
        if path.parent.name.startswith("."):
            continue
        evaluation = runs.read_eval_results(path.parent)
        if runs.is_preview(evaluation):
            continue
        row = {"budget": evaluation["budget"], "step": evaluation["step"], "tokens": evaluation["tokens"],
               "eval_seconds": evaluation.get("seconds")}
        row.update({f"{r['task']}_{r['metric']}": r["value"] for r in evaluation["results"]})
        rows.append(row)
    return sorted(rows, key=lambda row: row["step"])


def budget_table(output_dir: str | Path) -> list[dict]:
    """One row per budget, evaluated or not: its name, step, training loss over the decay and every metric."""
    evaluated = {row["budget"]: row for row in summarize(output_dir)}
    rows = []
    for budget in runs.budget_records(output_dir):
        row = {"budget": budget.name, "step": budget.step, "train_loss": budget.record.get("train_loss")}
        row.update({k: v for k, v in evaluated.get(budget.name, {}).items() if k not in _NOT_METRICS})
        rows.append(row)
    return rows


def preview_table(output_dir: str | Path) -> list[dict]:
    """One row per EMA preview (``ema_beta``): its name, step, β, updates averaged and every metric it was scored on.

    Empty for a run without previews; :func:`budget_table` never lists them.
    """
    rows = []
    for preview in runs.preview_records(output_dir):
        average = preview.record[runs.PREVIEW_KEY]
        row = {"preview": preview.name, "step": preview.step, "ema_beta": average.get("beta"),
               "updates_averaged": average.get("updates")}
        row.update({f"{r['task']}_{r['metric']}": r["value"] for r in (preview.evaluation or {}).get("results", [])})
        rows.append(row)
    return rows


def format_summary(rows: list[dict]) -> str:
    """A fixed-width table of :func:`summarize` (or :func:`budget_table`) rows."""
    if not rows:
        return "(no evaluated budgets)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(output_dir: str | Path, timing: dict | None = None) -> list[dict]:
    """Log the table; write ``eval_summary.csv``/``.json`` and ``eval_<metric>.png`` in ``{output_dir}/budgets``."""
    from .plots import plot_curves

    rows = summarize(output_dir)
    folder = runs.budgets_dir(output_dir)
    if not rows:
        return rows
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (folder / runs.EVAL_SUMMARY_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    runs.write_json(folder / runs.EVAL_SUMMARY_JSON, {"budgets": rows, "timing": timing or {}})
    by_tokens = all(row["tokens"] is not None for row in rows)
    xs = [row["tokens"] if by_tokens else row["step"] for row in rows]
    for metric in columns[len(_NOT_METRICS):]:
        points = [(x, row[metric]) for x, row in zip(xs, rows) if row.get(metric) is not None]
        if points:
            plot_curves({metric: tuple(zip(*points))}, folder / f"eval_{re.sub(r'[^A-Za-z0-9_.-]', '_', metric)}.png",
                        xlabel="tokens seen" if by_tokens else "optimizer updates", ylabel=metric,
                        title=f"{metric} of each decayed checkpoint")
    share = "" if not timing or timing.get("eval_share") is None else (
        f"\nevaluation took {timing['eval_seconds']:.1f} s, {100 * timing['eval_share']:.1f}% of the training time "
        f"({timing['train_seconds']:.1f} s) in this launch")
    # One line: the table is the recipes' closing output (and `hf-wsd status`); the full table only at DEBUG.
    logger.info("Evaluation summary of %d budget(s) written to %s (%s, %s, plots)%s", len(rows), folder,
                runs.EVAL_SUMMARY_CSV, runs.EVAL_SUMMARY_JSON, share)
    logger.debug("Evaluation summary:\n%s", format_summary(rows))
    return rows
