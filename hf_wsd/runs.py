"""The on-disk layout of a WSD run: every file and folder name, the one atomic writer, and the readers.

    {output_dir}/
      wsd_plan.json            the plan and run id (resume and extension check against it)
      wsd_log.jsonl            one line per Trainer log (main path and WSD branches), appended by the main process
      wsd_status.json          where the run stands (update, branch, speed), rewritten at each log (hf-wsd status)
      wsd_lock.json            the launch training the run now (pid, host, start), removed when it ends
      wsd_requests/            budget requests (hf-wsd budget add/remove) the trainer has not picked up yet
      checkpoint-N/            the Trainer's resumable checkpoints of the main branch (+ wsd_state/ of hf_wsd)
      budgets/
        {name}/                one complete from_pretrained folder per budget, with budget.json,
                               eval_results.json, README.md (the card) and its plots
        {step name}-ema/       an EMA preview (hf_wsd/averaging.py): the same files, budget.json marked "preview"
        eval_summary.csv/.json one row per evaluated budget
        published.json         the publishing ledger

Plain functions over paths and plans; the trainer and the subscribers decide when to call them. A damaged
file is reported by name with the way to recover (:class:`RunFileError`), never as a bare ``JSONDecodeError``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .plan import Budget, BudgetPlan, budget_name

PLAN_FILE = "wsd_plan.json"
LOG_FILE = "wsd_log.jsonl"
STATUS_FILE = "wsd_status.json"
LOCK_FILE = "wsd_lock.json"  # the launch that trains the run now (hf_wsd/run_lock.py)
REQUESTS_DIR = "wsd_requests"  # one JSON file per pending `hf-wsd budget` request; decisions go to wsd_plan.json
BUDGETS_DIR = "budgets"
BUDGET_FILE = "budget.json"
EVAL_FILE = "eval_results.json"
FORECAST_FILE = "forecast.json"  # the loss this budget was forecast to reach, before its decay (hf_wsd/forecast.py)
CARD_FILE = "README.md"
LR_SCHEDULE_IMAGE = "lr_schedule.png"
LOSS_CURVE_IMAGE = "loss_curve.png"
LEDGER_FILE = "published.json"
EVAL_SUMMARY_CSV = "eval_summary.csv"
EVAL_SUMMARY_JSON = "eval_summary.json"
TASKS_DIR = "eval_tasks"
PREVIEW_SUFFIX = "-ema"  # an EMA preview's folder and Hub branch: step{N}-tokens{T}-ema
PREVIEW_KEY = "preview"  # budget.json / eval_results.json of a preview carry it; budgets never do
MIXTURE_KEY = "decay_mixture"  # in PLAN_FILE: the decay mixture's windows (resume checks the ones already trained)
DATA_KEY = "data"  # in PLAN_FILE: the training data's fingerprint (a resume checks it: hf_wsd/data/fingerprint.py)
STATE_DIR = "wsd_state"  # inside a checkpoint: hf_wsd's own state (data feed positions, averages)
TMP_PREFIX = ".tmp-"  # budget folders being written; hidden, so no reader ever takes one for a budget
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class RunFileError(ValueError):
    """A file of the run is damaged; the message names it and how to recover."""


# ----------------------------------------------------------------------------------------------- files
def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path, fix: str) -> Any:
    """Read a JSON file of the run; a damaged one raises :class:`RunFileError` naming it and ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFileError(f"{path} is damaged ({error}); {fix}") from error


def append_log(output_dir: str | Path, entry: dict) -> None:
    """Append one entry to the run's log (``wsd_log.jsonl``; one JSON object per line)."""
    with (Path(output_dir) / LOG_FILE).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_log(output_dir: str | Path) -> list[dict]:
    """The run's log entries; a line cut short by a crash (only ever the last) is skipped."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


# ----------------------------------------------------------------------------------------------- the run
def read_run(output_dir: Path) -> dict | None:
    """The run recorded in ``output_dir`` (its plan and run id), or ``None`` for a fresh directory."""
    path = Path(output_dir) / PLAN_FILE
    if not path.is_file():
        return None
    return read_json(path, "start over with overwrite_output_dir=True (budget folders already written are kept "
                           "until the new run replaces them), or restore the file from a backup.")


def new_run_record(plan: BudgetPlan) -> dict:
    return {"run_id": uuid.uuid4().hex, "plan": plan.to_dict()}


def plan_from_dict(payload: dict) -> BudgetPlan:
    fields = {k: v for k, v in payload.items() if k != "resolved"}
    return BudgetPlan(**fields)


# ----------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class BudgetRecord:
    """A complete budget folder and its ``budget.json``."""

    folder: Path
    record: dict

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def step(self) -> int:
        return self.record["step"]

    @property
    def evaluation(self) -> dict | None:
        """``eval_results.json`` of the budget, or ``None`` when it was not evaluated."""
        return read_eval_results(self.folder)


def budgets_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / BUDGETS_DIR


def budget_folder(output_dir: str | Path, budget: Budget | str) -> Path:
    return budgets_dir(output_dir) / (budget if isinstance(budget, str) else budget.name)


def read_budget(folder: str | Path) -> dict:
    """``budget.json`` of a budget folder (a clear error when it is missing or damaged)."""
    path = Path(folder) / BUDGET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {Path(folder)} is not a complete budget folder.")
    return read_json(path, f"delete {Path(folder)} and resume the run to write the budget again.")


def read_eval_results(folder: str | Path) -> dict | None:
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return None
    return read_json(path, f"delete {path} and resume the run: the budget is evaluated again.")


def budget_records(output_dir: str | Path, up_to_step: int | None = None) -> list[BudgetRecord]:
    """The run's complete budget folders (those with ``budget.json``), by step; ``up_to_step`` keeps earlier ones.

    Decayed budgets only: EMA previews are read with :func:`preview_records`.
    """
    return [r for r in _records(output_dir, up_to_step) if not is_preview(r.record)]


def preview_records(output_dir: str | Path, up_to_step: int | None = None) -> list[BudgetRecord]:
    """The run's complete EMA preview folders (``budget.json`` marked ``"preview"``), by step."""
    return [r for r in _records(output_dir, up_to_step) if is_preview(r.record)]


def _records(output_dir: str | Path, up_to_step: int | None) -> list[BudgetRecord]:
    root = budgets_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and (folder / BUDGET_FILE).is_file():
            record = BudgetRecord(folder, read_budget(folder))
            if up_to_step is None or record.step <= up_to_step:
                found.append(record)
    return sorted(found, key=lambda r: r.step)


def is_preview(record: dict | None) -> bool:
    """Whether a ``budget.json`` (or ``eval_results.json``) belongs to an EMA preview rather than a decayed budget."""
    return bool(record and record.get(PREVIEW_KEY))


def preview_name(step: int, tokens: int | None) -> str:
    """Folder and Hub branch of the EMA preview after ``step`` updates: ``step{N}-tokens{T}-ema``."""
    return budget_name(step, tokens) + PREVIEW_SUFFIX


def preview_is_written(output_dir: Path, name: str, step: int, run_id: str | None) -> bool:
    """True when this run already wrote the preview ``name`` at ``step`` completely."""
    path = budget_folder(output_dir, name) / BUDGET_FILE
    if not path.is_file():
        return False
    saved = read_budget(path.parent)
    return is_preview(saved) and saved.get("run_id") == run_id and saved.get("step") == step


def budget_is_written(output_dir: Path, budget: Budget, run_id: str) -> bool:
    """True when this run already wrote ``budget``'s folder completely (folders are moved into place once complete)."""
    path = budget_folder(output_dir, budget) / BUDGET_FILE
    if not path.is_file():
        return False
    saved = read_budget(path.parent)
    return saved.get("run_id") == run_id and saved.get("step") == budget.step


def temporary_folder(output_dir: str | Path, budget: Budget | str) -> Path:
    return budgets_dir(output_dir) / f"{TMP_PREFIX}{budget if isinstance(budget, str) else budget.name}"


def finalize_folder(tmp: Path, final: Path) -> None:
    """Move a fully written budget folder into place, replacing a stale one from an overwritten run."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def leftover_temporary_folders(output_dir: str | Path) -> list[Path]:
    """Half-written budget folders a crash left behind."""
    root = budgets_dir(output_dir)
    return sorted(p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)) if root.is_dir() else []


def build_budget_record(
    plan: BudgetPlan, budget: Budget, log_history: Iterable[dict], *, run_id: str | None, **details: Any
) -> dict:
    """``budget.json`` of ``budget``: where it sits in ``plan``, its training losses, and ``details`` (model, seed, …).

    The training loss is the mean over the updates of the budget's decay window: each logged loss (the mean of its
    logging interval) weighted by its interval's updates. The trainer logs at each decay start, so the intervals
    cover the window exactly; ``train_loss_updates`` says which updates the mean covers (it starts earlier when a
    log at the decay start is missing).
    """
    logged = sorted((e for e in log_history if "loss" in e), key=lambda e: e["step"])
    window = [e for e in logged if budget.decay_start < e["step"] <= budget.step]
    before = [e["step"] for e in logged if e["step"] <= budget.decay_start]
    previous = before[-1] if before else 0
    weights = [e["step"] - p for e, p in zip(window, [previous, *(e["step"] for e in window[:-1])])]
    return {
        "name": budget.name,
        "index": budget.index,
        "step": budget.step,
        "tokens": budget.tokens,
        "tokens_per_update": plan.tokens_per_update,
        "schedule": plan.schedule,
        "decay_shape": plan.decay_shape,
        "decay_start": budget.decay_start,
        "decay_steps": budget.decay_steps,
        "branch": budget.branch,
        "compute": budget.compute,
        "min_lr_ratio": plan.min_lr_ratio,
        "warmup_steps": plan.warmup_steps,
        "train_loss": sum(w * e["loss"] for w, e in zip(weights, window)) / sum(weights) if window else None,
        "train_loss_updates": [previous + 1, window[-1]["step"]] if window else None,  # 1-based, inclusive
        "losses": [[e["step"], e["loss"], e.get("learning_rate")] for e in window],
        **details,
        "run_id": run_id,
        "plan": plan.to_dict(),
    }


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoint_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The Trainer's resumable checkpoints in ``output_dir`` as ``(step, path)``, newest first."""
    found = []
    if Path(output_dir).is_dir():
        for child in Path(output_dir).iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and child.is_dir() and (child / "trainer_state.json").is_file():
                found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT.match(Path(path).name)
    return None if match is None else int(match.group(1))


def first_divergence(old: BudgetPlan, new: BudgetPlan) -> int:
    """The first update where two plans part (their common horizon if nowhere): the first update whose main-path LR
    differs, or a WSD branch point that only one of them has (a run past it would never take that branch)."""
    horizon = min(old.total_steps, new.total_steps)
    for step in range(horizon):
        if old.lr_ratio(step) != new.lr_ratio(step):
            horizon = step
            break
    same_decays = (old.decay_shape, old.min_lr_ratio) == (new.decay_shape, new.min_lr_ratio)
    branches = [{(b.step, b.decay_start, b.decay_steps) for b in plan.budgets if b.branch} for plan in (old, new)]
    for _, start, _ in branches[0] ^ branches[1] if same_decays else branches[0] | branches[1]:
        horizon = min(horizon, start)
    return horizon


def resume_checkpoint(output_dir: Path, old_plan: BudgetPlan, new_plan: BudgetPlan, requested: str | bool) -> Path:
    """The checkpoint to resume ``new_plan`` from: the requested one, or the newest on the shared path.

    A checkpoint at step ``s`` is usable when both plans drove the same LR for updates ``0 … s-1``: then its
    weights and optimizer state are exactly those of the new plan's run. Extending a WSD-S run resumes from
    the last decayed checkpoint; extending a WSD run, from the pre-decay checkpoint of its last budget.
    """
    if old_plan.tokens_per_update != new_plan.tokens_per_update:
        raise ValueError(
            f"the run in {output_dir} used {old_plan.tokens_per_update} tokens per update, this config "
            f"{new_plan.tokens_per_update}: keep the batch size, accumulation, world size and sequence length, "
            "or start a new run in another `output_dir`."
        )
    limit = first_divergence(old_plan, new_plan)
    if requested is True:
        for step, path in checkpoints(output_dir):
            if step <= limit:
                return path
        raise ValueError(
            f"no checkpoint in {output_dir} lies on the path shared by the saved plan and this one "
            f"(they agree up to update {limit}); set `resume_from_checkpoint` to a checkpoint, or start over "
            "with `overwrite_output_dir=True`."
        )
    path = Path(requested)
    step = checkpoint_step(path)
    if step is None or not (path / "trainer_state.json").is_file():
        raise ValueError(f"`resume_from_checkpoint`={requested!r} is not a Trainer checkpoint folder.")
    if step > limit:
        raise ValueError(
            f"`resume_from_checkpoint`={requested!r} (update {step}) lies past update {limit}, where the "
            "saved plan and this one diverge; resume from an earlier checkpoint."
        )
    return path
