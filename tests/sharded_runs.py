"""Several tiny WSD runs in ONE sharded launch (a launch costs ~10 s of imports): the driver of tests/test_sharded.py.

    accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/sharded_runs.py ROOT --engine fsdp2 --phase first      # then --phase second (after the SIGKILL)

Phase ``first`` trains, under ``ROOT``: ``memory`` (WSD [10, 20], ``branch_restore="auto"``), ``checkpoint`` (the
same, from checkpoints), ``alone`` (WSD [20]), and last ``killed`` (WSD [10, 20], SIGKILLed on every rank inside the
branch of budget 20). Phase ``second`` resumes ``killed``, extends the finished ``memory`` run to [10, 20, 30] and
trains ``alone30`` (WSD [30]). Phase ``ddp`` trains ``ddp`` (WSD [10, 20]) with whatever engine the launch gives (the
two-"machine" launch). The pytest side compares the folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import tiny_config, tiny_data, tiny_model  # noqa: E402

KILL_AT = 19  # inside the branch of budget 20 (it decays over updates 18-20)


def engine_settings(engine: str) -> dict:
    """TrainingArguments each engine needs on CPU processes (what the recipes' machine defaults set)."""
    if engine.startswith("zero"):
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


def killer(step: int):
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAt()


def train(root: Path, name: str, budgets, engine: str, resume: bool = False, callbacks=(), **overrides):
    from hf_wsd import WSDTrainer

    args = tiny_config(root / name, budgets, "wsd", **engine_settings(engine), **overrides)
    trainer = WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data(), callbacks=list(callbacks))
    if engine == "zero3":  # tiny parameters stay whole under the default threshold: make them really partition
        trainer.accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"][
            "stage3_param_persistence_threshold"] = 0
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.is_world_process_zero():
        record = {"engine": trainer.engine, "branch_restore": trainer.branch_restore,
                  "world_size": trainer.args.world_size}
        (root / name / "driver.json").write_text(json.dumps(record))
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--engine", required=True, choices=["fsdp2", "zero2", "zero3", "ddp"])
    parser.add_argument("--phase", required=True, choices=["first", "second", "ddp"])
    cli = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, engine = cli.root, cli.engine
    if cli.phase == "ddp":
        train(root, "ddp", (10, 20), engine)
    elif cli.phase == "first":
        train(root, "memory", (10, 20), engine)
        train(root, "checkpoint", (10, 20), engine, branch_restore="checkpoint")
        train(root, "alone", (20,), engine)
        train(root, "killed", (10, 20), engine, callbacks=[killer(KILL_AT)])
    else:
        train(root, "killed", (10, 20), engine, resume=True)
        train(root, "memory", (10, 20, 30), engine, resume=True)
        train(root, "alone30", (30,), engine)


if __name__ == "__main__":
    main()
