"""Continual SFT with WSD-S on TRL's ``SFTTrainer``: continue a checkpoint on instruction-style data, one decayed,
evaluated checkpoint per budget.

The body of ``recipes/continual_sft.py``. The YAML holds :class:`SFTDataArguments`, :class:`ContinualArguments`
(the original corpus and the baseline evaluation), ``ModelArguments`` and ``WSDSFTConfig`` (TRL's ``SFTConfig`` +
the WSD fields). ``model_name_or_path`` is a budget folder of an earlier run (its tokenizer is kept) or any
``from_pretrained`` name. ``sft_data`` is ``"kjv-verses"`` (prompt/completion pairs built offline from the KJV:
"Continue the verse: …" → the next verse) or a local JSONL in any format ``SFTTrainer`` takes.

Every budget, and the starting checkpoint, is scored on two held-out sets: the original corpus's held-out
documents in blocks (``upstream``: what is forgotten) and the held-out instruction rows (``downstream``, the loss
on completions: what is learned), plus the bundled benchmarks built from the upstream held-out documents. With
``"kjv-verses"`` the chapters are split exactly as the original run split them, so the downstream pairs come from
chapters the checkpoint never trained on. Written next to the budgets: ``{output_dir}/continual_summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import runs
from .continual import ContinualArguments, train_and_summarise, upstream_split_seed
from .parser import RecipeParser
from .setup import attention_implementation, first_blocks, machine_defaults, start_checkpoint, start_losses

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "llama-tiny" / "continual_sft" / "config_wsd_s.yaml"
logger = logging.getLogger(__name__)


@dataclass
class SFTDataArguments:
    """Parameters that control the data of the continual-SFT recipe."""

    sft_data: str = field(
        default="kjv-verses",
        metadata={"help": "'kjv-verses' (prompt/completion pairs of consecutive KJV verses, built offline) or a local "
                          "JSONL file (prompt/completion, messages or text rows)."},
    )
    verse_prompt: str = field(
        default="Continue the verse: {verse}\n",
        metadata={"help": "kjv-verses: the prompt, with {verse}; the completion is the next verse."},
    )
    heldout_fraction: float = field(
        default=0.05,
        metadata={"help": "A JSONL's share of rows held out (by hash). kjv-verses holds out the chapters the original "
                          "run held out (upstream_heldout_fraction and the original split seed)."},
    )
    max_train_examples: int | None = field(default=None, metadata={"help": "At most this many training rows."})
    max_eval_examples: int | None = field(
        default=256, metadata={"help": "Held-out instruction rows scored per budget (None: all)."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per upstream held-out block (the original run's)."})
    max_eval_blocks: int | None = field(
        default=64, metadata={"help": "Upstream held-out blocks scored per budget (None: all)."}
    )
    text_column: str = field(default="text", metadata={"help": "Text column of a JSONL upstream corpus."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer; default: the checkpoint's own."})
    bundled_tasks: bool = field(
        default=True, metadata={"help": "Build the offline benchmarks from the upstream held-out documents."}
    )
    bundled_task_examples: int = field(default=200, metadata={"help": "Examples per bundled benchmark."})


def parser() -> RecipeParser:
    from ..integrations.trl import WSDSFTConfig
    from .arguments import ModelArguments

    # TRL turns bf16 on unless told otherwise; on a CPU that is slow and not what the other recipes do.
    defaults = {"bf16": False, "gradient_checkpointing": False, **machine_defaults()}
    return RecipeParser((SFTDataArguments, ContinualArguments, ModelArguments, WSDSFTConfig), DEFAULT_CONFIG, defaults)


def upstream_documents(continual: ContinualArguments, text_column: str, seed: int) -> tuple[list[str], list[str]]:
    """The original corpus's training and held-out documents (the same split as the original run)."""
    from ..data import load_corpus, split_documents

    corpus = load_corpus(continual.upstream_corpus, text_column=text_column)
    train, heldout = split_documents(corpus.documents, continual.upstream_heldout_fraction, seed)
    return [corpus.documents[i] for i in train], [corpus.documents[i] for i in heldout]


def add_upstream_tasks(args, sft_args: SFTDataArguments, heldout: list[str], train: list[str]) -> None:
    """The bundled benchmarks from the upstream held-out documents, added to the config's eval tasks."""
    if not (args.budget_eval and sft_args.bundled_tasks):
        return
    from ..tasks import build_bundled_tasks

    task_dir = Path(args.output_dir) / runs.TASKS_DIR
    names = build_bundled_tasks(heldout, task_dir, sft_args.bundled_task_examples, args.seed, train_documents=train)
    args.eval_task_paths = [*args.eval_task_paths, str(task_dir)]
    args.eval_tasks = [*args.eval_tasks, *[n for n in names if n not in args.eval_tasks]]


def as_token_lists(blocks):
    """Packed blocks (a fixed-length ``input_ids`` column) as variable-length lists, the type TRL's packing takes."""
    from datasets import List, Value

    return blocks.cast_column("input_ids", List(Value("int32")))


def check_lengths(max_length: int | None, block_size: int, context: int | None) -> None:
    """Rows (``max_length``) and upstream blocks (``block_size``) must fit the model's context, checked before any
    compute (a longer row would run past the position embeddings the checkpoint was trained with)."""
    if context is None:
        return
    if max_length is None or max_length > context:
        raise ValueError(
            f"`max_length`={max_length} exceeds the model's context of {context} tokens: set max_length <= {context}."
        )
    if block_size > context:
        raise ValueError(f"`block_size`={block_size} exceeds the model's context of {context} tokens.")


def main(argv: Sequence[str] = ()) -> dict | None:
    """Continue the checkpoint through every budget; returns the summary on the main process (``None`` elsewhere)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from ..data import model_context_length, pack_documents
    from ..data.instructions import KJV_VERSES, load_instruction_data
    from ..integrations.trl import WSDSFTTrainer

    sft_args, continual, model_args, args = parser().parse(argv)
    base = start_checkpoint(model_args, "continual SFT")
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(sft_args.tokenizer_name or base)
    split_seed = upstream_split_seed(continual, base, args.seed)
    kjv = sft_args.sft_data == KJV_VERSES
    sft = load_instruction_data(
        sft_args.sft_data,
        heldout_fraction=continual.upstream_heldout_fraction if kjv else sft_args.heldout_fraction,
        seed=split_seed if kjv else args.seed,
        template=sft_args.verse_prompt,
        max_train_rows=sft_args.max_train_examples,
        max_heldout_rows=sft_args.max_eval_examples,
    )
    upstream_train, upstream_heldout = upstream_documents(continual, sft_args.text_column, split_seed)
    upstream = pack_documents(upstream_heldout, tokenizer, sft_args.block_size)
    eval_dataset = {
        "upstream": as_token_lists(first_blocks(upstream, sft_args.max_eval_blocks)), "downstream": sft.heldout,
    }
    add_upstream_tasks(args, sft_args, upstream_heldout, upstream_train)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation=attention_implementation(
        model_args.attn_implementation))
    check_lengths(args.max_length, sft_args.block_size, model_context_length(model.config))
    trainer = WSDSFTTrainer(
        model=model, args=args, train_dataset=sft.train, eval_dataset=eval_dataset, processing_class=tokenizer
    )
    start = start_losses(trainer) if continual.baseline_eval else None
    if trainer.is_world_process_zero():
        logger.info("%s", sft.describe())
        logger.info("upstream held-out (%s, split seed %d): %d blocks", continual.upstream_corpus, split_seed,
                    len(upstream))
    return train_and_summarise(trainer, start, base)
