"""Loss laws, pure NumPy: the loss after n updates as a function of the learning rates, and the scaling of the
decayed losses across budgets.

- ``momentum`` (Tissue et al. 2024): ``L0 + A·S1^-α - C·S2``, ``S2(n) = Σ_{i<n} m_i``,
  ``m_i = λ·m_{i-1} + (lr[i-1] - lr[i])``.
- ``mpl``, the Multi-Power Law (Luo et al. 2025): ``L0 + A·S1^-α - B·Σ_{k<n} (lr[k-1] - lr[k])·G(lr[k]^-γ·S_k(n))``,
  ``G(x) = 1 - (C·x + 1)^-β``, ``S_k(n) = Σ_{k≤τ<n} lr[τ]``.
- budget scaling: ``L(D) = E + B·D^-β`` over the budgets' sizes (tokens or updates).

Fitting them to a run's log and forecasting budgets is :mod:`hf_wsd.forecast`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.signal import lfilter

LAWS = ("mpl", "momentum")
PARAMETERS = {"mpl": ("L0", "A", "alpha", "B", "C", "beta", "gamma"), "momentum": ("L0", "A", "alpha", "C", "lam")}
_MAX_CHANGES = 256  # MPL: more LR changes than this are grouped (≤ 0.03 % error on 800- and 8000-update cosines)
_CHUNK = 2_000_000  # MPL: evaluations × LR changes computed at once


# ------------------------------------------------------------------------------------------------ the laws
def lr_area(lr: np.ndarray) -> np.ndarray:
    """``S1``: ``area[n] = Σ_{τ<n} lr[τ]`` for n = 0 … len(lr)."""
    return np.concatenate([[0.0], np.cumsum(lr, dtype=float)])


def lr_drops(lr: np.ndarray) -> np.ndarray:
    """``drop[k] = lr[k-1] - lr[k]`` from the first update at peak on (warmup's increases are not annealing); else 0."""
    lr = np.asarray(lr, dtype=float)
    drops = np.zeros_like(lr)
    first_peak = int(np.argmax(lr >= lr.max() * (1 - 1e-9)))
    drops[first_peak + 1 :] = lr[first_peak:-1] - lr[first_peak + 1 :]
    return drops


def momentum_loss(
    lr: np.ndarray, steps: np.ndarray, L0: float, A: float, alpha: float, C: float, lam: float
) -> np.ndarray:
    """The momentum law's loss after ``steps`` updates along the path ``lr``."""
    area = lr_area(lr)
    s2 = lr_area(lfilter([1.0], [1.0, -lam], lr_drops(lr)))
    steps = np.asarray(steps)
    return L0 + A * area[steps] ** -alpha - C * s2[steps]


def mpl_loss(
    lr: np.ndarray, steps: np.ndarray, L0: float, A: float, alpha: float, B: float, C: float, beta: float, gamma: float
) -> np.ndarray:
    """The Multi-Power Law's loss after ``steps`` updates along the path ``lr`` (O(len(steps) × LR changes))."""
    return _mpl(np.asarray(lr, dtype=float), np.asarray(steps), np.array([L0, A, alpha, B, C, beta, gamma]))[0]


def _mpl(lr: np.ndarray, steps: np.ndarray, theta: np.ndarray, jac: bool | str = False):
    """Loss and, with ``jac``, its Jacobian; ``jac="design"``: the columns of the linear parameters (L0, A, B)."""
    L0, A, alpha, B, C, beta, gamma = theta
    area = lr_area(lr)
    drops = lr_drops(lr)
    changes = np.flatnonzero(drops)
    if len(changes) > _MAX_CHANGES:  # group adjacent changes, each group's drop at its drop-weighted median update
        groups = np.array_split(changes, _MAX_CHANGES)
        size = np.array([drops[g].sum() for g in groups])
        at = np.array(
            [
                g[min(np.searchsorted(np.cumsum(drops[g]) / s, 0.5), len(g) - 1)] if s else g[-1]
                for g, s in zip(groups, size)
            ]
        )
    else:
        at, size = changes, drops[changes]
    eta = np.maximum(lr[at], 1e-12)
    log_eta = np.log(eta)
    s1 = area[steps]
    power = s1**-alpha
    loss_drop = np.zeros(len(steps))
    d_c, d_beta, d_gamma = np.zeros(len(steps)), np.zeros(len(steps)), np.zeros(len(steps))
    chunk = max(1, _CHUNK // max(1, len(at)))
    for lo in range(0, len(steps), chunk):
        part = slice(lo, lo + chunk)
        x = np.maximum(s1[part, None] - area[None, at], 0.0) * eta**-gamma  # 0 for changes at or after the step
        log_g = np.log1p(C * x)
        g_beta = np.exp(-beta * log_g)  # (C·x + 1)^-β
        loss_drop[part] = (1.0 - g_beta) @ size
        if jac is True:
            slope = beta * g_beta / (C * x + 1.0) * x  # ∂G/∂C = β·(C·x + 1)^(-β-1)·x
            d_c[part] = slope @ size
            d_beta[part] = (g_beta * log_g) @ size
            d_gamma[part] = -(slope * log_eta) @ size * C
    loss = L0 + A * power - B * loss_drop
    if not jac:
        return loss, None
    if jac == "design":
        return loss, np.stack([np.ones(len(steps)), power, -loss_drop], axis=1)
    columns = [np.ones(len(steps)), power, -A * power * np.log(s1), -loss_drop, -B * d_c, -B * d_beta, -B * d_gamma]
    return loss, np.stack(columns, axis=1)


def _momentum(lr: np.ndarray, steps: np.ndarray, theta: np.ndarray, jac: bool | str = False):
    """Momentum law with λ parametrised as ``u = log10(1 / (1 - λ))`` (its time constant, in decades of updates)."""
    L0, A, alpha, C, u = theta

    def s2_at(u_value: float) -> np.ndarray:
        return lr_area(lfilter([1.0], [1.0, -(1.0 - 10.0**-u_value)], lr_drops(lr)))[steps]

    s1 = lr_area(lr)[steps]
    power = s1**-alpha
    s2 = s2_at(u)
    loss = L0 + A * power - C * s2
    if not jac:
        return loss, None
    if jac == "design":
        return loss, np.stack([np.ones(len(steps)), power, -s2], axis=1)
    h = 1e-5
    d_u = -C * (s2_at(u + h) - s2_at(u - h)) / (2 * h)
    return loss, np.stack([np.ones(len(steps)), power, -A * power * np.log(s1), -s2, d_u], axis=1)


_LAW_FUNCTIONS = {"mpl": _mpl, "momentum": _momentum}
_LINEAR = [0, 1, 3]  # L0, A and the decay term's amplitude (MPL's B, momentum's C) enter both laws linearly


def _internal(law: str, params: dict) -> np.ndarray:
    values = [params[name] for name in PARAMETERS[law]]
    if law == "momentum":
        values[-1] = -np.log10(1.0 - values[-1])
    return np.array(values, dtype=float)


def _public(law: str, theta: np.ndarray) -> dict[str, float]:
    values = [float(v) for v in theta]
    if law == "momentum":
        values[-1] = 1.0 - 10.0 ** -values[-1]
    return dict(zip(PARAMETERS[law], values))


# ------------------------------------------------------------------------------------------------ scaling
@dataclass(frozen=True)
class ScalingFit:
    """``L(D) = E + B·D^-β`` across budgets' decayed losses; ``unit`` is ``"tokens"`` or ``"updates"``."""

    E: float
    B: float
    beta: float
    unit: str
    sizes: tuple[float, ...]
    losses: tuple[float, ...]

    def predict(self, size: float) -> float:
        return float(self.E + self.B * float(size) ** -self.beta)


def fit_budget_scaling(sizes: Sequence[float], losses: Sequence[float], unit: str = "tokens") -> ScalingFit:
    """Fit ``L(D) = E + B·D^-β`` (relative least squares, E ≥ 0 below the lowest loss); needs ≥ 3 budgets."""
    sizes, losses = np.asarray(sizes, dtype=float), np.asarray(losses, dtype=float)
    if len(sizes) < 3:
        raise ValueError(
            f"the scaling fit L(D) = E + B·D^-β has 3 parameters and needs the decayed losses of at least 3 budgets; "
            f"got {len(sizes)}."
        )
    reference = float(sizes.max())
    x = sizes / reference

    def residual(theta):
        return (theta[0] + theta[1] * x ** -theta[2]) / losses - 1.0

    best = None
    for fraction in (0.0, 0.5, 0.9):
        E = fraction * float(losses.min())
        slope, intercept = np.polyfit(np.log(x), np.log(np.maximum(losses - E, 1e-9)), 1)
        start = np.clip([E, np.exp(intercept), -slope], [0, 1e-9, 0.011], [losses.min() * 0.999, 1e6, 2.99])
        result = least_squares(residual, start, bounds=([0, 1e-9, 0.01], [float(losses.min()), 1e6, 3.0]))
        if best is None or result.cost < best.cost:
            best = result
    E, B_ref, beta = (float(v) for v in best.x)
    return ScalingFit(E, B_ref * reference**beta, beta, unit, tuple(sizes.tolist()), tuple(losses.tolist()))
