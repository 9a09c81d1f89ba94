"""Compare WSD-S, WSD, cyclic-cosine and a per-budget cosine "oracle" at small scale (Wen et al., 2024).

The body of ``recipes/compare_schedules.py``. Every method trains the same model from the same initialisation
on the same data order with the same peak LR, warmup and budgets; only ``schedule`` differs. The cosine oracle
is one separate run per budget. Every decayed checkpoint is scored on the same held-out blocks (and the bundled
tasks) by hf_wsd's BudgetEvaluator. The YAML holds the pretraining fields plus :class:`CompareArguments`
(``--quick`` picks ``config_quick.yaml``). Written under ``output_dir``:

    {method}/                       one WSDTrainer run per method; cosine/{budget}/ one run per budget
    eval_tasks/                     the bundled benchmarks, built once and shared by every run
    results.csv, results.md         one row per method and budget: held-out loss, task metrics, compute
    heldout_vs_compute.png          held-out loss of each checkpoint vs the updates spent to obtain it
    lr_schedules.png, train_loss.png
    compare.json                    the rows, the compute totals and the measured costs (updates/s, tokens/s)
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from .. import runs
from ..config import WSDConfig
from .arguments import DataArguments, ModelArguments
from .compare_report import METHODS, RUN_RECORD, report, run_dirs
from .parser import RecipeParser, split_config_argument
from .setup import add_bundled_tasks, build_model, first_blocks, load_data, machine_defaults

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "llama-tiny" / "compare"
DEFAULT_CONFIG, QUICK_CONFIG = CONFIGS / "config.yaml", CONFIGS / "config_quick.yaml"
logger = logging.getLogger(__name__)


@dataclass
class CompareArguments:
    """Parameters of the schedule comparison."""

    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={"help": "Schedules to compare: wsd-s wsd cyclic-cosine cosine (one cosine run per budget)."},
    )
    quick: bool = field(
        default=False,
        metadata={"help": "Without a YAML argument, use config_quick.yaml (a minute or two)."},
    )
    torch_threads: int | None = field(
        default=None,
        metadata={"help": "torch intra-op threads (1 is fastest on a busy machine); None: torch's default."},
    )
    reuse_runs: bool = field(
        default=True,
        metadata={"help": "Skip a method whose run in output_dir finished with the same settings."},
    )
    report_only: bool = field(
        default=False,
        metadata={"help": "Train nothing: rebuild the tables and plots from the runs in output_dir."},
    )
    wsd_decay_fraction: float | None = field(
        default=None,
        metadata={
            "help": (
                "decay_fraction of the WSD run only (None: decay_fraction). WSD decays a fraction of each budget, "
                "WSD-S of each period: with budgets doubling, half of WSD-S's fraction gives both the same decay "
                "lengths from the second budget on."
            ),
        },
    )


def parser(argv: Sequence[str]) -> RecipeParser:
    """The parser over the comparison's and the pretraining recipe's fields, its default YAML chosen by ``--quick``."""
    path, rest = split_config_argument(argv)
    quick = "--quick" in rest and (rest.index("--quick") + 1 == len(rest) or rest[rest.index("--quick") + 1] != "false")
    default = QUICK_CONFIG if quick else DEFAULT_CONFIG
    return RecipeParser(
        (CompareArguments, DataArguments, ModelArguments, WSDConfig), path or default, machine_defaults()
    )


def fingerprint(settings: dict, overrides: list[str]) -> dict:
    """What a run computes: the recipe's settings and overrides, without the comparison's own fields and without
    where it is written (finished runs can be moved and reused)."""
    own = {f.name for f in fields(CompareArguments)}
    kept, skip = [], False
    for item in overrides:
        if item.startswith("--"):
            skip = item[2:] in own or item == "--output_dir"
        if not skip:
            kept.append(item)
    return {"config": {k: v for k, v in settings.items() if k not in own}, "overrides": kept}


def train_run(recipe, argv, signature: dict, run_dir: Path, get_data, reuse: bool, **overrides) -> dict:
    """Train one run (unless an identical one already finished in ``run_dir``); returns its record.

    ``get_data()`` returns the shared (data, held-out blocks, (task paths, task names)); called only to train.
    ``overrides`` are this run's fields (schedule, budgets, and e.g. WSD's ``decay_fraction``).
    """
    from transformers import set_seed

    from ..trainer import WSDTrainer

    schedule, budgets = overrides["schedule"], overrides["budgets"]
    signature = {**signature, **overrides}
    record_path = run_dir / RUN_RECORD
    if reuse and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("signature") == signature:
            logger.info("[compare] %s %s: reusing the finished run in %s", schedule, budgets, run_dir)
            return record
    _, data_args, model_args, args = recipe.parse(argv, output_dir=run_dir, overwrite_output_dir=True, **overrides)
    if not args.budget_eval:
        raise ValueError("the comparison scores every checkpoint: `budget_eval` must be true.")
    data, heldout, tasks = get_data()
    args.eval_task_paths, args.eval_tasks = tasks
    set_seed(args.seed)  # identical initial weights for every run
    model = build_model(model_args, data)
    trainer = WSDTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=heldout, processing_class=data.tokenizer
    )
    plan = trainer.plan
    logger.info("[compare] %s %s: %d updates → %s", schedule, budgets, plan.total_compute, run_dir)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    eval_seconds = sum((b.evaluation or {}).get("seconds") or 0.0 for b in runs.budget_records(run_dir))
    train_seconds = wall - eval_seconds
    record = {
        "signature": signature,
        "schedule": schedule,
        "seed": args.seed,
        "peak_lr": args.learning_rate,
        "plan": plan.to_dict(),
        "updates": plan.total_compute,
        "tokens_per_update": plan.tokens_per_update,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "wall_seconds": round(wall, 2),
        "eval_seconds": round(eval_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "updates_per_second": plan.total_compute / train_seconds,
        "tokens_per_second": plan.total_compute * (plan.tokens_per_update or 0) / train_seconds,
        "log_history": [e for e in trainer.state.log_history if "loss" in e],
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    logger.info(
        "[compare] %s %s: %.0f s (%.0f s evaluating), %.2f updates/s, %s tokens/s",
        schedule,
        budgets,
        wall,
        eval_seconds,
        record["updates_per_second"],
        f"{record['tokens_per_second']:,.0f}",
    )
    return record


def prepare_data(data_args, args):
    """The recipe's data, the held-out blocks and the bundled tasks, built once and shared by every run."""
    data = load_data(data_args, args)
    heldout = first_blocks(data.heldout, data_args.max_eval_blocks)
    # Built once into output_dir/eval_tasks (decontaminated against the training documents) and shared:
    # every method is scored on the same items.
    add_bundled_tasks(args, data_args, data)
    paths, names = list(args.eval_task_paths), list(args.eval_tasks)
    logger.info("%s", data.describe())
    logger.info(
        "held-out evaluation: %d blocks of %d tokens; tasks: %s", len(heldout), data.block_size, names or "none"
    )
    return data, heldout, (paths, names)


def main(argv: Sequence[str] = ()) -> tuple[list[dict], str]:
    """Train every method (reusing finished runs), then write the report; returns its rows and markdown."""
    recipe = parser(argv)
    compare, data_args, model_args, args = recipe.parse(argv)
    unknown = [m for m in compare.methods if m not in METHODS]
    if unknown or not compare.methods:
        raise ValueError(f"`methods`: unknown {unknown or 'empty list'}; choose among {', '.join(METHODS)}.")
    if compare.torch_threads:
        import torch

        torch.set_num_threads(compare.torch_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    budgets = list(args.budgets)
    tokens_per_update = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * data_args.block_size
    )
    reference = recipe.parse(argv, schedule="wsd-s")[3].build_plan(tokens_per_update)
    if not compare.report_only:
        signature = fingerprint(*recipe.config(argv))
        get_data = functools.cache(lambda: prepare_data(data_args, args))
        for method in compare.methods:
            for run_dir, run_budgets in run_dirs(output_dir, method, budgets):
                own = (
                    {"decay_fraction": compare.wsd_decay_fraction}
                    if method == "wsd" and compare.wsd_decay_fraction
                    else {}
                )
                train_run(
                    recipe,
                    argv,
                    signature,
                    run_dir,
                    get_data,
                    compare.reuse_runs,
                    schedule=method,
                    budgets=run_budgets,
                    **own,
                )
    return report(output_dir, compare.methods, budgets, reference, (data_args, model_args, args))
