"""Pure shape functions of learning-rate progress.

Every decay shape maps progress ``p`` in [0, 1] to a multiplier that falls from 1 at ``p = 0`` to 0 at
``p = 1``; the plan rescales it to end at ``min_lr_ratio``. No state, no torch: math only.
"""

from __future__ import annotations

import math
from typing import Callable

# Constants that fix the two shapes whose literature form has a free parameter.
INVERSE_SLOPE = 9.0  # inverse-time decay 1 / (1 + 9p), i.e. to 10 % of peak, rescaled to reach 0
EXP_RATE = 5.0  # exp(-5p), i.e. to 0.7 % of peak, rescaled to reach 0


def linear_decay(p: float) -> float:
    return 1.0 - p


def cosine_decay(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * p))


def one_minus_sqrt_decay(p: float) -> float:
    """The "1-sqrt" cooldown of Hägele et al. (2024)."""
    return 1.0 - math.sqrt(p)


def inverse_decay(p: float) -> float:
    """Inverse-time decay ``1 / (1 + 9p)`` rescaled to span [0, 1]: ``(1 - p) / (1 + 9p)``."""
    return (1.0 - p) / (1.0 + INVERSE_SLOPE * p)


def exp_decay(p: float) -> float:
    """Exponential decay ``exp(-5p)`` rescaled to span [0, 1] (MiniCPM-style)."""
    floor = math.exp(-EXP_RATE)
    return (math.exp(-EXP_RATE * p) - floor) / (1.0 - floor)


DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": linear_decay,
    "cosine": cosine_decay,
    "1-sqrt": one_minus_sqrt_decay,
    "inverse": inverse_decay,
    "exp": exp_decay,
}


def warmup_ratio(step: int, warmup_steps: int) -> float:
    """Linear warmup from 0 at update 0 towards 1 at update ``warmup_steps`` (transformers' convention)."""
    return step / warmup_steps


def decay_ratio(step: int, start: int, length: int, shape: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak LR at update ``step`` inside the decay window ``[start, start + length)``.

    Progress is ``(step - start + 1) / (length + 1)``: a virtual last step (as in torchtitan) keeps both the
    first update (below peak) and the last one (above ``min_lr_ratio``, never a wasted zero-LR update)
    meaningful. transformers' ``get_wsd_schedule`` uses ``(step - start) / length``, whose first decay update
    repeats the peak; this window equals theirs with ``length + 1`` decay steps starting one update earlier.
    """
    progress = (step - start + 1) / (length + 1)
    return min_lr_ratio + (1.0 - min_lr_ratio) * DECAY_SHAPES[shape](progress)


def cosine_period_ratio(step: int, start: int, length: int, min_lr_ratio: float) -> float:
    """Multiplier at update ``step`` of a cosine period ``[start, start + length)`` from peak towards ``min_lr_ratio``.

    Progress is ``(step - start) / length`` (transformers' ``get_cosine_schedule_with_warmup``): unlike a WSD decay
    window, nothing before the period sits at peak, so its first update is the peak itself; the last update is
    still above ``min_lr_ratio`` because ``min_lr_ratio`` falls on ``start + length``, the next period's first update.
    """
    progress = (step - start) / length
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine_decay(progress)


def rewarmup_ratio(step: int, start: int, length: int, min_lr_ratio: float) -> float:
    """Linear climb from ``min_lr_ratio`` back to peak over ``[start, start + length)`` (WSD-S re-warmup)."""
    progress = (step - start + 1) / (length + 1)
    return min_lr_ratio + (1.0 - min_lr_ratio) * progress
