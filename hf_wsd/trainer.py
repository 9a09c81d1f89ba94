"""``WSDTrainer``: a ``transformers.Trainer`` that runs a budget plan and leaves one decayed model per budget.

The plan is the schedule (``create_scheduler``); the Trainer's own loop, checkpoints and resume logic do the
rest. At each budget the trainer writes ``{output_dir}/budgets/{name}/`` and fires the *budget reached*
event (see :mod:`hf_wsd.events`) for evaluation, publishing and user callbacks.

WSD side branches reuse the Trainer's exact-resume machinery: at a branch point the main branch is saved as
a regular checkpoint, the decay runs on the data the main branch would see next, and once the budget is
written training restarts from that checkpoint — weights, optimizer, scheduler, RNG and data position —
as if the branch had never happened. The Trainer's checkpoint code knows DDP, FSDP and DeepSpeed state,
so branches need nothing of their own there (tested here: single process and DDP on CPU).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from transformers import Trainer

from . import lean, runs
from .config import WSDConfig
from .events import BudgetReached
from .lr_scheduler import BudgetPlanLR, get_budget_plan_scheduler
from .plan import Budget, BudgetPlan

logger = logging.getLogger(__name__)


class WSDTrainer(Trainer):
    """Drop-in ``Trainer`` for WSD / WSD-S pretraining: ``args`` is a :class:`WSDConfig`.

    Extra keywords: ``plan`` — a ready :class:`BudgetPlan` overriding the one built from ``args``;
    ``peft_config`` — a PEFT config (e.g. ``LoraConfig``): the model is wrapped with ``get_peft_model`` and budgets
    hold the adapter only (see :mod:`hf_wsd.lean`; ``use_peft`` in ``args`` does the same from config fields).
    """

    def __init__(
        self, model=None, args: WSDConfig | None = None, *pargs, plan: BudgetPlan | None = None, peft_config=None, **kwargs
    ):
        if not isinstance(args, WSDConfig):
            raise TypeError(f"WSDTrainer needs `args` to be a WSDConfig; got {type(args).__name__}.")
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers[1] is not None:
            raise ValueError("`optimizers`: WSDTrainer builds the LR scheduler from the budget plan; pass (optimizer, None).")
        if args.schedule == "wsd" and args.save_only_model:
            raise ValueError("`save_only_model=True` cannot restore WSD branches (they need optimizer state); set it to False.")
        model = lean.prepare_model(model, args, peft_config)  # PEFT adapters: hf_wsd/lean.py
        super().__init__(model, args, *pargs, **kwargs)
        if args.save_merged_budgets and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                "`save_merged_budgets` merges an in-memory copy of the model, which FSDP and DeepSpeed shard: set it to "
                "False and merge a budget's adapter afterwards (PeftModel.from_pretrained(...).merge_and_unload())."
            )
        self.plan = plan if plan is not None else args.build_plan(self._tokens_per_update())
        self.args.max_steps = self.plan.total_steps
        self.output_path = Path(self.args.output_dir)
        self._restart_from: Path | None = None
        self._handled_step = -1
        self._branch_started_at = 0.0
        self._restart_started: float | None = None
        self._lr_plot_plan: dict | None = None
        # Wall time of WSD branch switches against the branches' own updates (reported by benchmarks).
        self.branch_seconds = {"snapshot": 0.0, "restore": 0.0, "branch_updates": 0.0}
        self.run_id: str | None = None
        self._add_budget_subscribers()

    # ------------------------------------------------------------------------------------------- set-up
    def _tokens_per_update(self) -> int | None:
        seq_length = self.args.seq_length
        if seq_length is None and self.train_dataset is not None:
            try:
                seq_length = len(self.train_dataset[0]["input_ids"])
            except (TypeError, KeyError, IndexError, NotImplementedError):
                seq_length = None
        if seq_length is None:
            if self.args.budget_unit == "tokens":
                raise ValueError(
                    "token budgets need the sequence length, and the training data does not tell it: set "
                    "`seq_length` in WSDConfig."
                )
            return None
        args = self.args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * seq_length

    def _add_budget_subscribers(self) -> None:
        """Evaluation first, then publishing (the card needs the eval results)."""
        args = self.args
        if args.budget_eval:
            from .evaluation import BudgetEvaluator, validate_tasks

            self._check_heldout_batches()

            validate_tasks(args.eval_tasks, args.eval_task_paths)  # fail now, not after hours of compute
            self.add_callback(
                BudgetEvaluator(
                    eval_tasks=args.eval_tasks,
                    eval_task_paths=args.eval_task_paths,
                    eval_limit=args.eval_limit,
                    eval_batch_size=args.lm_eval_batch_size,
                )
            )
        if args.push_to_hub:
            from .publishing import HubPublisher

            self.add_callback(HubPublisher.from_args(args))

    def _check_heldout_batches(self) -> None:
        """With ``dataloader_drop_last`` a held-out set smaller than one batch would score nothing: say so now."""
        datasets = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        batch = self.args.eval_batch_size * self.args.world_size
        for name, dataset in datasets.items():
            if self.args.dataloader_drop_last and hasattr(dataset, "__len__") and len(dataset) < batch:
                raise ValueError(
                    f"`dataloader_drop_last` drops every held-out batch: {name} has {len(dataset)} examples, fewer than "
                    f"one batch ({batch}); lower `per_device_eval_batch_size` or set dataloader_drop_last=False."
                )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Repos and branches are the publisher's job (one branch per budget)."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Resumable checkpoints stay local; budgets are published by :class:`~hf_wsd.publishing.HubPublisher`."""

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        lean.forget_stale_bnb_overrides(optimizer)  # bitsandbytes: a run must not depend on earlier runs in the process
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None) -> BudgetPlanLR:
        if self.lr_scheduler is None:
            self.lr_scheduler = get_budget_plan_scheduler(optimizer or self.optimizer, self.plan)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ------------------------------------------------------------------------------------------- the run
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """Train through every budget of the plan; ``resume_from_checkpoint`` continues or extends a run."""
        checkpoint = self._prepare_run(resume_from_checkpoint)
        logger.info("Budget plan:\n%s", self.plan.describe(self.args.learning_rate))
        handler = self.callback_handler
        try:
            while True:
                self._restart_from = None
                self._handled_step = -1
                output = super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
                if self._restart_from is None:
                    return output
                # A WSD branch ended: restart from its branch point. Callbacks see one run, not segments.
                checkpoint = str(self._restart_from)
                handler.on_train_begin = _resume_quietly
                handler.__dict__.pop("on_train_end", None)
        finally:
            handler.__dict__.pop("on_train_begin", None)
            handler.__dict__.pop("on_train_end", None)

    def _prepare_run(self, resume: str | bool | None) -> str | None:
        """Check the output dir against the plan; returns the checkpoint to start from."""
        output_dir = self.output_path
        saved = runs.read_run(output_dir)
        if resume in (None, False):
            if saved is not None and not self.args.overwrite_output_dir:
                raise ValueError(
                    f"`output_dir` {output_dir} already holds a WSD run ({runs.plan_from_dict(saved['plan'])!r}): "
                    "pass resume_from_checkpoint=True to continue or extend it, overwrite_output_dir=True to start "
                    "over, or choose another output_dir."
                )
            record, checkpoint = runs.new_run_record(self.plan), None
        elif saved is None:
            raise ValueError(f"`resume_from_checkpoint`: {output_dir} holds no WSD run ({runs.PLAN_FILE} is missing).")
        else:
            old_plan = runs.plan_from_dict(saved["plan"])
            checkpoint = str(runs.resume_checkpoint(output_dir, old_plan, self.plan, resume))
            record = {"run_id": saved["run_id"], "plan": self.plan.to_dict()}
            if old_plan != self.plan:
                logger.info("Extending the run: %r → %r, from %s", old_plan, self.plan, checkpoint)
        self.run_id = self._from_main(record["run_id"])
        if self.args.should_save:
            (output_dir / runs.BUDGETS_DIR).mkdir(parents=True, exist_ok=True)
            runs.write_json(output_dir / runs.PLAN_FILE, record)
        self.accelerator.wait_for_everyone()
        return checkpoint

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        if self._restart_started is not None:
            self.branch_seconds["restore"] += time.perf_counter() - self._restart_started
            self._restart_started = None
        # Resumed at a branch point (after a branch, or after a crash): the next branch may start right here.
        if self.lr_scheduler.branch is None:
            self._maybe_enter_branch(self.state.global_step)
        return model, train_dataloader

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=None):
        step = self.state.global_step
        if self.lr_scheduler.branch is not None:
            self.control.should_save = False  # checkpoints hold the main branch only
        elif self._needs_checkpoint(step):
            self.control.should_save = True
        super()._maybe_log_save_evaluate(
            tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=learning_rate
        )
        if step != self._handled_step:  # called twice on an epoch's last update
            self._handled_step = step
            self._after_update(step)

    def _save_checkpoint(self, model, trial) -> None:
        started = time.perf_counter()
        super()._save_checkpoint(model, trial)
        if any(b.branch and b.decay_start == self.state.global_step for b in self.plan.budgets):
            self.branch_seconds["snapshot"] += time.perf_counter() - started

    def _needs_checkpoint(self, step: int) -> bool:
        """Main-path steps that must be resumable: branch points, in-line budgets, WSD's pre-decay point."""
        for budget in self.plan.budgets:
            if step == budget.decay_start and (budget.branch or self.plan.schedule == "wsd"):
                return not budget.branch or not self._written(budget)
            if step == budget.step and not budget.branch:
                return True
        return False

    def _after_update(self, step: int) -> None:
        branch = self.lr_scheduler.branch
        if branch is not None:
            budget = self.plan.budgets[branch]
            if step == budget.step:
                self.branch_seconds["branch_updates"] += time.perf_counter() - self._branch_started_at
                self._reach_budget(budget)
                # Back to the branch point: the Trainer's exact resume restores the main branch.
                self._restart_from = self.output_path / f"checkpoint-{budget.decay_start}"
                self.control.should_training_stop = True
                self.callback_handler.on_train_end = lambda args, state, control: control
                self._restart_started = time.perf_counter()
            return
        for budget in self.plan.budgets:
            if budget.step == step and not budget.branch:
                self._reach_budget(budget)
        self._maybe_enter_branch(step)

    def _maybe_enter_branch(self, step: int) -> None:
        for budget in self.plan.budgets:
            if budget.branch and budget.decay_start == step and not self._written(budget):
                logger.info("WSD branch for %s: %d decay updates from update %d", budget.name, budget.decay_steps, step)
                self.lr_scheduler.enter_branch(budget.index)
                self._branch_started_at = time.perf_counter()
                return

    def _written(self, budget: Budget) -> bool:
        """Decided on the main process (it owns the budget folders) so that every rank takes the same path."""
        return self._from_main(runs.budget_is_written(self.output_path, budget, self.run_id))

    def _from_main(self, value):
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    # ------------------------------------------------------------------------------------------- budgets
    def _reach_budget(self, budget: Budget) -> None:
        """Write the budget's folder (once per run) and fire the *budget reached* event."""
        folder = runs.budget_folder(self.output_path, budget)
        if self._written(budget):
            logger.info("%s was written before this resume; not rewriting it.", budget.name)
            return
        tmp = folder.with_name(f".tmp-{budget.name}")  # moved into place only once complete
        self.save_model(str(tmp), _internal_call=True)  # every rank: FSDP and DeepSpeed gather the weights collectively
        if self.args.should_save:
            self._write_budget_files(budget, tmp)
            runs.finalize_folder(tmp, folder)
        self.accelerator.wait_for_everyone()
        logger.info("Budget %s reached at update %d: %s", budget.name, budget.step, folder)
        event = BudgetReached(budget=budget, folder=folder, plan=self.plan)
        for callback in self.callback_handler.callbacks:
            hook = getattr(callback, "on_budget_reached", None)
            if hook is not None:
                hook(self.args, self.state, self.control, event=event, trainer=self)

    def _write_budget_files(self, budget: Budget, folder: Path) -> None:
        from .card import write_model_card
        from .plots import plot_curves, plot_lr_schedule

        window = [
            entry for entry in self.state.log_history
            if "loss" in entry and budget.decay_start < entry["step"] <= budget.step
        ]
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        record = {
            "name": budget.name,
            "index": budget.index,
            "step": budget.step,
            "tokens": budget.tokens,
            "tokens_per_update": self.plan.tokens_per_update,
            "tokens_seen": self.state.num_input_tokens_seen or None,
            "schedule": self.plan.schedule,
            "decay_shape": self.plan.decay_shape,
            "decay_start": budget.decay_start,
            "decay_steps": budget.decay_steps,
            "branch": budget.branch,
            "compute": budget.compute,
            "peak_lr": self.args.learning_rate,
            "min_lr_ratio": self.plan.min_lr_ratio,
            "warmup_steps": self.plan.warmup_steps,
            "train_loss": sum(e["loss"] for e in window) / len(window) if window else None,
            "losses": [[e["step"], e["loss"], e.get("learning_rate")] for e in window],
            "base_model": getattr(self, "base_model", None),
            "model_type": getattr(config, "model_type", None),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "seed": self.args.seed,
            "run_id": self.run_id,
            "plan": self.plan.to_dict(),
        }
        # Lean runs (hf_wsd/lean.py): an adapter-only budget names its base model and how to load it.
        record["optim"] = getattr(self.args.optim, "value", self.args.optim)
        record["base_model"] = record["base_model"] or lean.base_model_name(model)
        merged = self.args.save_merged_budgets and lean.is_peft_model(model)
        if merged:
            lean.save_merged(model, folder / lean.MERGED_DIR, self.processing_class)
        record["adapter"] = lean.adapter_record(model, budget.name, record["base_model"], merged)
        # The LR curve is the same for every budget of the run: draw it once.
        lr_plot = self.output_path / runs.BUDGETS_DIR / "lr_schedule.png"
        if self._lr_plot_plan != self.plan.to_dict():
            plot_lr_schedule(self.plan, lr_plot, self.args.learning_rate)
            self._lr_plot_plan = self.plan.to_dict()
        shutil.copyfile(lr_plot, folder / "lr_schedule.png")
        history = [(e["step"], e["loss"]) for e in self.state.log_history if "loss" in e and e["step"] <= budget.step]
        if history:
            steps, losses = zip(*history)
            plot_curves(
                {"training loss": (steps, losses)}, folder / "loss_curve.png", "optimizer update", "loss",
                title=f"training loss up to {budget.name}", marks=[b.step for b in self.plan.budgets if b.step <= budget.step],
            )
        runs.write_json(folder / runs.BUDGET_FILE, record)
        write_model_card(folder)


def _resume_quietly(args, state, control):
    """``on_train_begin`` of a restart after a WSD branch: reset the stop flag, tell no callback."""
    control.should_training_stop = False
    return control
