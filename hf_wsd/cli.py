"""``hf-wsd``: inspect a budget plan, see where a run stands and change its budgets while it trains, publish what a
run left unpublished, prepare a corpus as a token folder."""

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
    print(plan.describe(args.peak_lr))
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


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from .status import format_status, read_status

    while True:
        status = read_status(args.output_dir)
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print(("\033[H\033[J" if args.watch else "") + format_status(status), flush=True)
        if not args.watch or status["state"] in ("finished", "stopped"):
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def _budget(args: argparse.Namespace) -> int:
    import time

    from . import live, runs
    from .status import read_status

    current = read_status(args.output_dir)
    known = current["main_step"] if current["state"] != "not started" else None  # a lower bound of the next check
    request = live.write_request(args.output_dir, args.action, args.value, args.unit, current_step=known)
    print(f"request written: {request.path}")
    if current["state"] in ("finished", "stopped"):
        print(f"the run {current['state']} at update {current['step']}: it takes the request when it resumes "
              "(resume_from_checkpoint=True), if that is before the first update the change alters.")
    elif not args.wait:
        print(f"the run takes it at its next update (see: hf-wsd status {args.output_dir})")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        decision = live.decisions(runs.read_run(args.output_dir) or {}, request.id)
        if decision is not None:
            print(decision["message"])
            return 0 if decision["status"] == "accepted" else 1
        time.sleep(0.2)
    print(f"no decision within {args.timeout:g} s; the request stays pending (hf-wsd status shows it).")
    return 3


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a budget to a running (or resumable) run"),
                         ("remove", "remove a budget whose decay has not started")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("output_dir")
        sub.add_argument("value", help="the budget: 4000 updates or, with --unit tokens, 2.5M")
        sub.add_argument("--unit", choices=BUDGET_UNITS, help="unit of VALUE (default: the run's budget unit)")
        sub.add_argument("--wait", action="store_true", help="wait for the run's decision and print it")
        sub.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")


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
    status = commands.add_parser("status", help="where a run stands: phase, budgets, speed, ETAs, requests")
    status.add_argument("output_dir")
    status.add_argument("--json", action="store_true", help="print everything as JSON (for scripts)")
    status.add_argument("--watch", action="store_true", help="refresh until the run ends (Ctrl-C stops)")
    status.add_argument("--interval", type=float, default=5.0, help="seconds between --watch refreshes")
    status.set_defaults(run=_status)
    budget = commands.add_parser("budget", help="add or remove a budget of a run while it trains")
    _add_budget_arguments(budget)
    budget.set_defaults(run=_budget)
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
