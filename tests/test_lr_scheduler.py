"""``get_budget_plan_scheduler``: a real torch optimizer follows peak × ``plan.lr_ratio(t)`` at every update."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from hf_wsd.lr_scheduler import BudgetPlanLR, get_budget_plan_scheduler
from hf_wsd.plan import BudgetPlan


def make_optimizer(peak_lr: float, second_group_lr: float | None = None) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": peak_lr}]
    if second_group_lr is not None:
        groups.append({"params": [torch.nn.Parameter(torch.ones(2))], "lr": second_group_lr})
    return torch.optim.SGD(groups, lr=peak_lr)


def train_step(optimizer: torch.optim.Optimizer, scheduler: BudgetPlanLR) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.ones_like(param)
    optimizer.step()
    scheduler.step()


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


@pytest.mark.parametrize(
    "plan",
    [
        BudgetPlan([60, 120], warmup_steps=10, decay_shape="1-sqrt", min_lr_ratio=0.1, rewarmup_steps=4),
        BudgetPlan([60, 120], schedule="wsd", warmup_steps=10, decay_shape="exp"),
        BudgetPlan([60, 120], schedule="cyclic-cosine", warmup_steps=10, min_lr_ratio=0.05),
        BudgetPlan([120], schedule="cosine", warmup_steps=10),
    ],
    ids=lambda plan: plan.schedule,
)
def test_optimizer_lr_is_peak_times_plan_ratio_at_every_update(plan):
    optimizer = make_optimizer(3e-4, second_group_lr=1e-3)
    scheduler = get_budget_plan_scheduler(optimizer, plan)
    for t in range(plan.total_steps + 3):
        # LambdaLR computes base_lr * lambda(t); the same product, so exact equality holds
        assert lrs(optimizer) == [3e-4 * plan.lr_ratio(t), 1e-3 * plan.lr_ratio(t)], t
        assert scheduler.get_last_lr() == lrs(optimizer)
        train_step(optimizer, scheduler)


def test_lr_lambda_pickles_and_gives_the_same_multipliers():
    plan = BudgetPlan([100, 200, 400], schedule="wsd", warmup_steps=10)
    scheduler = get_budget_plan_scheduler(make_optimizer(1e-3), plan)
    main = pickle.loads(pickle.dumps(scheduler.lr_lambdas[0]))
    scheduler.enter_branch(0)
    branch = pickle.loads(pickle.dumps(scheduler.lr_lambdas[0]))
    for t in range(400):
        assert main(t) == plan.lr_ratio(t)
        assert branch(t) == plan.lr_ratio(t, 0)


def test_state_dict_holds_only_the_step_counter_and_branch():
    plan = BudgetPlan([100, 200])
    optimizer = make_optimizer(1e-3)
    scheduler = get_budget_plan_scheduler(optimizer, plan)
    for _ in range(7):
        train_step(optimizer, scheduler)
    state = scheduler.state_dict()
    assert state["last_epoch"] == 7 and state["branch"] is None
    assert set(state) <= {"last_epoch", "_step_count", "branch"}  # no base_lrs, no lambdas, no plan
    buffer = io.BytesIO()
    torch.save(state, buffer)  # what the Trainer writes to scheduler.pt
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state


def test_resumed_scheduler_follows_the_new_peak_lr_not_the_saved_one():
    plan = BudgetPlan([100, 200], warmup_steps=10)
    old_optimizer = make_optimizer(1e-3)
    old = get_budget_plan_scheduler(old_optimizer, plan)
    for _ in range(95):
        train_step(old_optimizer, old)

    # Resume as the Trainer does: fresh optimizer and scheduler from the new config, then both states loaded.
    optimizer = make_optimizer(5e-4)
    scheduler = get_budget_plan_scheduler(optimizer, plan)
    optimizer.load_state_dict(old_optimizer.state_dict())  # carries the old lr and initial_lr
    scheduler.load_state_dict(old.state_dict())
    assert scheduler.base_lrs == [5e-4]
    for t in range(95, 205):
        assert lrs(optimizer) == [5e-4 * plan.lr_ratio(t)], t
        train_step(optimizer, scheduler)


def test_resumed_scheduler_follows_an_extended_plan():
    optimizer = make_optimizer(1e-3)
    old = get_budget_plan_scheduler(optimizer, BudgetPlan([100, 200]))
    for _ in range(200):
        train_step(optimizer, old)
    extended = BudgetPlan([100, 200, 400])
    scheduler = get_budget_plan_scheduler(optimizer, extended)
    scheduler.load_state_dict(old.state_dict())
    assert lrs(optimizer) == [1e-3]  # back at peak after budget 200 instead of holding the old min LR
    for t in range(200, 400):
        assert lrs(optimizer) == [1e-3 * extended.lr_ratio(t)]
        train_step(optimizer, scheduler)


def test_enter_and_leave_branch_switch_the_multiplier_at_once():
    plan = BudgetPlan([100, 200, 400], schedule="wsd", warmup_steps=10)
    optimizer = make_optimizer(1e-3)
    scheduler = get_budget_plan_scheduler(optimizer, plan)
    for _ in range(90):  # to budget 0's branch point
        train_step(optimizer, scheduler)
    assert lrs(optimizer) == [1e-3]
    at_branch_point = scheduler.state_dict()

    scheduler.enter_branch(0)
    assert scheduler.branch == 0
    for t in range(90, 100):
        assert lrs(optimizer) == [1e-3 * plan.lr_ratio(t, 0)] and lrs(optimizer)[0] < 1e-3
        train_step(optimizer, scheduler)
    assert scheduler.state_dict()["branch"] == 0

    scheduler.leave_branch()
    assert scheduler.branch is None and lrs(optimizer) == [1e-3 * plan.lr_ratio(100)]

    # Back to the branch point (the Trainer restores the main branch's checkpoint): main path again.
    scheduler.load_state_dict(at_branch_point)
    assert (scheduler.last_epoch, scheduler.branch, lrs(optimizer)) == (90, None, [1e-3])


def test_a_state_saved_inside_a_branch_resumes_inside_that_branch():
    plan = BudgetPlan([100, 200, 400], schedule="wsd")
    optimizer = make_optimizer(1e-3)
    scheduler = get_budget_plan_scheduler(optimizer, plan)
    for _ in range(183):
        train_step(optimizer, scheduler)
    scheduler.enter_branch(1)
    train_step(optimizer, scheduler)
    resumed_optimizer = make_optimizer(1e-3)
    resumed = get_budget_plan_scheduler(resumed_optimizer, plan)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.branch == 1
    assert lrs(resumed_optimizer) == lrs(optimizer) == [1e-3 * plan.lr_ratio(184, 1)]
