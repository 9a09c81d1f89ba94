"""Optimizer-state memory of full-precision AdamW, bitsandbytes 8-bit AdamW and LoRA, as WSDTrainer builds them.

    python benchmarks/lean_memory.py                 # the default recipe's tiny Llama and a 124M-parameter Llama
    python benchmarks/lean_memory.py --sizes tiny

For each model and setting, the Trainer's own optimizer (``optim=...``, with its "embeddings in 32-bit" rule for
8-bit optimizers) takes one step, then every tensor it keeps is counted: that is the optimizer state a
checkpoint's ``optimizer.pt`` holds (its size on disk is printed too). LoRA: rank 16 on every linear layer.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_wsd import WSDConfig, WSDTrainer  # noqa: E402

SIZES = {
    # recipes/llama-tiny/pretrain/config_wsd_s.yaml (4,096-token vocabulary, tied embeddings)
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    # GPT-2-small-sized Llama (32,000-token vocabulary, untied)
    "124M": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12,
                 num_key_value_heads=12, tie_word_embeddings=False),
}
SETTINGS = [
    ("full, adamw_torch", "adamw_torch", False),
    ("full, adamw_bnb_8bit", "adamw_bnb_8bit", False),
    ("full, paged_adamw_8bit", "paged_adamw_8bit", False),
    ("LoRA r16, adamw_torch", "adamw_torch", True),
    ("LoRA r16, adamw_bnb_8bit", "adamw_bnb_8bit", True),
]


def measure(size: str, optim: str, lora: bool, workdir: str) -> dict:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=128, **SIZES[size]))
    args = WSDConfig(
        output_dir=workdir, budgets=["10"], optim=optim, use_cpu=True, report_to="none", budget_eval=False,
        use_peft=lora, lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_target_modules=["all-linear"],
    )
    trainer = WSDTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    inner = getattr(optimizer, "optimizer", optimizer)
    state_bytes = 0
    eight_bit = 0
    for p in params:
        state = inner.state[p]
        state_bytes += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
        if state.get("state1") is not None and state["state1"].dtype == torch.uint8:
            eight_bit += p.numel()
    buffer = io.BytesIO()
    torch.save(inner.state_dict(), buffer)
    trainable = sum(p.numel() for p in params)
    return {
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable": trainable,
        "state_bytes": state_bytes,
        "bytes_per_trainable": state_bytes / trainable,
        "eight_bit_share": eight_bit / trainable,
        "optimizer_pt_bytes": buffer.getbuffer().nbytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    cli = parser.parse_args()
    print(f"{'model':<6} {'setting':<26} {'params':>11} {'trainable':>11} {'in 8-bit':>9} "
          f"{'optimizer state':>16} {'bytes/trainable':>16} {'optimizer.pt':>13}")
    for size in cli.sizes:
        for label, optim, lora in SETTINGS:
            with tempfile.TemporaryDirectory() as workdir:
                row = measure(size, optim, lora, workdir)
            print(f"{size:<6} {label:<26} {row['parameters']:>11,} {row['trainable']:>11,} "
                  f"{row['eight_bit_share']:>8.0%} "
                  f"{row['state_bytes'] / 2**20:>12.2f} MiB {row['bytes_per_trainable']:>16.2f} "
                  f"{row['optimizer_pt_bytes'] / 2**20:>9.2f} MiB", flush=True)


if __name__ == "__main__":
    main()
