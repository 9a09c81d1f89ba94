"""``hf-wsd``: inspect a budget plan, publish what a run left unpublished."""

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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"hf-wsd {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
