"""Pretrain a causal LM with WSD / WSD-S: one launch, one decayed, evaluated checkpoint per budget.

    accelerate launch recipes/pretrain.py                                   # the embedded default, offline
    accelerate launch recipes/pretrain.py recipes/llama-tiny/pretrain/config_wsd_s.yaml --schedule wsd
    accelerate launch recipes/pretrain.py CONFIG.yaml --budgets 1000 2000 --corpus ./my_texts/

Every field of the YAML file can be overridden on the command line (`--field value`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, HfArgumentParser, LlamaConfig, LlamaForCausalLM, set_seed

from hf_wsd import WSDConfig, WSDTrainer
from hf_wsd.data import build_lm_datasets

DEFAULT_CONFIG = Path(__file__).parent / "llama-tiny" / "pretrain" / "config_wsd_s.yaml"
logger = logging.getLogger("recipes.pretrain")


@dataclass
class DataArguments:
    corpus: str = field(default="kjv", metadata={"help": "'kjv' (embedded), 'shakespeare', a local path or a datasets name."})
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a datasets corpus."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a datasets corpus."})
    text_column: str = field(default="text", metadata={"help": "Text column of a datasets or JSONL corpus."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to load; default: train a byte-level BPE."})
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the trained tokenizer."})
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    heldout_fraction: float = field(default=0.05, metadata={"help": "Share of documents held out for evaluation."})
    max_eval_blocks: int | None = field(default=64, metadata={"help": "Held-out blocks scored per budget (None: all)."})
    bundled_tasks: bool = field(default=True, metadata={"help": "Build the offline benchmarks from held-out documents."})
    bundled_task_examples: int = field(default=200, metadata={"help": "Examples per bundled benchmark."})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from these weights (continual pretraining)."})
    config_name: str | None = field(default=None, metadata={"help": "Architecture to train from scratch (AutoConfig name or path)."})
    hidden_size: int = field(default=128, metadata={"help": "Default Llama: hidden size."})
    intermediate_size: int = field(default=352, metadata={"help": "Default Llama: MLP size."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Default Llama: layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Default Llama: attention heads."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Default Llama: key/value heads."})


def parse(argv: list[str]) -> tuple[DataArguments, ModelArguments, WSDConfig]:
    """YAML file (first argument, else the embedded default) overridden by `--field value` arguments."""
    config_path = Path(argv[0]) if argv and argv[0].endswith((".yaml", ".yml")) else DEFAULT_CONFIG
    overrides = argv[1:] if argv and argv[0].endswith((".yaml", ".yml")) else argv
    parser = HfArgumentParser((DataArguments, ModelArguments, WSDConfig))
    defaults = yaml.safe_load(config_path.read_text()) or {}
    known = {f.dest for f in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in {config_path}")
    # Without a GPU, transformers only joins a multi-process (gloo) launch when told to use the CPU.
    parser.set_defaults(use_cpu=not torch.cuda.is_available())
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=overrides)


def add_bundled_tasks(args: WSDConfig, data_args: DataArguments, data) -> None:
    """Build the offline benchmarks from the held-out documents and add them to the config's eval tasks."""
    if not (args.budget_eval and data_args.bundled_tasks):
        return
    from hf_wsd.tasks import build_bundled_tasks

    task_dir = Path(args.output_dir) / "eval_tasks"
    names = build_bundled_tasks(
        data.heldout_documents, task_dir, data_args.bundled_task_examples, args.seed, train_documents=data.train_documents
    )
    args.eval_task_paths = [*args.eval_task_paths, str(task_dir)]
    args.eval_tasks = [*args.eval_tasks, *[n for n in names if n not in args.eval_tasks]]


def build_model(model_args: ModelArguments, tokenizer, block_size: int):
    if model_args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, vocab_size=len(tokenizer))
        return AutoModelForCausalLM.from_config(config)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_key_value_heads,
        max_position_embeddings=block_size,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def main(argv: list[str]) -> WSDTrainer:
    data_args, model_args, args = parse(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)

    data = build_lm_datasets(
        corpus=data_args.corpus,
        tokenizer=data_args.tokenizer_name,
        vocab_size=data_args.vocab_size,
        block_size=data_args.block_size,
        heldout_fraction=data_args.heldout_fraction,
        seed=args.seed,
        dataset_config=data_args.dataset_config,
        dataset_split=data_args.dataset_split,
        text_column=data_args.text_column,
    )
    heldout = data.heldout
    if data_args.max_eval_blocks is not None:
        heldout = heldout.select(range(min(len(heldout), data_args.max_eval_blocks)))
    add_bundled_tasks(args, data_args, data)

    model = build_model(model_args, data.tokenizer, data_args.block_size)
    trainer = WSDTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=heldout, processing_class=data.tokenizer, data_collator=data.collator)
    trainer.base_model = model_args.model_name_or_path
    if trainer.is_world_process_zero():
        print(data.describe())
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
        print(trainer.plan.describe(args.learning_rate))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if trainer.is_world_process_zero():
        print_summary(Path(args.output_dir))
    return trainer


def print_summary(output_dir: Path) -> None:
    """One row per budget: its name, training loss over the decay and every evaluation metric."""
    import json

    from hf_wsd.evaluation import format_summary, summarize

    evaluated = {row["budget"]: row for row in summarize(output_dir)}
    rows = []
    for record_path in (output_dir / "budgets").glob("*/budget.json"):
        record = json.loads(record_path.read_text())
        row = {"budget": record["name"], "step": record["step"], "train_loss": record.get("train_loss")}
        metrics = evaluated.get(record["name"], {})
        row.update({k: v for k, v in metrics.items() if k not in ("budget", "step", "tokens", "eval_seconds")})
        rows.append(row)
    print(f"\nDecayed checkpoints (from_pretrained-ready folders in {output_dir / 'budgets'}):")
    print(format_summary(sorted(rows, key=lambda row: row["step"])))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
