"""PNG plots for plans and runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .plan import BudgetPlan


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
