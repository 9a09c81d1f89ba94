"""Training-loss logs for :mod:`hf_wsd.forecast`: an hf_wsd run directory, a Trainer's ``trainer_state.json``, a CSV.

Every reader returns a :class:`TrainingLog`: one :class:`LossCurve` per LR path (the main path, then each WSD side
branch), each holding the learning rate of every update and the logged losses as interval means. Conventions
(those of ``transformers.Trainer``): a log entry at global ``step`` s is the mean training loss of the updates since
the previous entry p, i.e. of updates p … s-1, each loss measured on the weights *before* that update (after n
updates for update n); its ``learning_rate`` is the LR of update s-1.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import runs
from .plan import BudgetPlan

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
CSV_COLUMNS = ("step", "learning_rate", "loss")
_LR_TOLERANCE = 1e-4  # relative: logged LRs are floats of the scheduler's own value


@dataclass(frozen=True)
class LossCurve:
    """Logged training loss along one LR path.

    ``lr[n]`` is the learning rate of update ``n`` (0-based) for every update up to the last entry. Entry ``i`` is
    the mean loss of updates ``start[i] … end[i]-1``, the loss of update n being that of the weights after n updates.
    ``branch`` is the budget index of a WSD side branch, ``None`` on the main path.
    """

    lr: np.ndarray
    start: np.ndarray
    end: np.ndarray
    loss: np.ndarray
    branch: int | None = None

    def until(self, step: int) -> LossCurve:
        """The entries that end by update ``step`` (the losses the run had logged after ``step`` updates)."""
        keep = self.end <= step
        return replace(self, lr=self.lr[:step], start=self.start[keep], end=self.end[keep], loss=self.loss[keep])


@dataclass(frozen=True)
class TrainingLog:
    """A run's logged losses: ``curves[0]`` is the main path, then WSD branches; ``peak_lr`` scales the LR.

    ``plan`` is the hf_wsd plan the log follows (``None`` when unknown); ``lr_exact`` says whether the LR of every
    update is known exactly (rebuilt from the plan, or logged at every update) rather than piecewise constant.
    """

    curves: tuple[LossCurve, ...]
    source: str
    peak_lr: float
    plan: BudgetPlan | None = None
    tokens_per_update: int | None = None
    lr_exact: bool = True

    @property
    def main(self) -> LossCurve:
        return self.curves[0]

    @property
    def last_step(self) -> int:
        return int(self.main.end[-1]) if len(self.main.end) else 0

    def cut(self, main_until: int, branches: tuple[int, ...] | None = None) -> TrainingLog:
        """The main path up to update ``main_until`` plus the WSD branches in ``branches`` (all when ``None``)."""
        kept = [self.main.until(main_until)]
        kept += [c for c in self.curves[1:] if branches is None or c.branch in branches]
        return replace(self, curves=tuple(kept))

    def known_at(self, index: int) -> TrainingLog:
        """What the run had logged when budget ``index`` of its plan was written."""
        budget = self._plan("known_at").budgets[index]
        if budget.branch:  # a WSD branch is written before the main path passes its branch point
            return self.cut(budget.decay_start, tuple(range(index + 1)))
        return self.cut(budget.step, tuple(range(index)))

    def before_decay(self, index: int) -> TrainingLog:
        """What the run had logged when the decay of budget ``index`` started (a forecast of that budget)."""
        return self.cut(self._plan("before_decay").budgets[index].decay_start, tuple(range(index)))

    def _plan(self, method: str) -> BudgetPlan:
        if self.plan is None:
            raise ValueError(f"{self.source}: `{method}` needs the run's budget plan, and this log has none.")
        return self.plan


# ------------------------------------------------------------------------------------------------- readers
def read_log(path: str | Path, plan: BudgetPlan | None = None) -> TrainingLog:
    """Read an hf_wsd run directory, a ``trainer_state.json`` (or a checkpoint folder holding one) or a CSV.

    A checkpoint inside an hf_wsd run uses the run's plan (``wsd_plan.json`` one folder up) unless ``plan`` is given.
    """
    path = Path(path)
    if path.is_dir():
        if (path / runs.PLAN_FILE).is_file():
            return read_run(path)
        if (path / TRAINER_STATE).is_file():
            path = path / TRAINER_STATE
        else:
            raise ValueError(
                f"{path} is neither an hf_wsd run ({runs.PLAN_FILE}) nor a checkpoint ({TRAINER_STATE}); pass a run "
                "directory, a trainer_state.json, a wsd_log.jsonl or a CSV with columns step, learning_rate, loss."
            )
    if not path.is_file():
        raise ValueError(f"no log at {path}: pass a run directory, a trainer_state.json, a wsd_log.jsonl or a CSV.")
    if path.suffix == ".csv":
        return read_csv(path, plan)
    if path.suffix == ".jsonl":
        return read_wsd_log(path, plan)
    if plan is None and (path.parent.parent / runs.PLAN_FILE).is_file():
        plan = runs.plan_from_dict(json.loads((path.parent.parent / runs.PLAN_FILE).read_text())["plan"])
    return read_trainer_state(path, plan)


def read_run(output_dir: str | Path) -> TrainingLog:
    """An hf_wsd run: its plan, and ``wsd_log.jsonl`` or else the newest checkpoint's ``trainer_state.json``.

    From a checkpoint, WSD branch decays come from the budgets' ``budget.json`` (``losses``): the main path's
    checkpoints never hold them.
    """
    output_dir = Path(output_dir)
    record = runs.read_run(output_dir)
    if record is None:
        raise ValueError(f"{output_dir} holds no hf_wsd run ({runs.PLAN_FILE} is missing).")
    plan = runs.plan_from_dict(record["plan"])
    if (output_dir / runs.LOG_FILE).is_file():
        return read_wsd_log(output_dir / runs.LOG_FILE, plan)
    found = runs.checkpoints(output_dir)
    if not found:
        raise ValueError(
            f"{output_dir} has no {runs.LOG_FILE} and no checkpoint-*/{TRAINER_STATE}: nothing to forecast from "
            "(runs made before hf_wsd wrote its log keep their losses in the Trainer's checkpoints)."
        )
    state = found[0][1] / TRAINER_STATE
    rows = _trainer_state_rows(state)
    for budget in budget_losses(output_dir):
        if budget.get("branch") and budget.get("losses"):
            rows += [(budget["index"], int(s), loss, lr) for s, loss, lr in budget["losses"]]
    return _build_log(rows, str(state), plan, _tokens_per_update(plan, state))


def read_trainer_state(path: str | Path, plan: BudgetPlan | None = None) -> TrainingLog:
    """A Trainer's ``trainer_state.json``: its ``log_history`` entries with ``loss`` (others are ignored)."""
    path = Path(path)
    return _build_log(_trainer_state_rows(path), str(path), plan, _tokens_per_update(plan, path))


def read_wsd_log(path: str | Path, plan: BudgetPlan | None = None) -> TrainingLog:
    """hf_wsd's ``wsd_log.jsonl``: one JSON object per Trainer log; lines without ``loss`` are ignored.

    After a crash-resume the same (branch, step) may appear twice: the last line wins.
    """
    path = Path(path)
    rows: dict[tuple, tuple] = {}
    tokens = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON ({error.msg}); each line must be one JSON object.")
        if "loss" not in entry:
            continue
        row = _row(entry, f"{path} line {number}")
        rows[(row[0] is not None, row[0] or 0, row[1])] = row
        if entry.get("tokens_seen") and row[0] is None:
            tokens = round(entry["tokens_seen"] / row[1])
    ordered = [rows[key] for key in sorted(rows)]
    per_update = plan.tokens_per_update if plan is not None and plan.tokens_per_update else tokens
    return _build_log(ordered, str(path), plan, per_update)


def read_csv(path: str | Path, plan: BudgetPlan | None = None) -> TrainingLog:
    """A CSV with columns ``step``, ``learning_rate`` and ``loss`` (others are ignored), one row per log entry."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{path} has no `{missing[0]}` column (columns: {', '.join(reader.fieldnames or ()) or 'none'}); a "
                f"loss log needs {', '.join(CSV_COLUMNS)}, the LR being that of the entry's last update."
            )
        rows = []
        for number, record in enumerate(reader, start=2):
            values = {k: _number(record[k], k, f"{path} line {number}") for k in CSV_COLUMNS}
            rows.append(_row(values, f"{path} line {number}"))
    return _build_log(rows, str(path), plan, plan.tokens_per_update if plan is not None else None)


def budget_losses(output_dir: str | Path) -> list[dict]:
    """The ``budget.json`` of every written budget, with ``heldout_loss`` from ``eval_results.json`` when scored."""
    records = []
    for budget in runs.budget_records(output_dir):
        results = (budget.evaluation or {}).get("results", [])
        heldout = [r["value"] for r in results if r.get("task") == "heldout" and r.get("metric") == "loss"]
        records.append({**budget.record, "heldout_loss": heldout[0] if heldout else None})
    return sorted(records, key=lambda r: (r["step"], r["index"]))


# ------------------------------------------------------------------------------------------------- helpers
def _trainer_state_rows(path: Path) -> list[tuple]:
    try:
        history = json.loads(path.read_text())["log_history"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a Trainer state with a `log_history` list ({error!r}).")
    return [
        _row(entry, f"{path} log_history entry at step {entry.get('step')}") for entry in history if "loss" in entry
    ]


def _row(entry: dict, where: str) -> tuple:
    """``(branch, step, loss, learning_rate)`` of one log entry, or a ValueError naming the missing field."""
    for field in ("step", "learning_rate"):
        if entry.get(field) is None:
            raise ValueError(
                f"{where} has a loss but no `{field}`: the forecast needs the step and the learning rate of every "
                "logged loss (the Trainer logs both; add them to a hand-made log)."
            )
    step = entry["step"]
    if step != int(step) or step < 1:
        raise ValueError(f"{where}: `step` must be a whole number of updates ≥ 1; got {step!r}.")
    return entry.get("branch"), int(step), float(entry["loss"]), float(entry["learning_rate"])


def _number(text: str | None, column: str, where: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: `{column}` must be a number; got {text!r}.")


def _tokens_per_update(plan: BudgetPlan | None, state: Path) -> int | None:
    if plan is not None and plan.tokens_per_update:
        return plan.tokens_per_update
    try:
        payload = json.loads(state.read_text())
        seen, step = payload.get("num_input_tokens_seen") or 0, payload.get("global_step") or 0
    except (OSError, json.JSONDecodeError):
        return None
    return round(seen / step) if seen and step else None


def _build_log(rows: list[tuple], source: str, plan: BudgetPlan | None, tokens_per_update: int | None) -> TrainingLog:
    """Curves from ``(branch, step, loss, lr)`` rows: interval starts, then the per-update LR (plan, or logged)."""
    main = sorted({r[1]: r for r in rows if r[0] is None}.values(), key=lambda r: r[1])
    if not main:
        raise ValueError(f"{source} holds no logged `loss` on the main path: nothing to fit.")
    restarts = sorted(b.decay_start for b in plan.budgets if b.branch) if plan is not None else []
    starts, previous = [], 0
    for _, step, _, _ in main:
        # After a WSD branch the Trainer restarts from the branch point, so the next entry begins there.
        starts.append(max([previous] + [r for r in restarts if r < step]))
        previous = step
    entries = {None: (np.array(starts), main)}
    for branch in sorted({r[0] for r in rows if r[0] is not None}):
        if plan is None or not 0 <= branch < len(plan.budgets) or not plan.budgets[branch].branch:
            raise ValueError(
                f"{source}: entries of `branch` {branch} need the run's plan, where it must be a WSD branch."
            )
        decay_start = plan.budgets[branch].decay_start
        rows_b = sorted((r for r in rows if r[0] == branch), key=lambda r: r[1])
        # The branch's first entry also covers the main path's unlogged updates before the branch point.
        first = max([0] + [r[1] for r in main if r[1] <= decay_start])
        entries[branch] = (np.array([first] + [r[1] for r in rows_b[:-1]]), rows_b)
    peak = _peak_lr(plan, entries, source) if plan is not None else max(r[3] for r in main)
    curves, dropped = [], 0
    for branch, (start, rows_c) in entries.items():
        end = np.array([r[1] for r in rows_c])
        lr = _plan_lr(plan, peak, int(end[-1]), branch) if plan is not None else _stepwise_lr(start, end, rows_c)
        loss = np.array([r[2] for r in rows_c])
        finite = np.isfinite(loss)  # dropped after the intervals are known: a NaN entry still ends the previous one
        dropped += int((~finite).sum())
        curves.append(LossCurve(lr, start[finite], end[finite], loss[finite], branch))
    if dropped:
        logger.warning("%s: ignoring %d entries with a non-finite loss", source, dropped)
    exact = plan is not None or bool(np.all(entries[None][0] == np.arange(len(main))))
    return TrainingLog(tuple(curves), source, float(peak), plan, tokens_per_update, exact)


def _plan_lr(plan: BudgetPlan, peak: float, updates: int, branch: int | None) -> np.ndarray:
    start = plan.budgets[branch].decay_start if branch is not None else updates
    return peak * np.array([plan.lr_ratio(n, branch if n >= start else None) for n in range(updates)])


def _stepwise_lr(start: np.ndarray, end: np.ndarray, rows: list[tuple]) -> np.ndarray:
    """Piecewise-constant LR: every update of an entry takes the logged LR of the entry's last update."""
    lr = np.empty(int(end[-1]))
    for s, e, row in zip(start, end, rows):
        lr[s:e] = row[3]
    return lr


def _peak_lr(plan: BudgetPlan, entries: dict, source: str) -> float:
    """The peak LR that scales the plan's ratios to the logged LRs; a ValueError if the log does not follow the plan."""
    pairs = [
        (plan.lr_ratio(r[1] - 1, branch), r[3], r[1], branch) for branch, (_, rows) in entries.items() for r in rows
    ]
    top = max(p[0] for p in pairs)
    peak = float(np.median([lr / ratio for ratio, lr, _, _ in pairs if ratio >= 0.5 * top]))
    for ratio, lr, step, branch in pairs:
        if abs(lr - peak * ratio) > _LR_TOLERANCE * peak:
            where = "the main path" if branch is None else f"branch {branch}"
            raise ValueError(
                f"{source}: the learning rate logged at step {step} on {where} is {lr:.6g}, but the run's plan gives "
                f"{peak * ratio:.6g} (peak {peak:.6g} × ratio {ratio:.6g}); the log does not follow {plan!r}. Pass the "
                "plan the run used, or read the log without a plan."
            )
    return peak
