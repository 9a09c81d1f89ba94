"""Budgets changed while a run trains: ``hf-wsd budget add/remove`` requests and the plan changes they make.

A request is one small JSON file in ``{output_dir}/wsd_requests/`` (written atomically by :func:`write_request`).
The trainer's main process picks pending requests up at an update boundary (:mod:`hf_wsd.live_trainer`), decides
each one (:func:`decide`), records every decision under ``changes`` in ``wsd_plan.json`` together with the new plan
(one atomic write), and only then deletes the request file — a crash in between leaves a request whose id is
already decided, which is dropped. All ranks then take the same plan (the main process broadcasts it).

The rule a change must pass: **every update it alters is still ahead.** :func:`~hf_wsd.runs.first_divergence` of
the current and the changed plan is the first update whose learning rate (or WSD branch point) differs; the change
is accepted while the run has done at most that many updates. Then the run from here on is exactly the run that had
the new plan from the start (same LR at every update, same branches, same checkpoints), which is what makes a live
change bitwise equal to planning it up front. With WSD-S and ``decay_fraction``, each decay is a share of the
period since the previous budget, so a budget added between two others also moves the next one's window: that
window must not have started either. Pure functions over plans and paths; no torch.
"""

from __future__ import annotations

import bisect
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import runs
from .plan import BUDGET_UNITS, Budget, BudgetPlan, check_step_suffixes, parse_quantity

REQUEST_ACTIONS = ("add", "remove")
REFUSED_DIR = "refused"  # inside wsd_requests/: files that were not valid requests, kept for the user to read
_MAX_TEXT = 64  # longer ids, units or values are not requests (a 401-digit "number" included)


@dataclass(frozen=True)
class BudgetRequest:
    """One ``hf-wsd budget`` request: add or remove the budget ``value`` (in ``unit``) of run ``run_id``."""

    id: str
    run_id: str
    action: str
    value: str
    unit: str
    created: float
    path: Path | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        return f"{self.action} {self.value}" + (" tokens" if self.unit == "tokens" else "")

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload.pop("path")
        return payload

    @classmethod
    def from_payload(cls, payload, path: Path | None = None) -> "BudgetRequest":
        """A request read from a file, validated as data: a ``ValueError`` saying what is wrong, never a crash later
        (a hand-written file may hold anything)."""
        if not isinstance(payload, dict):
            raise ValueError(f"it holds a JSON {type(payload).__name__}, not an object")
        names = {f for f in cls.__dataclass_fields__ if f != "path"}
        if set(payload) != names:
            missing, extra = sorted(names - set(payload)), sorted(set(payload) - names)
            raise ValueError(f"its fields are wrong (missing: {missing or 'none'}; unknown: {extra or 'none'})")
        for name in ("id", "run_id", "action", "value", "unit"):
            if not isinstance(payload[name], str) or not 0 < len(payload[name]) <= _MAX_TEXT:
                raise ValueError(f"`{name}` must be a string of 1 to {_MAX_TEXT} characters; got "
                                 f"{_short(payload[name])}")
        created = payload["created"]
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
            raise ValueError(f"`created` must be a time in seconds; got {_short(created)}")
        if payload["action"] not in REQUEST_ACTIONS:
            raise ValueError(f"`action` must be 'add' or 'remove'; got {_short(payload['action'])}")
        if payload["unit"] not in BUDGET_UNITS:
            raise ValueError(f"`unit` must be 'steps' or 'tokens'; got {_short(payload['unit'])}")
        return cls(**payload, path=path)


# ----------------------------------------------------------------------------------------------- plan changes
def budget_step(plan: BudgetPlan, value: str | int, unit: str) -> int:
    """The update count of budget ``value`` given in ``unit`` ("steps" or "tokens", converted with the run's
    tokens per update)."""
    if unit not in BUDGET_UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose 'steps' or 'tokens'.")
    number = parse_quantity(value, "value")
    if unit == "tokens":
        if plan.tokens_per_update is None:
            raise ValueError(
                f"{value} tokens cannot be converted: the run does not know its tokens per update (no sequence "
                "length); give the budget in updates (--unit steps)."
            )
        step = round(number / plan.tokens_per_update)
        if step == 0:
            raise ValueError(f"{value} tokens round to 0 updates at {plan.tokens_per_update} tokens per update.")
        return step
    if number != int(number):
        raise ValueError(f"a budget in updates must be a whole number; got {value!r}.")
    return int(number)


def changed_plan(plan: BudgetPlan, action: str, value: str | int, unit: str) -> BudgetPlan:
    """``plan`` with the budget ``value`` (in ``unit``) added or removed; a ``ValueError`` if the plan cannot take it
    at all (a duplicate, a missing budget, a decay longer than its period, …). Timing is :func:`check_timing`'s job."""
    if action not in REQUEST_ACTIONS:
        raise ValueError(f"unknown action {action!r}; choose 'add' or 'remove'.")
    step = budget_step(plan, value, unit)
    steps = [b.step for b in plan.budgets]
    values = list(plan.budget_values)
    if action == "add":
        if step in steps:
            raise ValueError(f"{plan.budgets[steps.index(step)].name} is already in the plan.")
        if unit == plan.budget_unit:
            entry = str(value) if unit == "tokens" else str(step)  # tokens keep the user's spelling ("2.5M")
        else:
            entry = str(step) if plan.budget_unit == "steps" else str(step * plan.tokens_per_update)
        values.insert(bisect.bisect(steps, step), entry)
    else:
        if step not in steps:
            raise ValueError(f"the plan has no budget at update {step} (its budgets: {_names(plan)}).")
        if len(steps) == 1:
            raise ValueError("a run needs at least one budget: add another before removing this one.")
        del values[steps.index(step)]
    fields = plan.to_dict()
    fields.pop("resolved")
    fields["budgets"] = values
    try:
        return BudgetPlan(**fields)
    except ValueError as error:
        raise ValueError(f"the plan {_names(plan)} cannot take it: {error}") from None


def plan_changes(old: BudgetPlan, new: BudgetPlan) -> list[tuple[int, str]]:
    """What differs between two plans, as ``(first update it alters, sentence)``, earliest first."""
    before = {b.step: b for b in old.budgets}
    after = {b.step: b for b in new.budgets}
    changes = []
    for step, budget in after.items():
        if step not in before:
            changes.append((budget.decay_start, f"{budget.name} would {_decay_text(budget)}"))
        elif (before[step].decay_start, before[step].decay_steps, before[step].branch) != (
            budget.decay_start, budget.decay_steps, budget.branch
        ):
            was = before[step]
            start = min(was.decay_start, budget.decay_start)
            if was.branch != budget.branch:
                text = f"{budget.name} would {_decay_text(budget)} instead of {_decay_text(was, verb=False)}"
            else:
                text = f"{budget.name}'s decay window would move from {_window(was)} to {_window(budget)}"
                if new.schedule in ("wsd-s", "cyclic-cosine") and new.decay_steps is None:
                    text += " (each decay is a share of the period since the previous budget)"
            changes.append((start, text))
    for step, budget in before.items():
        if step not in after:
            changes.append((budget.decay_start, f"{budget.name} (decay {_window(budget)}) would go"))
    if new.total_steps != old.total_steps:
        changes.append((min(new.total_steps, old.total_steps),
                        f"the run would end at update {new.total_steps} instead of {old.total_steps}"))
    return sorted(changes)


def check_timing(old: BudgetPlan, new: BudgetPlan, step: int) -> None:
    """Accept the change ``old → new`` after ``step`` updates only if every update it alters is still ahead."""
    needed = runs.first_divergence(old, new)
    if step <= needed:
        return
    details = "; ".join(text for _, text in plan_changes(old, new)) or "the learning rate would change"
    raise ValueError(
        f"it changes the schedule from update {needed} on ({details}), and the run had already done {step} updates. "
        f"A budget change is taken only while every update it alters is still ahead: this one needed to arrive by "
        f"update {needed}. Resuming with the budget in `budgets` instead restarts from the newest checkpoint at or "
        "before that update, if there is one."
    )


def decide(plan: BudgetPlan, request: BudgetRequest, step: int, run_id: str) -> tuple[BudgetPlan | None, dict]:
    """``(new plan or None, the decision as recorded in wsd_plan.json)`` for ``request`` after ``step`` updates."""
    entry = {**request.to_dict(), "step": step, "decided": time.time()}
    try:
        if request.run_id != run_id:
            raise ValueError(f"it was written for run {request.run_id}, and {runs.PLAN_FILE} now holds run {run_id}.")
        new = changed_plan(plan, request.action, request.value, request.unit)
        check_timing(plan, new, step)
    except (ValueError, ArithmeticError) as error:  # OverflowError: a number too large for the plan
        entry.update(status="refused", message=f"{request.text} refused after update {step}: {error}")
        return None, entry
    step_of = budget_step(plan, request.value, request.unit)
    budget = _budget_at(new if request.action == "add" else plan, step_of)
    what = f"{budget.name} will {_decay_text(budget)}" if request.action == "add" else f"{budget.name} removed"
    entry.update(status="accepted", budget=budget.name, budgets=[b.name for b in new.budgets],
                 message=f"{request.text} accepted after update {step}: {what}; budgets now {_names(new)}")
    return new, entry


def replay_changes(plan: BudgetPlan, record: dict) -> BudgetPlan:
    """``plan`` (from the config of a resumed launch) with the run's accepted changes applied again; a change the
    config already holds (the added budget is in ``budgets``, the removed one is not) is skipped."""
    for entry in record.get("changes", []):
        if entry.get("status") != "accepted":
            continue
        present = budget_step(plan, entry["value"], entry["unit"]) in {b.step for b in plan.budgets}
        if present == (entry["action"] == "add"):
            continue
        try:
            plan = changed_plan(plan, entry["action"], entry["value"], entry["unit"])
        except ValueError as error:
            raise ValueError(
                f"the run accepted `hf-wsd budget {entry['action']} {entry['value']}` after update {entry['step']}, "
                f"and this config's plan cannot take it again: {error} Resume with the config the run started "
                "with, or start over with overwrite_output_dir=True."
            ) from None
    return plan


# ----------------------------------------------------------------------------------------------- request files
def write_request(output_dir: str | Path, action: str, value: str, unit: str | None = None,
                  current_step: int | None = None, allow_step_suffixes: bool = False) -> BudgetRequest:
    """Write a request for the run in ``output_dir`` (what ``hf-wsd budget add/remove`` does); ``unit`` defaults to
    the run's budget unit. Refuses now what the run would refuse: a change its plan cannot take at all (past
    :data:`~hf_wsd.plan.MAX_UPDATES` included), or one that is too late for a run known (``current_step``) to be past
    the update it alters; and a value in updates with a K/M/B/T suffix ('20K', likely meant as tokens) unless
    ``allow_step_suffixes``."""
    output_dir = Path(output_dir)
    saved = runs.read_run(output_dir)
    if saved is None:
        raise ValueError(
            f"{output_dir} holds no WSD run yet ({runs.PLAN_FILE} is missing): put the budget in `budgets` before "
            "launching, or wait until the run has started."
        )
    plan = runs.plan_from_dict(saved["plan"])
    unit = unit or plan.budget_unit
    for pending in pending_requests(output_dir):  # queued requests apply first: check against the plan they make
        if isinstance(pending, BudgetRequest) and pending.run_id == saved["run_id"]:
            try:
                plan = changed_plan(plan, pending.action, pending.value, pending.unit)
            except ValueError:
                pass  # the run will refuse it; this one is checked without it
    request = BudgetRequest(uuid.uuid4().hex, saved["run_id"], action, str(value), unit, time.time())
    try:
        if len(str(value)) > _MAX_TEXT:
            raise ValueError(f"{_short(value)} is not a budget")
        if unit == "steps":
            check_step_suffixes([str(value)], allow_step_suffixes, "value", "--allow-step-suffixes")
        new = changed_plan(plan, action, value, unit)
        if current_step is not None:
            check_timing(plan, new, current_step)
    except ValueError as error:
        where = "" if current_step is None else f" (the run is at update {current_step})"
        raise ValueError(f"{request.text} refused{where}: {error}") from None
    folder = output_dir / runs.REQUESTS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{time.time_ns()}-{request.id[:8]}.json"
    runs.write_json(path, request.to_dict())
    return BudgetRequest(**request.to_dict(), path=path)


def has_pending(output_dir: str | Path) -> bool:
    """Whether any request waits (one directory listing: cheap enough for every update)."""
    try:
        return any(n.endswith(".json") and not n.startswith(".") for n in os.listdir(Path(output_dir) /
                                                                                      runs.REQUESTS_DIR))
    except FileNotFoundError:
        return False


def pending_requests(output_dir: str | Path) -> list[BudgetRequest | InvalidRequest]:
    """Requests not yet picked up, oldest first; a file that is not a valid request comes as an
    :class:`InvalidRequest` saying why."""
    folder = Path(output_dir) / runs.REQUESTS_DIR
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    found: list[BudgetRequest | Path] = []
    for name in names:
        path = folder / name
        try:
            if path.is_dir():
                raise ValueError("it is a folder")
            found.append(BudgetRequest.from_payload(runs.read_json(path, ""), path))
        except FileNotFoundError:
            continue  # picked up meanwhile
        except (ValueError, TypeError, OSError, RecursionError) as error:
            found.append(InvalidRequest(path, str(error).rstrip("; ")))
    return found


@dataclass(frozen=True)
class InvalidRequest:
    """A file in ``wsd_requests/`` that is not a valid request: refused, recorded and moved to ``refused/``."""

    path: Path
    reason: str


def process_pending(output_dir: str | Path, plan: BudgetPlan, record: dict, step: int) -> dict | None:
    """The main process's part at an update boundary: decide every pending request after ``step`` updates, record
    the decisions and the resulting plan in ``wsd_plan.json``, delete the request files.

    Returns the new run record (``run_id``, ``plan``, ``changes``) when anything was decided, else ``None``.
    """
    pending = pending_requests(output_dir)
    if not pending:
        return None
    changes = list(record.get("changes", []))
    decided = {entry["id"] for entry in changes}
    new_entries = []
    for request in pending:
        if isinstance(request, InvalidRequest):
            new_entries.append({
                "id": request.path.name, "status": "refused", "step": step, "decided": time.time(),
                "message": f"{request.path.name} is not a budget request ({request.reason}); moved to "
                           f"{runs.REQUESTS_DIR}/{REFUSED_DIR}/. Write requests with hf-wsd budget add/remove.",
            })
            continue
        if request.id in decided:
            continue  # decided before a crash that came before the file's deletion
        changed, entry = decide(plan, request, step, record["run_id"])
        plan = changed or plan
        new_entries.append(entry)
    updated = None
    if new_entries:
        updated = {**record, "plan": plan.to_dict(), "changes": changes + new_entries}
        runs.write_json(Path(output_dir) / runs.PLAN_FILE, updated)
    for request in pending:
        if isinstance(request, InvalidRequest):
            _move_aside(request.path)
        else:
            request.path.unlink(missing_ok=True)
    return updated


def _move_aside(path: Path) -> None:
    """Keep a refused file for the user to read, out of the way of every later launch."""
    folder = path.parent / REFUSED_DIR
    folder.mkdir(exist_ok=True)
    try:
        os.replace(path, folder / f"{time.time_ns()}-{path.name}")
    except FileNotFoundError:
        pass


def decisions(record: dict, request_id: str) -> dict | None:
    """The recorded decision on request ``request_id``, or ``None`` while it is pending."""
    return next((entry for entry in record.get("changes", []) if entry.get("id") == request_id), None)


# ----------------------------------------------------------------------------------------------- text
def _window(budget: Budget) -> str:
    return f"{budget.decay_start}–{budget.step}"


def _decay_text(budget: Budget, verb: bool = True) -> str:
    if budget.branch:
        text = f"branch off after update {budget.decay_start} and decay over {_window(budget)} on a side branch"
        return text if verb else f"decaying over {_window(budget)} on a side branch"
    return f"decay over updates {_window(budget)}" if verb else f"decaying in-line over {_window(budget)}"


def _budget_at(plan: BudgetPlan, step: int) -> Budget:
    return next(b for b in plan.budgets if b.step == step)


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _names(plan: BudgetPlan) -> str:
    return "[" + ", ".join(str(b.step) for b in plan.budgets) + "]"
