"""The budget plan: a list of compute budgets turned into phases, decay windows and an LR multiplier.

Everything in hf_wsd hangs off :class:`BudgetPlan`. It is pure (no torch), validated when built, and its
``lr_ratio(step)`` is the single source of truth for the learning-rate schedule. Steps are optimizer
updates and ``step`` arguments are 0-based update indices.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Sequence, Union

from .schedules import DECAY_SHAPES, cosine_period_ratio, decay_ratio, rewarmup_ratio, warmup_ratio

SCHEDULES = ("wsd-s", "wsd", "cyclic-cosine", "cosine")
BUDGET_UNITS = ("steps", "tokens")
DEFAULT_DECAY_FRACTION = 0.1

BudgetValue = Union[int, float, str]

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_QUANTITY = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([a-z]?)\s*$", re.IGNORECASE)


def parse_quantity(value: BudgetValue, field: str = "budgets") -> float:
    """Parse ``500``, ``"2.5M"``, ``"1B"``, ``"524K"`` or ``"1e6"`` into a number (suffixes are powers of 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"`{field}` must be a number or a string like '2.5M'; got {value!r}.")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _QUANTITY.match(value)
        if match is None or match.group(2).lower() not in _SUFFIXES:
            raise ValueError(
                f"could not parse {value!r} in `{field}`: use a number with an optional K, M, B or T suffix "
                "(for example 500, '2.5M', '1B')."
            )
        number = float(match.group(1).replace("_", "")) * _SUFFIXES[match.group(2).lower()]
    else:
        raise ValueError(f"`{field}` must be a number or a string like '2.5M'; got {type(value).__name__} {value!r}.")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"every value in `{field}` must be positive; got {value!r}.")
    return number


MAX_UPDATES = 10**8  # past any real run (the largest published runs take ~10^6 updates): a typo, not a plan
MAX_TOKENS = 10**15  # likewise (the largest published runs train on ~4·10^13 tokens)


def check_step_suffixes(values, allowed: bool, field: str, confirm: str) -> None:
    """Budgets counted in updates with a K/M/B/T suffix ('20K') are usually token counts given in the wrong unit:
    refuse them unless ``allowed`` (the user confirmed with ``confirm``)."""
    if allowed:
        return
    for value in values:
        match = _QUANTITY.match(value) if isinstance(value, str) else None
        if match is not None and match.group(2):
            raise ValueError(
                f"`{field}` holds {value!r} and budgets are counted in updates (budget_unit='steps'): {value!r} would "
                f"mean {parse_quantity(value, field):,.0f} updates. For tokens, count budgets in tokens "
                f"(budget_unit='tokens', recipe --budget_unit tokens, hf-wsd --unit tokens); for that many updates, "
                f"write the number ({parse_quantity(value, field):.0f}) or confirm with {confirm}."
            )


def format_tokens(tokens: int) -> str:
    """Compact token count for names: 524288 -> '524K', 33554432 -> '33.6M', 1.5e9 -> '1.5B'."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        # Round first so 999_999 becomes '1M', not '1000K'.
        if float(f"{tokens / scale:.3g}") >= 1:
            # '.3g' writes 1000 and up as '1e+03'; only reachable with the largest suffix.
            text = f"{tokens / scale:.3g}" if tokens < 999.5 * scale else f"{tokens / scale:.0f}"
            return f"{text}{suffix}"
    return str(tokens)


def budget_name(step: int, tokens: int | None) -> str:
    """Hub branch and folder name of a budget: ``step{N}-tokens{T}`` (OLMo convention)."""
    return f"step{step}" if tokens is None else f"step{step}-tokens{format_tokens(tokens)}"


@dataclass(frozen=True)
class Budget:
    """One decayed checkpoint of the plan: the weights after ``step`` updates of its branch."""

    index: int
    step: int
    decay_start: int
    decay_steps: int
    tokens: int | None
    name: str
    branch: bool  # True for a WSD side branch; False when the decay is in-line on the run's path
    compute: int  # updates computed in the whole run by the time this checkpoint exists

    @property
    def decay_end(self) -> int:
        return self.step


@dataclass(frozen=True)
class Phase:
    """A contiguous range ``[start, end)`` of updates with one role, for tables and plots."""

    kind: str  # "warmup", "stable", "decay", "rewarmup", "branch decay"
    start: int
    end: int
    budget: int | None  # index of the budget a decay phase produces


class BudgetPlan:
    """Budgets (updates, or tokens) → warmup, stable phases, decay windows and branch points.

    Args:
        budgets: increasing budgets, in updates or (``budget_unit="tokens"``) tokens; ``500``, ``"2.5M"``…
        schedule: ``"wsd-s"`` (decay in-line, then back to peak), ``"wsd"`` (decay on side branches),
            ``"cyclic-cosine"`` (a cosine per period) or ``"cosine"`` (one cosine to a single budget).
        warmup_steps: linear warmup updates at the start of the run.
        decay_fraction: decay length as a fraction of each period (WSD-S) or of the budget (WSD); default 0.1.
        decay_steps: a fixed decay length in updates instead of ``decay_fraction``.
        decay_shape: ``"linear"``, ``"cosine"``, ``"1-sqrt"``, ``"inverse"`` or ``"exp"`` (WSD and WSD-S).
        min_lr_ratio: the multiplier of the peak LR that each decay approaches.
        rewarmup_steps: WSD-S only: updates to climb back to peak after each budget (0 = jump to peak).
        budget_unit: ``"steps"`` or ``"tokens"``.
        tokens_per_update: tokens in one optimizer update (batch × accumulation × world size × sequence
            length); required for token budgets, optional otherwise (names and token counts then omit it).
    """

    def __init__(
        self,
        budgets: Sequence[BudgetValue],
        schedule: str = "wsd-s",
        warmup_steps: int = 0,
        decay_fraction: float | None = None,
        decay_steps: int | None = None,
        decay_shape: str = "linear",
        min_lr_ratio: float = 0.0,
        rewarmup_steps: int = 0,
        budget_unit: str = "steps",
        tokens_per_update: int | None = None,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown `schedule` {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(f"unknown `decay_shape` {decay_shape!r}; choose one of {', '.join(DECAY_SHAPES)}.")
        if budget_unit not in BUDGET_UNITS:
            raise ValueError(f"unknown `budget_unit` {budget_unit!r}; choose 'steps' or 'tokens'.")
        if not 0.0 <= min_lr_ratio < 1.0:
            raise ValueError(f"`min_lr_ratio` must be in [0, 1); got {min_lr_ratio}.")
        _check_int("warmup_steps", warmup_steps, minimum=0)
        _check_int("rewarmup_steps", rewarmup_steps, minimum=0)
        if decay_steps is not None:
            _check_int("decay_steps", decay_steps, minimum=1)
        if decay_fraction is not None and not 0.0 < decay_fraction < 1.0:
            raise ValueError(f"`decay_fraction` must be in (0, 1); got {decay_fraction}.")
        if tokens_per_update is not None:
            _check_int("tokens_per_update", tokens_per_update, minimum=1)
        if rewarmup_steps and schedule != "wsd-s":
            raise ValueError(f"`rewarmup_steps` applies to schedule 'wsd-s' only; got schedule {schedule!r}.")

        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.decay_fraction = decay_fraction
        self.decay_steps = decay_steps
        self.decay_shape = "cosine" if schedule in ("cosine", "cyclic-cosine") else decay_shape
        self.min_lr_ratio = float(min_lr_ratio)
        self.rewarmup_steps = rewarmup_steps
        self.budget_unit = budget_unit
        self.tokens_per_update = tokens_per_update
        steps = self._budget_steps(budgets)  # validates first: `budgets` may be a bare number or string
        self.budget_values = tuple(budgets)
        if schedule == "cosine" and len(steps) > 1:
            raise ValueError(
                f"schedule 'cosine' trains to one budget; got {len(steps)} in `budgets`. "
                "Use one run per budget, or 'cyclic-cosine' for several."
            )
        self.budgets: tuple[Budget, ...] = self._build_budgets(steps)

    # ----------------------------------------------------------------------------------------- building
    def _budget_steps(self, budgets: Sequence[BudgetValue]) -> list[int]:
        if isinstance(budgets, (str, int, float)) or len(budgets) == 0:
            raise ValueError(f"`budgets` must be a non-empty list of increasing budgets; got {budgets!r}.")
        if self.budget_unit == "tokens" and self.tokens_per_update is None:
            raise ValueError(
                "token budgets need the tokens per update: set `tokens_per_update` (per-device batch × gradient "
                "accumulation × world size × sequence length), or use budget_unit='steps'."
            )
        steps = []
        for value in budgets:
            number = parse_quantity(value, "budgets")
            if self.budget_unit == "tokens":
                step = round(number / self.tokens_per_update)
                if step == 0:
                    raise ValueError(
                        f"budget {value!r} tokens rounds to 0 updates at {self.tokens_per_update} tokens per update; "
                        "raise it in `budgets`."
                    )
            else:
                if number != int(number):
                    raise ValueError(f"step budgets must be whole updates; got {value!r} in `budgets`.")
                step = int(number)
            if self.budget_unit == "tokens" and number > MAX_TOKENS:
                raise ValueError(
                    f"budget {value!r} is {number:,.0f} tokens, past any sane horizon ({MAX_TOKENS:,.0f} tokens): "
                    "check the number and its unit in `budgets`."
                )
            # (A config checks token budgets early with a stand-in of 1 token per update: no update horizon then.)
            if step > MAX_UPDATES and (self.budget_unit == "steps" or self.tokens_per_update > 1):
                raise ValueError(
                    f"budget {value!r} is {step:,} updates, past any sane horizon ({MAX_UPDATES:,} updates): check "
                    "the number and its unit in `budgets`."
                )
            if steps and step == steps[-1]:
                raise ValueError(f"duplicate budget {value!r} in `budgets` (both are {step} updates); remove one.")
            if steps and step < steps[-1]:
                raise ValueError(f"budgets must increase: got {value!r} after {steps[-1]} updates in `budgets`.")
            steps.append(step)
        return steps

    def _decay_length(self, index: int, span: int) -> int:
        """Decay updates of budget ``index`` whose reference span is ``span`` updates."""
        if self.decay_steps is not None:
            if self.decay_fraction is not None and round(self.decay_fraction * span) != self.decay_steps:
                raise ValueError(
                    f"`decay_steps`={self.decay_steps} disagrees with `decay_fraction`={self.decay_fraction} "
                    f"for budget {index} (span of {span} updates gives {round(self.decay_fraction * span)}); "
                    "set only one of them."
                )
            return self.decay_steps
        fraction = DEFAULT_DECAY_FRACTION if self.decay_fraction is None else self.decay_fraction
        length = round(fraction * span)
        if length == 0:
            raise ValueError(
                f"the decay of budget {index} rounds to 0 updates ({fraction} × {span}); raise `decay_fraction` "
                "or set `decay_steps`."
            )
        return length

    def _build_budgets(self, steps: list[int]) -> tuple[Budget, ...]:
        budgets, previous, extra = [], 0, 0
        last = len(steps) - 1
        for index, step in enumerate(steps):
            if self.schedule in ("cosine", "cyclic-cosine"):
                start = max(previous, self.warmup_steps)  # the whole period (after warmup) is one cosine
                length = step - start
                if length < 1:
                    raise ValueError(
                        f"`warmup_steps`={self.warmup_steps} reaches budget {index} at {step} updates; "
                        "lower `warmup_steps` or raise the first budget."
                    )
            else:
                span = step - previous if self.schedule == "wsd-s" else step
                length = self._decay_length(index, span)
                start = step - length
                if length > step - previous:
                    raise ValueError(
                        f"the decay of budget {index} ({length} updates) is longer than its period "
                        f"({previous} → {step}); lower `decay_fraction`/`decay_steps` or space the `budgets`."
                    )
                if start < self.warmup_steps:
                    raise ValueError(
                        f"`warmup_steps`={self.warmup_steps} reaches into the decay window of budget {index} "
                        f"(starts at update {start}); lower `warmup_steps` or raise the budget."
                    )
                if self.rewarmup_steps and index > 0 and start < previous + self.rewarmup_steps:
                    raise ValueError(
                        f"`rewarmup_steps`={self.rewarmup_steps} reaches into the decay window of budget {index} "
                        f"(starts at update {start}); lower `rewarmup_steps` or space the `budgets`."
                    )
            branch = self.schedule == "wsd" and index < last
            tokens = None if self.tokens_per_update is None else step * self.tokens_per_update
            compute = step + extra
            budgets.append(Budget(index, step, start, length, tokens, budget_name(step, tokens), branch, compute))
            if branch:
                extra += length  # a WSD branch's updates are paid on top of the main branch
            previous = step
        return tuple(budgets)

    # ----------------------------------------------------------------------------------------- schedule
    @property
    def total_steps(self) -> int:
        """Updates on the run's main path (the Trainer's ``max_steps``)."""
        return self.budgets[-1].step

    @property
    def total_compute(self) -> int:
        """Updates computed in all, WSD branches included."""
        return self.total_steps + sum(b.decay_steps for b in self.budgets if b.branch)

    @property
    def cosine_compute(self) -> int:
        """Updates needed to train one cosine model per budget from scratch (the naive alternative)."""
        return sum(b.step for b in self.budgets)

    @property
    def branch_points(self) -> tuple[int, ...]:
        """Updates after which a WSD branch leaves the main branch."""
        return tuple(b.decay_start for b in self.budgets if b.branch)

    def lr_ratio(self, step: int, branch: int | None = None) -> float:
        """Multiplier of the peak LR for update ``step`` (0-based).

        ``branch`` selects WSD side branch ``branch`` (a budget index); ``None`` follows the main path.
        Past the last budget the ratio stays at ``min_lr_ratio``.
        """
        if branch is not None:
            # Range-checked by hand: a negative index would silently pick a budget from the end.
            if not 0 <= branch < len(self.budgets) or not self.budgets[branch].branch:
                raise ValueError(f"budget {branch} is not a WSD branch of this {self.schedule!r} plan.")
            budget = self.budgets[branch]
            if budget.decay_start <= step < budget.step:
                return decay_ratio(step, budget.decay_start, budget.decay_steps, self.decay_shape, self.min_lr_ratio)
        if step < self.warmup_steps:
            return warmup_ratio(step, self.warmup_steps)
        previous = 0
        for budget in self.budgets:
            if step < budget.step:
                if budget.branch:
                    return 1.0
                if step >= budget.decay_start:
                    if self.schedule in ("cosine", "cyclic-cosine"):
                        # A cosine period has no stable phase before it: it starts at peak (transformers' cosine).
                        return cosine_period_ratio(step, budget.decay_start, budget.decay_steps, self.min_lr_ratio)
                    return decay_ratio(
                        step, budget.decay_start, budget.decay_steps, self.decay_shape, self.min_lr_ratio
                    )
                if budget.index > 0 and step < previous + self.rewarmup_steps:
                    return rewarmup_ratio(step, previous, self.rewarmup_steps, self.min_lr_ratio)
                return 1.0
            previous = budget.step
        return self.min_lr_ratio

    # ----------------------------------------------------------------------------------------- reports
    @property
    def phases(self) -> tuple[Phase, ...]:
        """The main path's phases in order, then WSD branch decays."""
        phases: list[Phase] = []

        def add(kind: str, start: int, end: int, budget: int | None = None) -> None:
            if end > start:
                phases.append(Phase(kind, start, end, budget))

        add("warmup", 0, self.warmup_steps)
        cursor = self.warmup_steps
        for budget in self.budgets:
            if budget.branch:
                continue
            if budget.index > 0 and self.rewarmup_steps:
                add("rewarmup", cursor, cursor + self.rewarmup_steps)
                cursor += self.rewarmup_steps
            add("stable", cursor, budget.decay_start)
            add("decay", max(cursor, budget.decay_start), budget.step, budget.index)
            cursor = budget.step
        for budget in self.budgets:
            if budget.branch:
                add("branch decay", budget.decay_start, budget.step, budget.index)
        return tuple(phases)

    def tokens_at(self, step: int) -> int | None:
        return None if self.tokens_per_update is None else step * self.tokens_per_update

    def to_dict(self) -> dict:
        """The plan's arguments and derived budgets, JSON-serialisable (saved with every run)."""
        return {
            "budgets": list(self.budget_values),
            "schedule": self.schedule,
            "warmup_steps": self.warmup_steps,
            "decay_fraction": self.decay_fraction,
            "decay_steps": self.decay_steps,
            "decay_shape": self.decay_shape,
            "min_lr_ratio": self.min_lr_ratio,
            "rewarmup_steps": self.rewarmup_steps,
            "budget_unit": self.budget_unit,
            "tokens_per_update": self.tokens_per_update,
            "resolved": [asdict(b) for b in self.budgets],
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BudgetPlan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        steps = ", ".join(str(b.step) for b in self.budgets)
        return f"BudgetPlan(schedule={self.schedule!r}, budgets=[{steps}], decay_shape={self.decay_shape!r})"

    def describe(self, peak_lr: float | None = None) -> str:
        """A human-readable table of phases with LR at phase ends and the compute accounting."""
        scale = 1.0 if peak_lr is None else peak_lr
        lr_label = "LR ratio" if peak_lr is None else "LR"
        header = f"{'phase':<13} {'updates':>15} {'tokens':>17} {lr_label + ' start→end':>22}  budget"
        lines = [f"{self.schedule} plan, decay shape {self.decay_shape}, min_lr_ratio {self.min_lr_ratio}", header]
        for phase in self.phases:
            branch = phase.budget if phase.kind == "branch decay" else None
            first = self.lr_ratio(phase.start, branch) * scale
            last = self.lr_ratio(phase.end - 1, branch) * scale
            tokens = "" if self.tokens_per_update is None else (
                f"{format_tokens(self.tokens_at(phase.start))}–{format_tokens(self.tokens_at(phase.end))}"
                if phase.start else f"0–{format_tokens(self.tokens_at(phase.end))}"
            )
            name = "" if phase.budget is None else self.budgets[phase.budget].name
            lines.append(
                f"{phase.kind:<13} {f'{phase.start}–{phase.end}':>15} {tokens:>17} "
                f"{f'{first:.3g}→{last:.3g}':>22}  {name}"
            )
        lines.append(
            f"total compute: {self.total_compute} updates for {len(self.budgets)} budget(s); one cosine run per "
            f"budget would take {self.cosine_compute} ({self.total_compute / self.cosine_compute:.2f}×)"
        )
        return "\n".join(lines)


def _check_int(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{field}` must be an integer ≥ {minimum}; got {value!r}.")
