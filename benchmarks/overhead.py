"""Step time of WSDTrainer vs a plain Trainer with transformers' own WSD schedule, interleaved in one run.

    python benchmarks/overhead.py [--rounds 5] [--steps 60]

Both train the same tiny Llama on the same data for the same number of updates; each round runs them in
alternating order so drift (thermal, other load) hits both alike. Reports the median per-update time of
each and their ratio, plus the whole-run wall-time ratio (WSDTrainer also writes its budget folders).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_wsd import WSDConfig, WSDTrainer  # noqa: E402

VOCAB, SEQ, BATCH = 4096, 128, 16


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._last: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._last)


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    return LlamaForCausalLM(config)


def data(n: int) -> Dataset:
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


COMMON = dict(learning_rate=3e-3, per_device_train_batch_size=BATCH, logging_steps=10, report_to="none",
              use_cpu=True, disable_tqdm=True, seed=0, save_strategy="no")


def run_plain(out: str, steps: int, train: Dataset) -> tuple[list[float], float]:
    args = TrainingArguments(output_dir=out, max_steps=steps, warmup_steps=10, lr_scheduler_type="warmup_stable_decay",
                             lr_scheduler_kwargs={"num_decay_steps": steps // 5}, **COMMON)
    timer = StepTimer()
    trainer = Trainer(model=model(), args=args, train_dataset=train, callbacks=[timer])
    started = time.perf_counter()
    trainer.train()
    return timer.times, time.perf_counter() - started


def run_wsd(out: str, steps: int, train: Dataset) -> tuple[list[float], float]:
    budgets = [str(steps // 4), str(steps // 2), str(steps)]
    common = {**COMMON, "save_strategy": "steps", "save_steps": 10**6}
    args = WSDConfig(output_dir=out, budgets=budgets, warmup_steps=10, decay_fraction=0.2, budget_eval=False, **common)
    timer = StepTimer()
    trainer = WSDTrainer(model=model(), args=args, train_dataset=train, callbacks=[timer])
    started = time.perf_counter()
    trainer.train()
    return timer.times, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    cli = parser.parse_args()
    train = data(cli.steps * BATCH)
    steps = {"Trainer": [], "WSDTrainer": []}
    walls = {"Trainer": [], "WSDTrainer": []}
    runners = {"Trainer": run_plain, "WSDTrainer": run_wsd}
    for round_ in range(cli.rounds):
        order = ["Trainer", "WSDTrainer"] if round_ % 2 == 0 else ["WSDTrainer", "Trainer"]
        for name in order:
            with tempfile.TemporaryDirectory() as out:
                times, wall = runners[name](out, cli.steps, train)
            steps[name].extend(times[1:])  # the first update pays one-off start-up costs
            walls[name].append(wall)
    median = {name: statistics.median(t) for name, t in steps.items()}
    wall = {name: statistics.median(w) for name, w in walls.items()}
    print(f"{cli.rounds} interleaved rounds × {cli.steps} updates, tiny Llama (h128, 2 layers), "
          f"batch {BATCH}×{SEQ} tokens, CPU")
    print(f"{'':<12} {'median update (ms)':>20} {'median run wall (s)':>20}")
    for name in steps:
        print(f"{name:<12} {median[name] * 1e3:>20.2f} {wall[name]:>20.2f}")
    print(f"ratio WSDTrainer / Trainer: per update {median['WSDTrainer'] / median['Trainer']:.3f}, "
          f"whole run {wall['WSDTrainer'] / wall['Trainer']:.3f} (includes writing 3 budget folders)")


if __name__ == "__main__":
    main()
