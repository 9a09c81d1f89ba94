"""A diverging run stops, loudly, before anything non-finite is written, evaluated or published.

Two signals: the training loss of every micro-batch (a non-finite loss at update ``t`` means the optimizer has just
stepped on non-finite gradients), checked once per update; and the weights themselves, checked before every
resumable checkpoint and every budget folder is written (an overflow in the optimizer can make weights inf while the
loss that produced them was still finite). ``on_divergence="stop"`` (the default) raises :class:`TrainingDiverged`
naming the update, the value, the last good checkpoint and the way on (lower the LR, resume); ``"warn"`` logs it
once and trains on, but a budget whose weights are not finite is still never written — so never evaluated, carded
or published to ``main``. The Trainer's own ``logging_nan_inf_filter`` hides such losses from its logs, which is
why the check reads the micro-batch losses themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from . import runs

logger = logging.getLogger(__name__)

DIVERGENCE_ACTIONS = ("stop", "warn")


class TrainingDiverged(RuntimeError):
    """The run diverged (a non-finite loss or weights); the message names the update, the value and the way on."""


def check_action(value: str) -> None:
    if value not in DIVERGENCE_ACTIONS:
        raise ValueError(f"unknown `on_divergence` {value!r}; choose 'stop' (the default) or 'warn'.")


class DivergenceGuard:
    """Watches one trainer's losses and weights. ``any_rank`` turns a local flag into "on any rank" (a collective
    under several processes, so every rank stops at the same update)."""

    def __init__(self, action: str, output_dir: Path, learning_rate: float, any_rank: Callable[[bool], bool]):
        check_action(action)
        self.action, self.output_dir, self.learning_rate, self.any_rank = action, output_dir, learning_rate, any_rank
        self._finite = None  # whether every micro-batch loss since the last check was finite (a tensor: no sync)
        self._shown = None  # the first non-finite of those losses (or the last finite one)
        self.warned = False

    def observe(self, loss) -> None:
        """A micro-batch loss (called by ``training_step``; no device sync)."""
        import torch

        if loss is None:
            return
        loss = loss.detach().float().mean() if loss.numel() > 1 else loss.detach().float().reshape(())
        finite = torch.isfinite(loss)
        if self._finite is None:
            self._finite, self._shown = finite, loss
        else:
            self._shown = torch.where(self._finite, loss, self._shown)
            self._finite = self._finite & finite

    def check_update(self, step: int) -> None:
        """After update ``step``: stop (or warn) if a micro-batch loss of that update was not finite."""
        finite, shown = self._finite, self._shown
        self._finite = self._shown = None
        bad = finite is not None and not bool(finite)
        if self.any_rank(bad):
            value = float(shown) if bad else "not finite on another rank"
            self._diverged(step, f"the training loss of update {step} is {value}")

    def weights_finite(self, model, step: int, what: str) -> bool:
        """Before writing ``what`` (a checkpoint, a budget) after update ``step``: whether every weight is finite.
        Not finite: raises under ``stop``; under ``warn`` logs it and returns False (the caller skips the write)."""
        import torch

        # Local shards (FSDP DTensors, DeepSpeed partitions: empty here), on whatever device each lives (device_map).
        bad = any(not bool(torch.isfinite(_local(p)).all()) for p in model.parameters() if _local(p).numel())
        if not self.any_rank(bad):
            return True
        names = [n for n, p in model.named_parameters() if _local(p).numel() and not torch.isfinite(_local(p)).all()]
        where = ", ".join(names[:3]) + (", …" if len(names) > 3 else "") if names else "on another rank"
        self._diverged(step, f"the weights after update {step} are not finite ({where}), so {what} is not written",
                       each_time=True)
        return False

    def _diverged(self, step: int, what: str, each_time: bool = False) -> None:
        good = [s for s, _ in runs.checkpoints(self.output_dir) if s < step]
        if good:
            way_on = (f"The last good checkpoint is {runs.checkpoint_folder(self.output_dir, good[0])}: lower "
                      f"`learning_rate` (now {self.learning_rate:g}) or lengthen the warmup, and resume with "
                      "resume_from_checkpoint=True (recipe: --resume_from_checkpoint true).")
        else:
            way_on = (f"No checkpoint was written before it: lower `learning_rate` (now {self.learning_rate:g}) or "
                      "lengthen the warmup and start over with overwrite_output_dir=True.")
        message = f"Training diverged: {what}. Nothing non-finite was written, evaluated or published. {way_on}"
        if self.action == "stop":
            raise TrainingDiverged(message)
        if not self.warned or each_time:
            self.warned = True
            logger.error("%s Training goes on (on_divergence='warn'); budgets with non-finite weights are skipped.",
                         message)


def _local(param):
    param = param.detach()
    return param.to_local() if hasattr(param, "to_local") else param


def any_rank(accelerator) -> Callable[[bool], bool]:
    """``flag -> whether it holds on any process`` (one scalar all-reduce under several processes)."""
    if accelerator.num_processes == 1:
        return bool

    def reduce(flag: bool) -> bool:
        import torch

        total = accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum")
        return bool(total.item() > 0)

    return reduce
