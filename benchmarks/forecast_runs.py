"""Held-out runs for cross-schedule forecasts: the recipe's tiny Llama on KJV, trained in a plain PyTorch loop.

    python benchmarks/forecast_runs.py --out /tmp/fc-cross [--seeds 42 1] [--lrs 1.5e-3 3e-3 6e-3] [--horizon 200]

For every (seed, peak LR) it trains one run per schedule to ``2 × horizon`` updates — WSD-S (budgets every
``horizon / 2`` updates), WSD (one budget, its decay at the end), cosine, cyclic-cosine (a period every
``horizon / 2``) — from the same initial weights and the same data order, and writes one CSV per run
(``step, learning_rate, loss``: one row per update, the loss of the weights before it). Runs already on disk are
skipped, so refits never retrain. The LR comes from :class:`hf_wsd.plan.BudgetPlan`; no hf_wsd trainer is involved,
so the runs are independent of the code that forecasts them.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from hf_wsd.plan import BudgetPlan

WARMUP = 50
DECAY_FRACTION = 0.2
BATCH = 8  # half the recipe's 16: twice the updates for the same CPU (the machine is shared)
BLOCK = 128


def plans(horizon: int) -> dict[str, BudgetPlan]:
    """The four schedules to ``2 × horizon`` updates (warmup WARMUP, linear 20 % decays to 0, as the recipe)."""
    end, half = 2 * horizon, horizon // 2
    steps = list(range(half, end + 1, half))
    common = {"warmup_steps": WARMUP, "decay_fraction": DECAY_FRACTION}
    return {
        "wsd-s": BudgetPlan(steps, "wsd-s", **common),
        "wsd": BudgetPlan([end], "wsd", **common),
        "cosine": BudgetPlan([end], "cosine", warmup_steps=WARMUP),
        "cyclic-cosine": BudgetPlan(steps, "cyclic-cosine", warmup_steps=WARMUP),
    }


def train(plan: BudgetPlan, seed: int, peak_lr: float, path: Path) -> float:
    """Train one run along ``plan``'s main path; write its per-update CSV; return the wall seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_wsd.data import build_lm_datasets

    started = time.perf_counter()
    torch.manual_seed(seed)
    data = build_lm_datasets(corpus="kjv", vocab_size=4096, block_size=BLOCK, seed=seed)
    tokenizer = data.tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=BLOCK,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1)
    updates = plan.budgets[-1].step
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    rows = []
    model.train()
    for n in range(updates):
        lr = peak_lr * plan.lr_ratio(n)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = order[(n * BATCH + torch.arange(BATCH)) % len(order)].tolist()
        batch = torch.tensor([data.train[i]["input_ids"] for i in index], dtype=torch.long)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        rows.append((n + 1, lr, loss.item()))
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("step", "learning_rate", "loss"))
        writer.writerows(rows)
    partial.replace(path)
    return time.perf_counter() - started


def run_path(out: Path, schedule: str, seed: int, peak_lr: float) -> Path:
    return out / f"{schedule}-lr{peak_lr:g}-seed{seed}.csv"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1.5e-3, 3e-3, 6e-3])
    parser.add_argument("--horizon", type=int, default=200, help="H: forecasts are fitted to H and made at 2H")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps({"horizon": args.horizon, "warmup": WARMUP}, indent=1))
    for seed in args.seeds:  # seed-major: a partial set still holds every peak LR of the first seed
        for peak_lr in args.lrs:
            for schedule, plan in plans(args.horizon).items():
                path = run_path(args.out, schedule, seed, peak_lr)
                if path.is_file():
                    continue
                seconds = train(plan, seed, peak_lr, path)
                print(f"{path.name}: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
