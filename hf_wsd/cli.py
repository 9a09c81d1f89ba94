"""``hf-wsd``: inspect a budget plan, forecast its losses from a run's log, see where a run stands and change its
budgets while it trains, publish what a run left unpublished, prepare a corpus as a token folder."""

from __future__ import annotations

import argparse
import sys

from .plan import BUDGET_UNITS, DEFAULT_DECAY_FRACTION, SCHEDULES, BudgetPlan
from .schedules import DECAY_SHAPES

RECIPE_SEED = 42  # TrainingArguments' default seed, which every recipe config keeps
# `hf-wsd plan --config RECIPE.yaml`: the recipe fields that shape the plan, by their option's dest
_CONFIG_FIELDS = {"budgets": "budgets", "schedule": "schedule", "budget_unit": "budget_unit",
                  "warmup_steps": "warmup_steps", "decay_fraction": "decay_fraction", "decay_steps": "decay_steps",
                  "decay_shape": "decay_shape", "min_lr_ratio": "min_lr_ratio", "rewarmup_steps": "rewarmup_steps",
                  "learning_rate": "peak_lr", "decay_mixture": "decay_mixture",
                  "decay_mixture_per_budget": "decay_mixture_per_budget", "decay_mixture_tail": "decay_mixture_tail"}


class _Parser(argparse.ArgumentParser):
    """``argparse`` with the closest option names in an unknown-option error (``--decay-fractio`` → did you mean
    ``--decay-fraction``?)."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            import difflib

            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            for subparsers in (a for a in self._actions if isinstance(a, argparse._SubParsersAction)):
                known += [o for sub in subparsers.choices.values() for a in sub._actions for o in a.option_strings
                          if o.startswith("--")]
            hints = []
            for item in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(item.split("=", 1)[0], sorted(set(known)), n=3, cutoff=0.6)
                if item.startswith("--") and close:
                    hints.append(f"{item}: did you mean {' or '.join(close)}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


def _add_plan_arguments(parser: argparse.ArgumentParser, budgets_required: bool = True) -> None:
    help_budgets = "increasing budgets: 500 2000 or, with --unit tokens, 2.5M 1B"
    if not budgets_required:
        help_budgets += " (default: the run's own plan)"
    parser.add_argument("budgets", nargs="*", help=help_budgets)
    parser.add_argument("--schedule", default="wsd-s", choices=SCHEDULES)
    parser.add_argument("--unit", dest="budget_unit", default="steps", choices=BUDGET_UNITS)
    parser.add_argument("--tokens-per-update", type=int, help="batch × accumulation × world size × seq. length")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--decay-fraction", type=float,
                        help=f"decay length as a fraction of each period (WSD-S) or budget (WSD); default "
                             f"{DEFAULT_DECAY_FRACTION}, as WSDConfig (a recipe config may set its own: --config)")
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
    parser.add_argument("--config", metavar="YAML",
                        help="a recipe config (recipes/*/…/config_*.yaml): its budgets and schedule fields are the "
                             "defaults, so the preview is the plan the recipe runs; options given here override them")


def _apply_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """``--config YAML``: the recipe's plan fields become the defaults of the plan options (explicit options win)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("command", nargs="?")
    probe.add_argument("--config")
    known, _ = probe.parse_known_args(argv)
    if known.command not in ("plan", "forecast") or not known.config:
        return
    from pathlib import Path

    from .scripts.parser import read_config

    settings = read_config(Path(known.config), known=None)
    defaults = {dest: settings[name] for name, dest in _CONFIG_FIELDS.items() if settings.get(name) is not None}
    if "budgets" in defaults:
        defaults["budgets"] = [str(b) for b in defaults["budgets"]]
    for name in ("decay_mixture", "decay_mixture_per_budget"):
        if isinstance(defaults.get(name), dict):
            defaults[name] = [f"{k}={v}" for k, v in defaults[name].items()] if name == "decay_mixture" else [
                f"{b}:" + ",".join(f"{k}={v}" for k, v in m.items()) for b, m in defaults[name].items()]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparsers.choices[known.command].set_defaults(**defaults)


def _plan_from_args(args: argparse.Namespace) -> BudgetPlan:
    return BudgetPlan(
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


def _plan(args: argparse.Namespace) -> int:
    if not args.budgets:
        raise ValueError("no budgets: give them (hf-wsd plan 1000 2000) or a recipe config (--config RECIPE.yaml).")
    plan = _plan_from_args(args)
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


def _forecast(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from . import forecast
    from .forecast_logs import budget_losses, read_log
    from .runs import PLAN_FILE

    log = read_log(args.run_or_log)
    if args.suggest_decay is not None:
        return _suggest_decay(args, log)
    if args.budgets:
        plan = _plan_from_args(args)
    elif log.plan is not None:
        plan = log.plan
    else:
        raise ValueError(
            f"{args.run_or_log} holds no hf_wsd plan: give the budgets to forecast (as for `hf-wsd plan`)."
        )
    if args.budgets:  # a plan other than the run's own: bounded cross-schedule forecasts, refused where unsupported
        from .forecast_cross import ScheduleForecaster, forecast_plan_bounded

        forecaster = ScheduleForecaster(log, args.law)
        fit = forecaster.law_fit()
        rows = forecast_plan_bounded(forecaster, plan, args.peak_lr)
    else:
        fit = forecast.fit_law(log, args.law)
        rows = [f.to_dict() for f in forecast.forecast_plan(fit, plan, args.peak_lr)]
    run_dir = Path(args.run_or_log) if (Path(args.run_or_log) / PLAN_FILE).is_file() else None
    records = {r["step"]: r for r in budget_losses(run_dir) if r["schedule"] == plan.schedule} if run_dir else {}
    for row in rows:
        if row["tokens"] is None and log.tokens_per_update:
            row["tokens"] = row["step"] * log.tokens_per_update
        record = records.get(row["step"], {})
        same = record.get("decay_start") == plan.budgets[row["index"]].decay_start
        row["measured_train_loss"] = record.get("train_loss") if same else None
        row["measured_heldout_loss"] = record.get("heldout_loss") if same else None
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{fit.law} law fitted to {log.source}: {len(fit.params)} parameters on {fit.points} logged losses up to "
          f"update {fit.fit_until_step}" + ("" if fit.holdout_rms is None else
                                           f"; held-out error of its last {forecast.HOLDOUT_FRACTION:.0%} "
                                           f"{100 * fit.holdout_rms:.2f} % rms"))
    print(_forecast_table(rows))
    print(_scaling_line(run_dir, plan))
    if args.plot:
        measured = {r["step"]: r["measured_train_loss"] for r in rows if r["measured_train_loss"] is not None}
        bands = forecast.forecast_plan(fit, plan, args.peak_lr)
        from .plots import plot_forecast

        path = plot_forecast(log, fit, plan, bands, args.plot, args.peak_lr, measured)
        print(f"forecast plot written to {path}")
    return 0


def _suggest_decay(args: argparse.Namespace, log) -> int:
    import json

    from .forecast_advice import advice_text, suggest_decay
    from .forecast_cross import ScheduleForecaster

    warmup = args.warmup_steps or (log.plan.warmup_steps if log.plan is not None else 0)
    rows = suggest_decay(ScheduleForecaster(log, args.law), args.suggest_decay, warmup_steps=warmup,
                         min_lr_ratio=args.min_lr_ratio)
    print(json.dumps(rows, indent=1) if args.json else advice_text(rows, args.suggest_decay))
    return 0


def _forecast_table(rows: list[dict]) -> str:
    from .plan import format_tokens

    def loss(value):
        return "-" if value is None else f"{value:.4f}"

    header = (f"{'budget':<22} {'step':>7} {'tokens':>7}  {'final loss':>10} {'90% band':>15}  {'decay mean':>10} "
              f"{'90% band':>15}  {'measured':>8}")
    lines = [header]
    for row in rows:
        tokens = format_tokens(row["tokens"]) if row["tokens"] else "-"
        if row["predicted_loss"] is None:
            lines.append(f"{row['budget']:<22} {row['step']:>7} {tokens:>7}  refused: {row.get('note')}")
            continue
        lines.append(
            f"{row['budget']:<22} {row['step']:>7} {tokens:>7}  {row['predicted_loss']:>10.4f} "
            f"{row['low']:>7.4f}–{row['high']:<7.4f}  {row['predicted_decay_mean']:>10.4f} "
            f"{row['decay_low']:>7.4f}–{row['decay_high']:<7.4f}  {loss(row['measured_train_loss']):>8}"
        )
    lines.append("final loss: of the budget's decayed weights; decay mean: the mean training loss over its decay "
                 "updates; measured: that mean as the run logged it (budget.json's train_loss), to compare with it.")
    return "\n".join(lines)


def _scaling_line(run_dir, plan: BudgetPlan) -> str:
    from . import forecast

    if run_dir is None:
        return "scaling fit L(D) = E + B·D^-β: needs an hf_wsd run directory with the decayed losses of ≥ 3 budgets."
    try:
        scaling, metric = forecast.run_scaling(run_dir)
    except ValueError as error:
        return f"scaling fit: {error}"
    last = max(scaling.sizes)
    per_update = plan.tokens_per_update if scaling.unit == "tokens" else 1
    later = [b for b in plan.budgets if per_update and b.step * per_update > last]
    size, where = (later[0].step * per_update, later[0].name) if later else (2 * last, "2× the last written budget")
    return (f"scaling fit over {len(scaling.sizes)} budgets' {metric} vs {scaling.unit}: L(D) = {scaling.E:.4g} + "
            f"{scaling.B:.4g}·D^-{scaling.beta:.3g}; at {where} ({size:.4g} {scaling.unit}): "
            f"{scaling.predict(size):.4f}")


def _push(args: argparse.Namespace) -> int:
    import logging

    from .publishing import push_pending

    from .quiet import quiet_http

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    quiet_http()  # one line per budget published, not one per HTTP request
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
        if not args.watch or status["state"] in ("finished", "stopped", "interrupted"):
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
    request = live.write_request(args.output_dir, args.action, args.value, args.unit, current_step=known,
                                 allow_step_suffixes=args.allow_step_suffixes)
    print(f"request written: {request.path}")
    if current["state"] in ("finished", "stopped", "interrupted"):
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
        sub.add_argument("--allow-step-suffixes", action="store_true",
                         help="accept K/M/B/T on a value in updates (20K = 20,000 updates; refused by default as a "
                              "likely token count)")
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
    parser.add_argument("--seed", type=int, default=RECIPE_SEED,
                        help=f"seed of the held-out split (default {RECIPE_SEED}: the recipes' and the Trainer's seed, "
                             "so a recipe holds out the same documents)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--dataset-config", help="config name of a datasets corpus")
    parser.add_argument("--dataset-split", default="train")
    parser.add_argument("--streaming", action="store_true", help="stream the corpus instead of converting it to Arrow")
    parser.add_argument("--num-proc", type=int, help="tokenizing processes (map-style corpora)")
    parser.add_argument("--cache-dir", help="hf_wsd cache (tokenizers, Arrow conversions)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="hf-wsd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="print the phase table of a budget plan (and plot it)")
    _add_plan_arguments(plan)
    plan.set_defaults(run=_plan)
    forecast = commands.add_parser("forecast", help="fit a loss law to a run's log and forecast each budget of a plan")
    forecast.add_argument("run_or_log", metavar="RUN_OR_LOG",
                          help="an hf_wsd run directory, a trainer_state.json, a wsd_log.jsonl or a CSV "
                               "(step, learning_rate, loss)")
    _add_plan_arguments(forecast, budgets_required=False)
    for action in forecast._actions:  # the shared options mean something else here
        if action.dest == "peak_lr":
            action.help = "peak LR of the forecast plan (default: the log's)"
        elif action.dest == "plot":
            action.help = "write the log, the fitted law, its forecast and the budgets' bands to this PNG file"
    forecast.add_argument("--law", default="auto", choices=("auto", "mpl", "momentum"),
                          help="auto: the law with the lower error on the held-out end of the log")
    forecast.add_argument("--json", action="store_true", help="print the forecasts as a JSON list")
    forecast.add_argument("--suggest-decay", type=int, metavar="BUDGET",
                          help="compare WSD decay fractions (5–40 %%) and shapes for a budget of BUDGET updates by the "
                               "fitted law, against the 20 %% linear decay, with 90 %% bands")
    forecast.set_defaults(run=_forecast)
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
    try:
        _apply_config(parser, argv if argv is not None else sys.argv[1:])
        args = parser.parse_args(argv)
        return args.run(args)
    except ValueError as error:
        command = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), "")
        print(f"hf-wsd {command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
