"""Helpers of the bf16 / torch.compile and asynchronous-checkpoint tests.

Run as a script it is the tiny run that the mid-write kill tests SIGKILL:

    python tests/precision_helpers.py OUTPUT_DIR --budgets 20 40 --schedule wsd-s --save-steps 10 \
        [--kill-at 22] [--slow-write-step 20] [--bf16] [--compile] [--gpu]

``--slow-write-step N`` makes the background writer of ``checkpoint-N`` stop for a minute after the model's files
(before ``optimizer.pt`` and ``trainer_state.json``): a kill then lands in the middle of that write.
"""

from __future__ import annotations

import argparse
import time

from helpers import KillAt, tiny_trainer


def slow_write(step: int, seconds: float = 60.0) -> None:
    """Make the background write of ``checkpoint-{step}`` stop for ``seconds`` after the model's files."""
    from hf_wsd import async_checkpoints

    write_model = async_checkpoints.write_model

    def slowed(trainer, folder, state_dict):
        write_model(trainer, folder, state_dict)
        if folder.name.endswith(f"-{step}"):
            time.sleep(seconds)

    async_checkpoints.write_model = slowed


def compile_counts() -> dict[str, int]:
    """Frames torch.compile (dynamo) compiled so far in this process, and the graphs it made of them."""
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--budgets", nargs="+", required=True)
    parser.add_argument("--schedule", default="wsd-s")
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--slow-write-step", type=int)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU in bf16 with deterministic kernels")
    cli = parser.parse_args()
    if cli.slow_write_step is not None:
        slow_write(cli.slow_write_step)
    callbacks = [KillAt(cli.kill_at)] if cli.kill_at is not None else []
    device = dict(use_cpu=False, full_determinism=True) if cli.gpu else {}
    tiny_trainer(cli.output_dir, cli.budgets, cli.schedule, callbacks, save_steps=cli.save_steps,
                 bf16=cli.bf16 or cli.gpu, torch_compile=cli.compile, **device).train()
