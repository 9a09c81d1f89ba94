"""On-disk bookkeeping of a WSD run: the plan file, budget folders and which checkpoint a resume may use.

Plain functions over paths and plans; the trainer decides when to call them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from .plan import Budget, BudgetPlan

PLAN_FILE = "wsd_plan.json"
BUDGETS_DIR = "budgets"
BUDGET_FILE = "budget.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (a crash leaves the old file or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_run(output_dir: Path) -> dict | None:
    """The run recorded in ``output_dir`` (its plan and run id), or ``None`` for a fresh directory."""
    path = output_dir / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def new_run_record(plan: BudgetPlan) -> dict:
    return {"run_id": uuid.uuid4().hex, "plan": plan.to_dict()}


def budget_folder(output_dir: Path, budget: Budget) -> Path:
    return output_dir / BUDGETS_DIR / budget.name


def budget_is_written(output_dir: Path, budget: Budget, run_id: str) -> bool:
    """True when this run already wrote ``budget``'s folder completely (``the folder is moved into place once complete)."""
    record = output_dir / BUDGETS_DIR / budget.name / BUDGET_FILE
    if not record.is_file():
        return False
    saved = json.loads(record.read_text())
    return saved.get("run_id") == run_id and saved.get("step") == budget.step


def finalize_folder(tmp: Path, final: Path) -> None:
    """Move a fully written budget folder into place, replacing a stale one from an overwritten run."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The Trainer's resumable checkpoints in ``output_dir`` as ``(step, path)``, newest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and child.is_dir() and (child / "trainer_state.json").is_file():
                found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def first_divergence(old: BudgetPlan, new: BudgetPlan) -> int:
    """The first update whose main-path LR differs between two plans (their common horizon if none)."""
    horizon = min(old.total_steps, new.total_steps)
    for step in range(horizon):
        if old.lr_ratio(step) != new.lr_ratio(step):
            return step
    return horizon


def plan_from_dict(payload: dict) -> BudgetPlan:
    fields = {k: v for k, v in payload.items() if k != "resolved"}
    return BudgetPlan(**fields)


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
    match = _CHECKPOINT.match(path.name)
    if match is None or not (path / "trainer_state.json").is_file():
        raise ValueError(f"`resume_from_checkpoint`={requested!r} is not a Trainer checkpoint folder.")
    if int(match.group(1)) > limit:
        raise ValueError(
            f"`resume_from_checkpoint`={requested!r} (update {match.group(1)}) lies past update {limit}, where the "
            "saved plan and this one diverge; resume from an earlier checkpoint."
        )
    return path
