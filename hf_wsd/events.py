"""The *budget reached* event: how evaluation, publishing and user code plug into ``WSDTrainer``.

A subscriber is any ``TrainerCallback`` with an ``on_budget_reached`` method (subclass
:class:`BudgetCallback` for the signature). The trainer calls it on every process, in callback order,
right after the budget's folder is complete on disk, so the trainer never needs to know about the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from .plan import Budget, BudgetPlan

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments


@dataclass(frozen=True)
class BudgetReached:
    """A decayed checkpoint exists: ``folder`` holds budget ``budget`` of ``plan`` (``from_pretrained``-ready)."""

    budget: Budget
    folder: Path
    plan: BudgetPlan


class BudgetCallback(TrainerCallback):
    """Base class of budget subscribers. ``trainer`` gives access to the model, tokenizer and eval data."""

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
