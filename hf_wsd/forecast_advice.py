"""Decay advice: the decays of one budget compared by a run's fitted law (``hf-wsd forecast RUN --suggest-decay B``).

Every candidate (decay fraction × shape) is forecast with the bounds of :mod:`hf_wsd.forecast_cross` (gain cap,
floor, refusals), and compared with the recipe's 20 % linear decay through the same refits, so the band of the
difference is paired rather than the spread of two losses.
"""

from __future__ import annotations

import numpy as np

from .forecast import BAND_Z
from .forecast_cross import GAIN_FACTOR, ForecastRefused, ScheduleForecaster
from .loss_laws import _internal

ADVICE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4)
ADVICE_SHAPES = ("linear", "cosine", "1-sqrt")
BASELINE = (0.2, "linear")  # the recipe's default decay


def suggest_decay(
    forecaster: ScheduleForecaster,
    budget: int,
    warmup_steps: int = 0,
    fractions=ADVICE_FRACTIONS,
    shapes=ADVICE_SHAPES,
    min_lr_ratio: float = 0.0,
) -> list[dict]:
    """WSD decays of ``budget`` updates compared by the fitted law: one row per (fraction, shape), lowest first.

    Each row: the final loss and its 90 % band (:meth:`ScheduleForecaster.predict`, ``observed=False``), and its
    difference from the recipe's 20 % linear decay with a 90 % band from the same refits (paired: the spread of the
    difference, not of each loss). Refused candidates carry ``note`` instead of numbers.
    """
    from .plan import BudgetPlan

    peak = forecaster.log.peak_lr
    candidates = [(f, s) for f in fractions for s in shapes]
    if BASELINE not in candidates:
        candidates.append(BASELINE)
    law = forecaster.law
    theta = _internal(law, forecaster.fits[law].params)
    refits = forecaster.refits[law]["bootstrap"] + forecaster.refits[law]["held_out"]
    paths, rows = {}, []
    for fraction, shape in candidates:
        plan = BudgetPlan(
            [budget],
            "wsd",
            warmup_steps=warmup_steps,
            decay_fraction=fraction,
            decay_shape=shape,
            min_lr_ratio=min_lr_ratio,
        )
        paths[(fraction, shape)] = peak * np.array([plan.lr_ratio(n) for n in range(budget)])
    base_path = paths[BASELINE] / peak
    cap = GAIN_FACTOR * forecaster._largest_gain(law, theta)

    def value(t, lr):
        floor = forecaster._floor(law, t, lr, budget, budget + 1, cap)
        return forecaster._bounded(law, t, lr, budget, budget + 1, cap, floor)[0]

    base = [value(t, base_path) for t in [theta, *refits]]
    for (fraction, shape), lr in paths.items():
        row = {"decay_fraction": fraction, "decay_shape": shape, "decay_steps": round(fraction * budget)}
        try:
            forecast = forecaster.predict(lr, budget, budget + 1, observed=False)
        except ForecastRefused as error:
            rows.append({**row, "predicted_loss": None, "note": error.reason})
            continue
        ratio = [np.log(value(t, lr / peak) / b) for t, b in zip([theta, *refits], base)]
        spread = float(np.sqrt(np.mean(np.square(np.array(ratio[1:]) - ratio[0])))) if len(ratio) > 1 else 0.0
        rows.append(
            {
                **row,
                "predicted_loss": forecast.predicted,
                "low": forecast.low,
                "high": forecast.high,
                "vs_baseline": float(np.expm1(ratio[0])),
                "vs_baseline_low": float(np.expm1(ratio[0] - BAND_Z * spread)),
                "vs_baseline_high": float(np.expm1(ratio[0] + BAND_Z * spread)),
                "law": law,
                "capped": forecast.capped,
            }
        )
    return sorted(rows, key=lambda r: (r["predicted_loss"] is None, r["predicted_loss"] or 0.0))


def advice_text(rows: list[dict], budget: int) -> str:
    """A table of :func:`suggest_decay` and a one-line verdict."""
    lines = [
        f"{'fraction':>8} {'shape':<8} {'steps':>6}  {'final loss':>10} {'90% band':>17}  {'vs 20% linear':>13} "
        f"{'90% band':>17}"
    ]
    for r in rows:
        if r["predicted_loss"] is None:
            lines.append(
                f"{r['decay_fraction']:>8.2f} {r['decay_shape']:<8} {r['decay_steps']:>6}  refused: {r['note']}"
            )
            continue
        lines.append(
            f"{r['decay_fraction']:>8.2f} {r['decay_shape']:<8} {r['decay_steps']:>6}  {r['predicted_loss']:>10.4f} "
            f"{r['low']:>8.4f}–{r['high']:<8.4f}  {100 * r['vs_baseline']:>+12.2f}% "
            f"{100 * r['vs_baseline_low']:>+7.2f}…{100 * r['vs_baseline_high']:<+7.2f}%"
        )
    best = next((r for r in rows if r["predicted_loss"] is not None), None)
    if best is None:
        lines.append(f"no decay of budget {budget} could be forecast from this log.")
    elif best["vs_baseline"] >= 0:
        lines.append(f"lowest predicted at budget {budget}: the 20 % linear decay itself (or a tie with it): keep it")
    else:
        sure = best["vs_baseline_high"] < 0
        lines.append(
            f"lowest predicted at budget {budget}: a {best['decay_shape']} decay over {best['decay_fraction']:.0%} "
            f"({best['decay_steps']} updates), {100 * best['vs_baseline']:+.2f} % against 20 % linear "
            f"(90 % band {100 * best['vs_baseline_low']:+.2f} … {100 * best['vs_baseline_high']:+.2f} %)"
            + ("" if sure else "; the band includes no gain: keep the 20 % linear decay")
        )
    return "\n".join(lines)
