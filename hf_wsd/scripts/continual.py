"""Continual pretraining with WSD-S: start from a checkpoint, re-warm the LR, one decayed budget per budget on new text.

The body of ``recipes/continual_pretrain.py``. The YAML holds the pretraining fields (data, model, ``WSDConfig``)
plus :class:`ContinualArguments`. ``model_name_or_path`` is a budget folder of an earlier run or any
``from_pretrained`` name; its tokenizer is kept. ``corpus`` is the new (downstream) text. Every budget, and the
starting checkpoint, is scored on two held-out sets: the original corpus's (upstream: what is forgotten) and the
new corpus's (downstream: what is learned). Written next to the budgets: ``{output_dir}/continual_summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import runs
from ..config import WSDConfig
from .arguments import DataArguments, ModelArguments
from .parser import RecipeParser
from .setup import (
    add_bundled_tasks,
    build_model,
    fill_card_fields,
    first_blocks,
    load_data,
    machine_defaults,
    start_checkpoint,
    start_losses,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "llama-tiny" / "continual" / "config_lora_wsd_s.yaml"
SUMMARY_FILE = "continual_summary.json"
logger = logging.getLogger(__name__)


@dataclass
class ContinualArguments:
    """Parameters of the continual-pretraining recipe: the original corpus and the baseline evaluation."""

    upstream_corpus: str = field(
        default="kjv",
        metadata={"help": "Corpus the checkpoint was pretrained on; its held-out documents measure forgetting."},
    )
    upstream_heldout_fraction: float = field(default=0.05, metadata={"help": "heldout_fraction of the original run."})
    upstream_split_seed: int | None = field(
        default=None,
        metadata={
            "help": (
                "Seed of the original run's document split; default: `seed` in the checkpoint's budget.json, "
                "else `seed`."
            ),
        },
    )
    baseline_eval: bool = field(
        default=True,
        metadata={"help": "Score the starting checkpoint on both held-out sets before training."},
    )


def parser() -> RecipeParser:
    return RecipeParser(
        (ContinualArguments, DataArguments, ModelArguments, WSDConfig), DEFAULT_CONFIG, machine_defaults()
    )


def upstream_split_seed(continual: ContinualArguments, model_name_or_path: str, seed: int) -> int:
    """The seed of the original run's document split: given, else the checkpoint's ``budget.json``, else ``seed``."""
    if continual.upstream_split_seed is not None:
        return continual.upstream_split_seed
    if (Path(model_name_or_path) / runs.BUDGET_FILE).is_file():
        return runs.read_budget(model_name_or_path).get("seed", seed)
    return seed


def upstream_heldout(continual: ContinualArguments, tokenizer, block_size: int, text_column: str, seed: int):
    """The original corpus's held-out documents (the same split as the original run), packed."""
    from ..data import load_corpus, pack_documents, split_documents

    corpus = load_corpus(continual.upstream_corpus, text_column=text_column)
    _, heldout = split_documents(corpus.documents, continual.upstream_heldout_fraction, seed)
    return pack_documents([corpus.documents[i] for i in heldout], tokenizer, block_size)


def heldout_losses(budget: runs.BudgetRecord) -> dict[str, float]:
    """``{"upstream": loss, "downstream": loss}`` from a budget's ``eval_results.json``."""
    results = (budget.evaluation or {}).get("results", [])
    return {
        r["task"].removeprefix("heldout_"): r["value"]
        for r in results
        if r["task"].startswith("heldout_") and r["metric"] == "loss"
    }


def train_and_summarise(trainer, start: dict[str, float] | None, base: str) -> dict | None:
    """Train through every budget, then write the summary on the main process (``None`` elsewhere)."""
    args = trainer.args
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if not trainer.is_world_process_zero():
        return None
    if not args.budget_eval:
        logger.warning("`budget_eval` is off: the budgets have no held-out losses to report.")
    return write_summary(Path(args.output_dir), start, base)


def write_summary(output_dir: Path, start: dict[str, float] | None, base: str) -> dict:
    """Upstream / downstream held-out loss of the start and of every budget, written to ``continual_summary.json``."""
    rows = [
        {"budget": b.name, "step": b.step, "tokens": b.record["tokens"], **heldout_losses(b)}
        for b in runs.budget_records(output_dir)
    ]
    summary = {"output_dir": str(output_dir), "base_model": base, "start": start, "budgets": rows}
    runs.write_json(output_dir / SUMMARY_FILE, summary)
    return summary


def format_report(summary: dict, title: str = "Continual pretraining") -> str:
    """The summary as a table: held-out loss upstream and downstream, with the change from the start."""
    start = summary["start"]

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return f"{'—':>20}"
        delta = f" ({value - start[key]:+.3f})" if start and key in start else ""
        return f"{value:>10.4f}{delta:>10}"

    lines = [
        f"{title} from {summary['base_model']}: held-out loss (change from the start)",
        f"{'checkpoint':<26} {'upstream':>20} {'downstream':>20}",
    ]
    if start:
        lines.append(f"{'start (step 0)':<26} {cell(start, 'upstream')} {cell(start, 'downstream')}")
    lines += [f"{row['budget']:<26} {cell(row, 'upstream')} {cell(row, 'downstream')}" for row in summary["budgets"]]
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> dict | None:
    """Continue the checkpoint through every budget; returns the summary on the main process (``None`` elsewhere)."""
    from transformers import AutoTokenizer, set_seed

    from ..trainer import WSDTrainer

    continual, data_args, model_args, args = parser().parse(argv)
    base = start_checkpoint(model_args, "continual pretraining")
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or base)  # the original tokenizer
    fill_card_fields(data_args, args)
    data = load_data(data_args, args, tokenizer=tokenizer)
    split_seed = upstream_split_seed(continual, base, args.seed)
    upstream = upstream_heldout(continual, tokenizer, data_args.block_size, data_args.text_column, split_seed)
    eval_dataset = {
        "upstream": first_blocks(upstream, data_args.max_eval_blocks),
        "downstream": first_blocks(data.heldout, data_args.max_eval_blocks),
    }
    add_bundled_tasks(args, data_args, data)
    model = build_model(model_args, data)
    trainer = WSDTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=eval_dataset, processing_class=tokenizer
    )
    start = start_losses(trainer) if continual.baseline_eval else None
    if trainer.is_world_process_zero():
        logger.info(
            "upstream held-out (%s, split seed %d): %d blocks", continual.upstream_corpus, split_seed, len(upstream)
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        logger.info(
            "model: %s, %s of %s parameters trained",
            base,
            f"{trainable:,}",
            f"{sum(p.numel() for p in trainer.model.parameters()):,}",
        )
    return train_and_summarise(trainer, start, base)
