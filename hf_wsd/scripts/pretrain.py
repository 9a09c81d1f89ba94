"""Pretrain a causal LM with WSD / WSD-S: one launch, one decayed, evaluated checkpoint per budget.

The body of ``recipes/pretrain.py`` (``accelerate launch recipes/pretrain.py [CONFIG.yaml] [--field value ...]``);
with no arguments it runs the embedded default, offline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..config import WSDConfig
from .arguments import DataArguments, ModelArguments
from .parser import RecipeParser
from .setup import (
    add_bundled_tasks, build_model, fill_card_fields, first_blocks, load_data, load_side_corpora, machine_defaults,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "llama-tiny" / "pretrain" / "config_wsd_s.yaml"
logger = logging.getLogger(__name__)


def parser() -> RecipeParser:
    return RecipeParser((DataArguments, ModelArguments, WSDConfig), DEFAULT_CONFIG, machine_defaults())


def main(argv: Sequence[str] = ()):
    """Train every budget of the config; returns the trainer (its ``output_dir`` holds the budgets)."""
    return run(*parser().parse(argv))


def run(data_args: DataArguments, model_args: ModelArguments, args: WSDConfig, train_transform=None):
    """Data, model and trainer of parsed recipe arguments, then every budget; returns the trainer.

    ``train_transform(data, side_corpora)`` may replace the training blocks (comparison recipes use it)."""
    from transformers import set_seed

    from ..data import validate_for_model
    from ..quiet import follow_replica_log_level
    from ..trainer import WSDTrainer

    follow_replica_log_level(args)  # `--log_level_replica` applies to data preparation too, not only training
    set_seed(args.seed)
    fill_card_fields(data_args, args)
    data = load_data(data_args, args)
    add_bundled_tasks(args, data_args, data)
    model = build_model(model_args, data)
    decay, evaluated = load_side_corpora(data_args, args, data)  # after the model: its initial weights stay the same
    for side in evaluated.values():
        validate_for_model(side, model.config)
    heldout = first_blocks(data.heldout, data_args.max_eval_blocks)
    if evaluated:  # one held-out loss per corpus: heldout_{name} in eval_results.json
        heldout = {data.corpus: heldout, **{n: first_blocks(d.heldout, data_args.max_eval_blocks)
                                            for n, d in evaluated.items()}}
    train = data.train if train_transform is None else train_transform(data, evaluated)
    trainer = WSDTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=heldout, processing_class=data.tokenizer,
        decay_datasets={name: side.train for name, side in decay.items()} or None,
    )
    if trainer.is_world_process_zero():
        logger.info("model: %s parameters", f"{sum(p.numel() for p in model.parameters()):,}")
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return trainer
