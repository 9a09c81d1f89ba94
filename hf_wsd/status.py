"""Where a run stands, from what it writes: ``hf-wsd status OUTPUT_DIR``.

It reads ``wsd_plan.json`` (the plan, live changes included, and every request decision), ``wsd_status.json``
(the update, branch and speed the main process rewrites at each log), the budget folders, their
``eval_results.json`` and the publishing ledger — files written atomically, so reading them while the run trains,
from any machine that sees the output dir, is safe. Also the phase arithmetic the progress bar shares
(:func:`position`, :func:`phase_label`). Pure; no torch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import runs
from .live import BudgetRequest, pending_requests
from .plan import Budget, BudgetPlan, Phase

BUDGET_STATES = ("planned", "decaying", "written", "evaluated", "published")
RUN_STATES = ("training", "finished", "stopped", "interrupted", "not started")


# ----------------------------------------------------------------------------------------------- positions
@dataclass(frozen=True)
class Position:
    """Where a run is: the phase its next update belongs to and the next budget it will produce."""

    phase: Phase | None  # None once the plan is done
    next_budget: Budget | None


def position(plan: BudgetPlan, step: int, branch: int | None = None) -> Position:
    """The phase of update ``step`` (0-based: the next one after ``step`` updates) on the main path or on WSD
    branch ``branch``, and the next budget on that path."""
    if branch is not None:
        budget = plan.budgets[branch]
        return Position(Phase("branch decay", budget.decay_start, budget.step, branch), budget)
    phase = next((p for p in plan.phases if p.kind != "branch decay" and p.start <= step < p.end), None)
    upcoming = (b for b in plan.budgets if (b.decay_start > step if b.branch else b.step > step))
    return Position(phase, next(upcoming, None))


def phase_label(plan: BudgetPlan, step: int, branch: int | None = None) -> str:
    """``stable → step4000 (2/4)``, ``decay step4000 (2/4)``, ``branch decay step2000 (1/4)``, ``done (4/4)``."""
    where = position(plan, step, branch)
    count = len(plan.budgets)
    if where.phase is None or where.next_budget is None:
        return f"done ({count}/{count})"
    budget = where.next_budget
    short, place = _short(budget), f"({budget.index + 1}/{count})"
    if where.phase.kind in ("decay", "branch decay"):
        return f"{where.phase.kind} {short} {place}"
    return f"{where.phase.kind} → {short} {place}"


def compute_done(plan: BudgetPlan, step: int, branch: int | None = None) -> int:
    """Updates computed to reach ``step`` on the main path (or on branch ``branch``), earlier WSD branches included."""
    main = plan.budgets[branch].decay_start if branch is not None else step
    done = step + sum(b.decay_steps for b in plan.budgets if b.branch and b.decay_start < main)
    return done


# ----------------------------------------------------------------------------------------------- the writer's side
def status_record(*, run_id: str, state: str, step: int, branch: int | None, plan: BudgetPlan, updates_per_second:
                  float | None, tokens_per_second: float | None, peak_lr: float | None, world_size: int) -> dict:
    """What the main process writes to ``wsd_status.json`` (see :mod:`hf_wsd.live_trainer`)."""
    return {
        "run_id": run_id, "state": state, "step": step, "branch": branch, "total_steps": plan.total_steps,
        "compute": compute_done(plan, step, branch), "time": time.time(), "updates_per_second": updates_per_second,
        "tokens_per_second": tokens_per_second, "peak_lr": peak_lr, "world_size": world_size,
        "host": socket.gethostname(), "pid": os.getpid(),
    }


# ----------------------------------------------------------------------------------------------- the reader
def read_status(output_dir: str | Path, now: float | None = None) -> dict:
    """Everything ``hf-wsd status --json`` prints: run state, position, phases, budgets, speed, ETAs, requests."""
    output_dir = Path(output_dir)
    saved = runs.read_run(output_dir)
    if saved is None:
        raise ValueError(f"{output_dir} holds no WSD run ({runs.PLAN_FILE} is missing).")
    now = time.time() if now is None else now
    run_id, plan = saved["run_id"], runs.plan_from_dict(saved["plan"])
    live = _live_record(output_dir, run_id)
    step, branch = live.get("step", 0), live.get("branch")
    if branch is not None and not 0 <= branch < len(plan.budgets):
        branch = None
    records = {r.name: r for r in runs.budget_records(output_dir) if r.record.get("run_id") == run_id}
    published = _published(output_dir)
    state = live.get("state") or ("finished" if len(records) == len(plan.budgets) else "not started")
    if state == "training" and process_gone(live.get("host"), live.get("pid")):
        state = "interrupted"  # Ctrl-C, a kill or a crash: the process that wrote "training" is gone
    rate = live.get("updates_per_second")
    if not rate and live.get("tokens_per_second") and plan.tokens_per_update:
        rate = live["tokens_per_second"] / plan.tokens_per_update
    done = compute_done(plan, step, branch)
    main_step = plan.budgets[branch].decay_start if branch is not None else step
    budgets = []
    for budget in plan.budgets:
        record = records.get(budget.name)
        evaluation = record.evaluation if record is not None else None
        if budget.name in published:
            budget_state = "published"
        elif evaluation is not None:
            budget_state = "evaluated"
        elif record is not None:
            budget_state = "written"
        elif (branch == budget.index and step > budget.decay_start) or (
            branch is None and not budget.branch and budget.decay_start < step <= budget.step
        ):
            budget_state = "decaying"
        else:
            budget_state = "planned"
        eta = None
        if record is None and rate and state == "training":
            eta = max(budget.compute - done, 0) / rate
        budgets.append({
            "name": budget.name, "index": budget.index, "step": budget.step, "tokens": budget.tokens,
            "decay_start": budget.decay_start, "decay_steps": budget.decay_steps, "branch": budget.branch,
            "compute": budget.compute, "state": budget_state, "metric": _headline(evaluation),
            "eta_seconds": eta, "folder": str(record.folder) if record is not None else None,
        })
    written = {b["index"] for b in budgets if b["state"] in BUDGET_STATES[2:]}
    finished = state == "finished"
    phases = []
    for phase in plan.phases:
        if phase.kind == "branch decay":
            current = branch == phase.budget
            over = phase.budget in written or main_step > phase.start
        else:
            current = branch is None and phase.start <= step < phase.end
            over = main_step >= phase.end
        phase_state = "done" if finished or (over and not current) else "current" if current else "planned"
        phases.append({**asdict(phase), "state": phase_state})
    where = position(plan, step, branch)
    pending = [r.to_dict() if isinstance(r, BudgetRequest) else {"file": r.path.name, "invalid": r.reason}
               for r in pending_requests(output_dir)]
    return {
        "output_dir": str(output_dir), "run_id": run_id, "state": state, "step": step, "main_step": main_step,
        "total_steps": plan.total_steps, "compute": done, "total_compute": plan.total_compute,
        "branch": plan.budgets[branch].name if branch is not None else None,
        "phase": asdict(where.phase) if where.phase is not None and not finished else None,
        "label": phase_label(plan, plan.total_steps if finished else step, None if finished else branch),
        "updated": live.get("time"), "seconds_since_update": now - live["time"] if live.get("time") else None,
        "tokens_per_second": live.get("tokens_per_second"), "updates_per_second": rate,
        "peak_lr": live.get("peak_lr"), "host": live.get("host"),
        "phases": phases, "budgets": budgets,
        "requests": {"pending": pending, "decided": saved.get("changes", [])},
        "plan": plan.to_dict(),
    }


def process_gone(host: str | None, pid: int | None) -> bool:
    """Whether the process ``pid`` of ``host`` has ended (known only on the same host; elsewhere: ``False``)."""
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _live_record(output_dir: Path, run_id: str) -> dict:
    """``wsd_status.json`` of this run; without one (a run that never logged), the last line of ``wsd_log.jsonl``."""
    path = output_dir / runs.STATUS_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = {}  # replaced atomically, so only a foreign writer could leave it damaged
        if record.get("run_id") == run_id:
            return record
    entries = [e for e in runs.read_log(output_dir) if "step" in e]
    if not entries:
        return {}
    last = entries[-1]
    return {"step": last["step"], "branch": last.get("branch"), "time": last.get("time"),
            "tokens_per_second": next((e["tokens_per_second"] for e in reversed(entries) if "tokens_per_second" in e),
                                      None)}


def _published(output_dir: Path) -> set[str]:
    path = runs.budgets_dir(output_dir) / runs.LEDGER_FILE
    if not path.is_file():
        return set()
    ledger = runs.read_json(path, "see hf-wsd push, which rebuilds what the ledger lacks.")
    return {entry.get("budget") for entry in ledger.get("published", []) if isinstance(entry, dict)}


def _headline(evaluation: dict | None) -> dict | None:
    """The budget's headline metric: the held-out loss when there is one, else its first result."""
    if not evaluation or not evaluation.get("results"):
        return None
    results = evaluation["results"]
    chosen = next((r for r in results if r.get("task") == "heldout" and r.get("metric") == "loss"), results[0])
    return {"task": chosen.get("task"), "metric": chosen.get("metric"), "value": chosen.get("value")}


# ----------------------------------------------------------------------------------------------- the text
def format_status(status: dict) -> str:
    """The text of ``hf-wsd status``: a headline, the plan table with the current phase marked, budgets, requests."""
    plan = runs.plan_from_dict(status["plan"])
    where = f"update {status['step']} of {status['total_steps']}"
    if status["branch"]:
        where += f" (on the side branch of {status['branch']})"
    lines = [f"{status['output_dir']}: {status['state']}, {where} — {status['label']}"]
    if status["state"] == "interrupted":
        lines.append("its process is gone (Ctrl-C, a kill or a crash): resume it with resume_from_checkpoint=True "
                     "(the recipes: --resume_from_checkpoint true)")
    speed = []
    if status["seconds_since_update"] is not None:
        speed.append(f"last written {_duration(status['seconds_since_update'])} ago"
                     + (f" on {status['host']}" if status.get("host") else ""))
    if status["tokens_per_second"]:
        speed.append(f"{_count(status['tokens_per_second'])} tokens/s")
    if status["updates_per_second"]:
        speed.append(f"{status['updates_per_second']:.3g} updates/s (wall clock)")
    if speed:
        lines.append(" · ".join(speed))
    lines.append("")
    table = plan.describe(status.get("peak_lr")).splitlines()
    for row, phase in zip(range(2, 2 + len(plan.phases)), status["phases"]):
        if phase["state"] == "current":
            table[row] += f"  ◀ update {status['step']}"
    lines += table + [""]
    cells = [("budget", "step", "decay", "state", "metric", "ETA")]
    for budget in status["budgets"]:
        metric = budget["metric"]
        metric_text = f"{metric['task']} {metric['metric']} {metric['value']:.4g}" if metric else ""
        eta = _duration(budget["eta_seconds"]) if budget["eta_seconds"] is not None else ""
        window = f"{budget['decay_start']}–{budget['step']}" + (" (branch)" if budget["branch"] else "")
        cells.append((budget["name"], str(budget["step"]), window, budget["state"], metric_text, eta))
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines += ["  ".join(c.ljust(w) if i in (0, 3, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              .rstrip() for row in cells]
    requests = status["requests"]
    if requests["pending"]:
        lines += ["", "pending requests (picked up at the next update):"]
        lines += [f"  {r.get('action', '?')} {r.get('value', r.get('file', ''))}" for r in requests["pending"]]
    if requests["decided"]:
        lines += ["", "budget requests:"]
        lines += [f"  {entry['status']}: {entry['message']}" for entry in requests["decided"]]
    return "\n".join(lines)


def _short(budget: Budget) -> str:
    return budget.name.split("-", 1)[0]


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _count(value: float) -> str:
    for suffix, scale in (("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
