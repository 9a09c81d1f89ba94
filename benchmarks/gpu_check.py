"""The GPU figures of the README, in one run on one CUDA GPU (called by benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py [--updates 40] [--rounds 2]

1. Throughput of the ~124M Llama of recipes/llama-124m in bf16: WSDTrainer (throughput/MFU logging on) vs
   Trainer(lr_scheduler_type="warmup_stable_decay"), interleaved; median update time, tokens/s and MFU.
2. A WSD branch switch at that size: in memory vs the checkpoint path (benchmarks/branch_switch.py).
3. A checkpoint every 10 updates at that size: background vs synchronous vs none (benchmarks/checkpoint_cost.py).

Random token blocks (no tokenizer, no corpus): this measures the training step, not the data.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from hf_wsd import WSDConfig, WSDTrainer

VOCAB, SEQ, BATCH = 49152, 1024, 16
COMMON = dict(learning_rate=3e-3, per_device_train_batch_size=BATCH, logging_steps=10, report_to="none", bf16=True,
              disable_tqdm=True, seed=0, save_strategy="no", optim="adamw_torch_fused", dataloader_drop_last=True)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=SEQ,
                         tie_word_embeddings=True)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def run(kind: str, updates: int, train: Dataset) -> tuple[list[float], dict]:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        if kind == "Trainer":
            args = TrainingArguments(output_dir=out, max_steps=updates, warmup_steps=5,
                                     lr_scheduler_type="warmup_stable_decay",
                                     lr_scheduler_kwargs={"num_decay_steps": updates // 5}, **COMMON)
            trainer = Trainer(model=model(), args=args, train_dataset=train, callbacks=[timer])
        else:
            budgets = [str(updates // 2), str(updates)]
            args = WSDConfig(output_dir=out, budgets=budgets, warmup_steps=5, decay_fraction=0.2, budget_eval=False,
                             budget_forecast=False, **{**COMMON, "save_strategy": "steps", "save_steps": 10**6})
            trainer = WSDTrainer(model=model(), args=args, train_dataset=train, callbacks=[timer])
        trainer.train()
    logged = [e for e in trainer.state.log_history if "mfu" in e or "tokens_per_second" in e]
    return timer.times[3:], (logged[-1] if logged else {})  # the first updates pay for kernel selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    cli = parser.parse_args()
    ids = torch.randint(0, VOCAB, (BATCH * cli.updates, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    train = Dataset.from_dict({"input_ids": ids, "labels": ids})
    times: dict[str, list[float]] = {"Trainer": [], "WSDTrainer": []}
    figures = {}
    for round_ in range(cli.rounds):
        for kind in (["Trainer", "WSDTrainer"] if round_ % 2 == 0 else ["WSDTrainer", "Trainer"]):
            step_times, last = run(kind, cli.updates, train)
            times[kind] += step_times
            if kind == "WSDTrainer":
                figures = last
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens = BATCH * SEQ
    print(f"[throughput] {torch.cuda.get_device_name()}, ~124M Llama, bf16, batch {BATCH}×{SEQ}, {cli.rounds} rounds")
    for kind, seconds in median.items():
        print(f"[throughput] {kind:<11} median update {seconds * 1e3:8.1f} ms  {tokens / seconds:>10,.0f} tokens/s")
    print(f"[throughput] ratio WSDTrainer / Trainer per update: {median['WSDTrainer'] / median['Trainer']:.3f}")
    print(f"[throughput] WSDTrainer's own log: {figures}")

    import branch_switch

    branch_switch.main(["--sizes", "124M", "--rounds", "1", "--budget", "60", "--cuda"])

    import checkpoint_cost

    checkpoint_cost.main(["--sizes", "124M", "--rounds", "1", "--cuda"])


if __name__ == "__main__":
    main()
