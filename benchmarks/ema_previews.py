"""EMA previews vs the decayed budgets and the constant-LR weights they decayed from, on held-out loss.

    python benchmarks/ema_previews.py RUN_DIR [RUN_DIR ...] [--plot docs/averaging_previews.png] [--markdown]

Each RUN_DIR is a run of the default recipe with ``--ema_beta B --save_steps 20 --save_total_limit 100
--preview_steps <the budgets>`` (docs/averaging.md has the commands), so it holds, per budget, the decayed budget
folder, the EMA preview at the budget's step (the decay's updates never feed the average, so it is the average at
the decay's start) and the resumable checkpoint at the decay's start: the constant-LR weights the decay started
from ("hot"). All three are scored here on the recipe's held-out blocks exactly as the evaluator scores budgets
(the mean over held-out batches of the mean token loss), and the budgets' and previews' numbers are checked against
their ``eval_results.json``.

Per budget: gap = L(preview) − L(budget); the decay's gain = L(hot) − L(budget); the share of that gain the preview
recovers = (L(hot) − L(preview)) / gain (1: as good as the decay; 0: no better than the hot weights).

``--checkpoint-averages 2 4 8`` also scores, from the first run's checkpoints, the uniform average of the last k
checkpoints of each budget's stable stretch up to its decay start (LAWA-style, spaced ``save_steps`` apart): no
training needed, since every run trains the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_wsd import runs  # noqa: E402


def heldout_blocks(recipe_args: list[str]) -> tuple[torch.Tensor, int]:
    """The default recipe's held-out blocks (the first ``max_eval_blocks``) and its eval batch size."""
    from hf_wsd.scripts import pretrain
    from hf_wsd.scripts.setup import first_blocks, load_data

    data_args, _, args = pretrain.parser().parse(["--output_dir", "/tmp/unused", *recipe_args])
    data = load_data(data_args, args)
    blocks = first_blocks(data.heldout, data_args.max_eval_blocks)
    return torch.tensor(blocks["input_ids"]), args.per_device_eval_batch_size


@torch.no_grad()
def heldout_loss(folder: Path, blocks: torch.Tensor, batch_size: int, weights: dict | None = None) -> float:
    """Held-out loss of the model in ``folder`` (with ``weights`` loaded instead of its own, when given)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    usable = len(blocks) - len(blocks) % batch_size  # the recipe drops the last partial batch
    losses = [model(input_ids=b, labels=b).loss.item() for b in blocks[:usable].split(batch_size)]
    return sum(losses) / len(losses)


def _recorded(folder: Path) -> float | None:
    for result in (runs.read_eval_results(folder) or {}).get("results", []):
        if result["task"] == "heldout" and result["metric"] == "loss":
            return result["value"]
    return None


def measure(run: Path, blocks: torch.Tensor, batch_size: int) -> list[dict]:
    plan = runs.plan_from_dict(runs.read_run(run)["plan"])
    previews = {p.step: p for p in runs.preview_records(run)}
    rows = []
    for budget in runs.budget_records(run):
        decay_start = budget.record["decay_start"]
        preview = previews.get(budget.step) or previews.get(decay_start)
        hot = runs.checkpoint_folder(run, decay_start)
        if preview is None or not hot.is_dir():
            print(f"{run}: {budget.name} lacks a preview or checkpoint-{decay_start}; skipped", file=sys.stderr)
            continue
        losses = {kind: heldout_loss(folder, blocks, batch_size)
                  for kind, folder in (("hot", hot), ("budget", budget.folder), ("preview", preview.folder))}
        for kind, folder in (("budget", budget.folder), ("preview", preview.folder)):
            recorded = _recorded(folder)
            if recorded is not None and abs(recorded - losses[kind]) > 1e-4:
                raise RuntimeError(f"{folder}: held-out loss {losses[kind]:.6f} here, {recorded:.6f} recorded")
        gain = losses["hot"] - losses["budget"]
        average = preview.record[runs.PREVIEW_KEY]
        rows.append({
            "run": run.name, "schedule": plan.schedule, "ema_beta": average["beta"], "budget": budget.name,
            "step": budget.step, "decay_start": decay_start, "decay_steps": budget.record["decay_steps"],
            "updates_averaged": average["updates"], "hot_loss": losses["hot"], "budget_loss": losses["budget"],
            "preview_loss": losses["preview"], "gap": losses["preview"] - losses["budget"], "decay_gain": gain,
            "share_recovered": (losses["hot"] - losses["preview"]) / gain if gain else None,
        })
    return rows


def checkpoint_averages(run: Path, ks: list[int], blocks: torch.Tensor, batch_size: int) -> list[dict]:
    """Uniform averages of the last k checkpoints of each budget's stable stretch, up to its decay start."""
    from safetensors.torch import load_file

    from hf_wsd.averaging import stable_ranges

    plan = runs.plan_from_dict(runs.read_run(run)["plan"])
    saved = {step: path for step, path in runs.checkpoints(run)}
    rows = []
    for budget in runs.budget_records(run):
        start = budget.record["decay_start"]
        stretch = next(r for r in stable_ranges(plan) if start - 1 in r)
        usable = sorted((s for s in saved if s <= start and s - 1 in stretch), reverse=True)  # weights after s - 1
        previous = None
        for k in ks:
            chosen = usable[:k]
            if chosen == previous:  # fewer checkpoints in the stretch than k: the same average again
                continue
            previous = chosen
            states = [load_file(saved[s] / "model.safetensors") for s in chosen]
            mean = {name: sum(state[name] for state in states) / len(states) for name in states[0]}
            rows.append({"budget": budget.name, "step": budget.step, "k": k, "checkpoints": chosen,
                         "loss": heldout_loss(saved[start], blocks, batch_size, mean)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| β | budget | decay | averaged | L(hot) | L(budget) | L(preview) | gap | decay gain | share recovered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ema_beta']:g} | {r['budget']} | {r['decay_start']}–{r['step']} | {r['updates_averaged']} | "
            f"{r['hot_loss']:.4f} | {r['budget_loss']:.4f} | {r['preview_loss']:.4f} | {r['gap']:+.4f} | "
            f"{r['decay_gain']:.4f} | {100 * r['share_recovered']:.0f} % |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, averages: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    first = [r for r in rows if r["ema_beta"] == rows[0]["ema_beta"]]
    steps = [r["step"] for r in first]
    left.plot(steps, [r["hot_loss"] for r in first], "s--", color="grey", label="constant LR (decay start)")
    left.plot(steps, [r["budget_loss"] for r in first], "o-", color="black", label="decayed budget")
    betas = sorted({r["ema_beta"] for r in rows})
    for index, beta in enumerate(betas):
        mine = [r for r in rows if r["ema_beta"] == beta]
        left.plot([r["step"] for r in mine], [r["preview_loss"] for r in mine], "^-", color=f"C{index}",
                  label=f"EMA preview, β={beta:g}")
        right.plot([r["step"] for r in mine], [100 * r["share_recovered"] for r in mine], "^-", color=f"C{index}",
                   label=f"β={beta:g}")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("budget (optimizer updates)")
    left.set_ylabel("held-out loss")
    left.set_title("held-out loss at each budget")
    left.legend(frameon=False, fontsize=8)
    hot = {r["step"]: r for r in first}
    for index, k in enumerate(sorted({a["k"] for a in averages})):
        mine = [a for a in averages if a["k"] == k]
        shares = [100 * (hot[a["step"]]["hot_loss"] - a["loss"]) / hot[a["step"]]["decay_gain"] for a in mine]
        right.plot([a["step"] for a in mine], shares, "x:", color=str(0.25 + 0.15 * index),
                   label=f"last {k} checkpoints, uniform")
    right.axhline(100, color="black", lw=0.6)
    right.axhline(0, color="grey", lw=0.6, ls=":")
    right.set_ylabel("% of the decay's gain recovered")
    right.set_title("share of the decay's gain an average recovers")
    right.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--recipe-args", nargs="*", default=[], help="data overrides the runs were launched with")
    parser.add_argument("--checkpoint-averages", nargs="*", type=int, default=[], metavar="K")
    cli = parser.parse_args(argv)
    torch.set_num_threads(2)
    blocks, batch_size = heldout_blocks(cli.recipe_args)
    rows = [row for run in cli.runs for row in measure(run, blocks, batch_size)]
    print(markdown(rows))
    averages = checkpoint_averages(cli.runs[0], cli.checkpoint_averages, blocks, batch_size)
    if averages:
        hot = {r["step"]: r for r in rows}
        print("\n| budget | checkpoints averaged | L(average) | gap to budget | share recovered |")
        print("|---|---|---|---|---|")
        for a in averages:
            r = hot[a["step"]]
            share = (r["hot_loss"] - a["loss"]) / r["decay_gain"]
            print(f"| {a['budget']} | {len(a['checkpoints'])} ({min(a['checkpoints'])}–{max(a['checkpoints'])}) | "
                  f"{a['loss']:.4f} | {a['loss'] - r['budget_loss']:+.4f} | {100 * share:.0f} % |")
    if cli.json:
        cli.json.write_text(json.dumps({"previews": rows, "checkpoint_averages": averages}, indent=2) + "\n")
    if cli.plot:
        plot(rows, cli.plot, averages)
        print(f"plot written to {cli.plot}")


if __name__ == "__main__":
    main()
