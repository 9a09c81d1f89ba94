"""Annealing against plain decay at small scale: the same run, its decay windows on the main corpus alone or on a
mixture, every budget scored on the held-out sets of every corpus.

The body of ``recipes/anneal_compare.py``. The YAML is a pretraining config with ``decay_corpora`` and
``decay_mixture`` (``recipes/llama-tiny/anneal/config.yaml``) plus :class:`AnnealArguments`. Each arm is one
pretraining run (:func:`hf_wsd.scripts.pretrain.run`) of that config:

- ``plain``: no mixture; the decay corpora are evaluation corpora only (``eval_corpora``);
- ``anneal``: the config's mixture;
- ``NAME:main=0.5,shakespeare=0.5``: that mixture in every window (a sweep);
- ``spread``: no mixture, but the training data holds as many decay-corpus blocks as ``anneal`` draws in its windows
  (in expectation), shuffled in with the main corpus: the same extra data spread over the whole run.

Everything else is the same in every arm: model, initial weights, seed, tokenizer, the main data's order up to the
first decay window, the LR schedule, tokens per update and so the compute. Written under ``output_dir``:

    {arm}/                  one pretraining run each (budgets/, eval_results.json, cards, ...)
    annealing.json          one row per arm and budget (held-out losses, tasks, tokens per source) and the costs
    annealing.md            the tables
    annealing.png           held-out loss of every budget on each corpus, one line per arm
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import runs
from ..config import WSDConfig
from ..plan import format_tokens
from .arguments import DataArguments, ModelArguments
from .parser import RecipeParser
from .setup import machine_defaults, named_corpora

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "llama-tiny" / "anneal" / "config.yaml"
RUN_RECORD = "anneal_run.json"  # written when an arm's run is complete; lets a re-launch skip it
logger = logging.getLogger(__name__)


@dataclass
class AnnealArguments:
    """Parameters of the annealing comparison."""

    arms: list[str] = field(
        default_factory=lambda: ["plain", "anneal"],
        metadata={"help": "Runs to compare: plain (no mixture), anneal (the config's), or NAME:main=w,other=w."},
    )
    torch_threads: int | None = field(
        default=None,
        metadata={"help": "torch intra-op threads (1 is fastest on a busy machine); None: torch's default."},
    )
    reuse_runs: bool = field(
        default=True,
        metadata={"help": "Skip an arm whose run in output_dir finished with the same settings."},
    )
    report_only: bool = field(
        default=False,
        metadata={"help": "Train nothing: rebuild the tables and the plot from the runs in output_dir."},
    )


def parser() -> RecipeParser:
    return RecipeParser((AnnealArguments, DataArguments, ModelArguments, WSDConfig), DEFAULT_CONFIG,
                        machine_defaults())


def arm_settings(arm: str, data_args: DataArguments, args: WSDConfig) -> tuple[DataArguments, WSDConfig]:
    """The arguments of one arm: ``plain`` drops the mixture (its decay corpora are evaluated only), ``anneal``
    keeps the config's, ``NAME:mixture`` sets one for every window."""
    from ..data.mixture import parse_mixture

    corpora = {**named_corpora(data_args.eval_corpora, "eval_corpora"),
               **named_corpora(data_args.decay_corpora, "decay_corpora")}
    if arm in ("plain", "spread"):
        data_args = dataclasses.replace(data_args, decay_corpora=None, eval_corpora=corpora or None)
        args.decay_mixture, args.decay_mixture_per_budget = None, {}
    elif arm != "anneal" and ":" not in arm:
        raise ValueError(f"`arms`: {arm!r} is neither plain, anneal, spread nor NAME:main=w,other=w.")
    elif arm != "anneal":
        name, sep, mixture = arm.partition(":")
        if not sep:
            raise ValueError(f"`arms`: {arm!r} is neither plain, anneal nor NAME:main=w,other=w.")
        args.decay_mixture, args.decay_mixture_per_budget = parse_mixture(mixture, f"arms[{name!r}]"), {}
    elif args.decay_mixture is None and not args.decay_mixture_per_budget:
        raise ValueError("arm 'anneal' needs `decay_mixture` (or `decay_mixture_per_budget`) in the config.")
    return data_args, args


def arm_name(arm: str) -> str:
    return arm.partition(":")[0]


def fingerprint(settings: dict, overrides: list[str]) -> dict:
    """What an arm computes: the config and overrides, without the comparison's own fields and the output dir."""
    own = {f.name for f in dataclasses.fields(AnnealArguments)} | {"output_dir"}
    kept, skip = [], False
    for item in overrides:
        if item.startswith("--"):
            skip = item[2:] in own
        if not skip:
            kept.append(item)
    return {"config": {k: v for k, v in settings.items() if k not in own}, "overrides": kept}


class spread_transform:  # noqa: N801 - used like a function: a picklable train_transform with a memory
    """``train_transform`` of the ``spread`` arm: the main blocks plus ``n`` blocks of each decay corpus (a seeded
    sample, as the mixture's seeded permutation spans the whole corpus), ``n`` chosen so that the run draws in
    expectation as many of them as the config's mixture draws in its windows."""

    def __init__(self, args: WSDConfig, data_args: DataArguments):
        from ..data.mixture import MixturePlan

        self.examples_per_update = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        plan = args.build_plan(self.examples_per_update * data_args.block_size)
        mixture = MixturePlan(plan, args.decay_mixture, args.decay_mixture_per_budget, args.decay_mixture_tail,
                              self.examples_per_update)
        self.wanted = {k: v for k, v in mixture.positions(plan.total_steps).items() if k != "main"}
        self.total = plan.total_steps * self.examples_per_update
        self.steps = [b.step for b in plan.budgets]
        self.seed = args.seed
        self.sizes: dict[str, int] = {}

    def __call__(self, data, side: dict):
        import numpy as np
        from datasets import concatenate_datasets

        main = len(data.train)
        extra = sum(self.wanted.values())
        parts = [data.train]
        for name, count in self.wanted.items():  # count / total = n / (main + Σ n): solve for n
            self.sizes[name] = round(count * main / (self.total - extra))
            rows = np.random.default_rng(self.seed).choice(len(side[name].train), self.sizes[name], replace=False)
            parts.append(side[name].train.select(np.sort(rows)))
        logger.info("[anneal] spread: %s decay blocks mixed into %d main blocks", self.sizes, main)
        return concatenate_datasets(parts)

    def drawn(self, trainer) -> dict[str, dict[str, int]]:
        """Tokens the run actually drew from each part by each budget (the feed's permutation, replayed)."""
        import numpy as np

        from ..data.feed import MapSource

        tokens = trainer.plan.tokens_per_update // self.examples_per_update
        source = MapSource(trainer.train_dataset, trainer.feed.map_source.seed)
        indices = np.asarray(source.indices(np.arange(self.total)))
        bounds = np.cumsum([len(trainer.train_dataset) - sum(self.sizes.values()), *self.sizes.values()])
        part = np.searchsorted(bounds, indices, side="right")
        names = ["main", *self.sizes]
        drawn = {}
        for step in self.steps:
            counts = np.bincount(part[: step * self.examples_per_update], minlength=len(bounds))
            drawn[str(step)] = {name: int(counts[i]) * tokens for i, name in enumerate(names)}
        return drawn


def train_arm(recipe: RecipeParser, argv: Sequence[str], arm: str, run_dir: Path, reuse: bool) -> dict:
    """Train one arm (unless an identical run already finished in ``run_dir``); returns its record."""
    from . import pretrain

    signature = {**fingerprint(*recipe.config(argv)), "arm": arm}
    path = run_dir / RUN_RECORD
    if reuse and path.is_file():
        record = json.loads(path.read_text())
        if record.get("signature") == signature:
            logger.info("[anneal] %s: reusing the finished run in %s", arm, run_dir)
            return record
    _, data_args, model_args, args = recipe.parse(argv, output_dir=run_dir, overwrite_output_dir=True)
    spread = spread_transform(args, data_args) if arm == "spread" else None
    data_args, args = arm_settings(arm, data_args, args)
    started = time.perf_counter()
    trainer = pretrain.run(data_args, model_args, args, train_transform=spread)
    wall = time.perf_counter() - started
    evaluation = sum((b.evaluation or {}).get("seconds") or 0.0 for b in runs.budget_records(run_dir))
    record = {
        "signature": signature,
        "arm": arm,
        "plan": trainer.plan.to_dict(),
        "mixture": None if trainer.mixture is None else trainer.mixture.to_dict(),
        "updates": trainer.plan.total_compute,
        "tokens_per_update": trainer.plan.tokens_per_update,
        "tokens_by_source": None if spread is None else spread.drawn(trainer),
        "wall_seconds": round(wall, 1),
        "eval_seconds": round(evaluation, 1),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    logger.info("[anneal] %s: %.0f s (%.0f s evaluating)", arm, wall, evaluation)
    return record


def collect(output_dir: Path, arms: list[str]) -> tuple[list[dict], dict]:
    """One row per arm and budget from the runs on disk, and each arm's run record."""
    rows, records = [], {}
    for arm in arms:
        run_dir = output_dir / arm_name(arm)
        record_path = run_dir / RUN_RECORD
        if not record_path.is_file():
            raise ValueError(f"{run_dir} holds no finished run ({RUN_RECORD} is missing): run without --report_only.")
        records[arm_name(arm)] = json.loads(record_path.read_text())
        for budget in runs.budget_records(run_dir):
            info, evaluation = budget.record, budget.evaluation or {"results": []}
            heldout = {r["task"].removeprefix("heldout_"): r["value"] for r in evaluation["results"]
                       if r["task"].startswith("heldout") and r["metric"] == "loss"}
            tasks = {f"{r['task']} {r['metric']}": r["value"] for r in evaluation["results"]
                     if not r["task"].startswith("heldout") and r["metric"] in ("acc", "acc_norm")}
            mixture = info.get("decay_mixture") or {}
            drawn = {name: v["tokens"] for name, v in (mixture.get("drawn_on_path") or {}).items()}
            spread = records[arm_name(arm)].get("tokens_by_source")
            if spread and not drawn:  # the spread arm: what its shuffled training data gave up to this budget
                drawn = spread[str(info["step"])]
            rows.append({
                "arm": arm_name(arm), "budget": info["name"], "step": info["step"], "tokens": info["tokens"],
                "compute_updates": info["compute"], "heldout_loss": heldout, "tasks": tasks,
                "tokens_by_source": drawn or {"main": info["tokens"]},
            })
    return rows, records


def report(output_dir: Path, arms: list[str]) -> tuple[list[dict], str]:
    """Write ``annealing.md``, ``annealing.json`` and ``annealing.png``; returns the rows and the markdown."""
    rows, records = collect(output_dir, arms)
    names = [arm_name(a) for a in arms]
    corpora = sorted({c for r in rows for c in r["heldout_loss"]})
    tasks = sorted({t for r in rows for t in r["tasks"]})
    sources = sorted({s for r in rows for s in r["tokens_by_source"]} - {"main"})
    base = names[0]
    by = {(r["arm"], r["step"]): r for r in rows}
    steps = sorted({r["step"] for r in rows})

    header = ["budget", "tokens", "arm", *[f"held-out {c}" for c in corpora], *[f"{s} tokens trained" for s in sources],
              *tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in steps:
        for name in names:
            row = by.get((name, step))
            if row is None:
                continue
            cells = [row["budget"] if name == base else "", format_tokens(row["tokens"]), name]
            for corpus in corpora:
                value = row["heldout_loss"].get(corpus)
                reference = by.get((base, step), {}).get("heldout_loss", {}).get(corpus)
                text = "—" if value is None else f"{value:.3f}"
                if name != base and value is not None and reference is not None:
                    text += f" ({value - reference:+.3f})"
                cells.append(text)
            cells += [format_tokens(row["tokens_by_source"].get(s, 0)) for s in sources]
            cells += [f"{row['tasks'][t]:.3f}" if t in row["tasks"] else "—" for t in tasks]
            lines.append("| " + " | ".join(cells) + " |")
    cost = ["", "| arm | updates | tokens | wall time | of which evaluation |", "|---|---|---|---|---|"]
    for name in names:
        record = records[name]
        tokens = record["updates"] * (record["tokens_per_update"] or 0)
        cost.append(f"| {name} | {record['updates']:,} | {format_tokens(tokens)} | {record['wall_seconds']:.0f} s | "
                    f"{record['eval_seconds']:.0f} s |")
    text = "\n".join([*lines, *cost]) + "\n"
    (output_dir / "annealing.md").write_text(text)
    (output_dir / "annealing.json").write_text(json.dumps({"rows": rows, "runs": records}, indent=1) + "\n")
    plot(by, names, corpora, steps, output_dir / "annealing.png")
    return rows, text


def plot(by: dict, names: list[str], corpora: list[str], steps: list[int], path: Path) -> Path:
    """Held-out loss per budget on each corpus (top) and its difference from the first arm (bottom)."""
    from ..plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, len(corpora), figsize=(4.2 * len(corpora), 5.6), dpi=100, sharex=True, squeeze=False)
    for column, corpus in enumerate(corpora):
        for number, name in enumerate(names):
            kept = [s for s in steps if (name, s) in by and corpus in by[(name, s)]["heldout_loss"]]
            tokens = [by[(name, s)]["tokens"] / 1e6 for s in kept]
            losses = [by[(name, s)]["heldout_loss"][corpus] for s in kept]
            base = [by[(names[0], s)]["heldout_loss"].get(corpus, float("nan")) for s in kept]
            style = {"marker": "o", "lw": 1.2, "color": f"C{number}"}
            axes[0, column].plot(tokens, losses, label=name, **style)
            axes[1, column].plot(tokens, [a - b for a, b in zip(losses, base)], label=name, **style)
        axes[0, column].set_title(f"held-out loss on {corpus}", fontsize=9, loc="left")
        axes[1, column].set_title(f"difference from {names[0]} (lower is better)", fontsize=9, loc="left")
        axes[1, column].axhline(0, color="grey", lw=0.6)
        axes[1, column].set_xlabel("training tokens (millions), one point per budget")
        for ax in axes[:, column]:
            ax.set_xscale("log", base=2)
            ax.set_xticks([by[(names[0], s)]["tokens"] / 1e6 for s in steps if (names[0], s) in by])
            ax.xaxis.set_major_formatter(plt.FormatStrFormatter("%.3g"))
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel("Δ loss")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), frameon=False, fontsize=8)
    fig.suptitle("decay windows on a data mixture (annealing) vs plain decay", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] = ()) -> tuple[list[dict], str]:
    """Train every arm (reusing finished runs), then write the report; returns its rows and markdown."""
    recipe = parser()
    anneal, data_args, _, args = recipe.parse(argv)
    if not args.budget_eval:
        raise ValueError("the comparison scores every checkpoint: `budget_eval` must be true.")
    if not named_corpora(data_args.decay_corpora, "decay_corpora"):
        raise ValueError("the annealing comparison needs `decay_corpora` (e.g. {shakespeare: shakespeare}).")
    if len({arm_name(a) for a in anneal.arms}) != len(anneal.arms) or not anneal.arms:
        raise ValueError(f"`arms` must name distinct runs; got {anneal.arms}.")
    if anneal.torch_threads:
        import torch

        torch.set_num_threads(anneal.torch_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not anneal.report_only:
        for arm in anneal.arms:
            train_arm(recipe, argv, arm, output_dir / arm_name(arm), anneal.reuse_runs)
    return report(output_dir, anneal.arms)
