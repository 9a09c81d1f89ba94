"""The LR curve of each schedule and decay shape at its phase boundaries, and agreement with transformers.

Steps are 0-based optimizer updates; ``plan.lr_ratio(t)`` multiplies the peak LR for update ``t``.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.optimization import (
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_wsd_schedule,
)

from hf_wsd.plan import BudgetPlan
from hf_wsd.schedules import DECAY_SHAPES, cosine_period_ratio, decay_ratio, rewarmup_ratio, warmup_ratio

SHAPES = tuple(DECAY_SHAPES)


def expected_decay(t: int, start: int, length: int, shape: str, m: float) -> float:
    """The documented decay rule, written out independently of the library."""
    p = (t - start + 1) / (length + 1)
    return m + (1 - m) * DECAY_SHAPES[shape](p)


def ratios(plan: BudgetPlan, steps: range, branch: int | None = None) -> list[float]:
    return [plan.lr_ratio(t, branch) for t in steps]


def assert_non_increasing(values: list[float]) -> None:
    assert all(a >= b for a, b in zip(values, values[1:])), values


# ------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", SHAPES)
def test_every_decay_shape_falls_strictly_from_one_to_zero(shape):
    f = DECAY_SHAPES[shape]
    assert math.isclose(f(0.0), 1.0, abs_tol=1e-12)
    assert math.isclose(f(1.0), 0.0, abs_tol=1e-12)
    values = [f(i / 200) for i in range(201)]
    assert all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    ("shape", "literature_form"),
    [
        ("linear", lambda p: 1 - p),
        ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
        ("1-sqrt", lambda p: 1 - math.sqrt(p)),
        # inverse time 1/(1 + 9p) and exp(-5p), rescaled so that p=1 lands on 0
        ("inverse", lambda p: (1 / (1 + 9 * p) - 0.1) / 0.9),
        ("exp", lambda p: (math.exp(-5 * p) - math.exp(-5)) / (1 - math.exp(-5))),
    ],
)
def test_decay_shapes_follow_their_literature_forms(shape, literature_form):
    for p in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert math.isclose(DECAY_SHAPES[shape](p), literature_form(p), rel_tol=1e-12, abs_tol=1e-15)


def test_shape_helpers_put_the_virtual_last_step_after_the_window():
    assert warmup_ratio(3, 12) == 0.25
    # window of 4 updates starting at 10: progress 1/5 … 4/5, never 0 or 1
    assert [decay_ratio(t, 10, 4, "linear", 0.0) for t in range(10, 14)] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert [rewarmup_ratio(t, 10, 4, 0.5) for t in range(10, 14)] == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert cosine_period_ratio(10, 10, 4, 0.2) == 1.0


# ------------------------------------------------------------------------------------------------- warmup
@pytest.mark.parametrize("schedule", ["wsd-s", "wsd", "cyclic-cosine", "cosine"])
def test_warmup_ramps_linearly_from_zero_to_peak_like_transformers(schedule):
    plan = BudgetPlan([200], schedule=schedule, warmup_steps=8, min_lr_ratio=0.1)
    assert ratios(plan, range(8)) == [t / 8 for t in range(8)]
    assert plan.lr_ratio(8) == 1.0


# ------------------------------------------------------------------------------------------------- wsd-s
@pytest.mark.parametrize("shape", SHAPES)
def test_wsd_s_lr_is_back_at_exactly_peak_right_after_each_budget(shape):
    plan = BudgetPlan([100, 250, 400], warmup_steps=10, decay_shape=shape, min_lr_ratio=0.1)
    for budget in plan.budgets[:-1]:
        assert plan.lr_ratio(budget.step - 1) < 1.0
        assert plan.lr_ratio(budget.step) == 1.0


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.2])
def test_wsd_s_rewarmup_climbs_strictly_from_below_peak_back_to_peak(min_lr_ratio):
    plan = BudgetPlan([100, 250, 400], rewarmup_steps=6, min_lr_ratio=min_lr_ratio)
    assert ratios(plan, range(0, 90)) == [1.0] * 90  # no rewarmup before the first budget
    for budget in plan.budgets[:-1]:
        climb = ratios(plan, range(budget.step, budget.step + 7))
        assert min_lr_ratio < climb[0] < 1.0
        assert all(a < b for a, b in zip(climb, climb[1:]))
        assert climb[-1] == 1.0


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_decay_window_is_non_increasing_and_hits_the_documented_ratio_at_its_first_and_last_update(
    schedule, shape, min_lr_ratio
):
    plan = BudgetPlan([100, 250, 400], schedule=schedule, warmup_steps=10, decay_shape=shape, min_lr_ratio=min_lr_ratio)
    for budget in plan.budgets:
        branch = budget.index if budget.branch else None
        s, d = budget.decay_start, budget.decay_steps
        window = ratios(plan, range(s, s + d), branch)
        assert plan.lr_ratio(s - 1, branch) == 1.0  # the update before the window is at peak
        assert_non_increasing(window)
        # virtual last step: p = (t - s + 1) / (D + 1), so the first update is below peak and the last above min
        first = min_lr_ratio + (1 - min_lr_ratio) * DECAY_SHAPES[shape](1 / (d + 1))
        assert math.isclose(window[0], first, rel_tol=1e-12)
        last = min_lr_ratio + (1 - min_lr_ratio) * DECAY_SHAPES[shape](d / (d + 1))
        assert math.isclose(window[-1], last, rel_tol=1e-12)
        assert window[0] < 1.0 and window[-1] > min_lr_ratio
        expected = [expected_decay(t, s, d, shape, min_lr_ratio) for t in range(s, s + d)]
        assert window == pytest.approx(expected, rel=1e-12)


def test_linear_decay_of_ten_updates_runs_from_10_11_to_1_11():
    plan = BudgetPlan([100], decay_steps=10)
    assert ratios(plan, range(90, 100)) == pytest.approx([(10 - k) / 11 for k in range(10)], rel=1e-12)


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd", "cyclic-cosine", "cosine"])
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_lr_approaches_min_lr_ratio_and_stays_there_after_the_last_budget(schedule, min_lr_ratio):
    budgets = [400] if schedule == "cosine" else [100, 400]
    plan = BudgetPlan(budgets, schedule=schedule, decay_shape="linear", min_lr_ratio=min_lr_ratio)
    last = plan.lr_ratio(plan.total_steps - 1)
    assert min_lr_ratio < last < min_lr_ratio + 0.05 * (1 - min_lr_ratio)
    assert plan.lr_ratio(plan.total_steps) == min_lr_ratio
    assert plan.lr_ratio(10 * plan.total_steps) == min_lr_ratio


# ------------------------------------------------------------------------------------------------- wsd
@pytest.mark.parametrize("shape", SHAPES)
def test_wsd_main_branch_stays_at_peak_while_side_branches_decay(shape):
    plan = BudgetPlan([100, 200, 400], schedule="wsd", warmup_steps=10, decay_shape=shape, min_lr_ratio=0.1)
    last = plan.budgets[-1]
    assert ratios(plan, range(10, last.decay_start)) == [1.0] * (last.decay_start - 10)
    for budget in plan.budgets[:-1]:
        s, d = budget.decay_start, budget.decay_steps
        branch = ratios(plan, range(s, s + d), budget.index)
        assert branch == pytest.approx([expected_decay(t, s, d, shape, 0.1) for t in range(s, s + d)], rel=1e-12)
        assert max(branch) < 1.0
        # outside its window a branch index changes nothing
        assert plan.lr_ratio(s - 1, budget.index) == plan.lr_ratio(budget.step, budget.index) == 1.0


def test_only_wsd_side_branches_are_valid_branch_indices():
    plan = BudgetPlan([100, 200, 400], schedule="wsd")
    for not_a_branch in (2, 3, -1, -3):  # -3 would otherwise pick budget 0 from the end
        with pytest.raises(ValueError, match="not a WSD branch"):
            plan.lr_ratio(380, branch=not_a_branch)
    wsd_s = BudgetPlan([100, 200, 400])
    with pytest.raises(ValueError, match="not a WSD branch"):
        wsd_s.lr_ratio(95, branch=0)


# ------------------------------------------------------------------------------------------------- cosines
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_cyclic_cosine_restarts_at_peak_each_period_with_warmup_only_in_the_first(min_lr_ratio):
    plan = BudgetPlan([100, 200, 300], schedule="cyclic-cosine", warmup_steps=10, min_lr_ratio=min_lr_ratio)
    assert plan.decay_shape == "cosine"
    periods = [(10, 100), (100, 200), (200, 300)]
    for start, end in periods:
        assert plan.lr_ratio(start) == 1.0  # the second and third periods start at peak, not at 0
        curve = ratios(plan, range(start, end))
        assert_non_increasing(curve)
        assert curve[1] < 1.0
        assert min_lr_ratio < curve[-1] < min_lr_ratio + 0.01
        length = end - start
        expected = [min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * (t - start) / length))
                    for t in range(start, end)]
        assert curve == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_ignores_the_wsd_decay_shape():
    assert BudgetPlan([100], schedule="cosine", decay_shape="exp").decay_shape == "cosine"


# ------------------------------------------------------------------------------------------------- transformers
def _transformers_lambda(scheduler_factory, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return scheduler_factory(optimizer, **kwargs).lr_lambdas[0]


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize(("total", "warmup", "decay"), [(100, 0, 10), (100, 10, 10), (257, 13, 41), (50, 5, 1)])
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.15])
def test_single_budget_wsd_agrees_with_transformers_get_wsd_schedule(shape, total, warmup, decay, min_lr_ratio):
    """A one-budget WSD plan equals ``transformers.optimization.get_wsd_schedule`` up to one deliberate shift.

    Our decay window ``[s, s + D)`` uses progress ``(t - s + 1) / (D + 1)``: a virtual last step after the
    window, so all ``D`` decay updates lie strictly between peak and ``min_lr_ratio``. transformers' progress
    is ``(t - s) / D``, whose first decay update repeats the peak. Ours therefore equals theirs with
    ``num_decay_steps = D + 1`` starting one update earlier (at ``s - 1``, where both are still at peak).
    Warmup differs only when ``min_lr_ratio > 0``: theirs starts at ``min_lr_ratio``, ours (like
    ``get_cosine_schedule_with_warmup``) at 0; so with ``min_lr_ratio > 0`` only steps from warmup on are compared.
    """
    plan = BudgetPlan([total], schedule="wsd", warmup_steps=warmup, decay_steps=decay, decay_shape=shape,
                      min_lr_ratio=min_lr_ratio)
    theirs = _transformers_lambda(
        get_wsd_schedule,
        num_warmup_steps=warmup,
        num_stable_steps=total - decay - 1 - warmup,
        num_decay_steps=decay + 1,
        decay_type=shape,
        min_lr_ratio=min_lr_ratio,
    )
    first = 0 if min_lr_ratio == 0 else warmup
    for t in range(first, total + 3):
        assert math.isclose(plan.lr_ratio(t), theirs(t), rel_tol=1e-12, abs_tol=1e-15), t


@pytest.mark.parametrize(("total", "warmup"), [(100, 0), (100, 10), (257, 13)])
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_cosine_plan_agrees_with_transformers_cosine_with_warmup(total, warmup, min_lr_ratio):
    plan = BudgetPlan([total], schedule="cosine", warmup_steps=warmup, min_lr_ratio=min_lr_ratio)
    if min_lr_ratio == 0:
        theirs = _transformers_lambda(get_cosine_schedule_with_warmup, num_warmup_steps=warmup,
                                      num_training_steps=total)
    else:
        theirs = _transformers_lambda(
            get_cosine_with_min_lr_schedule_with_warmup,
            num_warmup_steps=warmup,
            num_training_steps=total,
            min_lr_rate=min_lr_ratio,
        )
    # transformers' cosine keeps oscillating past the end; ours holds min_lr_ratio, so compare up to the budget
    for t in range(total + 1):
        assert math.isclose(plan.lr_ratio(t), theirs(t), rel_tol=1e-12, abs_tol=1e-15), t
