"""What a checkpoint every 10 updates costs training: background (``async_checkpoints``) vs synchronous vs none.

    python benchmarks/checkpoint_cost.py [--sizes 5M 50M] [--rounds 3] [--cuda]

A WSD-S run to one budget is trained three ways, interleaved (none, sync, async; then rotated), for each model size:
without periodic checkpoints (``save_steps`` past the run), with ``save_steps=10`` written synchronously
(``async_checkpoints=False``), and with ``save_steps=10`` written in the background. Measured with callbacks, so the
trainer carries no timers:

- window: wall time from the end of update 5 to the end of update 45 — 40 updates and the checkpoints of updates 10,
  20, 30 and 40 (each save runs after its update's ``on_step_end``, so it falls inside the window; a background write
  still in flight at update 45 is not, which is at most the last of four);
- stall per save: from a saving update's ``on_step_end`` to its ``on_save`` (what the training loop waits for);
- the update after each save (where a background copy and write overlap training) against the run's median update.

Reports the window per update and its ratio to no checkpoints (the goal: async ≤ 1.05×), the median stall, and the
cost per update within each run: (stall + the after-save update's excess over the median) / 10, as a share of the
median update. On a shared machine the windows drift with the load; this within-run figure does not.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_wsd import WSDConfig, WSDTrainer

from branch_switch import BATCH, SEQ, SIZES, model  # one set of model sizes for the benchmarks

EVERY = 10
FIRST, LAST, BUDGET = 5, 45, 50  # the measured window (updates), the run's only budget
MODES = {"none": dict(save_steps=10**6), "sync": dict(save_steps=EVERY, async_checkpoints=False),
         "async": dict(save_steps=EVERY, async_checkpoints=True)}


class WindowTimer(TrainerCallback):
    """The window's wall time and the stall of each save (see the module docstring)."""

    def __init__(self):
        self.start = self.end = self._step_end = self._step_begin = None
        self.stalls: list[float] = []
        self.updates: dict[int, float] = {}  # update → seconds from on_step_begin to on_step_end

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._step_end = time.perf_counter()
        if FIRST < state.global_step <= LAST:
            self.updates[state.global_step] = now - self._step_begin
        if state.global_step == FIRST:
            self.start = now
        elif state.global_step == LAST:
            self.end = now

    def on_save(self, args, state, control, **kwargs):
        if FIRST < state.global_step <= LAST:
            self.stalls.append(time.perf_counter() - self._step_end)

    @property
    def window(self) -> float:
        return self.end - self.start

    def cost_per_update(self) -> float:
        """(median stall + mean excess of the update after a save over the median update) / EVERY / median update."""
        after = [t for step, t in self.updates.items() if step % EVERY == 1]
        median = statistics.median(t for step, t in self.updates.items() if step % EVERY != 1)
        stall = statistics.median(self.stalls) if self.stalls else 0.0
        return (stall + statistics.mean(after) - median) / EVERY / median



def run(size: str, mode: str, train: Dataset, cuda: bool = False) -> WindowTimer:
    timer = WindowTimer()
    with tempfile.TemporaryDirectory() as out:
        args = WSDConfig(
            output_dir=out, budgets=[str(BUDGET)], schedule="wsd-s", decay_fraction=0.1, warmup_steps=2,
            learning_rate=1e-3, per_device_train_batch_size=BATCH, logging_steps=10, report_to="none",
            budget_eval=False, budget_forecast=False, use_cpu=not cuda, bf16=cuda, disable_tqdm=True, seed=0,
            log_throughput=False, **MODES[mode],
        )
        WSDTrainer(model=model(size), args=args, train_dataset=train, callbacks=[timer]).train()
    return timer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["5M", "50M"], choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cuda", action="store_true", help="train on the GPU in bf16")
    cli = parser.parse_args(argv)
    ids = torch.randint(0, 8192, (512, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    train = Dataset.from_dict({"input_ids": ids})
    where = torch.cuda.get_device_name() if cli.cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"WSD-S to update {BUDGET}, window updates {FIRST}–{LAST} with a checkpoint every {EVERY}, batch "
          f"{BATCH}×{SEQ}, {where}, {cli.rounds} interleaved rounds")
    print(f"{'size':<5} {'mode':<6} {'params':>8} {'s / update':>11} {'vs none':>8} {'stall / save s':>15} "
          f"{'cost / update (within run)':>27}")
    order = list(MODES)
    for size in cli.sizes:
        results: dict[str, list[WindowTimer]] = {mode: [] for mode in MODES}
        for round_ in range(cli.rounds):
            for mode in order[round_ % 3:] + order[:round_ % 3]:
                results[mode].append(run(size, mode, train, cli.cuda))
        params = sum(p.numel() for p in model(size).parameters())
        per_update = {mode: statistics.median(t.window for t in timers) / (LAST - FIRST)
                      for mode, timers in results.items()}
        for mode, timers in results.items():
            stalls = [s for t in timers for s in t.stalls]
            stall = f"{statistics.median(stalls):>15.3f}" if stalls else f"{'–':>15}"
            cost = statistics.median(t.cost_per_update() for t in timers)
            print(f"{size:<5} {mode:<6} {params / 1e6:>7.1f}M {per_update[mode]:>11.3f} "
                  f"{per_update[mode] / per_update['none']:>7.3f}× {stall} {cost * 100:>26.2f}%")


if __name__ == "__main__":
    main()
