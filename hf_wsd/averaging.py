"""An average of the main branch kept alongside training, and the EMA preview folders written from it.

With ``ema_beta`` set, :class:`ExponentialAverage` keeps a bias-corrected exponential moving average of the
trainable weights (float32, on the device or in host memory: ``ema_device``). Which updates feed it:

- exactly the **main-path updates of the plan's stable phases** (``BudgetPlan.phases`` of kind ``"stable"``: peak
  LR, after warmup, outside every decay window and WSD-S rewarmup);
- never a warmup, decay or rewarmup update, never an update of a WSD side branch (the trainer calls
  :meth:`ExponentialAverage.update` only on the main path, and the average itself skips every non-stable update).

Update ``t`` (0-based) is the ``n``-th update fed; the average becomes ``lerp(average, weights, (1-β)/(1-βⁿ))``.
The first weight is 1 (the average starts as the weights themselves) and the weights tend to ``1-β``: the weight
of the weights after the ``i``-th fed update is ``(1-β)·βⁿ⁻ⁱ / (1-βⁿ)``, normalised to sum to 1 (Adam's bias
correction applied to weights), so a short average is close to a uniform one and a long one is the usual EMA.

The average is one of the trainer's stateful parts (``_stateful_parts()["ema"]``, ``per_rank = False``: DDP
replicas are identical): saved in every checkpoint (``wsd_state/ema.pt``), restored on resume, and copied into
every in-memory WSD branch snapshot and put back when the branch ends — so even apart from the feeding rule,
nothing a branch does can reach the average. Under FSDP and DeepSpeed (sharded parameters) it is refused.

:func:`write_preview` writes ``budgets/{step name}-ema/``: an ordinary ``from_pretrained`` folder (config,
tokenizer, weights = the average) with a ``budget.json`` marked ``"preview"``, then fires the *preview reached*
event (:class:`~hf_wsd.events.PreviewReached`) that evaluation, the card and (with ``preview_push_to_hub``)
publishing subscribe to. The live weights are swapped back bit for bit afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from . import runs
from .plan import BudgetPlan

if TYPE_CHECKING:
    import torch
    from transformers import Trainer

logger = logging.getLogger(__name__)

AVERAGE_DEVICES = ("device", "cpu")
_NO_STABLE_PHASE = ("cosine", "cyclic-cosine")


# ----------------------------------------------------------------------------------------------- the math
def stable_ranges(plan: BudgetPlan) -> tuple[range, ...]:
    """The main-path updates (0-based) that feed the average: the plan's stable phases."""
    return tuple(range(p.start, p.end) for p in plan.phases if p.kind == "stable")


def feeds_average(plan: BudgetPlan, update: int) -> bool:
    """Whether main-path update ``update`` (0-based) feeds the average (it lies in a stable phase)."""
    return any(update in r for r in stable_ranges(plan))


def ema_weight(beta: float, count: int) -> float:
    """The lerp weight of the ``count``-th update fed (1-based): ``(1-β)/(1-β^count)``; 1 for the first, → 1-β."""
    return 1.0 if count == 1 else (1.0 - beta) / (1.0 - beta**count)


def check_average_fields(args: Any, plan: BudgetPlan | None) -> None:
    """The averaging fields of a config, checked before any compute (``plan``: ``None`` while token budgets lack
    their tokens per update; :func:`build_average` checks the preview steps again against the real plan)."""
    beta = args.ema_beta
    if beta is None:
        for name, unset in (("preview_steps", None), ("preview_push_to_hub", False), ("ema_device", "device")):
            if getattr(args, name) != unset:
                raise ValueError(f"`{name}` is set but `ema_beta` is not: set ema_beta (e.g. 0.99) or drop {name}.")
        return
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta < 1.0:
        raise ValueError(
            f"`ema_beta` must lie in (0, 1); got {beta!r}. It is the decay per averaged update: 0.99 averages about "
            "the last 100 stable-phase updates, 0.999 the last 1000."
        )
    if args.ema_device not in AVERAGE_DEVICES:
        raise ValueError(f"unknown `ema_device` {args.ema_device!r}; choose one of {', '.join(AVERAGE_DEVICES)}.")
    if args.schedule in _NO_STABLE_PHASE:
        raise ValueError(
            f"`ema_beta` averages the stable phase, and schedule {args.schedule!r} has none: use schedule 'wsd-s' or "
            "'wsd', or unset ema_beta."
        )
    if args.preview_push_to_hub and not args.push_to_hub:
        raise ValueError("`preview_push_to_hub` needs `push_to_hub=True` (and `hub_model_id`); set both, or drop it.")
    if args.preview_steps is not None and plan is not None:
        check_preview_steps(args.preview_steps, plan)


def check_preview_steps(steps: Sequence[int], plan: BudgetPlan) -> None:
    first = min((r.start for r in stable_ranges(plan) if len(r)), default=None)
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= plan.total_steps:
            raise ValueError(
                f"`preview_steps` holds {step!r}: each must be an update count in 1…{plan.total_steps} (the plan's "
                "last budget)."
            )
        if first is None or step <= first:
            raise ValueError(
                f"`preview_steps` holds {step}, but the average is fed from update {first} on (the first stable-phase "
                "update, after warmup): nothing would be averaged yet. Choose a later step."
            )


def preview_due(args: Any, step: int, at_checkpoint: bool) -> bool:
    """Whether the main branch writes a preview after ``step`` updates: at every resumable checkpoint save, or
    exactly at ``preview_steps`` when given."""
    if args.preview_steps is None:
        return at_checkpoint
    return step in args.preview_steps


# ----------------------------------------------------------------------------------------------- the average
class ExponentialAverage:
    """A bias-corrected EMA of a model's trainable weights over the plan's stable-phase updates (float32).

    ``on_host``: keep it in host memory (one device-to-host copy of the weights per averaged update) instead of
    next to the parameters (4 bytes per parameter of device memory).
    """

    per_rank = False  # DDP replicas are identical: the main process's state serves every rank
    needs_state = False  # a checkpoint without one (ema_beta set on resume) starts a fresh average, with a warning

    def __init__(self, beta: float, plan: BudgetPlan, on_host: bool = False):
        self.beta, self.plan, self.on_host = float(beta), plan, on_host
        self._stable = stable_ranges(plan)
        self.count = 0  # updates averaged
        self.first_update: int | None = None
        self.last_update: int | None = None
        self.average: dict[str, torch.Tensor] = {}

    def set_plan(self, plan: BudgetPlan) -> None:
        """Follow ``plan``'s stable phases from now on (a budget added or removed while the run trains)."""
        self.plan, self._stable = plan, stable_ranges(plan)

    @staticmethod
    def _parameters(model) -> list[tuple[str, Any]]:
        return [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def _target(self, parameter) -> Any:
        return "cpu" if self.on_host else parameter.device

    def feeds(self, update: int) -> bool:
        return any(update in r for r in self._stable)

    def update(self, model, update: int) -> bool:
        """Average the weights after main-path update ``update`` (0-based) if it is a stable-phase update."""
        if not self.feeds(update) or (self.last_update is not None and update <= self.last_update):
            return False
        import torch

        parameters = self._parameters(model)
        with torch.no_grad():
            if self.count == 0 or not self.average:
                if any(r.start < update for r in self._stable if len(r)):
                    logger.warning(
                        "starting a fresh EMA at update %d: earlier stable-phase updates were not averaged (the run "
                        "was resumed from a checkpoint without one, e.g. ema_beta was set on resume)", update,
                    )
                self.average = {n: p.detach().to(self._target(p), torch.float32, copy=True) for n, p in parameters}
            else:
                self._check_names(parameters)
                averages = [self._placed(n, p) for n, p in parameters]
                weights = [p.detach().to(a.device, torch.float32) for a, (_, p) in zip(averages, parameters)]
                torch._foreach_lerp_(averages, weights, ema_weight(self.beta, self.count + 1))
        self.count += 1
        self.first_update = update if self.first_update is None else self.first_update
        self.last_update = update
        return True

    def _placed(self, name: str, parameter) -> Any:
        """The average of ``name`` where it belongs (a restored state arrives in host memory)."""
        tensor = self.average[name]
        target = self._target(parameter)
        if str(tensor.device) != str(target):
            tensor = self.average[name] = tensor.to(target)
        return tensor

    def _check_names(self, parameters) -> None:
        names = [n for n, _ in parameters]
        if set(names) != set(self.average):
            missing, extra = sorted(set(self.average) - set(names)), sorted(set(names) - set(self.average))
            raise ValueError(
                f"the EMA average does not match the model's trainable parameters (only in the average: {missing[:3]}, "
                f"only in the model: {extra[:3]}): resume with the model the run was trained with, or start over."
            )

    @contextlib.contextmanager
    def swapped_in(self, model) -> Iterator[None]:
        """Inside the block the model's trainable weights are the average; afterwards they are back bit for bit."""
        import torch

        parameters = self._parameters(model)
        self._check_names(parameters)
        stash = {}
        with torch.no_grad():
            for name, p in parameters:
                average = self._placed(name, p)
                stash[name] = p.detach().to(average.device, copy=True)
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in parameters:
                    p.copy_(stash[name])

    def state_dict(self) -> dict:
        """The average in host memory (so a WSD branch snapshot costs no device memory), with its counters."""
        return {
            "kind": "ema", "beta": self.beta, "count": self.count, "first_update": self.first_update,
            "last_update": self.last_update,
            "average": {name: t.detach().to("cpu", copy=True) for name, t in self.average.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("beta") != self.beta:
            logger.warning("the EMA in the checkpoint was built with ema_beta=%s; it continues with ema_beta=%s",
                           state.get("beta"), self.beta)
        self.count, self.first_update, self.last_update = state["count"], state["first_update"], state["last_update"]
        self.average = dict(state["average"])  # moved next to the parameters on first use


# ----------------------------------------------------------------------------------------------- previews
@dataclass(frozen=True)
class Preview:
    """An EMA preview: the average after ``step`` main-path updates (``updates`` averaged, ``first_update`` to
    ``last_update``, 0-based). ``name``, ``step`` and ``tokens`` read like a :class:`~hf_wsd.plan.Budget`'s."""

    name: str
    step: int
    tokens: int | None
    beta: float
    updates: int
    first_update: int
    last_update: int
    kind: str = "ema"

    def to_dict(self) -> dict:
        return asdict(self)


def build_average(trainer: "Trainer") -> ExponentialAverage | None:
    """The trainer's average (``None`` without ``ema_beta``); refuses what it cannot average, before training."""
    args = trainer.args
    if args.ema_beta is None:
        return None
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        raise ValueError(
            "`ema_beta`: the average is kept per parameter of an unsharded model, and FSDP / DeepSpeed shard them. "
            "Unset ema_beta (or train with DDP)."
        )
    if args.preview_steps is not None:
        check_preview_steps(args.preview_steps, trainer.plan)
    return ExponentialAverage(args.ema_beta, trainer.plan, on_host=args.ema_device == "cpu")


def compute_at(plan: BudgetPlan, step: int) -> int:
    """Updates the run has computed when its main path is at ``step``: WSD branches that left before it included."""
    return step + sum(b.decay_steps for b in plan.budgets if b.branch and b.decay_start < step)


def preview_record(trainer: "Trainer", preview: Preview) -> dict:
    """``budget.json`` of a preview folder: the keys of a budget's record where they apply, and ``"preview"``."""
    from . import lean

    plan, args = trainer.plan, trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    base_model = lean.base_model_name(model) or getattr(model, "name_or_path", None) or None
    return {
        "name": preview.name,
        "step": preview.step,
        "tokens": preview.tokens,
        "tokens_per_update": plan.tokens_per_update,
        "schedule": plan.schedule,
        "decay_shape": plan.decay_shape,
        "decay_start": None,
        "decay_steps": None,
        "branch": False,
        "compute": compute_at(plan, preview.step),
        "min_lr_ratio": plan.min_lr_ratio,
        "warmup_steps": plan.warmup_steps,
        "train_loss": None,
        "losses": [],
        "peak_lr": args.learning_rate,
        "base_model": base_model,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "optim": getattr(args.optim, "value", args.optim),
        "adapter": lean.adapter_record(model, preview.name, base_model, merged=False),
        runs.PREVIEW_KEY: preview.to_dict(),
        "run_id": trainer.run_id,
        "plan": plan.to_dict(),
    }


def write_preview(trainer: "Trainer", average: ExponentialAverage, step: int) -> Path | None:
    """Write ``budgets/{step name}-ema/`` from ``average`` (once per run) and fire the *preview reached* event.

    Every rank calls it (``save_model`` and the held-out evaluation are collective); the main process writes.
    Returns the folder, or ``None`` when no stable-phase update has been averaged yet.
    """
    from .events import PreviewReached, dispatch

    if average.count == 0:
        logger.info("No EMA preview at update %d: no stable-phase update averaged yet", step)
        return None
    output_dir = Path(trainer.args.output_dir)
    tokens = trainer.plan.tokens_at(step)
    preview = Preview(runs.preview_name(step, tokens), step, tokens, average.beta, average.count,
                      average.first_update, average.last_update)
    folder = runs.budget_folder(output_dir, preview.name)
    replayed = trainer._from_main(runs.preview_is_written(output_dir, preview.name, step, trainer.run_id))
    with average.swapped_in(trainer.model):
        if not replayed:
            tmp = runs.temporary_folder(output_dir, preview.name)  # moved into place only once complete
            trainer.save_model(str(tmp), _internal_call=True)
            if trainer.args.should_save:
                runs.write_json(tmp / runs.BUDGET_FILE, preview_record(trainer, preview))
                runs.finalize_folder(tmp, folder)
            trainer.accelerator.wait_for_everyone()
            logger.info("EMA preview %s (β=%g, %d updates averaged): %s", preview.name, preview.beta,
                        preview.updates, folder)
        event = PreviewReached(preview=preview, folder=folder, plan=trainer.plan, replayed=replayed)
        dispatch(trainer.callback_handler.callbacks, "on_preview_reached", trainer.args, trainer.state,
                 trainer.control, event=event, trainer=trainer)
    return folder
