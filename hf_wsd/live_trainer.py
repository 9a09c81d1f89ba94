"""The trainer's side of live runs (:class:`LiveRun`): budget requests at update boundaries and the plan swap, the
status file ``hf-wsd status`` reads, and the progress bar's description.

The plan lives in several places while a run trains; :meth:`LiveRun.set_plan` changes all of them at once: the
trainer's ``plan``, the LR scheduler's multipliers (``BudgetPlanLR.set_plan``), ``args.max_steps`` and
``state.max_steps`` (the Trainer stops at ``global_step >= state.max_steps``), the budgets already reached, and the
progress bar's total. Everything else (checkpoints the plan needs, branch points, budgets due) is asked of
``trainer.plan`` at each update, so it follows the new plan from the change on.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from . import live, runs, status
from .lr_scheduler import BudgetPlanLR
from .plan import BudgetPlan

logger = logging.getLogger(__name__)


class LiveRun(TrainerCallback):
    """Owned by a :class:`~hf_wsd.trainer.WSDMixin`; the trainer calls :meth:`check_requests` at update boundaries
    on the main path (every ``budget_request_steps`` updates, and when a launch starts)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self._label: tuple | None = None  # (plan, branch, first, last + 1 update) the bar's description holds for
        self._first: tuple[float, int] | None = None  # (time, updates) at this launch's first status write
        self._tokens_per_second: float | None = None

    # ------------------------------------------------------------------------------------------- requests
    def check_requests(self, step: int, at_launch: bool = False) -> None:
        """Decide pending requests after ``step`` updates on the main process; every rank takes the outcome."""
        trainer = self.trainer
        if trainer.run_id is None or (not at_launch and step % trainer.args.budget_request_steps):
            return
        record = None
        if trainer.accelerator.is_main_process and live.has_pending(trainer.output_path):
            saved = runs.read_run(trainer.output_path)
            if saved is not None and saved.get("run_id") == trainer.run_id:
                record = live.process_pending(trainer.output_path, trainer.plan, saved, step)
                for entry in record["changes"][len(saved.get("changes", [])):] if record else ():
                    (logger.info if entry["status"] == "accepted" else logger.warning)("Budget request %s",
                                                                                      entry["message"])
        record = trainer._from_main(record)
        if record is None:
            return
        if trainer.args.should_save and not trainer.accelerator.is_main_process:  # save_on_each_node: local copies
            runs.write_json(trainer.output_path / runs.PLAN_FILE, record)
        plan = runs.plan_from_dict(record["plan"])
        if plan != trainer.plan:
            self.set_plan(plan, step)

    def set_plan(self, plan: BudgetPlan, step: int | None = None) -> None:
        """Make ``plan`` the run's plan everywhere it is held; ``step``: the update boundary (None before training)."""
        trainer = self.trainer
        old = trainer.plan
        reached = {old.budgets[i].step for i in trainer._reached if i < len(old.budgets)}
        trainer.plan = plan
        trainer._reached = {b.index for b in plan.budgets if b.step in reached}
        trainer.args.max_steps = plan.total_steps
        if isinstance(trainer.lr_scheduler, BudgetPlanLR):
            trainer.lr_scheduler.set_plan(plan)
        if getattr(trainer, "ema", None) is not None:
            trainer.ema.set_plan(plan)
        if step is None:
            return
        trainer.state.max_steps = plan.total_steps
        if step >= plan.total_steps:
            trainer.control.should_training_stop = True  # the last budget went: the run ends here
        elif step >= old.total_steps:
            trainer.control.should_training_stop = False  # set by the Trainer at the old end; the run goes on
        bar = self._bar()
        if bar is not None:
            bar.total = plan.total_steps
            bar.refresh()
        self._label = None

    # ------------------------------------------------------------------------------------------- the status file
    def write_status(self, state: str = "training") -> None:
        trainer = self.trainer
        if not trainer.args.should_save or trainer.run_id is None:
            return
        now, updates = time.time(), trainer._updates_done
        if self._first is None:
            self._first = (now, updates)
        seconds, done = now - self._first[0], updates - self._first[1]
        record = status.status_record(
            run_id=trainer.run_id, state=state, step=trainer.state.global_step, branch=trainer.lr_scheduler_branch,
            plan=trainer.plan, updates_per_second=done / seconds if done and seconds > 0 else None,
            tokens_per_second=self._tokens_per_second, peak_lr=trainer.args.learning_rate,
            world_size=trainer.args.world_size,
        )
        runs.write_json(trainer.output_path / runs.STATUS_FILE, record)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "tokens_per_second" in logs:
            self._tokens_per_second = logs["tokens_per_second"]
        self.write_status()

    def on_train_end(self, args, state, control, **kwargs):
        self.write_status("finished" if state.global_step >= self.trainer.plan.total_steps else "stopped")

    # ------------------------------------------------------------------------------------------- the progress bar
    def _bar(self):
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback):
                return callback.training_bar
        return None

    def on_step_end(self, args, state, control, **kwargs):
        bar = self._bar() if state.is_world_process_zero else None
        if bar is None:
            return
        plan, step, branch = self.trainer.plan, state.global_step, self.trainer.lr_scheduler_branch
        cached = self._label
        if cached is not None and cached[0] is plan and cached[1] == branch and cached[2] <= step < cached[3]:
            return  # same phase and next budget as at the previous update
        edges = sorted({0, *(p.start for p in plan.phases), *(p.end for p in plan.phases)})
        low = max((e for e in edges if e <= step), default=0)
        high = min((e for e in edges if e > step), default=step + 1)
        self._label = (plan, branch, low, high)
        bar.set_description(status.phase_label(plan, step, branch))
