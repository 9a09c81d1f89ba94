"""The model card of one budget: ``README.md`` rendered from the budget folder's files and one template.

The card is a pure function of the files on disk (``budget.json``, ``eval_results.json``, the plots and
the sibling budgets' files) and of the repo id, so rendering it twice gives the same bytes. It is rendered
once per budget by :class:`BudgetCard`, the subscriber that runs after evaluation (it also draws the
budget's plots); the publisher re-renders it with the repo id to add the revision links. The template is
``hf_wsd/templates/budget_card.md`` (package data; ``model_cards/README.md`` says so).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

from . import runs
from .card_data import decay_data_text, hub_datasets, license_metadata, training_data_text
from .events import BudgetCallback, BudgetReached, PreviewReached
from .plan import format_tokens

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).parent / "templates" / "budget_card.md"
MAX_METRIC_COLUMNS = 4  # columns of eval metrics in the table of all budgets
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_MISSING = "—"

_SCHEDULE_DESCRIPTIONS = {
    "wsd-s": (
        "WSD-S (warmup-stable-decay with in-line decays): after a linear warmup the learning rate stays at its peak, "
        "decays over a short window before each budget, and jumps back to the peak right after it with the optimizer "
        "state kept, so one run leaves a decayed checkpoint at every budget (Wen et al., 2024)."
    ),
    "wsd": (
        "WSD: after a linear warmup a main branch trains at the peak learning rate; every budget but the last decays "
        "on a side branch that leaves the main branch at the start of its decay window and never feeds back into it; "
        "the last budget decays in-line."
    ),
    "cyclic-cosine": (
        "Cyclic cosine: each period between two budgets is one cosine from the peak learning rate down to the final "
        "ratio (warmup in the first period only)."
    ),
    "cosine": "Cosine: one cosine decay from the peak learning rate to this single budget (the per-budget baseline).",
}


def budgets_so_far(budget_dir: str | Path) -> list[runs.BudgetRecord]:
    """This budget and its sibling budgets up to it, by step.

    "Up to it" keeps a budget's card independent of the budgets that come later, so re-rendering it
    after the run has moved on gives the same card (and publishing it again changes nothing).
    """
    budget_dir = Path(budget_dir)
    step = runs.read_budget(budget_dir)["step"]
    return runs.budget_records(budget_dir.parent.parent, up_to_step=step)


def _read_forecast(budget_dir: Path) -> dict | None:
    path = budget_dir / runs.FORECAST_FILE
    if not path.is_file():
        return None
    return runs.read_json(path, f"delete {path}; it is written again when the budget is reached.")


def _forecast_text(forecast: dict | None, measured: float | None) -> str | None:
    """``"4.12 (90 % band 4.05–4.20, momentum law fitted up to update 380); measured 4.09 (−0.7 %)"``."""
    if not forecast or not _finite(forecast.get("predicted_decay_mean")):
        return None
    band = f"{forecast['decay_low']:.4f}–{forecast['decay_high']:.4f}"
    text = (f"{forecast['predicted_decay_mean']:.4f} (90 % band {band}, {forecast['law']} law fitted up to update "
            f"{forecast['fit_until_step']})")
    if _finite(measured):
        text += f"; measured {measured:.4f} ({100 * (measured - forecast['predicted_decay_mean']) / measured:+.1f} %)"
    return text


def _throughput_text(throughput: dict | None) -> str | None:
    """``"41,200 tokens/s (20,600 per device), 31.2 % MFU"`` from ``budget.json``'s throughput summary."""
    if not throughput or not _finite(throughput.get("tokens_per_second")):
        return None
    text = f"{throughput['tokens_per_second']:,.0f} tokens/s"
    if _finite(throughput.get("tokens_per_second_per_device")) and throughput.get("tokens_per_second_per_device") != (
        throughput["tokens_per_second"]
    ):
        text += f" ({throughput['tokens_per_second_per_device']:,.0f} per device)"
    if _finite(throughput.get("mfu")):
        text += f", {throughput['mfu']:.1f} % MFU"
    return text + " since the previous budget"


def _train_loss_label(budget: dict) -> str:
    """What ``train_loss`` is the mean of: the decay window's updates, or (a run without a log at its decay start)
    the updates its logging intervals covered."""
    covered, start, step = budget.get("train_loss_updates"), budget.get("decay_start"), budget.get("step")
    if not covered or not isinstance(start, int):
        return "training loss over the decay window (the logged losses inside it)"
    first, last = covered
    if first == start + 1 and last == step:
        return f"training loss over the decay window (mean of updates {first:,}–{last:,})"
    return (f"training loss over updates {first:,}–{last:,} (its logging intervals; the decay window is "
            f"{start + 1:,}–{step:,})")


def _final_lr_text(budget: dict, peak_lr: float) -> str | None:
    """``"its last update at 1.43e-04 (4.8 % of peak)"``: the LR logged at the budget's step is its last update's."""
    last = [entry for entry in budget.get("losses") or [] if entry and entry[0] == budget.get("step")]
    lr = last[-1][2] if last and len(last[-1]) > 2 else None
    if not _finite(lr) or not _finite(peak_lr) or not peak_lr:
        return None
    return f"last update at {lr:.3g} ({100 * lr / peak_lr:.3g} % of peak)"


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub repo id (``org/name``); ``None`` for a local path or nothing.

    The card's ``base_model`` metadata must be a Hub id: a local folder (a budget of an earlier run) stays
    in the card's text only.
    """
    if name and re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) and ".." not in name:
        return name
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value, spec: str = ".4g") -> str:
    return format(value, spec) if _finite(value) else _MISSING


def _tokens(tokens) -> str:
    return f"{format_tokens(tokens)} ({tokens:,})" if isinstance(tokens, int) else _MISSING


def eval_card_results(eval_results: dict | None) -> list[EvalResult]:
    """``model-index`` entries for the finite results of ``eval_results.json``."""
    entries = []
    for result in (eval_results or {}).get("results", []):
        if not _finite(result.get("value")):
            continue
        task = result.get("task") or "eval"
        entries.append(
            EvalResult(
                task_type=result.get("task_type") or "text-generation",
                task_name=task,
                dataset_type=result.get("dataset_type") or task,
                dataset_name=result.get("dataset_name") or task,
                metric_type=result.get("metric") or "value",
                metric_name=result.get("metric") or "value",
                metric_value=result["value"],
            )
        )
    return entries


def _metric_key(result: dict) -> str:
    return f"{result.get('task')} {result.get('metric')}"


def _revision_link(name: str, repo_id: str | None, endpoint: str) -> str:
    return f"[`{name}`]({endpoint}/{repo_id}/tree/{name})" if repo_id else f"`budgets/{name}`"


def _budget_table(budgets: list[runs.BudgetRecord], current: str, repo_id: str | None, endpoint: str):
    evals = {b.name: b.evaluation or {} for b in budgets}
    columns: list[str] = []
    for results in evals.values():
        for result in results.get("results", []):
            if _metric_key(result) not in columns and len(columns) < MAX_METRIC_COLUMNS:
                columns.append(_metric_key(result))
    rows = []
    for budget in budgets:
        record, name = budget.record, budget.name
        values = {_metric_key(r): r.get("value") for r in evals[name].get("results", [])}
        rows.append({
            "name": f"**{name}**" if name == current else name,
            "step": f"{record['step']:,}",
            "tokens": format_tokens(record["tokens"]) if isinstance(record.get("tokens"), int) else _MISSING,
            "compute": f"{record['compute']:,}" if isinstance(record.get("compute"), int) else _MISSING,
            "train_loss": _number(record.get("train_loss"), ".4f"),
            "metrics": [_number(values.get(column)) for column in columns],
            "revision": _revision_link(name, repo_id, endpoint),
        })
    return columns, rows


def _template_values(budget_dir: Path, repo_id: str | None, endpoint: str) -> dict:
    budget = runs.read_budget(budget_dir)
    evaluation = runs.read_eval_results(budget_dir)
    name, step = budget["name"], budget["step"]
    schedule = budget.get("schedule") or "wsd-s"
    plan = budget.get("plan") or {}
    total = len(plan.get("resolved") or []) or None
    position = f"budget {budget.get('index', 0) + 1} of {total}" if total else f"budget {budget.get('index', 0) + 1}"
    tokens_per_update = budget.get("tokens_per_update")
    peak_lr, min_ratio = budget.get("peak_lr"), budget.get("min_lr_ratio")

    compute = budget.get("compute")
    compute_text = f"{compute:,} updates" if isinstance(compute, int) else _MISSING
    if isinstance(compute, int) and tokens_per_update:
        compute_text += f" ≈ {format_tokens(compute * tokens_per_update)} tokens"
    if schedule == "wsd" and isinstance(compute, int) and compute != step:
        compute_text += " (WSD side-branch decays included)"

    decay_steps, decay_shape = budget.get("decay_steps"), budget.get("decay_shape")
    decay_window = f"updates {budget.get('decay_start')}–{step} ({decay_steps} updates, {decay_shape})"
    if budget.get("branch"):
        decay_window += ", on a side branch of the main run"
    learning_rate = _MISSING
    if _finite(peak_lr):
        learning_rate = f"peak {peak_lr:.3g}"
        final = _final_lr_text(budget, peak_lr)
        if final:
            learning_rate += f", {final}"
        if _finite(min_ratio):  # the floor the decay heads for; its last update stops one step short of it
            learning_rate += f"; decay floor {peak_lr * min_ratio:.3g}"
            learning_rate += f" ({min_ratio:g} × peak)" if min_ratio else ""
    warmup = budget.get("warmup_steps")
    num_parameters = budget.get("num_parameters")
    parameters = f"{num_parameters / 1e6:.3g}M ({num_parameters:,})" if isinstance(num_parameters, int) else None

    eval_rows, eval_note = [], ""
    if evaluation:
        for result in evaluation.get("results", []):
            eval_rows.append({
                "task": result.get("task", _MISSING),
                "dataset": result.get("dataset_name") or _MISSING,
                "metric": result.get("metric", _MISSING),
                "value": _number(result.get("value")),
                "stderr": _number(result.get("stderr")),
                "samples": result.get("samples") if result.get("samples") is not None else _MISSING,
            })
        parts = []
        if evaluation.get("lm_eval_version"):
            parts.append(f"lm-evaluation-harness {evaluation['lm_eval_version']}")
        if _finite(evaluation.get("seconds")):
            parts.append(f"{evaluation['seconds']:.0f} s")
        eval_note = f"Scored right after the decay ({', '.join(parts)})." if parts else ""

    columns, rows = _budget_table(budgets_so_far(budget_dir), name, repo_id, endpoint)
    base_model = budget.get("base_model")
    title = f"{repo_id.split('/')[-1]} · {name}" if repo_id else name
    tokens = budget.get("tokens")
    tokens_clause = f" ({format_tokens(tokens)} tokens)" if isinstance(tokens, int) else ""
    summary = (
        f"The weights of a `{schedule}` run after **{step:,} optimizer updates**{tokens_clause}, at the end of a "
        f"{decay_steps}-update {decay_shape} learning-rate decay: "
        f"{position} of one `hf_wsd` training run."
    )
    schedule_description = _SCHEDULE_DESCRIPTIONS.get(schedule, f"Schedule `{schedule}`.")
    preview = budget.get(runs.PREVIEW_KEY)
    if schedule == "wsd" and not preview:
        schedule_description += " This budget decayed " + ("on a side branch." if budget.get("branch") else "in-line.")
    if preview:  # an EMA preview (hf_wsd/averaging.py): no decay; the weights are an average
        position = f"EMA preview at update {step:,}"
        averaged = (
            f"exponential moving average, β = {preview['beta']:g}, of the weights after {preview['updates']:,} "
            f"stable-phase updates ({preview['first_update']:,}–{preview['last_update']:,}, 0-based)"
        )
        summary = (
            f"The {averaged} of the main branch of a `{schedule}` run, taken at update **{step:,}**{tokens_clause} "
            "of one `hf_wsd` training run: a look at what a decay there might give, without paying for one."
        )
        decay_window = "none (no learning-rate decay: an average of the stable phase)"
        if _finite(peak_lr):
            learning_rate = f"peak {peak_lr:.3g} for every averaged update"
        schedule_description += " Warmup, decay, rewarmup and WSD side-branch updates never enter the average."
    load_note = (
        f"Every budget of the run is a branch (`revision=\"{name}\"` here); `main` holds the newest budget."
        if repo_id else
        f"Not published yet: `hf-wsd push OUTPUT_DIR --repo ID` publishes this folder as branch `{name}`."
    )
    if preview:
        load_note = (
            f"This preview is branch `{name}`; `main` holds the newest decayed budget, never a preview." if repo_id else
            "Previews are published (one branch each) with `preview_push_to_hub=True`; `hf-wsd push` publishes "
            "decayed budgets only."
        )
    return {
        "title": title,
        "summary": summary,
        "preview": preview,
        "averaged": averaged if preview else None,
        "name": name,
        "repo_id": repo_id,
        "position": position,
        "step": f"{step:,}",
        "tokens": _tokens(budget.get("tokens")),
        "compute": compute_text,
        "decay_window": decay_window,
        "learning_rate": learning_rate,
        "warmup": f"{warmup:,} updates, linear" if isinstance(warmup, int) else _MISSING,
        "train_loss": _number(budget.get("train_loss"), ".4f"),
        "train_loss_label": _train_loss_label(budget),
        "training_data": training_data_text(budget.get("training_data")),
        "throughput": _throughput_text(budget.get("throughput")),
        "forecast": _forecast_text(_read_forecast(budget_dir), budget.get("train_loss")),
        "decay_data": decay_data_text(budget.get("decay_mixture"), (budget.get("training_data") or {}).get("name")),
        "num_parameters": parameters,
        "eval_rows": eval_rows,
        "eval_note": eval_note,
        "budgets_note": (
            "Each budget is a branch of this repo; `main` holds the newest one."
            if repo_id else "Each budget is a folder in the run's `budgets/` directory."
        ),
        "budget_columns": columns,
        "budget_rows": rows,
        "lr_schedule_image": runs.LR_SCHEDULE_IMAGE if (budget_dir / runs.LR_SCHEDULE_IMAGE).is_file() else None,
        "loss_curve_image": runs.LOSS_CURVE_IMAGE if (budget_dir / runs.LOSS_CURVE_IMAGE).is_file() else None,
        "has_tokenizer": any((budget_dir / f).is_file() for f in _TOKENIZER_FILES),
        "adapter": budget.get("adapter"),  # lean runs (hf_wsd/lean.py): an adapter-only budget
        "load_path": repo_id or f"budgets/{name}",
        "load_note": load_note,
        "schedule_description": schedule_description,
        "schedule": schedule,
        "decay_shape": decay_shape,
        "min_lr_ratio": min_ratio,
        "model_description": (
            f"`{budget.get('model_type') or 'unknown'}`" + (f", {parameters} parameters" if parameters else "")
        ),
        "tokens_per_update": f"{tokens_per_update:,}" if isinstance(tokens_per_update, int) else _MISSING,
        "seed": budget.get("seed", _MISSING),
        "base_model": base_model,
        "base_model_url": f"{endpoint}/{base_model}" if hub_id(base_model) else None,
        "plan_json": json.dumps(plan, indent=2),
    }


def render_model_card(
    budget_dir: str | Path,
    repo_id: str | None = None,
    *,
    endpoint: str | None = None,
    template_path: str | Path | None = None,
) -> ModelCard:
    """The budget's model card (``ModelCard``): YAML metadata with ``model-index`` eval results, and a body.

    Args:
        budget_dir: the budget folder (``budget.json`` required, ``eval_results.json`` and plots optional).
        repo_id: the Hub repo the budget is published to; links and loading snippets use it when given.
        endpoint: the Hub address used in links (default: ``HF_ENDPOINT``, i.e. https://huggingface.co).
        template_path: a Jinja template to use instead of ``hf_wsd/templates/budget_card.md``.
    """
    budget_dir = Path(budget_dir)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    budget = runs.read_budget(budget_dir)
    values = _template_values(budget_dir, repo_id, endpoint)
    training_data = budget.get("training_data") or {}
    model_name = f"{repo_id.split('/')[-1]}-{budget['name']}" if repo_id else budget["name"]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="peft" if budget.get("adapter") else "transformers",  # adapter-only budgets load with peft
        pipeline_tag="text-generation",
        tags=["hf-wsd", budget.get("schedule") or "wsd-s", *(["ema-preview"] if runs.is_preview(budget) else [])],
        base_model=hub_id(budget.get("base_model")),
        eval_results=eval_card_results(runs.read_eval_results(budget_dir)) or None,
        datasets=hub_datasets(training_data) or None,
        language=list(training_data.get("language", [])) or None,
        **license_metadata(training_data.get("license")),
    )
    return ModelCard.from_template(card_data, template_path=str(template_path or TEMPLATE_PATH), **values)


def write_model_card(
    budget_dir: str | Path,
    repo_id: str | None = None,
    *,
    endpoint: str | None = None,
    template_path: str | Path | None = None,
) -> Path:
    """Render the budget's card (see :func:`render_model_card`) into ``budget_dir/README.md``; returns its path.

    Idempotent: the same files and ``repo_id`` give the same bytes, and the file is only rewritten when they change.
    """
    path = Path(budget_dir) / runs.CARD_FILE
    content = str(render_model_card(budget_dir, repo_id, endpoint=endpoint, template_path=template_path))
    if not content.endswith("\n"):
        content += "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != content:
        tmp = path.with_name(f".{runs.CARD_FILE}.tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(path)
    return path


class BudgetCard(BudgetCallback):
    """Subscriber that draws a budget's plots and renders its card, after evaluation and before publishing.

    On the main process: ``lr_schedule.png`` (the run's LR curve, drawn once per plan and copied into each
    folder), ``loss_curve.png`` (the training loss up to the budget), with ``forecast`` the loss the run's own
    log predicted for the budget before its decay started (``forecast.json``, :mod:`hf_wsd.forecast`), and
    ``README.md``.
    """

    priority = -100

    def __init__(self, forecast: bool = False):
        self._lr_plot_plan: dict | None = None
        self.forecast = forecast

    def on_budget_reached(self, args, state, control, *, event: BudgetReached, trainer=None, **kwargs) -> None:
        self._render(args, state, Path(event.folder), event.budget, event.plan)

    def on_preview_reached(self, args, state, control, *, event: PreviewReached, trainer=None, **kwargs) -> None:
        """An EMA preview's card: the same plots, and the template's preview wording."""
        self._render(args, state, Path(event.folder), event.preview, event.plan)

    def _render(self, args, state, folder: Path, budget, plan) -> None:
        if not state.is_world_process_zero:
            return
        from .plots import plot_curves, plot_lr_schedule

        lr_plot = folder.parent / runs.LR_SCHEDULE_IMAGE
        if self._lr_plot_plan != plan.to_dict() or not lr_plot.is_file():
            plot_lr_schedule(plan, lr_plot, args.learning_rate)
            self._lr_plot_plan = plan.to_dict()
        shutil.copyfile(lr_plot, folder / runs.LR_SCHEDULE_IMAGE)
        history = [(e["step"], e["loss"]) for e in state.log_history if "loss" in e and e["step"] <= budget.step]
        if history:
            steps, losses = zip(*history)
            marks = [b.step for b in plan.budgets if b.step <= budget.step]
            plot_curves({"training loss": (steps, losses)}, folder / runs.LOSS_CURVE_IMAGE, "optimizer update", "loss",
                        title=f"training loss up to {budget.name}", marks=marks)
        if self.forecast and not (folder / runs.FORECAST_FILE).is_file():
            write_forecast(folder.parent.parent, budget.name, folder)
        write_model_card(folder)


def write_forecast(output_dir: Path, name: str, folder: Path) -> None:
    """``forecast.json``: the law fitted to the run's log before the budget's decay, predicted at the budget."""
    from .forecast import forecast_run

    try:
        rows = forecast_run(output_dir, budgets=[name])
    except (ValueError, OSError) as error:  # a forecast is a bonus: never the reason a budget is not carded
        logger.info("No forecast for %s: %s", name, error)
        return
    if rows:
        runs.write_json(folder / runs.FORECAST_FILE, rows[0])
