"""PNG plots for plans and runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .plan import BudgetPlan

if TYPE_CHECKING:
    from .forecast import BudgetForecast, LawFit
    from .forecast_logs import TrainingLog


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lr_schedule(plan: BudgetPlan, path: str | Path, peak_lr: float | None = None) -> Path:
    """Plot the main path's LR (and WSD branches, dashed) with budgets marked; returns the PNG path."""
    plt = _pyplot()
    scale = 1.0 if peak_lr is None else peak_lr
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    steps = range(plan.total_steps)
    ax.plot(list(steps), [plan.lr_ratio(t) * scale for t in steps], color="C0", label=plan.schedule)
    for budget in plan.budgets:
        if budget.branch:
            window = range(budget.decay_start, budget.step)
            label = "WSD branch decays" if budget.index == 0 else None  # one legend entry for all branches
            lrs = [plan.lr_ratio(t, budget.index) * scale for t in window]
            ax.plot(list(window), lrs, "--", color="C1", label=label)
        ax.axvline(budget.step, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("learning rate" if peak_lr else "LR / peak LR")
    ax.set_title(f"{plan.schedule}: budgets at {', '.join(str(b.step) for b in plan.budgets)}")
    ax.set_ylim(0, 1.25 * scale)  # headroom above the peak so the legend never covers the curve
    ax.legend(loc="upper right", ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    marks: Sequence[float] = (),
) -> Path:
    """Plot named ``(x, y)`` curves on one axis, with optional vertical marks; returns the PNG path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o" if len(xs) < 20 else None, label=label)
    for mark in marks:
        ax.axvline(mark, color="grey", lw=0.6, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------ comparison figures (recipes)
def plot_panels(
    panels: dict[str, dict[str, tuple]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    marks: Sequence[float] = (),
    ylim: tuple[float | None, float | None] | None = None,
    sharey: bool = True,
    logx: bool = False,
    ylabels: Sequence[str] | None = None,
    ylims: Sequence[tuple[float | None, float | None] | None] | None = None,
) -> Path:
    """Stacked panels sharing the x axis: ``{panel title: {curve label: (xs, ys) or (xs, ys, line kwargs)}}``.

    Labels starting with ``_`` stay out of the legend (matplotlib's rule), so repeated pieces such as WSD
    branches share one entry. ``marks`` are vertical lines drawn in every panel (and, with ``logx``, the x
    ticks of a base-2 log axis); ``ylabels`` and ``ylims`` set each panel's y axis instead of ``ylabel`` and ``ylim``.
    Returns the PNG path.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.4 + 1.9 * len(panels)), dpi=100, sharex=True,
                             sharey=sharey, squeeze=False)
    for number, (ax, (panel, curves)) in enumerate(zip(axes[:, 0], panels.items())):
        for label, curve in curves.items():
            xs, ys, style = (*curve, {}) if len(curve) == 2 else curve
            ax.plot(list(xs), list(ys), label=label, **{"lw": 1.2, **style})
        for mark in marks:
            ax.axvline(mark, color="grey", lw=0.6, ls=":")
        ax.set_title(panel, fontsize=9, loc="left")
        ax.set_ylabel(ylabel if ylabels is None else ylabels[number], fontsize=8)
        if logx:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log", base=2)
            if marks:
                ax.set_xticks(list(marks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        limits = ylim if ylims is None else ylims[number]
        if limits is not None:
            ax.set_ylim(*limits)
        if any(not label.startswith("_") for label in curves):
            ax.legend(fontsize=7, frameon=False, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel(xlabel)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------ loss forecasts (hf-wsd forecast)
def plot_forecast(
    log: TrainingLog,
    fit: LawFit,
    plan: BudgetPlan,
    forecasts: Sequence[BudgetForecast],
    path: str | Path,
    peak_lr: float | None = None,
    measured: dict[int, float] | None = None,
) -> Path:
    """The log, the law fitted to it, its continuation over ``plan`` (WSD branches dotted) and, per budget, the
    predicted decay-mean loss with its 90 % band at the decay's middle; ``measured``: {step: decay-mean loss}.
    """
    import numpy as np

    from .forecast import budget_lr

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    for curve in log.curves:
        label = "logged loss" if curve.branch is None else "logged (WSD branches)" if curve.branch == 0 else "_"
        ax.plot(curve.end, curve.loss, ".", ms=2, alpha=0.35, color="C0" if curve.branch is None else "C2", label=label)
    peak = fit.lr_scale if peak_lr is None else peak_lr
    until = fit.fit_until_step
    main = budget_lr(plan, plan.budgets[-1], peak)
    first_peak = int(np.argmax(main >= main.max() * (1 - 1e-9)))  # the laws describe training after warmup
    for steps, style, label in (
        (np.arange(max(first_peak, 1), until + 1), "-", f"{fit.law} fit"),
        (np.arange(until, len(main) + 1), "--", "forecast"),
    ):
        ax.plot(steps, fit.predict(main, steps), style, color="C1", lw=1.1, label=label)
    for budget in (b for b in plan.budgets if b.branch):
        window = np.arange(budget.decay_start, budget.step + 1)
        ax.plot(window, fit.predict(budget_lr(plan, budget, peak), window), ":", color="C1", lw=1, label="_")
    if forecasts:
        middle = [(plan.budgets[f.index].decay_start + f.step) / 2 for f in forecasts]
        ax.errorbar(
            middle,
            [f.predicted_decay_mean for f in forecasts],
            yerr=[
                [f.predicted_decay_mean - f.decay_low for f in forecasts],
                [f.decay_high - f.predicted_decay_mean for f in forecasts],
            ],
            fmt="o",
            color="C3",
            ms=3,
            capsize=3,
            label="decay-mean forecast, 90 % band",
        )
    if measured:
        xs = [(b.decay_start + b.step) / 2 for b in plan.budgets if b.step in measured]
        ax.plot(
            xs,
            [measured[b.step] for b in plan.budgets if b.step in measured],
            "x",
            color="k",
            ms=5,
            label="measured decay mean",
        )
    for budget in plan.budgets:
        ax.axvline(budget.step, color="grey", lw=0.5, ls=":")
    ax.axvline(until, color="C1", lw=0.6, ls="-.")
    losses = np.concatenate([c.loss for c in log.curves])
    low = min([float(np.quantile(losses, 0.005))] + [f.decay_low for f in forecasts])
    ax.set_ylim(low * 0.98, float(np.quantile(losses[len(losses) // 10 :], 0.99)) * 1.02)
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("training loss")
    ax.set_title(f"{plan.schedule}: {fit.law} law fitted up to update {until} (dash-dot), forecast beyond", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
