"""The budget machinery of WSD pretraining, as a mixin for any ``Trainer`` (:class:`WSDMixin`), and :class:`WSDTrainer`.

The plan is the schedule (``create_scheduler``); the Trainer's own loop, checkpoints and resume logic do the
rest. At each budget the trainer writes ``{output_dir}/budgets/{name}/`` and fires the *budget reached*
event (:mod:`hf_wsd.events`) for the subscribers the config asks for (:mod:`hf_wsd.subscribers`: evaluation,
the model card, publishing) and user callbacks; it imports none of them.

Training data comes from an update-indexed feed (:mod:`hf_wsd.feed`): the examples of update ``t`` are a
function of ``t``, so resume is O(1) and a WSD side branch restores the data position with everything else.
WSD side branches run in memory (:mod:`hf_wsd.branching`): at a branch point the main branch is saved as a
regular checkpoint (crash safety) and kept aside, the decay runs on the data the main branch would see next,
the budget is written, and the main branch is put back in place — inside the same ``train()`` call (under FSDP2
each rank keeps its own shards). Under DeepSpeed and FSDP1 branches instead restart ``train()`` from the branch
point's checkpoint through the Trainer's exact-resume path. The distributed engine in use is checked and logged
when the trainer is built (:mod:`hf_wsd.engines`).

Crash safety: a budget's folder is complete on disk before the checkpoint that lets a resume skip past it;
budgets whose subscribers did not finish (evaluation, card) are replayed when the run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_callback import CallbackHandler

from . import async_checkpoints, averaging, backend_logs, branching, engines, lean, live, quiet, run_lock, runs
from .card_data import training_data_record
from .config import WSDArguments
from .divergence import DivergenceGuard, any_rank
from .events import BudgetReached, dispatch
from .data.feed import FeedLoader, UpdateFeed, is_map_style
from .data.fingerprint import check_resume_data, data_record
from .live_trainer import LiveRun
from .data.mixture import check_resume, decay_sources, mixture_for_run
from .lr_scheduler import BudgetPlanLR, get_budget_plan_scheduler
from .plan import Budget, BudgetPlan
from .subscribers import add_budget_subscribers

logger = logging.getLogger(__name__)

# Private Trainer hooks this mixin overrides (their arguments pass through unchanged). Present in every
# transformers release of the supported range (pyproject.toml); a release without one fails here, at import.
_PRIVATE_HOOKS = (
    "_maybe_log_save_evaluate", "_save_checkpoint", "_prepare_for_training", "_load_from_checkpoint", "_load_rng_state",
    "_remove_unused_columns", "_get_collator_with_removed_columns",
)
_missing = [name for name in _PRIVATE_HOOKS if not hasattr(Trainer, name)]
if _missing:  # pragma: no cover - depends on the installed transformers
    import transformers

    raise ImportError(
        f"hf_wsd needs Trainer.{', Trainer.'.join(_missing)}, which transformers {transformers.__version__} lacks: "
        "install a version in the range pyproject.toml declares."
    )


class BranchAwareCallbackHandler(CallbackHandler):
    """Callbacks see one run: a WSD branch that restarts ``train()`` (checkpoint mode) announces no new begin/end."""

    restarting = False  # the next on_train_begin is a restart after a branch
    branch_ending = False  # the next on_train_end ends a branch's segment, not the run
    branch_name: str | None = None  # the budget whose WSD side branch is training (its logs: hf_wsd/backend_logs.py)

    def on_train_begin(self, args, state, control):
        if self.restarting:
            self.restarting = False
            control.should_training_stop = False
            return control
        return super().on_train_begin(args, state, control)

    def on_train_end(self, args, state, control):
        if self.branch_ending:
            self.branch_ending = False
            return control
        return super().on_train_end(args, state, control)

    _epoch_at: tuple | None = None  # (branch, step) where the backends last got `epoch`

    def on_log(self, args, state, control, logs):
        routed = backend_logs.for_backends(logs, self.branch_name)
        routed, self._epoch_at = backend_logs.without_repeated_epoch(routed, self.branch_name, state.global_step,
                                                                     self._epoch_at)
        return super().on_log(args, state, control, routed)


class WSDMixin:
    """WSD budgets for any ``Trainer`` subclass: ``class MyTrainer(WSDMixin, SFTTrainer)``; ``args`` must carry the
    :class:`~hf_wsd.config.WSDArguments` fields (``WSDConfig``, or ``wsd_config_class(SFTConfig)``).

    Extra keywords: ``plan`` — a ready :class:`BudgetPlan` overriding the one built from ``args``;
    ``peft_config`` — a PEFT config (e.g. ``LoraConfig``): the model is wrapped with ``get_peft_model`` and budgets
    hold the adapter only (see :mod:`hf_wsd.lean`; ``use_peft`` in ``args`` does the same from config fields);
    ``decay_datasets`` — named datasets the decay windows draw from by ``args.decay_mixture``, or
    ``decay_dataset`` — one, named ``decay``, that fills every decay update unless a mixture says otherwise
    (annealing: :mod:`hf_wsd.data.mixture`).
    """

    def __init__(self, model=None, args=None, *pargs, plan: BudgetPlan | None = None, peft_config=None,
                 decay_dataset=None, decay_datasets=None, **kwargs):
        if not isinstance(args, WSDArguments):
            raise TypeError(
                f"{type(self).__name__} needs `args` with the WSD fields (WSDConfig, or wsd_config_class(...)); "
                f"got {type(args).__name__}."
            )
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers[1] is not None:
            raise ValueError("`optimizers`: the LR scheduler is built from the budget plan; pass (optimizer, None).")
        if args.schedule == "wsd" and args.save_only_model:
            raise ValueError(
                "`save_only_model=True` cannot restore WSD branches (they need optimizer state); set it to False."
            )
        model = lean.prepare_model(model, args, peft_config)  # PEFT adapters: hf_wsd/lean.py
        engines.prepare_engine()  # opt-ins for sharded engines on CPU (hf_wsd/engines.py)
        super().__init__(model, args, *pargs, **kwargs)
        quiet.follow_replica_log_level(self.args)  # INFO lines on the main process only (log_level_replica)
        self.engine = engines.check_engine(self)  # the engine in use (DDP, FSDP2, ZeRO-n); no silent fallback
        if args.save_merged_budgets and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                "`save_merged_budgets` merges an in-memory copy of the model, which FSDP and DeepSpeed shard: set it "
                "to False and merge a budget's adapter afterwards (PeftModel.from_pretrained(...).merge_and_unload())."
            )
        # The feed positions the data itself: the Trainer must not skip (re-read) batches on resume.
        self.args.ignore_data_skip = True
        self.plan = plan if plan is not None else args.build_plan(self._tokens_per_update())
        self.args.max_steps = self.plan.total_steps
        self.decay_datasets = decay_sources(decay_dataset, decay_datasets)
        self.mixture = mixture_for_run(self.args, self.plan, self.decay_datasets, self.train_dataset, self.model,
                                       self._examples_per_update, _data_seed(self.args))
        self.output_path = Path(self.args.output_dir)
        self.divergence = DivergenceGuard(args.on_divergence, self.output_path, args.learning_rate,
                                          any_rank(self.accelerator))  # non-finite loss or weights (divergence.py)
        self.run_id: str | None = None
        self.feed: UpdateFeed | None = None
        self.branch_restore: str | None = None  # decided when training starts (it needs the optimizer)
        self._snapshot: branching.MainBranchSnapshot | None = None
        self._restart_from: Path | None = None
        self._handled_step = -1
        self._reached: set[int] = set()  # budgets handled in this process (a checkpoint save and the update hook)
        self.meter = None  # throughput and MFU (hf_wsd/throughput.py), built when training starts
        self._updates_done = 0  # updates computed by this process, WSD branches included (the meter's clock)
        self._meter_mark = 0  # the meter's step at the previous budget
        self.ema = averaging.build_average(self)  # the EMA of the stable phase (ema_beta), or None
        self._previewed: set[int] = set()  # main-path steps whose EMA preview this process handled
        self.checkpoint_writer = async_checkpoints.AsyncCheckpointWriter()  # hf_wsd/async_checkpoints.py
        handler = self.callback_handler
        self.callback_handler = BranchAwareCallbackHandler(
            handler.callbacks, handler.model, handler.processing_class, handler.optimizer, handler.lr_scheduler
        )
        self.live = LiveRun(self)  # hf-wsd budget requests, the status file, the progress bar (hf_wsd/live_trainer.py)
        self.add_callback(self.live)
        add_budget_subscribers(self)

    # ------------------------------------------------------------------------------------------- set-up
    def _tokens_per_update(self) -> int | None:
        args = self.args
        seq_length = args.seq_length if args.seq_length is not None else _row_length(self.train_dataset)
        if seq_length is None:
            if args.budget_unit == "tokens":
                raise ValueError(
                    "token budgets need the sequence length, and the training data does not tell it (a stream, or "
                    "rows of varying length): set `seq_length` in the config (tokens per training example)."
                )
            return None
        return self._examples_per_update * seq_length

    @property
    def _examples_per_update(self) -> int:
        args = self.args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Repos and branches are the publisher's job (one branch per budget)."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Resumable checkpoints stay local; budgets are published by :class:`~hf_wsd.publishing.HubPublisher`."""

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        lean.forget_stale_bnb_overrides(optimizer)  # bitsandbytes: a run must not depend on earlier runs in the process
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None) -> BudgetPlanLR:
        if self.lr_scheduler is None:
            self.lr_scheduler = get_budget_plan_scheduler(optimizer or self.optimizer, self.plan)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.divergence.observe(loss)  # checked once per update, before anything is saved
        return loss

    def get_train_dataloader(self) -> FeedLoader:
        """The update-indexed feed over ``train_dataset`` (built once; the Trainer iterates it)."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if self.feed is None:
            dataset, collator = self.train_dataset, self.data_collator
            if _is_hf_dataset(dataset):
                dataset = self._remove_unused_columns(dataset, description="training")
            else:
                collator = self._get_collator_with_removed_columns(collator, description="training")
            decay = {name: self._remove_unused_columns(d, description="decay") if _is_hf_dataset(d) else d
                     for name, d in self.decay_datasets.items()}
            self.feed = UpdateFeed(
                dataset, collator, self._train_batch_size, self.args.gradient_accumulation_steps,
                self.args.world_size, self.args.process_index, seed=_data_seed(self.args),
                decay_datasets=decay, mixture=self.mixture,
            )
        return FeedLoader(self.feed, lambda: (self.state.global_step, self.lr_scheduler_branch))

    # ------------------------------------------------------------------------------------------- the run
    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Train through every budget of the plan; ``resume_from_checkpoint`` continues or extends a run."""
        with run_lock.hold(self.output_path, self.args.process_index == 0, self._from_main):  # one launch per run
            return self._train_plan(resume_from_checkpoint, *args, **kwargs)

    def _train_plan(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        checkpoint = self._prepare_run(resume_from_checkpoint)
        logger.info("Budget plan:\n%s", self.plan.describe(self.args.learning_rate))
        if self.mixture is not None:
            logger.info("%s", self.mixture.describe())
        if checkpoint is not None and self._nothing_left(checkpoint):
            return self._finish_without_training(checkpoint)
        while True:
            self._restart_from = None
            self._handled_step = -1
            with self.checkpoint_writer.finishing(self):  # returns once the last checkpoint is on disk
                output = super().train(checkpoint, *args, **kwargs)
            if self._restart_from is None:
                return output
            # A WSD branch ended (checkpoint mode): restart from its branch point. Callbacks see one run.
            checkpoint = str(self._restart_from)
            self.callback_handler.restarting = True
            engines.before_restart(self)  # DeepSpeed builds a new engine for the restarted train()

    def _nothing_left(self, checkpoint: str) -> bool:
        """A resume from the plan's last update with no budget request waiting: there is no update to train."""
        done = runs.checkpoint_step(checkpoint) >= self.plan.total_steps
        return done and not self._from_main(live.has_pending(self.output_path))

    def _finish_without_training(self, checkpoint: str):
        """Callbacks still see a run begin and end: the publisher publishes what an earlier launch left unpublished
        and waits for it; the evaluation summary is written again. (The Trainer would run one update past the plan.)"""
        from transformers import TrainerState
        from transformers.trainer_utils import TrainOutput

        logger.info("%s is at the plan's last update (%d): nothing left to train", checkpoint, self.plan.total_steps)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, 0.0, {})

    def _prepare_run(self, resume: str | bool | None) -> str | None:
        """Check the output dir against the plan; returns the checkpoint to start from."""
        output_dir = self.output_path
        saved = runs.read_run(output_dir)
        data = data_record(self.train_dataset)  # what the run trains on (hf_wsd/data/fingerprint.py)
        if resume in (None, False):
            run_lock.start_fresh(output_dir, saved, self.args.overwrite_output_dir, self.args.should_save)
            self.accelerator.wait_for_everyone()  # an overwritten run is gone on every rank's view
            record, checkpoint = runs.new_run_record(self.plan), None
        elif saved is None:
            raise ValueError(f"`resume_from_checkpoint`: {output_dir} holds no WSD run ({runs.PLAN_FILE} is missing).")
        else:
            old_plan = runs.plan_from_dict(saved["plan"])
            self.live.set_plan(live.replay_changes(self.plan, saved))  # budgets added or removed while it trained
            checkpoint = str(runs.resume_checkpoint(output_dir, old_plan, self.plan, resume))
            record = {**saved, "plan": self.plan.to_dict()}
            check_resume(saved.get(runs.MIXTURE_KEY), self.mixture, runs.checkpoint_step(checkpoint))
            check_resume_data(saved.get(runs.DATA_KEY), data, self.args.allow_data_change, output_dir)
            if old_plan != self.plan:
                logger.info("Extending the run: %r → %r, from %s", old_plan, self.plan, checkpoint)
        if self.mixture is not None:
            record[runs.MIXTURE_KEY] = self.mixture.to_dict()
        if data is not None:
            record[runs.DATA_KEY] = data
        self.run_id = self._from_main(record["run_id"])
        if self.args.should_save:
            runs.budgets_dir(output_dir).mkdir(parents=True, exist_ok=True)
            for leftover in runs.leftover_temporary_folders(output_dir):
                logger.warning("Removing %s, a budget folder an interrupted launch left half-written", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
            async_checkpoints.remove_leftovers(output_dir)  # checkpoints a kill left half-written: never resumed from
            runs.write_json(output_dir / runs.PLAN_FILE, record)
        self.accelerator.wait_for_everyone()
        if checkpoint is not None:
            self._replay_unfinished_budgets(Path(checkpoint))
        return checkpoint

    def _replay_unfinished_budgets(self, checkpoint: Path) -> None:
        """Budgets written before the interruption but not evaluated or carded: replay their event now.

        Only those the resumed run will not reach again: in-line budgets at or before the checkpoint's step, and
        WSD branch budgets (a written branch is not run again). The model gets the budget's weights from its
        folder, the state the checkpoint's (``train()`` loads the checkpoint right after).
        """
        from transformers import TrainerState

        step = runs.checkpoint_step(checkpoint)
        for budget in self.plan.budgets:
            folder = runs.budget_folder(self.output_path, budget)
            reached_again = not budget.branch and budget.step > step
            if reached_again or not self._written(budget) or not self._from_main(self._unfinished(folder)):
                continue
            logger.info("%s was written before the interruption but not evaluated or carded: finishing it", budget.name)
            self.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
            self._load_from_checkpoint(str(folder))
            self._dispatch_budget(budget, folder, replayed=True)

    def _unfinished(self, folder: Path) -> bool:
        evaluated = not self.args.budget_eval or (folder / runs.EVAL_FILE).is_file()
        return not evaluated or not (folder / runs.CARD_FILE).is_file()

    def _prepare_for_training(self, *args, **kwargs):
        model, train_dataloader = super()._prepare_for_training(*args, **kwargs)
        if self.branch_restore is None:
            self.branch_restore, reason = branching.choose_branch_restore(self, self.args.branch_restore)
            if any(b.branch for b in self.plan.budgets):
                logger.info("WSD branches: branch_restore=%s (%s)", self.branch_restore, reason)
            self.meter = self._throughput_meter()
        elif self.meter is not None:  # a restart after a WSD branch (checkpoint mode): the switch is not training
            self.meter.resume(step=self._updates_done, tokens_seen=self._tokens_done())
        resumed = self._resume_checkpoint_in(args, kwargs)
        if resumed is not None:
            load_state_parts(self._stateful_parts(), resumed, self.args.process_index)
        self.live.check_requests(self.state.global_step, at_launch=True)  # requests that came while it was down
        # Resumed at a branch point (after a branch in checkpoint mode, or after a crash): a branch may start here.
        if self.lr_scheduler.branch is None and self._branch_starting(self.state.global_step) is not None:
            if resumed is not None:
                self._load_rng_state(resumed)  # the snapshot keeps the checkpoint's RNG (the Trainer loads it later)
            self._maybe_enter_branch(self.state.global_step)
        return model, train_dataloader

    @staticmethod
    def _resume_checkpoint_in(args: tuple, kwargs: dict) -> str | None:
        """The ``resume_from_checkpoint`` argument of ``Trainer._prepare_for_training``."""
        return kwargs.get("resume_from_checkpoint", args[2] if len(args) > 2 else None)

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        step = self.state.global_step
        if self.feed is not None:  # epochs of the training data, not the Trainer's step / max_steps
            self.state.epoch = self.feed.epochs(step, self.lr_scheduler_branch)
        first_call = step != self._handled_step  # the Trainer calls this twice on an epoch's last update
        self._handled_step = step
        if first_call:
            self.divergence.check_update(step)  # a non-finite loss stops the run before any save (on_divergence)
            self._updates_done += 1
            if self.meter is not None:
                self.meter.update(self._updates_done, self._tokens_done())
            if self.ema is not None and self.lr_scheduler.branch is None:  # main-path updates only
                self.ema.update(self.model, step - 1)  # update step - 1 (0-based) just ran; before any save
            if self.lr_scheduler.branch is None:
                self.live.check_requests(step)  # a budget added or removed now: the plan changes before anything else
        if self.lr_scheduler.branch is not None:
            self.control.should_save = False  # checkpoints hold the main branch only
        elif self._needs_checkpoint(step):
            self.control.should_save = True
        if first_call and (self._budgets_due(step) or self._decay_starts(step)):
            self.control.should_log = True  # the budget's record: the loss of exactly its decay window's updates
        super()._maybe_log_save_evaluate(*args, **kwargs)
        if first_call:
            self._after_update(step)

    def _save_checkpoint(self, *args, **kwargs) -> None:
        # A budget due now is written first: a checkpoint that lets a resume skip past a budget never exists
        # without the budget's folder (a kill between the two would lose the budget for good).
        self._reach_due_budgets(self.state.global_step)
        step = self.state.global_step
        if not self.divergence.weights_finite(self.model, step, f"{runs.CHECKPOINT_PREFIX}{step}"):
            return  # on_divergence="warn": the last good checkpoint stays the newest (and no EMA preview)
        self._maybe_preview(self.state.global_step, at_checkpoint=True)  # likewise before the checkpoint
        with self._paused():
            # hf_wsd's own state goes in before the Trainer's files: their trainer_state.json marks it complete.
            if self.checkpoint_writer.save(self, self._stateful_parts(), save_state_parts, *args, **kwargs):
                return  # captured now, copied and written in the background (async_checkpoints)
            folder = runs.checkpoint_folder(self._get_output_dir(trial=None), self.state.global_step)
            save_state_parts(self._stateful_parts(), folder, self.args.process_index, self.args.should_save)
            super()._save_checkpoint(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._paused():  # evaluation is not training: tokens/s and MFU leave it out
            return super().evaluate(*args, **kwargs)

    def _paused(self):
        return self.meter.paused() if self.meter is not None else contextlib.nullcontext()

    def _tokens_done(self) -> int:
        return self._updates_done * (self.plan.tokens_per_update or 0)

    def _throughput_meter(self):
        """Tokens/s, TFLOP/s and MFU of this run (``log_throughput``), or ``None`` without a sequence length."""
        if not self.args.log_throughput:
            return None
        from .flops import flops_per_token
        from .throughput import ThroughputMeter, device_name, matmul_precision, peak_flops

        model = self.accelerator.unwrap_model(self.model)
        model = model.get_base_model() if lean.is_peft_model(model) else model
        if self.plan.tokens_per_update is None:
            logger.info("No throughput figures: the sequence length is unknown (set `seq_length`).")
            return None
        flops = self.args.flops_per_token
        if flops is None:
            try:
                flops = flops_per_token(model.config, self.plan.tokens_per_update // self._examples_per_update,
                                        model=model)
            except ValueError as error:  # tokens/s still: the meter needs no FLOPs for them
                logger.info("Tokens/s only, no TFLOP/s or MFU: %s", error)
        precision = matmul_precision(bf16=self.args.bf16, fp16=self.args.fp16, tf32=self.args.tf32)
        peak = peak_flops(device_name(self.args.device), precision, self.args.peak_tflops)
        return ThroughputMeter(flops, peak, self.args.world_size)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.meter is not None and "loss" in logs:
            logs.update(self.meter.log_figures())
        super().log(logs, *args, **kwargs)
        if self.args.should_save and self.run_id is not None:  # the run's full record, branches included
            entry = {**logs, "step": self.state.global_step, "branch": self.lr_scheduler_branch, "time": time.time()}
            if self.state.num_input_tokens_seen:
                entry["tokens_seen"] = self.state.num_input_tokens_seen
            runs.append_log(self.output_path, entry)

    @property
    def lr_scheduler_branch(self) -> int | None:
        return getattr(self.lr_scheduler, "branch", None)

    # ------------------------------------------------------------------------------------------- branches
    def _needs_checkpoint(self, step: int) -> bool:
        """Main-path steps that must be resumable: branch points, in-line budgets, WSD's pre-decay point."""
        for budget in self.plan.budgets:
            if step == budget.decay_start and (budget.branch or self.plan.schedule == "wsd"):
                return not budget.branch or not self._written(budget)
            if step == budget.step and not budget.branch:
                return True
        return False

    def _decay_starts(self, step: int) -> bool:
        """A decay window starts after main-path update ``step`` (logged then, so its mean starts there)."""
        return self.lr_scheduler_branch is None and any(b.decay_start == step for b in self.plan.budgets)

    def _budgets_due(self, step: int) -> list[Budget]:
        """Budgets whose last update is ``step`` on the path the run is on (main path, or the current branch)."""
        branch = self.lr_scheduler_branch
        if branch is not None:
            budget = self.plan.budgets[branch]
            return [budget] if step == budget.step else []
        return [b for b in self.plan.budgets if b.step == step and not b.branch]

    def _reach_due_budgets(self, step: int) -> None:
        for budget in self._budgets_due(step):
            if budget.index not in self._reached:
                self._reached.add(budget.index)
                self._reach_budget(budget)

    def _after_update(self, step: int) -> None:
        self._reach_due_budgets(step)
        branch = self.lr_scheduler_branch
        if branch is None:
            self._maybe_preview(step)
            self._maybe_enter_branch(step)
        elif step == self.plan.budgets[branch].step:
            self._leave_branch(self.plan.budgets[branch])

    def _branch_starting(self, step: int) -> Budget | None:
        """The WSD branch that leaves the main branch after update ``step``, unless this run already wrote it."""
        for budget in self.plan.budgets:
            if budget.branch and budget.decay_start == step and not self._written(budget):
                return budget
        return None

    def _maybe_enter_branch(self, step: int) -> None:
        budget = self._branch_starting(step)
        if budget is None:
            return
        logger.info("WSD branch for %s: %d decay updates from update %d", budget.name, budget.decay_steps, step)
        if self.branch_restore != "checkpoint":
            with self._paused():
                self._snapshot = branching.take_snapshot(self, self._stateful_parts(), self.branch_restore)
        self.lr_scheduler.enter_branch(budget.index)
        self.callback_handler.branch_name = budget.name
        dispatch(self.callback_handler.callbacks, "on_branch_begin", self.args, self.state, self.control,
                 budget=budget, trainer=self)

    def _leave_branch(self, budget: Budget) -> None:
        """Back to the branch point: in place from the snapshot, or by restarting from its checkpoint."""
        self.callback_handler.branch_name = None
        if self._snapshot is not None:
            with self._paused():
                branching.restore_snapshot(self, self._snapshot, self._stateful_parts())
            self._snapshot = None
            self._handled_step = self.state.global_step
        else:
            if self.meter is not None:
                self.meter.pause()  # resumed when the restarted train() is ready (_prepare_for_training)
            self._restart_from = runs.checkpoint_folder(self.output_path, budget.decay_start)
            self.control.should_training_stop = True
            self.callback_handler.branch_ending = True
        dispatch(self.callback_handler.callbacks, "on_branch_end", self.args, self.state, self.control,
                 budget=budget, trainer=self)

    def _stateful_parts(self) -> dict[str, Any]:
        """hf_wsd's own state that checkpoints and branch snapshots keep besides the Trainer's: the data feed's
        position, the EMA (``ema_beta``) and what subclasses add. Each part has ``state_dict()`` /
        ``load_state_dict()`` and ``per_rank`` (one state per process, or the main process's for all)."""
        parts = {"feed": self.feed} if self.feed is not None else {}
        if self.ema is not None:
            parts["ema"] = self.ema  # hf_wsd/averaging.py: the EMA of the main branch's stable phase
        return parts

    def _maybe_preview(self, step: int, at_checkpoint: bool = False) -> None:
        """Write the EMA preview of main-path step ``step`` if one is due (once per step in this process)."""
        if self.ema is None or self.lr_scheduler_branch is not None or step in self._previewed:
            return
        if averaging.preview_due(self.args, step, at_checkpoint):
            self._previewed.add(step)
            with self._paused():
                averaging.write_preview(self, self.ema, step)

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
        with self._paused():
            self._write_and_dispatch(budget)
        self._meter_mark = self._updates_done

    def _write_and_dispatch(self, budget: Budget) -> None:
        folder = runs.budget_folder(self.output_path, budget)
        replayed = self._written(budget)
        if replayed:
            logger.info("%s was written before this resume; not rewriting it.", budget.name)
        elif not self.divergence.weights_finite(self.model, budget.step, f"budget {budget.name}"):
            return  # on_divergence="warn": never written, so never evaluated, carded or published
        else:
            tmp = runs.temporary_folder(self.output_path, budget)  # moved into place only once complete
            engines.save_budget_weights(self, tmp)  # every rank: FSDP and DeepSpeed gather the full weights
            if self.args.should_save:
                runs.write_json(tmp / runs.BUDGET_FILE, self._budget_record(budget, tmp))
                runs.finalize_folder(tmp, folder)
            self.accelerator.wait_for_everyone()
            logger.info("Budget %s reached at update %d: %s", budget.name, budget.step, folder)
        self._dispatch_budget(budget, folder, replayed)

    def _dispatch_budget(self, budget: Budget, folder: Path, replayed: bool) -> None:
        event = BudgetReached(budget=budget, folder=folder, plan=self.plan, replayed=replayed)
        dispatch(self.callback_handler.callbacks, "on_budget_reached", self.args, self.state, self.control,
                 event=event, trainer=self)

    def _budget_record(self, budget: Budget, folder: Path) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        base_model = lean.base_model_name(model) or getattr(model, "name_or_path", None) or None
        merged = self.args.save_merged_budgets and lean.is_peft_model(model)
        if merged:
            lean.save_merged(model, folder / lean.MERGED_DIR, self.processing_class)
        return runs.build_budget_record(
            self.plan, budget, self.state.log_history, run_id=self.run_id,
            tokens_seen=self.state.num_input_tokens_seen or None,
            peak_lr=self.args.learning_rate,
            base_model=base_model,
            model_type=getattr(getattr(model, "config", None), "model_type", None),
            num_parameters=sum(p.numel() for p in model.parameters()),
            seed=self.args.seed,
            optim=getattr(self.args.optim, "value", self.args.optim),
            adapter=lean.adapter_record(model, budget.name, base_model, merged),
            throughput=self._throughput_record(),
            decay_mixture=None if self.mixture is None else self.mixture.record(budget.index),
            training_data=training_data_record(self.args, None if self.mixture is None else self.mixture.sources),
        )

    def _throughput_record(self) -> dict | None:
        """Tokens/s and MFU over the updates since the previous budget (its decay and the stable phase before)."""
        if self.meter is None:
            return None
        summary = self.meter.summary(self._meter_mark, self._updates_done)
        return {**summary, "flops_per_token": self.meter.flops_per_token, "peak_flops": self.meter.peak_flops}


class WSDTrainer(WSDMixin, Trainer):
    """Drop-in ``Trainer`` for WSD / WSD-S pretraining: ``args`` is a :class:`~hf_wsd.config.WSDConfig`.

    Without a ``data_collator`` it collates fixed-length token blocks for causal LM training
    (:class:`~hf_wsd.data.BlockCollator`: labels = input ids, no padding, no masking, so a packed block's EOS
    separators are trained on).
    """

    def __init__(self, model=None, args=None, data_collator=None, *pargs, **kwargs):
        if data_collator is None:
            from .data import BlockCollator

            data_collator = BlockCollator()
        super().__init__(model, args, data_collator, *pargs, **kwargs)


# ----------------------------------------------------------------------------------------------- helpers
def _state_file(checkpoint: str | Path, name: str, rank: int | None) -> Path:
    suffix = "" if rank is None else f"-rank{rank}"
    return Path(checkpoint) / runs.STATE_DIR / f"{name}{suffix}.pt"


def save_state_parts(parts: dict[str, Any], checkpoint: Path, rank: int, is_main: bool) -> None:
    """Write each part's ``state_dict()`` into ``{checkpoint}/wsd_state/`` (per rank, or once by the main process)."""
    import torch

    for name, part in parts.items():
        state = part.state_dict()
        if not state or (not getattr(part, "per_rank", True) and not is_main):
            continue
        path = _state_file(checkpoint, name, rank if getattr(part, "per_rank", True) else None)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)


def load_state_parts(parts: dict[str, Any], checkpoint: str | Path, rank: int) -> None:
    """Restore each part from a checkpoint written by :func:`save_state_parts` (a part with no file keeps its state
    only when it needs none: map-style data feeds are positioned by the step alone)."""
    import torch

    for name, part in parts.items():
        path = _state_file(checkpoint, name, rank if getattr(part, "per_rank", True) else None)
        if path.is_file():
            part.load_state_dict(torch.load(path, weights_only=True))
        elif getattr(part, "needs_state", False):
            raise ValueError(
                f"{checkpoint} holds no state of `{name}` ({path} is missing): it was not written by this kind of run. "
                "Resume from a checkpoint of this run, or start over with overwrite_output_dir=True."
            )


def _data_seed(args) -> int:
    return args.data_seed if getattr(args, "data_seed", None) is not None else args.seed


def _is_hf_dataset(dataset) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(dataset, datasets.Dataset)


def _row_length(dataset, probe: int = 64) -> int | None:
    """The length of the training rows if the first ``probe`` rows all share it; ``None`` for streams or ragged rows."""
    if dataset is None or not is_map_style(dataset):
        return None
    try:
        lengths = {len(dataset[i]["input_ids"]) for i in range(min(probe, len(dataset)))}
    except (TypeError, KeyError, IndexError, NotImplementedError):
        return None
    return lengths.pop() if len(lengths) == 1 else None
