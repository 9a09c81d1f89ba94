"""A tiny, fast, deterministic WSD run: shared by the tests and run as a script by the kill-and-resume tests.

    python tests/_tiny.py OUTPUT_DIR --budgets 20 40 --schedule wsd [--kill-at 19] [--resume]
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

VOCAB, SEQ = 64, 16


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=SEQ,
    )
    return LlamaForCausalLM(config)


def tiny_data(n: int = 96, seed: int = 0) -> Dataset:
    """Random token blocks; 96 examples at batch 4 make an epoch of 24 updates, so runs cross epochs."""
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def tiny_config(output_dir, budgets, schedule="wsd-s", **overrides):
    from hf_wsd import WSDConfig

    settings = dict(
        output_dir=str(output_dir), budgets=[str(b) for b in budgets], schedule=schedule, warmup_steps=4,
        learning_rate=1e-2, per_device_train_batch_size=4, logging_steps=1, save_steps=1000, report_to="none",
        budget_eval=False, use_cpu=True, disable_tqdm=True, seed=0,
    )
    settings.update(overrides)
    return WSDConfig(**settings)


def tiny_trainer(output_dir, budgets, schedule="wsd-s", callbacks=None, **overrides):
    from hf_wsd import WSDTrainer

    args = tiny_config(output_dir, budgets, schedule, **overrides)
    return WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_data(), callbacks=callbacks)


class KillAt(TrainerCallback):
    """SIGKILL this process right after update ``step`` (no clean-up, like a node failure)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--budgets", nargs="+", required=True)
    parser.add_argument("--schedule", default="wsd-s")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--save-steps", type=int, default=1000)
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()
    callbacks = [KillAt(cli.kill_at)] if cli.kill_at is not None else None
    trainer = tiny_trainer(cli.output_dir, cli.budgets, cli.schedule, callbacks=callbacks, save_steps=cli.save_steps)
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
