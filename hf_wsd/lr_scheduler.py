"""Wrap a :class:`BudgetPlan` in a ``torch.optim.lr_scheduler.LambdaLR`` usable with any ``Trainer``.

As in transformers' ``optimization.py``, the multiplier is a pure function of the step bound with
``functools.partial`` (picklable), and the scheduler's saved state is just its step counter: on resume the
plan is rebuilt from config, so extending the budgets of a run is natural.
"""

from __future__ import annotations

from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .plan import BudgetPlan


def plan_lr_lambda(step: int, *, plan: BudgetPlan, branch: int | None = None) -> float:
    return plan.lr_ratio(step, branch)


class BudgetPlanLR(LambdaLR):
    """``LambdaLR`` following ``plan.lr_ratio``; ``enter_branch``/``leave_branch`` switch to a WSD branch.

    Its state dict keeps only the step counter and branch: ``base_lrs`` come from the optimizer's
    ``initial_lr`` at construction, so a resumed run follows the *current* config's peak LR (a plain
    resumed ``LambdaLR`` would keep the old ``base_lrs``).
    """

    def __init__(self, optimizer: Optimizer, plan: BudgetPlan, last_epoch: int = -1):
        self.plan = plan
        self.branch: int | None = None
        super().__init__(optimizer, partial(plan_lr_lambda, plan=plan), last_epoch)

    def _set_branch(self, branch: int | None) -> None:
        self.branch = branch
        self.lr_lambdas = [partial(plan_lr_lambda, plan=self.plan, branch=branch)] * len(self.optimizer.param_groups)
        # Recompute the LR of the coming update under the new branch's multiplier.
        for group, base_lr, lr_lambda in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base_lr * lr_lambda(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def set_plan(self, plan: BudgetPlan) -> None:
        """Follow ``plan`` from the current step on (a budget added or removed while the run trains)."""
        self.plan = plan
        self._set_branch(self.branch)

    def enter_branch(self, budget_index: int) -> None:
        self._set_branch(budget_index)

    def leave_branch(self) -> None:
        self._set_branch(None)

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "branch": self.branch, "_step_count": self._step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict.get("_step_count", self.last_epoch + 1)
        self._set_branch(state_dict.get("branch"))


def get_budget_plan_scheduler(optimizer: Optimizer, plan: BudgetPlan, last_epoch: int = -1) -> BudgetPlanLR:
    """The LR scheduler of ``plan`` for ``optimizer``; pass it to any ``Trainer`` via ``optimizers=``."""
    return BudgetPlanLR(optimizer, plan, last_epoch)
