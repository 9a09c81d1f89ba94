"""The budget plan: budget fields, decay lengths, compute accounting, token conversion, the phase table,
validation, and property-based checks of the schedule invariants."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_wsd.plan import Budget, BudgetPlan, budget_name, format_tokens, parse_quantity
from hf_wsd.schedules import DECAY_SHAPES

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------- budgets
def test_wsd_s_budgets_record_index_step_window_tokens_name_and_compute():
    plan = BudgetPlan([1, 64, 2861], decay_steps=1, tokens_per_update=524_288)
    assert plan.budgets == (
        Budget(0, 1, 0, 1, 524_288, "step1-tokens524K", False, 1),
        Budget(1, 64, 63, 1, 33_554_432, "step64-tokens33.6M", False, 64),
        Budget(2, 2861, 2860, 1, 1_499_987_968, "step2861-tokens1.5B", False, 2861),
    )
    assert plan.budgets[1].decay_end == 64


def test_wsd_budgets_branch_before_the_last_and_count_the_compute_spent_so_far():
    plan = BudgetPlan([100, 200, 400], schedule="wsd")
    assert [(b.decay_start, b.decay_steps, b.branch, b.compute) for b in plan.budgets] == [
        (90, 10, True, 100),
        (180, 20, True, 210),  # budget 1 exists after 200 main-path-equivalent updates + budget 0's 10 branch updates
        (360, 40, False, 430),
    ]
    assert plan.branch_points == (90, 180)


def test_budgets_without_tokens_per_update_are_named_by_step_only():
    plan = BudgetPlan([100, 200])
    assert [(b.name, b.tokens) for b in plan.budgets] == [("step100", None), ("step200", None)]


@pytest.mark.parametrize(
    ("tokens", "compact"),
    [
        (999, "999"),
        (1_000, "1K"),
        (524_288, "524K"),
        (999_999, "1M"),  # rounds up to the next unit, never "1e+03K"
        (33_554_432, "33.6M"),
        (1_500_000_000, "1.5B"),
        (2_000_000_000_000, "2T"),
        (1_000_000_000_000_000, "1000T"),
    ],
)
def test_token_counts_in_names_are_compact(tokens, compact):
    assert format_tokens(tokens) == compact
    assert budget_name(7, tokens) == f"step7-tokens{compact}"


def test_wsd_s_decay_length_is_a_fraction_of_each_period():
    plan = BudgetPlan([100, 250, 1000], decay_fraction=0.2)
    assert [b.decay_steps for b in plan.budgets] == [20, 30, 150]
    assert [b.decay_start for b in plan.budgets] == [80, 220, 850]


def test_wsd_decay_length_is_a_fraction_of_the_whole_budget():
    plan = BudgetPlan([100, 250, 1000], schedule="wsd", decay_fraction=0.2)
    assert [b.decay_steps for b in plan.budgets] == [20, 50, 200]


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd"])
def test_default_decay_is_ten_percent_and_decay_steps_fixes_every_window(schedule):
    assert [b.decay_steps for b in BudgetPlan([1000, 3000], schedule=schedule).budgets] == (
        [100, 200] if schedule == "wsd-s" else [100, 300]
    )
    assert [b.decay_steps for b in BudgetPlan([1000, 3000], schedule=schedule, decay_steps=7).budgets] == [7, 7]


def test_decay_steps_may_restate_a_consistent_decay_fraction():
    plan = BudgetPlan([100, 200], decay_fraction=0.1, decay_steps=10)
    assert [b.decay_steps for b in plan.budgets] == [10, 10]


@pytest.mark.parametrize("schedule", ["cyclic-cosine", "cosine"])
def test_a_cosine_period_spans_from_warmup_or_the_previous_budget_to_its_budget(schedule):
    budgets = [100] if schedule == "cosine" else [100, 300]
    plan = BudgetPlan(budgets, schedule=schedule, warmup_steps=10)
    expected = [(10, 90), (100, 200)][: len(budgets)]
    assert [(b.decay_start, b.decay_steps) for b in plan.budgets] == expected


# ------------------------------------------------------------------------------------------------- compute
def test_wsd_s_compute_is_the_last_budget_and_cosine_compute_sums_every_budget():
    plan = BudgetPlan([100, 200, 400])
    assert (plan.total_steps, plan.total_compute, plan.cosine_compute) == (400, 400, 700)
    assert [b.compute for b in plan.budgets] == [100, 200, 400]


def test_wsd_total_compute_adds_every_branch_decay_but_the_last():
    plan = BudgetPlan([100, 200, 400], schedule="wsd")
    assert (plan.total_steps, plan.total_compute, plan.cosine_compute) == (400, 430, 700)
    assert plan.total_compute == plan.budgets[-1].compute


# ------------------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize(
    ("value", "number"),
    [(500, 500), (2.5e6, 2.5e6), ("500", 500), ("2.5M", 2.5e6), ("1B", 1e9), ("524K", 524_000), ("524k", 524_000),
     (" 3 T ", 3e12), ("1e6", 1e6), ("1_000", 1000), ("2G", 2e9)],
)
def test_budget_values_accept_numbers_and_suffixed_strings(value, number):
    assert parse_quantity(value) == number


def test_token_budgets_convert_to_updates_and_record_the_tokens_actually_seen():
    plan = BudgetPlan(["1M", "2.5M", 5_000_000], budget_unit="tokens", tokens_per_update=3000)
    assert [b.step for b in plan.budgets] == [333, 833, 1667]  # round(tokens / tokens_per_update)
    assert [b.tokens for b in plan.budgets] == [999_000, 2_499_000, 5_001_000]
    assert [b.name for b in plan.budgets] == ["step333-tokens999K", "step833-tokens2.5M", "step1667-tokens5M"]
    assert plan.tokens_at(100) == 300_000


def test_step_budgets_accept_suffixed_strings():
    assert [b.step for b in BudgetPlan(["500", "2K", 1e4]).budgets] == [500, 2000, 10_000]


# ------------------------------------------------------------------------------------------------- describe
def _rows(table: str) -> list[list[str]]:
    """The phase rows of ``describe()``: kind, updates, [tokens,] LR start→end, [budget name]."""
    rows = []
    for line in table.splitlines()[2:-1]:
        kind = "branch decay" if line.startswith("branch decay") else line.split()[0]
        rows.append([kind, *line[len(kind):].split()])
    return rows


def test_describe_lists_each_phase_with_its_lr_and_the_compute_line():
    table = BudgetPlan([100, 200, 400], warmup_steps=10).describe()
    lines = table.splitlines()
    assert lines[0] == "wsd-s plan, decay shape linear, min_lr_ratio 0.0"
    assert "LR ratio start→end" in lines[1]
    assert _rows(table) == [
        ["warmup", "0–10", "0→0.9"],
        ["stable", "10–90", "1→1"],
        ["decay", "90–100", "0.909→0.0909", "step100"],
        ["stable", "100–190", "1→1"],
        ["decay", "190–200", "0.909→0.0909", "step200"],
        ["stable", "200–380", "1→1"],
        ["decay", "380–400", "0.952→0.0476", "step400"],
    ]
    assert lines[-1] == (
        "total compute: 400 updates for 3 budget(s); one cosine run per budget would take 700 (0.57×)"
    )


def test_describe_shows_wsd_branches_tokens_and_absolute_lr():
    table = BudgetPlan([100, 200, 400], schedule="wsd", tokens_per_update=1000).describe(peak_lr=1e-3)
    assert "LR start→end" in table.splitlines()[1]
    assert _rows(table) == [
        ["stable", "0–360", "0–360K", "0.001→0.001"],
        ["decay", "360–400", "360K–400K", "0.000976→2.44e-05", "step400-tokens400K"],
        ["branch decay", "90–100", "90K–100K", "0.000909→9.09e-05", "step100-tokens100K"],
        ["branch decay", "180–200", "180K–200K", "0.000952→4.76e-05", "step200-tokens200K"],
    ]
    last = table.splitlines()[-1]
    assert last.endswith("430 updates for 3 budget(s); one cosine run per budget would take 700 (0.61×)")


def test_describe_shows_rewarmup_phases():
    kinds = [row[0] for row in _rows(BudgetPlan([100, 200], rewarmup_steps=5).describe())]
    assert kinds == ["stable", "decay", "rewarmup", "stable", "decay"]


# ------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"budgets": []}, "budgets", id="empty"),
        pytest.param({"budgets": 500}, "budgets", id="not-a-list"),
        pytest.param({"budgets": [200, 100]}, "budgets", id="decreasing"),
        pytest.param({"budgets": [100, 100]}, "budgets", id="duplicate"),
        pytest.param({"budgets": ["1K", 1000]}, "budgets", id="duplicate-after-parsing"),
        pytest.param({"budgets": [0]}, "budgets", id="zero"),
        pytest.param({"budgets": [-100]}, "budgets", id="negative"),
        pytest.param({"budgets": ["-100"]}, "budgets", id="negative-string"),
        pytest.param({"budgets": [float("inf")]}, "budgets", id="infinite"),
        pytest.param({"budgets": [True]}, "budgets", id="bool"),
        pytest.param({"budgets": [None]}, "budgets", id="none"),
        pytest.param({"budgets": ["1.5Q"]}, "budgets", id="unknown-suffix"),
        pytest.param({"budgets": ["lots"]}, "budgets", id="unparsable"),
        pytest.param({"budgets": [100.5]}, "budgets", id="fractional-steps"),
        pytest.param({"budgets": [100, 110], "decay_steps": 20}, "decay_steps", id="window-longer-than-period"),
        pytest.param({"budgets": [100, 110], "schedule": "wsd", "decay_fraction": 0.2}, "decay_fraction",
                     id="wsd-window-longer-than-period"),
        pytest.param({"budgets": [100], "warmup_steps": 95}, "warmup_steps", id="warmup-into-decay"),
        pytest.param({"budgets": [100, 200], "schedule": "wsd", "warmup_steps": 91}, "warmup_steps",
                     id="warmup-into-branch"),
        pytest.param({"budgets": [100, 200], "schedule": "cyclic-cosine", "warmup_steps": 100}, "warmup_steps",
                     id="warmup-past-cosine-budget"),
        pytest.param({"budgets": [100], "warmup_steps": -1}, "warmup_steps", id="negative-warmup"),
        pytest.param({"budgets": [100], "warmup_steps": 2.5}, "warmup_steps", id="fractional-warmup"),
        pytest.param({"budgets": [100, 200], "rewarmup_steps": 95}, "rewarmup_steps", id="rewarmup-into-decay"),
        pytest.param({"budgets": [100], "rewarmup_steps": -1}, "rewarmup_steps", id="negative-rewarmup"),
        pytest.param({"budgets": [100, 200], "schedule": "wsd", "rewarmup_steps": 5}, "rewarmup_steps",
                     id="rewarmup-outside-wsd-s"),
        pytest.param({"budgets": [100], "decay_fraction": 0.0}, "decay_fraction", id="fraction-zero"),
        pytest.param({"budgets": [100], "decay_fraction": 1.0}, "decay_fraction", id="fraction-one"),
        pytest.param({"budgets": [100], "decay_fraction": -0.1}, "decay_fraction", id="fraction-negative"),
        pytest.param({"budgets": [100], "decay_fraction": float("nan")}, "decay_fraction", id="fraction-nan"),
        pytest.param({"budgets": [4], "decay_fraction": 0.1}, "decay_fraction", id="fraction-rounds-to-zero"),
        pytest.param({"budgets": [100], "decay_fraction": 0.1, "decay_steps": 5}, "decay_steps",
                     id="fraction-and-steps-disagree"),
        pytest.param({"budgets": [100], "decay_steps": 0}, "decay_steps", id="decay-steps-zero"),
        pytest.param({"budgets": [100], "decay_steps": 2.5}, "decay_steps", id="decay-steps-fractional"),
        pytest.param({"budgets": [100], "decay_shape": "quadratic"}, "decay_shape", id="unknown-shape"),
        pytest.param({"budgets": [100], "schedule": "step"}, "schedule", id="unknown-schedule"),
        pytest.param({"budgets": [100], "budget_unit": "epochs"}, "budget_unit", id="unknown-unit"),
        pytest.param({"budgets": [100], "min_lr_ratio": 1.0}, "min_lr_ratio", id="min-lr-one"),
        pytest.param({"budgets": [100], "min_lr_ratio": -0.1}, "min_lr_ratio", id="min-lr-negative"),
        pytest.param({"budgets": [100], "min_lr_ratio": float("nan")}, "min_lr_ratio", id="min-lr-nan"),
        pytest.param({"budgets": [100, 200], "schedule": "cosine"}, "budgets", id="cosine-two-budgets"),
        pytest.param({"budgets": ["1B"], "budget_unit": "tokens"}, "tokens_per_update", id="tokens-without-rate"),
        pytest.param({"budgets": ["1K"], "budget_unit": "tokens", "tokens_per_update": 4096}, "budgets",
                     id="tokens-round-to-zero-updates"),
        pytest.param({"budgets": ["1M", "1.001M"], "budget_unit": "tokens", "tokens_per_update": 4096}, "budgets",
                     id="tokens-round-to-the-same-update"),
        pytest.param({"budgets": [100], "tokens_per_update": 0}, "tokens_per_update", id="zero-tokens-per-update"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        BudgetPlan(**kwargs)


def test_value_errors_name_the_offending_value():
    with pytest.raises(ValueError, match=r"'1\.5Q'"):
        BudgetPlan(["1.5Q"])
    with pytest.raises(ValueError, match="400 after 800|got 400"):
        BudgetPlan([800, 400])
    with pytest.raises(ValueError, match="1.5"):
        BudgetPlan([100], decay_fraction=1.5)


# ------------------------------------------------------------------------------------------------- round trip
def test_to_dict_records_arguments_and_resolved_budgets_and_rebuilds_an_equal_plan():
    plan = BudgetPlan(["1M", "2M"], budget_unit="tokens", tokens_per_update=1000, warmup_steps=10, min_lr_ratio=0.1)
    record = plan.to_dict()
    assert record["resolved"][1]["name"] == "step2000-tokens2M"
    arguments = {k: v for k, v in record.items() if k != "resolved"}
    assert BudgetPlan(**arguments) == plan
    assert BudgetPlan(**{**arguments, "min_lr_ratio": 0.2}) != plan


# ------------------------------------------------------------------------------------------------- properties
@st.composite
def wsd_s_plans(draw, schedule: str = "wsd-s", allow_rewarmup: bool = True) -> BudgetPlan:
    """Valid WSD-S (or cyclic-cosine) plans: 1-5 periods, fractional or fixed decays, warmup and rewarmup that fit."""
    periods = draw(st.lists(st.integers(10, 300), min_size=1, max_size=5))
    steps = [sum(periods[: i + 1]) for i in range(len(periods))]
    shape = draw(st.sampled_from(sorted(DECAY_SHAPES)))
    min_lr_ratio = draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.99))
    if schedule == "cyclic-cosine":
        warmup = draw(st.integers(0, steps[0] - 1))
        return BudgetPlan(steps, schedule=schedule, warmup_steps=warmup, min_lr_ratio=min_lr_ratio)
    # Fractions ≤ 0.9 of periods ≥ 10 leave at least one peak update per period.
    if draw(st.booleans()):
        fraction, fixed = draw(st.floats(0.1, 0.9)), None
        decays = [round(fraction * p) for p in periods]
    else:
        fraction, fixed = None, draw(st.integers(1, min(periods) - 1))
        decays = [fixed] * len(periods)
    warmup = draw(st.integers(0, steps[0] - decays[0]))
    rewarmup = 0
    if allow_rewarmup and len(periods) > 1 and draw(st.booleans()):
        rewarmup = draw(st.integers(1, min(p - d for p, d in zip(periods[1:], decays[1:]))))
    return BudgetPlan(
        steps, schedule=schedule, warmup_steps=warmup, decay_fraction=fraction, decay_steps=fixed,
        decay_shape=shape, min_lr_ratio=min_lr_ratio, rewarmup_steps=rewarmup,
    )


@st.composite
def wsd_plans(draw) -> BudgetPlan:
    """Valid WSD plans of 1-3 roughly geometric budgets (each decay ≤ 30 % of its budget fits in its period)."""
    first = draw(st.integers(20, 200))
    steps = [first]
    for _ in range(draw(st.integers(0, 2))):
        steps.append(round(steps[-1] * draw(st.floats(1.5, 3.0))))
    fraction = draw(st.floats(0.05, 0.3))
    warmup = draw(st.integers(0, first - round(fraction * first)))
    shape = draw(st.sampled_from(sorted(DECAY_SHAPES)))
    min_lr_ratio = draw(st.floats(0.0, 0.99))
    return BudgetPlan(steps, schedule="wsd", warmup_steps=warmup, decay_fraction=fraction, decay_shape=shape,
                      min_lr_ratio=min_lr_ratio)


@st.composite
def cosine_plans(draw) -> BudgetPlan:
    total = draw(st.integers(1, 1000))
    return BudgetPlan([total], schedule="cosine", warmup_steps=draw(st.integers(0, total - 1)),
                      min_lr_ratio=draw(st.floats(0.0, 0.99)))


any_plan = st.one_of(wsd_s_plans(), wsd_plans(), wsd_s_plans("cyclic-cosine"), cosine_plans())


@PROPERTY
@given(any_plan)
def test_lr_ratio_stays_in_zero_one_and_above_min_lr_after_warmup(plan):
    for t in range(plan.total_steps + 3):
        ratio = plan.lr_ratio(t)
        assert 0.0 <= ratio <= 1.0
        if t >= plan.warmup_steps:
            assert plan.min_lr_ratio <= ratio
    for budget in plan.budgets:
        if budget.branch:
            for t in range(budget.decay_start, budget.step):
                assert plan.min_lr_ratio <= plan.lr_ratio(t, budget.index) <= 1.0


@PROPERTY
@given(st.one_of(wsd_s_plans(), wsd_s_plans("cyclic-cosine")), st.data())
def test_a_prefix_of_the_budgets_gives_the_same_schedule_and_budgets(plan, data):
    """Budget i of a run with budgets [T1..TK] is the same checkpoint as that of a run with [T1..Ti]."""
    i = data.draw(st.integers(1, len(plan.budgets)))
    record = plan.to_dict()
    del record["resolved"]
    prefix = BudgetPlan(**{**record, "budgets": list(record["budgets"][:i])})
    assert prefix.budgets == plan.budgets[:i]
    for t in range(prefix.total_steps):
        assert prefix.lr_ratio(t) == plan.lr_ratio(t)


@PROPERTY
@given(wsd_s_plans(allow_rewarmup=False))
def test_wsd_s_lr_is_at_peak_right_after_every_budget_but_the_last(plan):
    assert all(plan.lr_ratio(b.step) == 1.0 for b in plan.budgets[:-1])


@PROPERTY
@given(st.one_of(wsd_s_plans(), wsd_plans()))
def test_decay_windows_lie_inside_their_periods_after_warmup(plan):
    previous = 0
    for budget in plan.budgets:
        assert max(previous, plan.warmup_steps) <= budget.decay_start < budget.step
        assert budget.decay_start + budget.decay_steps == budget.step
        if plan.decay_steps is None:
            span = budget.step - previous if plan.schedule == "wsd-s" else budget.step
            assert budget.decay_steps == round(plan.decay_fraction * span)
        previous = budget.step


@PROPERTY
@given(wsd_plans())
def test_wsd_branches_leave_the_main_path_untouched(plan):
    """The main path of a WSD plan with budgets [T1..TK] is the schedule of a WSD plan with [TK] alone."""
    record = plan.to_dict()
    del record["resolved"]
    alone = BudgetPlan(**{**record, "budgets": [plan.total_steps]})
    for t in range(plan.total_steps + 2):
        assert plan.lr_ratio(t) == alone.lr_ratio(t)


@PROPERTY
@given(wsd_plans())
def test_a_wsd_branch_decays_like_a_single_budget_wsd_run_to_that_budget(plan):
    record = plan.to_dict()
    del record["resolved"]
    for budget in plan.budgets[:-1]:
        single = BudgetPlan(**{**record, "budgets": [budget.step]})
        for t in range(budget.step):
            assert plan.lr_ratio(t, budget.index) == single.lr_ratio(t)


@PROPERTY
@given(st.one_of(wsd_s_plans(), wsd_plans()))
def test_lr_never_rises_inside_a_decay_window(plan):
    for budget in plan.budgets:
        branch = budget.index if budget.branch else None
        window = [plan.lr_ratio(t, branch) for t in range(budget.decay_start, budget.step)]
        assert all(a >= b for a, b in zip(window, window[1:]))
        assert window[0] < 1.0


@PROPERTY
@given(st.integers(1, 10**6), st.integers(1, 10**5))
def test_token_budgets_record_a_whole_number_of_updates_worth_of_tokens(steps, tokens_per_update):
    requested = steps * tokens_per_update + tokens_per_update // 3  # not a multiple: rounds down to `steps`
    plan = BudgetPlan([requested], budget_unit="tokens", tokens_per_update=tokens_per_update, decay_steps=1)
    assert plan.budgets[0].step == steps
    assert plan.budgets[0].tokens == steps * tokens_per_update
