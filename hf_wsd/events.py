"""Budget events: how evaluation, the model card, publishing and user code plug into the WSD trainer.

A subscriber is any ``TrainerCallback`` with an ``on_budget_reached`` method (subclass :class:`BudgetCallback`
for the signature); WSD side branches also announce themselves (``on_branch_begin`` / ``on_branch_end``).
EMA previews (``ema_beta``, :mod:`hf_wsd.averaging`) fire their own event, ``on_preview_reached``
(:class:`PreviewReached`), so a subscriber of budgets never receives a preview unless it asks for them.
The trainer calls every subscriber on every process, in order of :attr:`BudgetCallback.priority` (highest
first; plain callbacks count as 0), right after the budget's folder is complete on disk, so the trainer
never needs to know what its subscribers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable

from transformers import TrainerCallback

from .plan import Budget, BudgetPlan

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from .averaging import Preview


@dataclass(frozen=True)
class BudgetReached:
    """A decayed checkpoint exists: ``folder`` holds budget ``budget`` of ``plan`` (``from_pretrained``-ready).

    ``replayed`` is True when the folder was written before (the run was interrupted and resumed): the model
    holds the budget's weights again, and a subscriber does only the work it has not done yet.
    """

    budget: Budget
    folder: Path
    plan: BudgetPlan
    replayed: bool = False


@dataclass(frozen=True)
class PreviewReached:
    """An EMA preview exists — a preview, not a decayed budget: ``folder`` (``from_pretrained``-ready) holds the
    average of the main branch's stable-phase weights after ``preview.step`` updates (see :mod:`hf_wsd.averaging`).

    While subscribers run, the model holds the average (the live weights come back afterwards). ``replayed``: the
    folder was written before an interruption; a subscriber does only the work it has not done yet.
    """

    preview: "Preview"
    folder: Path
    plan: BudgetPlan
    replayed: bool = False


class BudgetCallback(TrainerCallback):
    """Base class of budget subscribers. ``trainer`` gives access to the model, tokenizer and eval data.

    ``priority`` orders subscribers (highest first): evaluation runs before the card that shows its results,
    and publishing last, once the folder is final.
    """

    priority: ClassVar[int] = 0

    def on_budget_reached(
        self,
        args: "TrainingArguments",
        state: "TrainerState",
        control: "TrainerControl",
        *,
        event: BudgetReached,
        trainer: "Trainer",
        **kwargs,
    ) -> None:
        pass

    def on_preview_reached(self, args, state, control, *, event: PreviewReached, trainer: "Trainer", **kwargs) -> None:
        """An EMA preview folder is complete (only with ``ema_beta``); ``trainer.model`` holds the average now."""

    def on_branch_begin(self, args, state, control, *, budget: Budget, trainer: "Trainer", **kwargs) -> None:
        """A WSD side branch for ``budget`` starts at the current step (the main branch is kept aside)."""

    def on_branch_end(self, args, state, control, *, budget: Budget, trainer: "Trainer", **kwargs) -> None:
        """The side branch of ``budget`` ended and the main branch is back in place at its branch point."""


def subscribers(callbacks: Iterable[TrainerCallback], hook: str) -> list[TrainerCallback]:
    """The callbacks that have ``hook``, highest :attr:`~BudgetCallback.priority` first (stable otherwise)."""
    having = [c for c in callbacks if callable(getattr(c, hook, None))]
    return sorted(having, key=lambda c: -getattr(c, "priority", 0))


def dispatch(callbacks: Iterable[TrainerCallback], hook: str, args, state, control, **kwargs) -> None:
    """Call ``hook`` on every subscriber that has it, in priority order."""
    for callback in subscribers(callbacks, hook):
        getattr(callback, hook)(args, state, control, **kwargs)
