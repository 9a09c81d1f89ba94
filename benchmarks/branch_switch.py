"""What a WSD branch switch costs: in-memory snapshot/restore vs the checkpoint path, side by side in one run.

    python benchmarks/branch_switch.py [--sizes 5M 50M] [--rounds 2]
    HF_WSD_CPU_FSDP=1 accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 2 \
        --mixed_precision no benchmarks/branch_switch.py --sizes 5M --budget 40     # FSDP2 on 2 CPU processes
    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml --num_processes 2 \
        --mixed_precision no benchmarks/branch_switch.py --sizes 5M --budget 40     # ZeRO-2 (or zero3.yaml)

A WSD run with budgets [B/2, B] (one side branch, decaying over 10 % of its budget) is trained with
``branch_restore="device"`` (in memory) and ``"checkpoint"`` (save at the branch point, restart ``train()``),
interleaved, for each model size. Measured with callbacks, so the trainer carries no timers:

- switch out: from the end of the branch point's update to the branch's start (the main branch's resumable
  checkpoint, written in both modes, plus the snapshot in memory mode);
- switch back: from the end of the branch's budget (folder written, subscribers done) to the main branch's next
  update (restore in place, or restart ``train()`` from the checkpoint);
- the branch's own updates.

Reports seconds per switch, the switch as a share of this branch's compute, and the smallest budget for which a
branch decaying 10 % of it pays at most 1 % for its switch (the goal): ``switch / (0.01 × 0.1 × update time)``.
The switch costs the same whatever the branch's length, so its share falls as budgets grow. Under a launch (FSDP2,
several processes, DeepSpeed) every rank trains in one shared folder and the main process prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from hf_wsd import BudgetCallback, WSDConfig, WSDTrainer

SEQ, BATCH = 128, 4
SIZES = {  # hidden, layers, heads, vocabulary
    "5M": (192, 4, 4, 8192),  # 4.9M parameters (untied embeddings)
    "50M": (512, 12, 8, 8192),  # 46M
    "124M": (768, 12, 12, 49152),  # recipes/llama-124m (the GPU check)
}


class SwitchTimer(BudgetCallback):
    """Times the branch's switch out, its updates and the switch back (see the module docstring)."""

    priority = -1000  # after every other subscriber: the budget is done when on_budget_reached reaches us

    def __init__(self):
        self.out, self.back, self.branch_updates = [], [], 0.0
        self._step_end = self._step_begin = self._budget_done = None
        self._in_branch = False

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._budget_done is not None:
            self.back.append(now - self._budget_done)
            self._budget_done = None
        self._step_begin = now

    def on_step_end(self, args, state, control, **kwargs):
        self._step_end = time.perf_counter()
        if self._in_branch:
            self.branch_updates += self._step_end - self._step_begin

    def on_branch_begin(self, args, state, control, **kwargs):
        self.out.append(time.perf_counter() - self._step_end)
        self._in_branch = True

    def on_budget_reached(self, args, state, control, *, event, **kwargs):
        if event.budget.branch:
            self._in_branch = False
            self._budget_done = time.perf_counter()


def model(size: str) -> LlamaForCausalLM:
    hidden, layers, heads, vocab = SIZES[size]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=SEQ)
    return LlamaForCausalLM(config)


def run(size: str, mode: str, budget: int, train: Dataset, cuda: bool = False) -> SwitchTimer:
    timer = SwitchTimer()
    # DeepSpeed joins on CPU processes only with use_cpu=False and gloo (what the recipes set there)
    device = {"use_cpu": False, "ddp_backend": None if cuda else "gloo"} if _deepspeed() else {"use_cpu": not cuda}
    with _shared_folder(f"{size}-{mode}") as out:
        args = WSDConfig(
            output_dir=out, budgets=[str(budget // 2), str(budget)], schedule="wsd", decay_fraction=0.1, warmup_steps=2,
            learning_rate=1e-3, per_device_train_batch_size=BATCH, logging_steps=10, save_steps=10**6, report_to="none",
            budget_eval=False, **device, bf16=cuda, disable_tqdm=True, seed=0, branch_restore=mode,
            log_throughput=False,
        )
        WSDTrainer(model=model(size), args=args, train_dataset=train, callbacks=[timer]).train()
    return timer


def _deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"


class _shared_folder:
    """A temporary output folder every rank of a launch agrees on (one process: a plain temporary folder)."""

    def __init__(self, name: str):
        self.launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.path = Path(tempfile.gettempdir()) / f"hf_wsd-branch-switch-{os.environ.get('MASTER_PORT')}-{name}"
        self.temporary = None if self.launched else tempfile.TemporaryDirectory()

    def __enter__(self) -> str:
        return str(self.path) if self.launched else self.temporary.name

    def __exit__(self, *exc) -> None:
        if not self.launched:
            self.temporary.cleanup()
        elif os.environ.get("RANK") == "0":
            shutil.rmtree(self.path, ignore_errors=True)  # the next run with this name starts afresh
        if self.launched:
            import torch.distributed as dist

            dist.barrier()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["5M", "50M"], choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=100, help="the last budget; the branch decays 10%% of half of it")
    parser.add_argument("--cuda", action="store_true", help="train on the GPU in bf16")
    cli = parser.parse_args(argv)
    ids = torch.randint(0, 8192, (512, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    train = Dataset.from_dict({"input_ids": ids})
    where = torch.cuda.get_device_name() if cli.cuda else f"CPU ({torch.get_num_threads()} threads)"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        engine = ("DeepSpeed " + os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") if _deepspeed()
                  else "FSDP2" if os.environ.get("ACCELERATE_USE_FSDP") == "true" else "DDP")
        where += f", {world} processes ({engine})"
    show = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)
    show(f"WSD budgets [{cli.budget // 2}, {cli.budget}], one branch of {round(0.1 * cli.budget / 2)} updates, "
         f"batch {BATCH}×{SEQ}, {where}, {cli.rounds} interleaved rounds")
    show(f"{'size':<5} {'mode':<11} {'params':>8} {'switch out s':>13} {'switch back s':>14} {'branch s':>9} "
         f"{'switch / branch':>16} {'budget for ≤1 %':>16}")
    for size in cli.sizes:
        results: dict[str, list[SwitchTimer]] = {"device": [], "checkpoint": []}
        for round_ in range(cli.rounds):
            for mode in (["device", "checkpoint"] if round_ % 2 == 0 else ["checkpoint", "device"]):
                results[mode].append(run(size, mode, cli.budget, train, cli.cuda))
        params = sum(p.numel() for p in model(size).parameters())
        for mode, timers in results.items():
            out = statistics.median(t.out[0] for t in timers)
            back = statistics.median(t.back[0] for t in timers)
            branch = statistics.median(t.branch_updates for t in timers)
            per_update = branch / round(0.1 * cli.budget / 2)
            smallest = (out + back) / (0.01 * 0.1 * per_update)  # updates: its 10 % branch costs 100 × the switch
            show(f"{size:<5} {mode:<11} {params / 1e6:>7.1f}M {out:>13.3f} {back:>14.3f} {branch:>9.2f} "
                 f"{(out + back) / branch:>16.3f} {smallest:>16,.0f}")


if __name__ == "__main__":
    main()
