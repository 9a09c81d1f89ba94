"""Continual pretraining with WSD-S: start from a checkpoint, re-warm the LR, one decayed budget per budget on new text.

    python recipes/pretrain.py                         # first: the default run (runs/llama-tiny-wsd-s)
    accelerate launch recipes/continual_pretrain.py    # recipes/llama-tiny/continual/config_lora_wsd_s.yaml
    accelerate launch recipes/continual_pretrain.py CONFIG.yaml --model_name_or_path NAME_OR_FOLDER --use_peft false

The YAML holds the pretraining recipe's fields (recipes/pretrain.py: data, model, WSDConfig) plus this script's
own (`upstream_*`, `baseline_eval`). `model_name_or_path` is a budget folder of an earlier run or any
`from_pretrained` name; its tokenizer is kept. `corpus` is the new (downstream) text. Every budget, and the
starting checkpoint, is scored on two held-out sets: the original corpus's (upstream: what is forgotten) and the
new corpus's (downstream: what is learned). Written next to the budgets: `{output_dir}/continual_summary.json`.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import AutoTokenizer, HfArgumentParser, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain import add_bundled_tasks, build_model, parse as parse_recipe, print_summary  # noqa: E402  (the pretraining recipe)

from hf_wsd import WSDTrainer  # noqa: E402
from hf_wsd.data import build_lm_datasets, load_corpus, pack_documents, split_documents  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "llama-tiny" / "continual" / "config_lora_wsd_s.yaml"
SUMMARY_FILE = "continual_summary.json"
logger = logging.getLogger("recipes.continual_pretrain")


@dataclass
class ContinualArguments:
    upstream_corpus: str = field(default="kjv", metadata={"help": "Corpus the checkpoint was pretrained on; its held-out documents measure forgetting."})
    upstream_heldout_fraction: float = field(default=0.05, metadata={"help": "heldout_fraction of the original run."})
    upstream_split_seed: int | None = field(default=None, metadata={"help": "Seed of the original run's document split; default: `seed` in the checkpoint's budget.json, else `seed`."})
    baseline_eval: bool = field(default=True, metadata={"help": "Score the starting checkpoint on both held-out sets before training."})


# ------------------------------------------------------------------------------------------------ config
def parse(argv: list[str]):
    """(ContinualArguments, DataArguments, ModelArguments, WSDConfig): YAML overridden by `--field value`."""
    has_yaml = bool(argv) and argv[0].endswith((".yaml", ".yml"))
    overrides = list(argv[1:] if has_yaml else argv)
    parser = HfArgumentParser(ContinualArguments, allow_abbrev=False, add_help=False)
    if "-h" in overrides or "--help" in overrides:
        print(parser.format_help().replace("usage:", "continual-pretraining fields:", 1))
        parse_recipe(["--help"])  # the pretraining recipe's fields; exits
    settings = yaml.safe_load((Path(argv[0]) if has_yaml else DEFAULT_CONFIG).read_text()) or {}
    own = {f.name for f in fields(ContinualArguments)}
    parser.set_defaults(**{key: settings.pop(key) for key in list(settings) if key in own})
    continual, rest = parser.parse_args_into_dataclasses(args=overrides, return_remaining_strings=True)
    with tempfile.TemporaryDirectory() as workdir:  # the rest is the pretraining recipe's config, parsed by it
        recipe_yaml = Path(workdir) / "recipe.yaml"
        recipe_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
        data_args, model_args, args = parse_recipe([str(recipe_yaml), *rest])
    if not model_args.model_name_or_path:
        raise ValueError(
            "`model_name_or_path` is empty: continual pretraining starts from a checkpoint, e.g. a budget folder "
            "(runs/llama-tiny-wsd-s/budgets/step800-tokens1.64M) or a from_pretrained name."
        )
    return continual, data_args, model_args, args


# ------------------------------------------------------------------------------------------------ data
def upstream_split_seed(continual: ContinualArguments, model_name_or_path: str, seed: int) -> int:
    """The seed of the original run's document split: given, else the checkpoint's ``budget.json``, else ``seed``."""
    if continual.upstream_split_seed is not None:
        return continual.upstream_split_seed
    record = Path(model_name_or_path) / "budget.json"
    if record.is_file():
        return json.loads(record.read_text()).get("seed", seed)
    return seed


def upstream_heldout(continual: ContinualArguments, tokenizer, block_size: int, text_column: str, seed: int):
    """The original corpus's held-out documents (the same split as the original run), packed."""
    corpus = load_corpus(continual.upstream_corpus, text_column=text_column)
    _, heldout = split_documents(corpus.documents, continual.upstream_heldout_fraction, seed)
    return pack_documents([corpus.documents[i] for i in heldout], tokenizer, block_size)


def first_blocks(dataset, limit: int | None):
    return dataset if limit is None else dataset.select(range(min(len(dataset), limit)))


# ------------------------------------------------------------------------------------------------ report
def heldout_losses(folder: Path) -> dict[str, float]:
    """``{"upstream": loss, "downstream": loss}`` from a budget's ``eval_results.json``."""
    path = folder / "eval_results.json"
    results = json.loads(path.read_text())["results"] if path.is_file() else []
    return {r["task"].removeprefix("heldout_"): r["value"] for r in results
            if r["task"].startswith("heldout_") and r["metric"] == "loss"}


def write_report(output_dir: Path, start: dict[str, float] | None, base: str) -> dict:
    """Upstream / downstream held-out loss of the start and of every budget: printed and ``continual_summary.json``."""
    rows = []
    for folder in (output_dir / "budgets").iterdir():
        if (folder / "budget.json").is_file():
            record = json.loads((folder / "budget.json").read_text())
            rows.append({"budget": record["name"], "step": record["step"], "tokens": record["tokens"],
                         **heldout_losses(folder)})
    rows.sort(key=lambda row: row["step"])
    summary = {"base_model": base, "start": start, "budgets": rows}
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return f"{'—':>20}"
        delta = f" ({value - start[key]:+.3f})" if start and key in start else ""
        return f"{value:>10.4f}{delta:>10}"

    print(f"\nContinual pretraining from {base}: held-out loss (change from the start)")
    print(f"{'checkpoint':<26} {'upstream':>20} {'downstream':>20}")
    if start:
        print(f"{'start (step 0)':<26} {cell(start, 'upstream')} {cell(start, 'downstream')}")
    for row in rows:
        print(f"{row['budget']:<26} {cell(row, 'upstream')} {cell(row, 'downstream')}")
    return summary


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str]) -> dict | None:
    continual, data_args, model_args, args = parse(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    base = model_args.model_name_or_path

    tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or base)  # the original tokenizer
    data = build_lm_datasets(
        corpus=data_args.corpus, tokenizer=tokenizer, block_size=data_args.block_size,
        heldout_fraction=data_args.heldout_fraction, seed=args.seed, dataset_config=data_args.dataset_config,
        dataset_split=data_args.dataset_split, text_column=data_args.text_column,
    )
    split_seed = upstream_split_seed(continual, base, args.seed)
    upstream = upstream_heldout(continual, tokenizer, data_args.block_size, data_args.text_column, split_seed)
    eval_dataset = {
        "upstream": first_blocks(upstream, data_args.max_eval_blocks),
        "downstream": first_blocks(data.heldout, data_args.max_eval_blocks),
    }
    add_bundled_tasks(args, data_args, data)

    model = build_model(model_args, tokenizer, data_args.block_size)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and data_args.block_size > positions:
        raise ValueError(f"`block_size`={data_args.block_size} exceeds the checkpoint's {positions} positions; lower it.")
    trainer = WSDTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=eval_dataset, processing_class=tokenizer, data_collator=data.collator)
    trainer.base_model = base
    start = None
    if continual.baseline_eval:
        start = {}
        for key, dataset in eval_dataset.items():
            start[key] = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=f"start_{key}")[f"start_{key}_loss"]
    if trainer.is_world_process_zero():
        print(data.describe())
        print(f"upstream held-out ({continual.upstream_corpus}, split seed {split_seed}): {len(upstream)} blocks")
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"model: {base}, {trainable:,} of {sum(p.numel() for p in trainer.model.parameters()):,} parameters trained")
        print(trainer.plan.describe(args.learning_rate))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if not trainer.is_world_process_zero():
        return None
    print_summary(Path(args.output_dir))
    if not args.budget_eval:
        logger.warning("`budget_eval` is off: the budgets have no held-out losses to report.")
    return write_report(Path(args.output_dir), start, base)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
