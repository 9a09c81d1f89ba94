"""Loss forecasts from a run's own curve: loss-vs-schedule laws fitted to its log, predicted at each budget of a plan.

Two laws of the loss after n updates, given the learning rates ``lr[0 … n-1]`` and the area ``S1(n) = Σ_{τ<n} lr[τ]``
(warmup included, so it is MPL's ``S1 + S_W``); LR changes count from the first update at peak (after warmup):

- ``momentum`` (Tissue et al. 2024): ``L0 + A·S1^-α - C·S2``, ``S2(n) = Σ_{i<n} m_i``,
  ``m_i = λ·m_{i-1} + (lr[i-1] - lr[i])``.
- ``mpl``, the Multi-Power Law (Luo et al. 2025): ``L0 + A·S1^-α - B·Σ_{k<n} (lr[k-1] - lr[k])·G(lr[k]^-γ·S_k(n))``,
  ``G(x) = 1 - (C·x + 1)^-β``, ``S_k(n) = Σ_{k≤τ<n} lr[τ]``.

Fits work in units of the log's peak LR (``lr / peak_lr``; areas in peak-LR updates), so parameters do not depend
on the LR's magnitude. Pure NumPy/SciPy and deterministic; log readers live in :mod:`hf_wsd.forecast_logs`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares, lsq_linear
from scipy.signal import lfilter

from .forecast_logs import LossCurve, TrainingLog, budget_losses, read_run
from .loss_laws import (  # noqa: F401  (the laws are part of this module's API)
    _LAW_FUNCTIONS,
    _LINEAR,
    LAWS,
    PARAMETERS,
    ScalingFit,
    _internal,
    _public,
    fit_budget_scaling,
    lr_area,
    lr_drops,
    momentum_loss,
    mpl_loss,
)
from .plan import Budget, BudgetPlan

logger = logging.getLogger(__name__)

POINTS_PER_PARAMETER = 4  # a fit needs at least this many logged losses (after warmup) per parameter
HOLDOUT_FRACTION = 0.2  # the last part of the log that chooses the law and measures its forecast error
BAND_Z = 1.645  # the band is a central 90 % interval
MIN_DECAY = 0.1  # the LR must have fallen this far below peak (as a fraction of peak) for the decay terms to be fit
MIN_DECAYS = {"mpl": 2, "momentum": 1}  # separate decays a law's decay terms need (MPL has four parameters for them)
NOISE_FLOOR = (
    1e-3  # the Huber scale never goes below 0.1 % (MPL's own delta): a noise-free log still fits by least squares
)
_QUADRATURE = 16  # at most this many evaluations of the law per log entry (exact for entries of ≤ 16 updates)
_MAX_ENTRIES = 2000  # longer logs are coarsened by merging adjacent entries (an exact mean of their updates)


# ------------------------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class LawFit:
    """One law fitted to a log. ``params`` are in units of ``lr_scale`` (LR / lr_scale; areas in peak-LR updates).

    ``model_error``: the law's relative error on the held-out end of the log (bias and its standard error, in log
    units), ``None`` when the log could not be split; ``covariance``: of the internal parameters (momentum's λ as
    ``log10(1/(1-λ))``), inflated for correlated residuals.
    """

    law: str
    params: dict[str, float]
    lr_scale: float
    fit_until_step: int
    points: int
    residual_scale: float
    covariance: np.ndarray
    model_error: float | None
    holdout_rms: float | None

    def predict(self, lr: np.ndarray, steps: Sequence[int]) -> np.ndarray:
        """Loss after each of ``steps`` updates along the absolute LR path ``lr``."""
        steps = np.asarray(steps, dtype=int)
        return _LAW_FUNCTIONS[self.law](np.asarray(lr) / self.lr_scale, steps, _internal(self.law, self.params))[0]

    def predict_with_band(self, lr: np.ndarray, start: int, end: int) -> tuple[float, float, float]:
        """Mean loss of updates ``start … end-1`` (their weights after that many updates) and its 90 % band."""
        steps = np.arange(start, end)
        theta = _internal(self.law, self.params)
        loss, jac = _LAW_FUNCTIONS[self.law](np.asarray(lr) / self.lr_scale, steps, theta, jac=True)
        mean = float(loss.mean())
        gradient = jac.mean(axis=0) / mean  # of log(mean loss)
        spread = float(gradient @ self.covariance @ gradient) + (self.model_error or 0.0) ** 2
        # Capped at a factor e^5 so the band stays a number (JSON has no infinity); that wide it only says "unknown".
        width = min(BAND_Z * np.sqrt(max(spread, 0.0)), 5.0)
        return mean, mean * float(np.exp(-width)), mean * float(np.exp(width))


@dataclass
class _Data:
    """The fit's view of a log: entries (weights, losses) and where to evaluate the law for each."""

    curves: list[
        tuple[np.ndarray, np.ndarray, np.ndarray, int]
    ]  # (normalised lr, evaluation steps, offsets, first peak)
    loss: np.ndarray
    weight: np.ndarray


def fit_law(log: TrainingLog, law: str = "auto", holdout_fraction: float = HOLDOUT_FRACTION) -> LawFit:
    """Fit ``law`` to every curve of ``log`` jointly: robust (Huber on log-loss), deterministic, several starts.

    ``law``: ``"mpl"``, ``"momentum"`` or ``"auto"``: of the laws the log supports, the one with the lower error on the
    held-out last ``holdout_fraction`` of the log; the momentum law (fewer parameters) when the log cannot be split.
    ``auto`` considers MPL only once the log holds two decays (fitted to one short decay its four decay parameters
    are loose and its forecasts ran away in our runs); ``law="mpl"`` fits it to one, with a warning.
    A ValueError names the log and says what it lacks.
    """
    if law not in (*LAWS, "auto"):
        raise ValueError(f"unknown `law` {law!r}; choose auto, {', '.join(LAWS)}.")
    data = _prepare(log)
    split = _holdout_split(log, holdout_fraction)
    fits, problems = [], []
    for name in LAWS if law == "auto" else (law,):
        try:
            _check_enough(log, data, name, strict=law == "auto")
        except ValueError as error:
            problems.append(error)
            continue
        model_error, rms, warm = _holdout(log, name, split)
        theta, cov, scale = _fit(data, name, log, extra_start=warm)
        fits.append(
            LawFit(name, _public(name, theta), log.peak_lr, log.last_step, len(data.loss), scale, cov, model_error, rms)
        )
    if not fits:
        raise problems[-1]
    with_holdout = [f for f in fits if f.holdout_rms is not None]
    chosen = min(with_holdout, key=lambda f: f.holdout_rms) if with_holdout else fits[-1]
    if law == "auto":
        logger.info(
            "law chosen for %s: %s (held-out rms: %s)",
            log.source,
            chosen.law,
            ", ".join(f"{f.law} {f.holdout_rms:.4g}" for f in with_holdout) or "no split possible",
        )
    return chosen


def _prepare(log: TrainingLog, keep: np.ndarray | None = None) -> _Data:
    """The entries after warmup (and in ``keep``, a mask over all curves' entries in order) of every curve."""
    curves, losses, weights = [], [], []
    index = 0  # into ``keep``
    for curve in log.curves:
        if keep is not None:
            mask = keep[index : index + len(curve.start)]
            index += len(curve.start)
            curve = LossCurve(curve.lr, curve.start[mask], curve.end[mask], curve.loss[mask], curve.branch)
        curve = _coarsen(curve)
        lr = curve.lr / log.peak_lr
        first_peak = int(np.argmax(lr >= lr.max() * (1 - 1e-9)))
        use = curve.start >= max(first_peak, 1)  # the laws describe training after warmup
        start, end = curve.start[use], curve.end[use]
        if not len(start):
            continue
        count = np.minimum(end - start, _QUADRATURE)
        # Midpoint rule over each entry's updates; exact (every update) for entries of ≤ _QUADRATURE updates.
        steps = np.concatenate(
            [s + ((np.arange(q) + 0.5) * (e - s) / q).astype(int) for s, e, q in zip(start, end, count)]
        )
        offsets = np.concatenate([[0], np.cumsum(count)[:-1]])
        curves.append((lr, steps, offsets, first_peak))
        losses.append(curve.loss[use])
        weights.append(end - start)
    if not curves:
        return _Data([], np.array([]), np.array([]))
    return _Data(curves, np.concatenate(losses), np.concatenate(weights).astype(float))


def _coarsen(curve: LossCurve) -> LossCurve:
    """Merge runs of adjacent entries so at most ``_MAX_ENTRIES`` remain (their mean loss is weighted by length)."""
    if len(curve.start) <= _MAX_ENTRIES:
        return curve
    groups = np.array_split(np.arange(len(curve.start)), _MAX_ENTRIES)
    start, end, loss = [], [], []
    for group in groups:
        for piece in np.split(group, np.flatnonzero(curve.start[group[1:]] != curve.end[group[:-1]]) + 1):
            length = curve.end[piece] - curve.start[piece]
            start.append(curve.start[piece[0]])
            end.append(curve.end[piece[-1]])
            loss.append(float((curve.loss[piece] * length).sum() / length.sum()))
    return LossCurve(curve.lr, np.array(start), np.array(end), np.array(loss), curve.branch)


def _evaluate(data: _Data, law: str, theta: np.ndarray, jac: bool | str = False):
    """Mean predicted loss of every entry (and its Jacobian, or with ``jac="design"`` the linear parameters'
    columns)."""
    means, jacobians = [], []
    for lr, steps, offsets, _ in data.curves:
        loss, jacobian = _LAW_FUNCTIONS[law](lr, steps, theta, jac=jac)
        counts = np.diff(np.concatenate([offsets, [len(steps)]]))
        means.append(np.add.reduceat(loss, offsets) / counts)
        if jac:
            jacobians.append(np.add.reduceat(jacobian, offsets, axis=0) / counts[:, None])
    return np.concatenate(means), (np.concatenate(jacobians) if jac else None)


def _residuals(data: _Data, law: str):
    root = np.sqrt(data.weight)
    log_loss = np.log(data.loss)

    def residual(theta):
        mean, _ = _evaluate(data, law, theta)
        return root * (np.log(np.maximum(mean, 1e-10)) - log_loss)

    def jacobian(theta):
        mean, jac = _evaluate(data, law, theta, jac=True)
        return root[:, None] * jac / np.maximum(mean, 1e-10)[:, None]

    return residual, jacobian


def _noise_scale(data: _Data) -> float:
    """Robust per-update noise of the log-loss, from differences of adjacent entries (they cancel the trend)."""
    y, w = np.log(data.loss), data.weight
    z = np.diff(y) / np.sqrt(1 / w[1:] + 1 / w[:-1])
    return max(float(1.4826 * np.median(np.abs(z))), NOISE_FLOOR) if len(z) else NOISE_FLOOR


def _bounds(law: str, data: _Data) -> tuple[list[float], list[float]]:
    top = float(data.loss.max())  # not the lowest loss: a decay takes the loss below L0 + A·S1^-α, even below L0
    if law == "mpl":
        # B ≤ top/2: a full decay (to zero LR) lowers the loss by at most half its highest value. Unbounded, a fit
        # to a single short decay can put G in its linear regime (C → 0, B → ∞): a drop that grows without end.
        return [0, 1e-8, 0.01, 0, 1e-8, 0.01, 0], [top, 1e6, 3, top / 2, 1e6, 5, 1.5]
    return [0, 1e-8, 0.01, 0, 0.5], [top, 1e6, 3, 1e3, 5]


def _initial_points(law: str, data: _Data) -> list[np.ndarray]:
    """Deterministic starts: for two L0 guesses, a power law through the log; then a grid of the decay terms."""
    lr, steps, offsets, _ = data.curves[0]
    s1 = lr_area(lr)[steps[offsets]]
    first = len(offsets)
    y = data.loss[:first]
    low, high = _bounds(law, data)
    level = float(np.median(data.loss))
    starts = []
    for fraction in (0.5, 0.85):
        L0 = fraction * float(data.loss.min())
        log_excess = np.log(np.maximum(y - L0, 1e-6))
        alpha = float(np.clip(-np.polyfit(np.log(s1), log_excess, 1)[0], 0.05, 2.5))
        A = float(np.exp(np.mean(log_excess + alpha * np.log(s1))))  # the power law through the log at that slope
        if law == "mpl":
            starts += [[L0, A, alpha, 0.05 * level, C, 0.6, 0.6] for C in (0.1, 1.0)]
        else:
            s2 = max(float(lr_area(lfilter([1.0], [1.0, -0.999], lr_drops(lr))).max()), 1.0)
            starts += [[L0, A, alpha, 0.05 * level / s2, u] for u in (1.0, 2.5)]
    return [_inside(np.array(s, dtype=float), low, high) for s in starts]


def _inside(theta: np.ndarray, low: list[float], high: list[float]) -> np.ndarray:
    """``theta`` moved strictly inside the bounds (a held-out fit's optimum may sit outside the full fit's)."""
    low, high = np.array(low, dtype=float), np.array(high, dtype=float)
    margin = 1e-9 * np.maximum(np.abs(high - low), 1.0)
    return np.clip(np.where(np.isfinite(theta), theta, low), low + margin, high - margin)


def _fit(data: _Data, law: str, log: TrainingLog, extra_start: np.ndarray | None = None):
    """Best of the initialisations (and ``extra_start``); returns the parameters, their covariance, residual scale.

    Variable projection first: for given nonlinear parameters the linear ones (L0, A, B or C) are a bounded linear
    least-squares solution of the relative residuals, which removes the flat valleys that make a joint fit crawl
    (hundreds of steps on a cosine). The best start is then polished jointly with the robust (Huber) log-loss.
    """
    residual, jacobian = _residuals(data, law)
    low, high = _bounds(law, data)
    nonlinear = [i for i in range(len(low)) if i not in _LINEAR]
    root, loss = np.sqrt(data.weight), data.loss
    linear_bounds = ([low[i] for i in _LINEAR], [high[i] for i in _LINEAR])

    def project(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.ones(len(low))
        theta[nonlinear] = values
        design = _evaluate(data, law, theta, jac="design")[1]
        theta[_LINEAR] = lsq_linear(design * (root / loss)[:, None], root, bounds=linear_bounds).x
        return theta, root * (design @ theta[_LINEAR] / loss - 1.0)

    starts = _initial_points(law, data)
    if extra_start is not None:  # the held-out fit already searched every start: refine its optimum and one more
        starts = [_inside(extra_start, low, high), starts[0]]
    tries = []
    for start in starts:
        result = least_squares(
            lambda v: project(v)[1],
            start[nonlinear],
            bounds=([low[i] for i in nonlinear], [high[i] for i in nonlinear]),
            x_scale="jac",
            max_nfev=40,
        )
        tries.append((result.cost, project(result.x)[0]))
    start = _inside(min(tries, key=lambda t: t[0])[1], low, high)
    noise = _noise_scale(data)
    best = least_squares(
        residual,
        start,
        jac=jacobian,
        bounds=(low, high),
        loss="huber",
        f_scale=1.345 * noise,
        x_scale="jac",
        max_nfev=40,
    )
    r = residual(best.x)
    scale = max(float(1.4826 * np.median(np.abs(r - np.median(r)))), 1e-9)
    rho = float(np.clip(np.corrcoef(r[:-1], r[1:])[0, 1], 0.0, 0.95)) if len(r) > 2 else 0.0
    jac = jacobian(best.x)
    cov = np.linalg.pinv(jac.T @ jac) * scale**2 * (1 + rho) / (1 - rho)
    logger.debug("%s fit to %s (%d entries): %s", law, log.source, len(r), _public(law, best.x))
    return best.x, cov, scale


def _check_enough(log: TrainingLog, data: _Data, law: str, strict: bool = False) -> None:
    """Enough entries for the law's parameters and a decay; ``strict``: as many decays as ``MIN_DECAYS[law]``."""
    needed = POINTS_PER_PARAMETER * len(PARAMETERS[law])
    if len(data.loss) < needed:
        raise ValueError(
            f"{log.source}: {len(data.loss)} logged losses after warmup; the {law} law ({len(PARAMETERS[law])} "
            f"parameters) needs at least {needed}. Log more often (`logging_steps`) or train longer."
        )
    decays = _decay_count(data)
    if decays == 0:
        raise ValueError(
            f"{log.source}: the learning rate never falls more than {MIN_DECAY:.0%} below its peak in the logged "
            "updates "
            f"(up to update {log.last_step}), so the {law} law's decay terms cannot be fitted: forecast once the log "
            "holds a decay (after the first budget of a WSD-S run or the first branch of a WSD run)."
        )
    if decays < MIN_DECAYS[law] and not strict:
        logger.warning(
            "%s: %d decay(s) in the log, fewer than the %d the %s law's decay terms need to be determined; "
            "its forecasts may run away",
            log.source,
            decays,
            MIN_DECAYS[law],
            law,
        )
    elif decays < MIN_DECAYS[law]:
        raise ValueError(
            f"{log.source}: the {law} law's decay terms need at least {MIN_DECAYS[law]} decays in the log and it holds "
            f"{decays} (up to update {log.last_step}); fitted to one they extrapolate without bound (measured: "
            "negative losses two budgets on). Use the momentum law, or forecast after the next decay."
        )


def _decay_count(data: _Data) -> int:
    """Separate decays in the fitted log: entries of the LR into the region MIN_DECAY below peak (branches: their
    own)."""
    count = 0
    for index, (lr, steps, _, peak) in enumerate(data.curves):
        first = peak if index == 0 else max(int(steps.min()) - 1, peak)  # a branch shares the main path before it
        below = lr[first : int(steps.max())] < 1.0 - MIN_DECAY
        count += int(below[0]) + int(np.sum(below[1:] & ~below[:-1])) if len(below) else 0
    return count


def _holdout_split(log: TrainingLog, fraction: float) -> int:
    """The update from which the log's end is held out: the last ``fraction`` of the main path after warmup."""
    lr = log.main.lr
    first_peak = int(np.argmax(lr >= lr.max() * (1 - 1e-9))) if len(lr) else 0
    return int(round(first_peak + (1 - fraction) * (log.last_step - first_peak)))


def _holdout(log: TrainingLog, law: str, split: int) -> tuple[float | None, float | None, np.ndarray | None]:
    """Fit on entries ending by ``split``; return the error and RMS of its log-loss on the entries starting after it
    (the error: held-out bias and its standard error combined), and the parameters; ``None``s when it cannot split."""
    ends = np.concatenate([c.end for c in log.curves])
    starts = np.concatenate([c.start for c in log.curves])
    train = _prepare(log, keep=ends <= split)
    test = _prepare(log, keep=starts >= split)
    try:
        _check_enough(log, train, law)
    except ValueError:
        return None, None, None
    if not len(test.loss):
        return None, None, None
    theta, _, _ = _fit(train, law, log)
    mean, _ = _evaluate(test, law, theta)
    error = np.log(mean) - np.log(test.loss)
    w = test.weight / test.weight.sum()
    bias = float(w @ error)
    rms = float(np.sqrt(w @ error**2))
    stderr = rms / np.sqrt(max(test.weight.sum(), 1.0))
    return float(np.hypot(bias, stderr)), rms, theta


# ------------------------------------------------------------------------------------------------ forecasts
@dataclass(frozen=True)
class BudgetForecast:
    """A budget's predicted loss: of its final weights (``predicted_loss``, what a held-out loss tracks) and the mean
    over its decay updates (``predicted_decay_mean``, what ``budget.json``'s ``train_loss`` measures), with 90 % bands.
    """

    budget: str
    index: int
    step: int
    tokens: int | None
    predicted_loss: float
    low: float
    high: float
    predicted_decay_mean: float
    decay_low: float
    decay_high: float
    law: str
    fit_until_step: int

    def to_dict(self) -> dict:
        return asdict(self)


def budget_lr(plan: BudgetPlan, budget: Budget, peak_lr: float) -> np.ndarray:
    """Absolute LR of updates 0 … ``budget.step``-1 on the path that produces ``budget`` (its WSD branch included)."""
    branch = budget.index if budget.branch else None
    ratios = [plan.lr_ratio(n, branch if n >= budget.decay_start else None) for n in range(budget.step)]
    return peak_lr * np.array(ratios)


def forecast_budget(fit: LawFit, plan: BudgetPlan, budget: Budget, peak_lr: float | None = None) -> BudgetForecast:
    """The fitted law along ``budget``'s LR path from update 0 (peak LR: the log's unless ``peak_lr`` is given)."""
    lr = budget_lr(plan, budget, fit.lr_scale if peak_lr is None else peak_lr)
    final = fit.predict_with_band(lr, budget.step, budget.step + 1)
    decay = fit.predict_with_band(lr, budget.decay_start, budget.step)
    tokens = budget.tokens
    return BudgetForecast(budget.name, budget.index, budget.step, tokens, *final, *decay, fit.law, fit.fit_until_step)


def forecast_plan(fit: LawFit, plan: BudgetPlan, peak_lr: float | None = None) -> list[BudgetForecast]:
    """:func:`forecast_budget` for every budget of ``plan``.

    The plan is followed from update 0: a plan other than the run's own forecasts a run with the same model, data
    and optimizer on that schedule (the law's claim), not a continuation of this one.
    """
    return [forecast_budget(fit, plan, budget, peak_lr) for budget in plan.budgets]


def forecast_run(output_dir: str | Path, law: str = "auto", budgets: Sequence[str] | None = None) -> list[dict]:
    """Per budget of an hf_wsd run, a real forecast: the law fitted on what the run had logged when that budget's decay
    started (WSD: the main path to its branch point and the earlier branches), or on the whole log for budgets the
    run has not reached. ``budgets`` limits it to those names (one fit each; model cards need one).

    Rows: ``budget, step, predicted_loss, low, high, predicted_decay_mean, decay_low, decay_high, law,
    fit_until_step``; when no fit is possible yet (e.g. no decay before the first budget) the numbers are ``None``
    and ``note`` says why.
    """
    log = read_run(output_dir)
    plan = log.plan
    rows, fits = [], {}
    for budget in plan.budgets:
        if budgets is not None and budget.name not in budgets:
            continue
        reached = budget.decay_start <= log.last_step
        known = log.before_decay(budget.index) if reached else log
        key = (known.last_step, tuple(c.branch for c in known.curves))
        try:
            if key not in fits:
                fits[key] = fit_law(known, law)
            row = forecast_budget(fits[key], plan, budget).to_dict()
        except ValueError as error:
            row = {
                "budget": budget.name,
                "index": budget.index,
                "step": budget.step,
                "tokens": budget.tokens,
                "predicted_loss": None,
                "low": None,
                "high": None,
                "predicted_decay_mean": None,
                "decay_low": None,
                "decay_high": None,
                "law": None,
                "fit_until_step": known.last_step,
                "note": str(error),
            }
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ scaling
def run_scaling(output_dir: str | Path) -> tuple[ScalingFit, str]:
    """The scaling fit of a run's written budgets: held-out loss when every budget has one, else ``train_loss``.

    Sizes are tokens when the budgets record them, else updates. Returns the fit and the loss it used.
    """
    records = [r for r in budget_losses(output_dir) if r.get("train_loss") is not None or r.get("heldout_loss")]
    metric = "heldout_loss" if records and all(r.get("heldout_loss") is not None for r in records) else "train_loss"
    records = [r for r in records if r.get(metric) is not None]
    unit = "tokens" if records and all(r.get("tokens") for r in records) else "updates"
    sizes = [r["tokens"] if unit == "tokens" else r["step"] for r in records]
    return fit_budget_scaling(sizes, [r[metric] for r in records], unit), metric
