"""``hf-wsd``: inspect a budget plan, publish what a run left unpublished, prepare a corpus as a token folder."""

from __future__ import annotations

import argparse
import sys

from .plan import BUDGET_UNITS, SCHEDULES, BudgetPlan
from .schedules import DECAY_SHAPES


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("budgets", nargs="+", help="increasing budgets: 500 2000 or, with --unit tokens, 2.5M 1B")
    parser.add_argument("--schedule", default="wsd-s", choices=SCHEDULES)
    parser.add_argument("--unit", dest="budget_unit", default="steps", choices=BUDGET_UNITS)
    parser.add_argument("--tokens-per-update", type=int, help="batch × accumulation × world size × seq. length")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--decay-fraction", type=float)
    parser.add_argument("--decay-steps", type=int)
    parser.add_argument("--decay-shape", default="linear", choices=tuple(DECAY_SHAPES))
    parser.add_argument("--min-lr-ratio", type=float, default=0.0)
    parser.add_argument("--rewarmup-steps", type=int, default=0)
    parser.add_argument("--peak-lr", type=float, help="show absolute learning rates instead of ratios")
    parser.add_argument("--plot", metavar="PNG", help="write the LR curve to this PNG file")
    parser.add_argument("--decay-mixture", nargs="+", metavar="NAME=WEIGHT",
                        help="data mixture of every decay window, e.g. main=0.7 quality=0.3 (main: the training data)")
    parser.add_argument("--decay-mixture-per-budget", nargs="+", metavar="BUDGET:NAME=WEIGHT,...",
                        help="a mixture for one budget's window, e.g. 8000:main=0.5,quality=0.5")
    parser.add_argument("--decay-mixture-tail", type=float, help="only the last fraction of each window anneals")
    parser.add_argument("--examples-per-update", type=int,
                        help="global batch (examples per update): exact examples and tokens per source")


def _plan(args: argparse.Namespace) -> int:
    plan = BudgetPlan(
        budgets=args.budgets,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        decay_fraction=args.decay_fraction,
        decay_steps=args.decay_steps,
        decay_shape=args.decay_shape,
        min_lr_ratio=args.min_lr_ratio,
        rewarmup_steps=args.rewarmup_steps,
        budget_unit=args.budget_unit,
        tokens_per_update=args.tokens_per_update,
    )
    mixture = None
    if args.decay_mixture or args.decay_mixture_per_budget:
        from .data.mixture import MixturePlan

        mixture = MixturePlan(plan, args.decay_mixture, args.decay_mixture_per_budget, args.decay_mixture_tail,
                              args.examples_per_update or 1)
    print(plan.describe(args.peak_lr))
    if mixture is not None:
        print(mixture.describe(exact=args.examples_per_update is not None))
    if args.plot:
        from .plots import plot_lr_schedule

        print(f"LR curve written to {plot_lr_schedule(plan, args.plot, args.peak_lr)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    import logging

    from .publishing import push_pending

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return push_pending(args.output_dir, repo_id=args.repo, private=args.private)


def _prepare(args: argparse.Namespace) -> int:
    import logging
    import time

    from .data import open_corpus, tokenizer_sample, train_tokenizer, write_token_folder
    from .data.tokenizer import load_tokenizer

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.perf_counter()
    source = open_corpus(args.corpus, args.dataset_config, args.dataset_split, args.text_column, args.streaming,
                         args.cache_dir)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        sample = tokenizer_sample(source, args.max_tokenizer_documents, args.heldout_fraction, args.seed)
        tokenizer = train_tokenizer(sample, args.vocab_size, args.cache_dir, name=source.name)
    folder = write_token_folder(source, tokenizer, args.output_dir, args.heldout_fraction, args.seed, args.num_proc,
                                args.max_heldout_documents)
    import json

    meta = json.loads((folder / "metadata.json").read_text())
    seconds = time.perf_counter() - started
    print(f"wrote {folder}: {meta['train_tokens']:,} training tokens ({meta['dtype']}) "
          f"from {meta['train_documents']:,} "
          f"documents, {meta['heldout_documents_count']:,} held-out documents, in {seconds:.1f} s "
          f"({meta['train_tokens'] / seconds:,.0f} tokens/s)")
    print(f"train on it with: --corpus {folder}")
    return 0


def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "corpus", help="kjv, shakespeare, local files/folders/globs (.txt .md .jsonl .parquet) or a datasets name"
    )
    parser.add_argument("output_dir", help="token folder to write (must not exist)")
    parser.add_argument("--tokenizer", help="tokenizer name or path (default: train a byte-level BPE on a sample)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the trained tokenizer")
    parser.add_argument("--max-tokenizer-documents", type=int, default=100_000, help="tokenizer training sample")
    parser.add_argument("--heldout-fraction", type=float, default=0.05, help="share of documents held out (by hash)")
    parser.add_argument("--max-heldout-documents", type=int, default=2000, help="held-out documents kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--dataset-config", help="config name of a datasets corpus")
    parser.add_argument("--dataset-split", default="train")
    parser.add_argument("--streaming", action="store_true", help="stream the corpus instead of converting it to Arrow")
    parser.add_argument("--num-proc", type=int, help="tokenizing processes (map-style corpora)")
    parser.add_argument("--cache-dir", help="hf_wsd cache (tokenizers, Arrow conversions)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-wsd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="print the phase table of a budget plan (and plot it)")
    _add_plan_arguments(plan)
    plan.set_defaults(run=_plan)
    push = commands.add_parser("push", help="publish the budgets of OUTPUT_DIR that the ledger lacks")
    push.add_argument("output_dir")
    push.add_argument("--repo", help="Hub repo id (default: the one recorded in the ledger)")
    push.add_argument("--private", action="store_true", help="create the repo private if it does not exist")
    push.set_defaults(run=_push)
    prepare = commands.add_parser("prepare", help="tokenize a corpus once into a token folder (--corpus for training)")
    _add_prepare_arguments(prepare)
    prepare.set_defaults(run=_prepare)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"hf-wsd {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
