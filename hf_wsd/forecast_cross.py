"""Forecasts for schedules unlike the log: bounded annealing gains, a plausibility floor, refusals, calibrated bands.

A law fitted to a WSD-S log has seen a few short decays. Asked about a cosine or a long WSD decay it extrapolates its
annealing term (``C·S2`` for the momentum law, ``B·Σ d_k·G(…)`` for MPL) far beyond anything the log shows. Here:

- **bounded gain**: the annealing gain of a forecast (the law's loss without its annealing term minus with it) is
  capped at ``GAIN_FACTOR`` × the largest gain the law gives at the end of a decay *of the log* (in-sample, where the
  data pins it). MPL's saturating ``G`` is bounded by itself (``B`` × the drop); the momentum law's ``S2`` is not.
- **floor**: no forecast falls below the run's best decayed loss by more than the law's progress in ``S1`` from there
  plus the bounded gain.
- **law choice in the direction asked**: every law is refitted with each of the log's decays held out in turn and
  scored on the held-out decays, the longest counting most; the lower error wins.
- **band**: the spread of those leave-one-decay-out refits and of moving-block bootstrap refits (warm-started, a
  few each), the law's error on the held-out decays, and the noise of the target window, combined in log units.
- **refusal** (:class:`ForecastRefused`, a ``ValueError``) instead of a number when the plan's peak LR exceeds the
  log's, its horizon is more than ``MAX_HORIZON`` × the log's, its final decay is more than ``MAX_DECAY_RATIO`` ×
  the log's longest, or the 90 % band is wider than ``MAX_BAND_WIDTH`` of the prediction.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import least_squares

from .forecast import (
    BAND_Z,
    HOLDOUT_FRACTION,
    MIN_DECAY,
    MIN_DECAYS,
    LawFit,
    _bounds,
    _check_enough,
    _evaluate,
    _inside,
    _noise_scale,
    _prepare,
    fit_law,
)
from .forecast_logs import TrainingLog
from .loss_laws import _LAW_FUNCTIONS, LAWS, _internal, _public

logger = logging.getLogger(__name__)

GAIN_FACTOR = 1.5  # a forecast's annealing gain is at most this × the largest gain at the end of a logged decay
MAX_DECAY_RATIO = 25.0  # refuse a final decay losing more than this × the LR area of the log's longest decay
MAX_HORIZON = 4.0  # refuse forecasts beyond this × the log's last update
END_ERROR_GROWTH = 0.5  # the held-out end error grows as (distance / held-out span) ** this (a random walk)
MAX_BAND_WIDTH = 0.15  # refuse when the 90 % band (high - low) is wider than this fraction of the prediction
BOOTSTRAP = 6  # moving-block bootstrap refits
BLOCKS = 8  # blocks of the bootstrap (each a contiguous run of entries)
MAX_HELD_OUT = 4  # leave-one-decay-out refits: the last (longest-first) decays of the log
SELF_CHECK_RATIO = 2.0  # the self-check fits the log's first 1/this and forecasts the log's own end (the reach asked)
SELF_CHECK_WINDOW = 20  # the self-check's target when the log does not end in a decay: its last updates
# The error a forecast may carry, by the schedule asked about (the goals at 2× the fitted horizon); a forecast
# whose self-check error (grown with its reach) exceeds it is refused. Other LR paths: DEFAULT_TOLERANCE.
SCHEDULE_TOLERANCE = {"wsd-s": 0.015, "wsd": 0.025, "cosine": 0.05, "cyclic-cosine": 0.05}
DEFAULT_TOLERANCE = 0.05


class ForecastRefused(ValueError):
    """The question is beyond what the log supports; ``reason`` says why (also the message)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Decay:
    """A decay of the log: the LR below ``1 - MIN_DECAY`` of peak on ``curve`` for updates ``start … end-1``."""

    curve: int
    start: int
    end: int
    area_lost: float  # Σ (1 - lr/peak) over the decay, in peak-LR updates


def find_decays(lr: np.ndarray, curve: int = 0, from_update: int = 0) -> list[Decay]:
    """Decays of a normalised LR path (peak 1) after its first update at peak (warmup is not a decay)."""
    first_peak = int(np.argmax(lr >= lr.max() * (1 - 1e-9)))
    below = np.asarray(lr) < 1.0 - MIN_DECAY
    below[: max(first_peak, from_update)] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], below.astype(int), [0]])))
    return [Decay(curve, int(a), int(b), float(np.sum(1.0 - lr[a:b]))) for a, b in zip(edges[::2], edges[1::2])]


def log_decays(log: TrainingLog) -> list[Decay]:
    """Every decay in the log's curves (a WSD branch: only its own part after the main path)."""
    decays = []
    for index, curve in enumerate(log.curves):
        lr = curve.lr[: int(curve.end[-1])] / log.peak_lr if len(curve.end) else curve.lr[:0]
        from_update = int(curve.start[0]) if index else 0
        decays += [d for d in find_decays(lr, index, from_update) if not (index and d.start < from_update)]
    return decays


@dataclass(frozen=True)
class CrossForecast:
    """A forecast of the mean loss of updates ``start … end-1`` along a plan's LR path (``end - start == 1``: the
    loss of the weights after ``start`` updates), its 90 % band, and what bounded it."""

    start: int
    end: int
    predicted: float
    low: float
    high: float
    law: str
    gain: float  # the annealing gain in the forecast (after the cap)
    gain_cap: float
    capped: bool
    floor: float
    decay_ratio: float  # the plan's final decay / the log's longest, in LR area lost
    spread: dict = field(default_factory=dict)  # log-unit parts of the band

    def to_dict(self) -> dict:
        return asdict(self)


class ScheduleForecaster:
    """Fits once (every law the log supports, their held-out-decay and bootstrap refits); answers any LR path.

    ``law``: ``"auto"`` (chosen on the held-out decays), ``"mpl"`` or ``"momentum"``.
    """

    def __init__(self, log: TrainingLog, law: str = "auto", bootstrap: int = BOOTSTRAP, self_check: bool = True):
        if law not in (*LAWS, "auto"):
            raise ValueError(f"unknown `law` {law!r}; choose auto, {', '.join(LAWS)}.")
        self.log = log
        self.decays = log_decays(log)
        self.data = _prepare(log)
        candidates, problems = [], []
        for name in LAWS if law == "auto" else (law,):
            try:
                _check_enough(log, self.data, name, strict=law == "auto")
                candidates.append(name)
            except ValueError as error:
                problems.append(error)
        if not candidates:
            raise problems[-1]
        self.fits = {name: fit_law(log, name) for name in candidates}
        self.refits = {name: self._refits(name, bootstrap) for name in candidates}
        # The error in the direction asked: on held-out decays (the annealing term) and on the held-out end of the
        # log (the S1 term's extrapolation in time); a law that cannot be scored on held-out decays is not chosen.
        scores = {
            name: None
            if self.refits[name]["decay_error"] is None
            else float(np.hypot(self.refits[name]["decay_error"], self.fits[name].model_error or 0.0))
            for name in candidates
        }
        scored = {n: s for n, s in scores.items() if s is not None}
        self.law = min(scored, key=scored.get) if scored else candidates[-1]
        self.scores = scores
        self.noise = _noise_scale(self.data)
        logger.info("cross-schedule law for %s: %s (held-out-decay errors: %s)", log.source, self.law, scores)
        self.self_check = self._self_check(law) if self_check else None

    def _self_check(self, law: str) -> dict | None:
        """Fit the log's first ``1 / SELF_CHECK_RATIO`` (``bootstrap=0``, no self-check of its own) and forecast the
        log's own end: its last decay, or its last ``SELF_CHECK_WINDOW`` updates. ``None`` when the log is too short
        for that (the log's end lies inside the cut part, or the cut part cannot be fitted)."""
        last = self.log.last_step
        cut = int(round(last / SELF_CHECK_RATIO))
        ending = [d for d in self.decays if d.curve == 0 and d.end >= last - 1]
        start = ending[-1].start if ending else last - SELF_CHECK_WINDOW
        main = self.log.main
        inside = (main.end > start) & (main.end <= last)
        if start <= cut or not inside.any():
            return None
        branches = tuple(c.branch for c in self.log.curves[1:] if len(c.end) and c.end[-1] <= cut)
        try:
            early = ScheduleForecaster(self.log.cut(cut, branches), law, bootstrap=0, self_check=False)
        except ValueError as error:
            logger.info("%s: no self-check (%s)", self.log.source, error)
            return None
        predicted = early.predict(main.lr[:last], start, last, refuse=False).predicted
        measured = float(main.loss[inside].mean())
        error = float(np.log(predicted / measured))
        logger.info(
            "%s self-check: fitted to %d, forecast %d–%d off by %+.2f %%",
            self.log.source,
            cut,
            start,
            last - 1,
            100 * np.expm1(error),
        )
        return {
            "fit_until": cut,
            "start": start,
            "end": last,
            "predicted": predicted,
            "measured": measured,
            "error": error,
        }

    def self_check_error(self, end: int) -> float | None:
        """The self-check's absolute error (log units), grown as (reach / the self-check's reach) ** END_ERROR_GROWTH
        for a target further out, reach measured as a multiple of the fitted horizon (a forecast at 2× the log's
        last update has the self-check's own reach); never shrunk (a nearer target is trusted no more than that)."""
        check = self.self_check
        if check is None:
            return None
        reach = end / self.log.last_step - 1.0
        own = check["end"] / check["fit_until"] - 1.0
        return abs(check["error"]) * max(1.0, reach / max(own, 1e-9)) ** END_ERROR_GROWTH

    # ------------------------------------------------------------------------------------------------ refits
    def _refits(self, law: str, bootstrap: int) -> dict:
        """Leave-one-decay-out and moving-block bootstrap refits, warm-started from the full fit."""
        theta = _internal(law, self.fits[law].params)
        starts = np.concatenate([c.start for c in self.log.curves])
        ends = np.concatenate([c.end for c in self.log.curves])
        curve_of = np.concatenate([np.full(len(c.start), i) for i, c in enumerate(self.log.curves)])
        held_out, errors, weights = [], [], []
        ranked = sorted(self.decays, key=lambda d: (d.area_lost, d.end))[-MAX_HELD_OUT:]
        for decay in ranked if len(self.decays) >= 2 else []:
            inside = (curve_of == decay.curve) & (starts >= decay.start) & (ends <= decay.end + 1)
            train, test = _prepare(self.log, keep=~inside), _prepare(self.log, keep=inside)
            left = sum(  # decays that still have logged losses once this one is held out
                bool(np.any(~inside & (curve_of == d.curve) & (starts >= d.start) & (ends <= d.end + 1)))
                for d in self.decays
            )
            if not len(test.loss) or left < MIN_DECAYS[law]:  # MPL needs two decays left to fit its decay terms
                continue
            refit = _polish(train, law, theta)
            mean, _ = _evaluate(test, law, refit)
            error = np.log(np.maximum(mean, 1e-10)) - np.log(test.loss)
            w = test.weight / test.weight.sum()
            held_out.append(refit)
            errors.append(float(w @ error))  # the held-out decay's bias: noise averages out, misfit does not
            weights.append(decay.area_lost)
        # RMS of the held-out decays' biases, the longest counting most: the law's error in the direction asked.
        decay_error = float(np.sqrt(np.average(np.square(errors), weights=weights))) if errors else None
        boot = []
        n = len(self.data.loss)
        blocks = np.array_split(np.arange(n), min(BLOCKS, n))
        rng = np.random.default_rng(0)  # deterministic: the same log gives the same band
        for _ in range(bootstrap):
            counts = np.bincount(rng.integers(0, len(blocks), len(blocks)), minlength=len(blocks))
            scale = np.concatenate([np.full(len(b), c) for b, c in zip(blocks, counts)]).astype(float)
            boot.append(_polish(self.data, law, theta, scale))
        return {"held_out": held_out, "decay_error": decay_error, "bootstrap": boot}

    # ------------------------------------------------------------------------------------------------ forecasts
    def predict(
        self,
        lr: np.ndarray,
        start: int,
        end: int,
        law: str | None = None,
        refuse: bool = True,
        observed: bool = True,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> CrossForecast:
        """Mean loss of updates ``start … end-1`` along the absolute LR path ``lr`` (at least ``end - 1`` long).

        ``observed``: the band also holds the noise of the logged training losses in that window (compare with a
        logged mean); ``False`` for the loss of the weights (a held-out loss, much less noisy).
        ``refuse``: raise :class:`ForecastRefused` when the question is beyond the log (else forecast anyway).
        ``tolerance``: the relative error the caller accepts (``SCHEDULE_TOLERANCE`` of the schedule asked about);
        refused when the log's self-check, grown to this forecast's reach, is off by more.
        """
        law = law or self.law
        fit = self.fits[law]
        ratio_lr = np.asarray(lr, dtype=float)[:end] / fit.lr_scale
        end = max(end, start + 1)
        reasons = []
        if ratio_lr.max() > 1.05:
            reasons.append(
                f"the plan's peak LR is {ratio_lr.max():.2f}× the log's: the laws are fitted in units of the "
                "log's peak and say nothing about a higher one; forecast with a log at that peak"
            )
        last = end - 1  # the weights after ``last`` updates are the last ones asked about
        what = f"the loss after {start} updates" if end - start == 1 else f"the mean loss of updates {start}–{last}"
        if last > MAX_HORIZON * self.log.last_step:
            reasons.append(
                f"update {last} is {last / self.log.last_step:.1f}× the log's last ({self.log.last_step}); forecasts "
                f"reach at most {MAX_HORIZON:g}× the log"
            )
        target = find_decays(ratio_lr)
        longest = max((d.area_lost for d in self.decays), default=0.0)
        final = target[-1].area_lost if target and target[-1].end >= end - 1 else 0.0
        decay_ratio = final / longest if longest else float("inf")
        if decay_ratio > MAX_DECAY_RATIO:
            reasons.append(
                f"the plan's final decay loses {decay_ratio:.0f}× the LR area of the longest decay in the log "
                f"({longest:.1f} peak-LR updates); beyond {MAX_DECAY_RATIO:g}× the annealing gain is not supported "
                "by the log — fit on a log with a longer decay (a WSD branch, a longer WSD-S decay)"
            )
        checked = self.self_check_error(end)
        if checked is not None and np.expm1(checked) > tolerance:
            check = self.self_check
            reasons.append(
                f"self-check: fitted to update {check['fit_until']}, this log's own updates {check['start']}–"
                f"{check['end'] - 1} were forecast at {check['predicted']:.4g} where it logged {check['measured']:.4g} "
                f"({100 * np.expm1(check['error']):+.1f} %, {100 * np.expm1(checked):.1f} % at this reach), more than "
                f"the {100 * tolerance:.1f} % tolerance asked; log a longer run (the self-check's reach shrinks)"
            )
        if reasons and refuse:
            raise ForecastRefused(f"{self.log.source}: no forecast of {what}: " + "; ".join(reasons))
        theta = _internal(law, fit.params)
        cap = GAIN_FACTOR * self._largest_gain(law, theta)
        floor = self._floor(law, theta, ratio_lr, start, end, cap)
        value, gain, capped = self._bounded(law, theta, ratio_lr, start, end, cap, floor)
        refits = self.refits[law]
        boot = [np.log(self._bounded(law, t, ratio_lr, start, end, cap, floor)[0] / value) for t in refits["bootstrap"]]
        jack = [np.log(self._bounded(law, t, ratio_lr, start, end, cap, floor)[0] / value) for t in refits["held_out"]]
        parts = {
            "bootstrap": float(np.sqrt(np.mean(np.square(boot)))) if boot else 0.0,
            "held_out_decays": float(np.sqrt(np.mean(np.square(jack)))) if jack else 0.0,
            "decay_error": refits["decay_error"] or 0.0,
            # The law's error on the log's held-out last 20 %, grown with how much further the target lies.
            "end_error": (fit.model_error or 0.0) * self._reach(end) ** END_ERROR_GROWTH,
            "target_noise": self.noise / np.sqrt(max(end - start, 1)) if observed else 0.0,
            "self_check": checked or 0.0,  # the log's own forecast of its end from its first half
        }
        spread = float(np.sqrt(sum(v**2 for v in parts.values())))
        width = min(BAND_Z * spread, 5.0)
        low, high = value * float(np.exp(-width)), value * float(np.exp(width))
        if refuse and (high - low) / value > MAX_BAND_WIDTH:
            raise ForecastRefused(
                f"{self.log.source}: no forecast of {what}: the {law} law's 90 % band "
                f"[{low:.4g}, {high:.4g}] spans {100 * (high - low) / value:.0f} % of the prediction {value:.4g}, more "
                f"than the {100 * MAX_BAND_WIDTH:.0f} % a forecast is useful within (refits on held-out decays and "
                "resampled log segments disagree); forecast nearer the log or log a longer run"
            )
        return CrossForecast(start, end, value, low, high, law, gain, cap, capped, floor, decay_ratio, parts)

    def _reach(self, end: int) -> float:
        """How many times further than the held-out end of the log (its last 20 %) the target's last update lies."""
        lr = self.log.main.lr
        first_peak = int(np.argmax(lr >= lr.max() * (1 - 1e-9))) if len(lr) else 0
        held_out = max(HOLDOUT_FRACTION * (self.log.last_step - first_peak), 1.0)
        return max(1.0, (end - 1 - self.log.last_step) / held_out)

    def _gain(self, law: str, theta: np.ndarray, lr: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The law's loss along ``lr`` at ``steps`` and its annealing gain (loss without the term minus with it)."""
        loss = _LAW_FUNCTIONS[law](lr, steps, theta)[0]
        flat = theta.copy()
        flat[3] = 0.0  # the annealing term's amplitude (MPL's B, momentum's C)
        return loss, _LAW_FUNCTIONS[law](lr, steps, flat)[0] - loss

    def _largest_gain(self, law: str, theta: np.ndarray) -> float:
        gains = []
        for decay in self.decays:
            lr = self.log.curves[decay.curve].lr / self.log.peak_lr
            gains.append(float(self._gain(law, theta, lr, np.array([decay.end]))[1][0]))
        return max(gains, default=0.0)

    def _floor(self, law: str, theta: np.ndarray, lr: np.ndarray, start: int, end: int, cap: float) -> float:
        """The run's best decayed loss, less the law's progress in S1 from there to the target, less the cap."""
        best, best_step, best_lr = np.inf, None, None
        for decay in self.decays:
            curve = self.log.curves[decay.curve]
            near = (curve.end > decay.end - max(3, (decay.end - decay.start) // 5)) & (curve.end <= decay.end + 1)
            if near.any() and float(curve.loss[near].mean()) < best:
                best, best_step, best_lr = float(curve.loss[near].mean()), decay.end, curve.lr / self.log.peak_lr
        if best_step is None:
            return 0.0
        L0, A, alpha = theta[:3]
        area_best = float(np.sum(best_lr[:best_step]))
        area_target = float(np.mean(np.cumsum(lr)[np.arange(start, end) - 1])) if start else float(lr[0])
        progress = A * (area_best**-alpha - max(area_target, 1e-9) ** -alpha)
        return max(best - progress - cap, 0.0)

    def _bounded(self, law, theta, lr, start, end, cap, floor) -> tuple[float, float, bool]:
        steps = np.arange(start, end)
        loss, gain = self._gain(law, theta, lr, steps)
        bounded = np.maximum(loss + np.maximum(gain - cap, 0.0), floor)
        return float(bounded.mean()), float(np.minimum(gain, cap).mean()), bool((gain > cap).any())

    def law_fit(self, law: str | None = None) -> LawFit:
        return self.fits[law or self.law]


def _polish(data, law: str, theta: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """One warm-started robust refit (``scale`` multiplies the entries' weights: a bootstrap resample)."""
    weight = data.weight if scale is None else data.weight * scale
    root, log_loss = np.sqrt(weight), np.log(data.loss)
    low, high = _bounds(law, data)

    def residual(t):
        return root * (np.log(np.maximum(_evaluate(data, law, t)[0], 1e-10)) - log_loss)

    def jacobian(t):
        mean, jac = _evaluate(data, law, t, jac=True)
        return root[:, None] * jac / np.maximum(mean, 1e-10)[:, None]

    result = least_squares(
        residual,
        _inside(theta, low, high),
        jac=jacobian,
        bounds=(low, high),
        loss="huber",
        f_scale=1.345 * _noise_scale(data),
        x_scale="jac",
        max_nfev=15,
    )
    logger.debug("%s refit: %s", law, _public(law, result.x))
    return result.x


def forecast_plan_bounded(forecaster: ScheduleForecaster, plan, peak_lr: float | None = None) -> list[dict]:
    """Every budget of ``plan`` (any schedule), bounded: rows shaped as :class:`hf_wsd.forecast.BudgetForecast`'s,
    plus ``capped``; a refused budget has ``None`` numbers and ``note`` (the reason)."""
    from .forecast import budget_lr

    rows = []
    for budget in plan.budgets:
        lr = budget_lr(plan, budget, forecaster.log.peak_lr if peak_lr is None else peak_lr)
        row = {"budget": budget.name, "index": budget.index, "step": budget.step, "tokens": budget.tokens}
        try:
            tolerance = SCHEDULE_TOLERANCE.get(plan.schedule, DEFAULT_TOLERANCE)
            final = forecaster.predict(lr, budget.step, budget.step + 1, observed=False, tolerance=tolerance)
            decay = forecaster.predict(lr, budget.decay_start, budget.step, tolerance=tolerance)
        except ForecastRefused as error:
            numbers = dict.fromkeys(
                ("predicted_loss", "low", "high", "predicted_decay_mean", "decay_low", "decay_high")
            )
            rows.append(
                {**row, **numbers, "law": None, "fit_until_step": forecaster.log.last_step, "note": error.reason}
            )
            continue
        rows.append(
            {
                **row,
                "predicted_loss": final.predicted,
                "low": final.low,
                "high": final.high,
                "predicted_decay_mean": decay.predicted,
                "decay_low": decay.low,
                "decay_high": decay.high,
                "law": final.law,
                "fit_until_step": forecaster.log.last_step,
                "capped": final.capped or decay.capped,
            }
        )
    return rows
