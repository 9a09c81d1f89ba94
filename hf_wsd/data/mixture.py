"""Annealing: a data mixture of its own in every decay window, exact to the example.

The spec is a mapping of source names to weights, ``{"main": 0.7, "quality": 0.3}``; ``main`` is the training
data, every other name a decay dataset. :class:`MixturePlan` turns it, the budget plan and the global batch ``G``
into the source of every example slot of every update, as a pure function of ``(seed, update, path)``:

- **Windows.** Every decay window gets the mixture (or its budget's override): WSD-S in-line decays, WSD side
  branches and the last budget's in-line decay. ``tail`` restricts it to the last fraction of each window; for
  ``cyclic-cosine`` and ``cosine``, whose windows are whole cosine periods, a ``tail`` is required.
- **Counts.** With ``W`` the cumulative weights (exact fractions, sources sorted by name), source ``s`` has drawn
  ``floor(W_s·G·k) − floor(W_{s−1}·G·k)`` examples after ``k`` updates of a window: largest remainder over time,
  so every prefix of a window is within one example of its share, and a whole window is exact to one example.
- **Placement.** Inside an update the slots of each source are scattered by a permutation seeded by
  ``(seed, update)``; micro-batch ``j`` of rank ``r`` takes its usual slots, so a DDP run sees the data
  of the one-process run with the same global batch.
- **Positions.** Every source keeps its own position: a decay source's position at update ``t`` is the sum of
  its counts over the decay updates before ``t`` on the path the run is on, the main source's is ``G·t`` minus
  the others'. A WSD branch draws its decay sources from their positions at the branch point and the main source
  from where the main branch is; back on the main branch nothing has moved. Map-style sources are therefore
  positioned in O(#budgets) from the step, like the main data without a mixture.

Pure (numpy and fractions; :func:`mixture_for_run` alone probes the datasets): the feed (:mod:`hf_wsd.data.feed`)
asks :meth:`MixturePlan.slots` which source and position fill each slot; the trainer asks :meth:`MixturePlan.record`
what to write in ``budget.json``.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..plan import format_tokens, parse_quantity

if TYPE_CHECKING:
    from ..plan import BudgetPlan

logger = logging.getLogger(__name__)

MAIN = "main"  # the training data's name in a mixture
_PLACEMENT_SALT = 0x616E6E6C  # keeps the placement's random stream apart from the data permutations
_COSINE_SCHEDULES = ("cosine", "cyclic-cosine")


# ----------------------------------------------------------------------------------------------- the spec
def parse_mixture(value: Any, field: str = "decay_mixture") -> dict[str, float] | None:
    """A mixture as ``{name: weight}``: from a mapping, ``["main=0.7", "quality=0.3"]`` (the command line) or
    ``"main=0.7,quality=0.3"``; ``None`` (or empty) for none. Weights are finite, ≥ 0 and sum to a positive number."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0):
        return None
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        pairs = {}
        for item in value:
            items = [item] if not isinstance(item, str) else [p for p in item.split(",") if p.strip()]
            for text in items:
                name, sep, weight = str(text).partition("=")
                if not sep:
                    raise ValueError(f"`{field}` entries are name=weight (e.g. main=0.7 quality=0.3); got {text!r}.")
                if name.strip() in pairs:
                    raise ValueError(f"`{field}` names source {name.strip()!r} twice; give each source once.")
                pairs[name.strip()] = _weight(weight.strip(), field, name.strip())
        value = pairs
    if not isinstance(value, Mapping):
        raise ValueError(
            f"`{field}` must map source names to weights ({{main: 0.7, quality: 0.3}}) or be name=weight strings; "
            f"got {type(value).__name__} {value!r}."
        )
    weights = {}
    for name, weight in value.items():
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "=,:"):
            raise ValueError(f"`{field}`: source names are non-empty strings without '=', ',' or ':'; got {name!r}.")
        weights[name.strip()] = _weight(weight, field, name)
    total = sum(weights.values())
    if not total > 0:
        raise ValueError(
            f"the weights of `{field}` sum to {total:g}: give at least one source a positive weight "
            f"(got {weights})."
        )
    return weights


def _weight(value: Any, field: str, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"`{field}`: the weight of {name!r} must be a number; got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{field}`: the weight of {name!r} must be a finite number; got {value!r}.")
    if value < 0:
        raise ValueError(f"`{field}`: the weight of {name!r} is negative ({value:g}); weights must be ≥ 0.")
    return float(value)


def parse_mixture_per_budget(value: Any, field: str = "decay_mixture_per_budget") -> dict[str, dict[str, float]]:
    """Per-budget mixtures as ``{budget: {name: weight}}``, budgets written as in ``budgets`` (``"800"``,
    ``"2.5M"``): from a mapping, or ``["800:main=0.5,quality=0.5", ...]`` strings (the command line)."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0):
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        entries = {}
        for text in value:
            budget, sep, mixture = str(text).partition(":")
            if not sep or not budget.strip():
                raise ValueError(
                    f"`{field}` entries are BUDGET:name=weight,... (e.g. 800:main=0.5,quality=0.5); got {text!r}."
                )
            entries[budget.strip()] = mixture
        value = entries
    if not isinstance(value, Mapping):
        raise ValueError(f"`{field}` must map budgets to mixtures; got {type(value).__name__} {value!r}.")
    parsed = {}
    for budget, mixture in value.items():
        weights = parse_mixture(mixture, f"{field}[{budget!r}]")
        if weights is None:
            raise ValueError(f"`{field}`: budget {budget!r} has an empty mixture; give its sources and weights.")
        parsed[str(budget).strip()] = weights
    return parsed


def check_tail(tail: Any, field: str = "decay_mixture_tail") -> float | None:
    """``tail`` itself, or a ``ValueError`` unless it is ``None`` or a fraction in (0, 1]."""
    if tail is None:
        return None
    if isinstance(tail, bool) or not isinstance(tail, (int, float)) or not 0 < tail <= 1:
        raise ValueError(f"`{field}` must be a fraction in (0, 1] of each decay window, or None; got {tail!r}.")
    return float(tail)


def check_schedule(schedule: str, tail: float | None) -> None:
    """A mixture needs a decay window: cosine schedules have none unless ``decay_mixture_tail`` makes one."""
    if schedule in _COSINE_SCHEDULES and tail is None:
        raise ValueError(
            f"schedule {schedule!r} has no decay window for `decay_mixture` (each period is one cosine from the "
            "peak): set `decay_mixture_tail` (the last fraction of each cosine period that draws from the mixture, "
            "e.g. 0.2), or use schedule 'wsd-s' or 'wsd'."
        )


def mixture_names(mixture: dict | None, per_budget: dict[str, dict]) -> set[str]:
    names = set(mixture or ())
    for weights in per_budget.values():
        names |= set(weights)
    return names


def check_names(mixture: dict | None, per_budget: dict[str, dict], datasets: Mapping[str, Any]) -> None:
    """Every source a mixture names is ``main`` or a key of the decay datasets (``decay_datasets``)."""
    if MAIN in datasets:
        raise ValueError(f"`decay_datasets` may not use the name {MAIN!r}: it names the training data (train_dataset).")
    known = {MAIN, *datasets}
    for field, weights in [("decay_mixture", mixture or {})] + [
        (f"decay_mixture_per_budget[{b!r}]", w) for b, w in per_budget.items()
    ]:
        unknown = sorted(set(weights) - known)
        if unknown:
            given = ", ".join(sorted(datasets)) or "none given"
            raise ValueError(
                f"unknown source {', '.join(map(repr, unknown))} in `{field}`: the sources are {MAIN!r} (the "
                f"training data) and the keys of `decay_datasets` ({given})."
            )


def decay_sources(decay_dataset: Any = None, decay_datasets: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The named decay datasets: ``decay_datasets``, or ``{"decay": decay_dataset}``."""
    if decay_dataset is not None and decay_datasets:
        raise ValueError("give `decay_dataset` (one source, named 'decay') or `decay_datasets` (named), not both.")
    if decay_dataset is not None:
        return {"decay": decay_dataset}
    if decay_datasets is None:
        return {}
    if not isinstance(decay_datasets, Mapping):
        raise ValueError(f"`decay_datasets` must map names to datasets; got {type(decay_datasets).__name__}.")
    return dict(decay_datasets)


def default_mixture(mixture: dict | None, per_budget: dict[str, dict], datasets: Mapping[str, Any]) -> dict | None:
    """The mixture to use: the configured one; without one, a single decay dataset fills every decay update."""
    if mixture is not None or per_budget or not datasets:
        return mixture
    if len(datasets) == 1:
        return {next(iter(datasets)): 1.0}
    raise ValueError(
        f"{len(datasets)} `decay_datasets` ({', '.join(sorted(datasets))}) but no `decay_mixture`: say how to mix "
        "them, e.g. decay_mixture={'main': 0.7, '" + sorted(datasets)[0] + "': 0.3}."
    )


def mixture_for_run(
    args: Any, plan: "BudgetPlan", datasets: Mapping[str, Any], train_dataset: Any, model: Any,
    examples_per_update: int, seed: int,
) -> "MixturePlan | None":
    """The run's :class:`MixturePlan` from a config's ``decay_mixture*`` fields and the named decay datasets
    (``None`` when nothing anneals), every source checked against the training data and the model before step 0."""
    from .validation import check_decay_sources

    per_budget = args.decay_mixture_per_budget or {}
    weights = default_mixture(args.decay_mixture, per_budget, datasets)
    if weights is None and not per_budget:
        if datasets:
            logger.warning("`decay_datasets` given but no mixture draws from them: every update trains on "
                           "train_dataset.")
        return None
    check_names(weights, per_budget, datasets)
    plan_mixture = MixturePlan(plan, weights, per_budget, args.decay_mixture_tail, examples_per_update, seed)
    used = {name: datasets[name] for name in plan_mixture.sources[1:]}
    unused = sorted(set(datasets) - set(used))
    if unused:
        logger.warning("decay datasets %s are named by no mixture: they are not trained on.", ", ".join(unused))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    check_decay_sources(train_dataset, used, vocab_size=vocab, seq_length=getattr(args, "seq_length", None))
    return plan_mixture


def source_seed(seed: int, name: str) -> list[int]:
    """The permutation seed of a source: the run's seed alone for the main data (its order without a mixture
    stays the same), ``[seed, crc32(name)]`` for a decay source."""
    return [seed] if name == MAIN else [seed, zlib.crc32(name.encode("utf-8"))]


# ----------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class MixtureWindow:
    """The updates ``[start, end)`` of budget ``budget``'s decay that draw from ``weights`` (names sorted, zero
    weights dropped); ``branch``: on a WSD side branch."""

    budget: int
    name: str
    start: int
    end: int
    branch: bool
    weights: tuple[tuple[str, float], ...]

    @property
    def length(self) -> int:
        return self.end - self.start

    def shares(self) -> dict[str, float]:
        total = sum(w for _, w in self.weights)
        return {name: w / total for name, w in self.weights}


def _fraction(value: float) -> Fraction:
    return Fraction(repr(float(value)))  # the decimal the user wrote (0.7 is 7/10, not the nearest binary float)


class MixturePlan:
    """Which source and which of its positions fills every example slot of every update (see the module docs).

    Args:
        plan: the budget plan (its decay windows).
        mixture: ``{name: weight}`` for every decay window (``None``: only the budgets in ``per_budget``).
        per_budget: ``{budget: {name: weight}}`` overriding ``mixture`` for one budget's window; budgets written as
            in ``budgets`` (resolved against ``plan``).
        tail: the last fraction of each decay window that draws from the mixture (``None``: the whole window;
            required for cosine schedules).
        examples_per_update: the global batch ``G`` (per-device batch × accumulation × world size).
        seed: the seed of the placement inside each update.
    """

    def __init__(
        self,
        plan: "BudgetPlan",
        mixture: Mapping[str, float] | None,
        per_budget: Mapping[str, Mapping[str, float]] | None = None,
        tail: float | None = None,
        examples_per_update: int = 1,
        seed: int = 0,
    ):
        if isinstance(examples_per_update, bool) or not isinstance(examples_per_update, int) or examples_per_update < 1:
            raise ValueError(f"`examples_per_update` must be a positive integer; got {examples_per_update!r}.")
        self.plan, self.examples_per_update, self.seed = plan, examples_per_update, seed
        self.mixture = parse_mixture(mixture)
        self.per_budget_values = parse_mixture_per_budget(per_budget)
        self.tail = check_tail(tail)
        if self.mixture is None and not self.per_budget_values:
            raise ValueError("a MixturePlan needs `decay_mixture` or `decay_mixture_per_budget`.")
        check_schedule(plan.schedule, self.tail)
        self.per_budget = resolve_budgets(plan, self.per_budget_values)
        self.sources = (MAIN, *sorted(mixture_names(self.mixture, self.per_budget_values) - {MAIN}))
        self._index = {name: i for i, name in enumerate(self.sources)}
        self.windows = tuple(self._windows())
        self._cumulative = {w.budget: _cumulative(w.weights) for w in self.windows}
        self._by_budget = {w.budget: w for w in self.windows}
        self._cache: tuple[tuple[int, int | None], tuple[np.ndarray, np.ndarray]] | None = None

    def _windows(self):
        for budget in self.plan.budgets:
            weights = self.per_budget.get(budget.index, self.mixture)
            if weights is None:
                continue
            length = budget.decay_steps if self.tail is None else max(1, round(self.tail * budget.decay_steps))
            kept = tuple(sorted((name, w) for name, w in weights.items() if w > 0))
            yield MixtureWindow(budget.index, budget.name, budget.step - length, budget.step, budget.branch, kept)

    @property
    def tokens_per_example(self) -> int | None:
        tokens = self.plan.tokens_per_update
        return None if tokens is None else tokens // self.examples_per_update

    # ------------------------------------------------------------------------------------------- counts
    def window_at(self, step: int, branch: int | None = None) -> MixtureWindow | None:
        """The window update ``step`` lies in on the path of ``branch`` (a WSD branch's budget index; ``None``:
        the main path), or ``None`` when it draws from the main data only."""
        if branch is not None:
            window = self._by_budget.get(branch)
            return window if window is not None and window.branch and window.start <= step < window.end else None
        for window in self.windows:
            if not window.branch and window.start <= step < window.end:
                return window
        return None

    def counts(self, window: MixtureWindow, updates: int) -> dict[str, int]:
        """Examples each source of ``window`` has given after its first ``updates`` updates (exact)."""
        slots = self.examples_per_update * max(0, min(updates, window.length))
        bounds = [math.floor(c * slots) for c in self._cumulative[window.budget]]
        return {name: hi - lo for (name, _), lo, hi in zip(window.weights, [0, *bounds], bounds)}

    def _path(self, step: int, branch: int | None):
        """``(window, updates of it before step)`` for the windows on the path to ``step``."""
        point = None if branch is None else self.plan.budgets[branch].decay_start
        for window in self.windows:
            if window.branch:
                if window.budget == branch and window.start < step:
                    yield window, step - window.start
            elif window.start < step and (point is None or window.end <= point):
                yield window, step - window.start

    def positions(self, step: int, branch: int | None = None) -> dict[str, int]:
        """Examples drawn from each source before update ``step`` on the path of ``branch``: where each source's
        next example comes from."""
        drawn = {name: 0 for name in self.sources}
        for window, updates in self._path(step, branch):
            for name, count in self.counts(window, updates).items():
                if name != MAIN:
                    drawn[name] += count
        drawn[MAIN] = self.examples_per_update * step - sum(drawn.values())
        return drawn

    def slots(self, step: int, branch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(source, position)`` of each of the ``G`` global slots of update ``step``: ``source`` indexes
        :attr:`sources`, ``position`` is the example's position in that source."""
        key = (step, branch)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        G = self.examples_per_update  # noqa: N806 - the global batch of the module docs
        start = self.positions(step, branch)
        window = self.window_at(step, branch)
        if window is None:
            sources = np.zeros(G, dtype=np.int64)
            positions = start[MAIN] + np.arange(G, dtype=np.int64)
        else:
            k = step - window.start
            before, after = self.counts(window, k), self.counts(window, k + 1)
            ids = [self._index[name] for name, _ in window.weights]
            ordered = np.repeat(np.asarray(ids, dtype=np.int64), [after[n] - before[n] for n, _ in window.weights])
            # Seeded by the update alone (not the budget's index or path): a WSD branch places its slots as a
            # one-budget run to that budget does, in-line, at the same updates.
            rng = np.random.default_rng([self.seed, _PLACEMENT_SALT, step])
            sources = ordered[rng.permutation(G)]
            positions = np.empty(G, dtype=np.int64)
            for index, name in enumerate(self.sources):
                mask = sources == index
                positions[mask] = start[name] + np.arange(int(mask.sum()), dtype=np.int64)
        self._cache = (key, (sources, positions))
        return sources, positions

    # ------------------------------------------------------------------------------------------- reports
    def record(self, budget_index: int) -> dict | None:
        """What ``budget.json`` records of budget ``budget_index``'s decay data: the window, each source's weight,
        examples and tokens drawn in it, and the examples drawn from each source on the budget's path in all."""
        window = self._by_budget.get(budget_index)
        budget = self.plan.budgets[budget_index]
        branch = budget.index if budget.branch else None
        on_path = self.positions(budget.step, branch)
        tokens = self.tokens_per_example
        total = {name: {"examples": n, "tokens": None if tokens is None else n * tokens} for name, n in on_path.items()}
        if window is None:
            return {"window": None, "sources": [], "drawn_on_path": total}
        drawn = self.counts(window, window.length)
        shares = window.shares()
        return {
            "window": [window.start, window.end],
            "tail": self.tail,
            "sources": [
                {"name": name, "weight": shares[name], "examples": drawn[name],
                 "tokens": None if tokens is None else drawn[name] * tokens}
                for name, _ in window.weights
            ],
            "drawn_on_path": total,
        }

    def to_dict(self) -> dict:
        """The mixture's settings and windows, JSON-serialisable (the run record keeps them for resume checks)."""
        return {
            "mixture": self.mixture,
            "per_budget": self.per_budget_values,
            "tail": self.tail,
            "examples_per_update": self.examples_per_update,
            "windows": [
                {"budget": w.budget, "start": w.start, "end": w.end, "branch": w.branch, "weights": dict(w.weights)}
                for w in self.windows
            ],
        }

    def describe(self, exact: bool = True) -> str:
        """A table of the windows: each source's share and (with a sequence length) the tokens drawn per source.

        ``exact=False`` (the global batch is unknown): shares only, tokens approximated from the shares.
        """
        tokens_per_update = self.plan.tokens_per_update
        lines = [
            "decay mixture" + (f", last {self.tail:g} of each window" if self.tail is not None else "")
            + (f" ({self.examples_per_update} examples per update):" if exact else ":"),
            f"{'window':<13} {'updates':>15}  {'budget':<21} sources",
        ]
        for window in self.windows:
            shares, drawn = window.shares(), self.counts(window, window.length)
            parts = []
            for name, _ in window.weights:
                text = f"{name} {100 * shares[name]:.3g}%"
                if tokens_per_update is not None:
                    if exact and self.tokens_per_example is not None:
                        text += f" ({format_tokens(drawn[name] * self.tokens_per_example)} tokens)"
                    else:
                        text += f" (≈{format_tokens(round(shares[name] * window.length * tokens_per_update))} tokens)"
                parts.append(text)
            kind = "branch decay" if window.branch else "decay"
            lines.append(f"{kind:<13} {f'{window.start}–{window.end}':>15}  {window.name:<21} {', '.join(parts)}")
        plain = [b.name for b in self.plan.budgets if b.index not in self._by_budget]
        if plain:
            lines.append(f"plain decay (main data only): {', '.join(plain)}")
        return "\n".join(lines)


def _cumulative(weights: tuple[tuple[str, float], ...]) -> tuple[Fraction, ...]:
    exact = [_fraction(w) for _, w in weights]
    total = sum(exact)
    running, bounds = Fraction(0), []
    for value in exact:
        running += value
        bounds.append(running / total)
    return tuple(bounds)


def resolve_budgets(plan: "BudgetPlan", per_budget: Mapping[str, Any]) -> dict[int, Any]:
    """``{budget index: value}`` for keys written as in ``budgets`` (``"800"``, ``"2.5M"``); an error names a key
    that is no budget of ``plan``."""
    resolved = {}
    for key, value in per_budget.items():
        number = parse_quantity(key, "decay_mixture_per_budget")
        if plan.budget_unit == "tokens":
            step = round(number / plan.tokens_per_update) if plan.tokens_per_update else None
        else:
            step = int(number) if number == int(number) else None
        index = next((b.index for b in plan.budgets if b.step == step), None)
        if index is None:
            raise ValueError(
                f"`decay_mixture_per_budget` names budget {key!r}, which is not in `budgets` "
                f"({', '.join(map(str, plan.budget_values))}); key each override by one of them."
            )
        if index in resolved:
            raise ValueError(f"`decay_mixture_per_budget` gives budget {key!r} twice; give it once.")
        resolved[index] = value
    return resolved


def check_resume(saved: dict | None, current: "MixturePlan | None", step: int) -> None:
    """Resuming at update ``step`` needs the same mixture windows on the path before it (else the data the
    checkpoint was trained on is not the data this config describes)."""

    def before(record: dict | None) -> list:
        return [w for w in (record or {}).get("windows", []) if not w["branch"] and w["start"] < step]

    old, new = before(saved), before(None if current is None else current.to_dict())
    if old != new or (old and saved.get("examples_per_update") != current.examples_per_update):
        raise ValueError(
            f"the decay mixture of the windows before update {step} differs from the one this run was trained with "
            f"(saved: {old or 'none'}; now: {new or 'none'}): resume with the same `decay_mixture` / "
            "`decay_mixture_per_budget` / `decay_mixture_tail` (later budgets may change), or start a new run."
        )
