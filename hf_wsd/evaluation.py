"""Score every decayed checkpoint: held-out loss / perplexity plus lm-evaluation-harness tasks, in memory.

:class:`BudgetEvaluator` subscribes to the trainer's *budget reached* event. At that moment ``trainer.model``
holds exactly the budget's weights; the evaluator scores them without a reload, writes
``{budget folder}/eval_results.json``, logs ``budget/...`` metrics through ``trainer.log`` (so every
``report_to`` backend gets them) and, at the end of the run, a summary table, CSV/JSON and one plot per
metric under ``{output_dir}/budgets/``. It leaves the model's train/eval modes and the Python, NumPy, torch
and CUDA RNG states as it found them, so training after a budget is bitwise the same with or without it.

Multi-process runs: the held-out loss uses ``trainer.evaluate`` (every rank takes its share); lm-eval runs
on the main process while the other ranks wait on a gloo group with a long timeout (``barrier_timeout_s``,
so a slow benchmark cannot trip the NCCL watchdog) and then receive the results, so every rank logs the same
numbers. Sharded models (FSDP, DeepSpeed) need every rank in each forward pass, so there every rank runs
lm-eval on the same inputs instead (untested here: no multi-GPU machine).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import runs
from .events import BudgetCallback, BudgetReached, PreviewReached
from .summary import write_summary
from .tasks import BUNDLED_TASKS, build_bundled_tasks, validation
from .tasks.validation import LOCAL_LOADERS, as_list, is_offline, validate_tasks

__all__ = ["BudgetEvaluator", "validate_tasks", "is_offline", "lm_eval_rows", "preserved_training_state"]

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

TASK_TYPES = {"multiple_choice": "multiple-choice"}  # anything else scores text: "text-generation"


# ---------------------------------------------------------------------------------------- state keeping
@contextlib.contextmanager
def preserved_training_state(*models: Any):
    """Restore every module's train/eval mode and the Python, NumPy, torch (CPU and CUDA) RNG states on exit."""
    import numpy as np
    import torch

    modes = [(module, module.training) for model in models if hasattr(model, "modules") for module in model.modules()]
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _unlogged(trainer: Any):
    """``trainer.evaluate`` without its ``trainer.log`` call: the evaluator logs the results itself, once."""
    shadowed = trainer.__dict__.get("log")
    trainer.log = lambda logs, *args, **kwargs: None  # an instance attribute shadows the method
    try:
        yield
    finally:
        if shadowed is None:
            del trainer.log
        else:
            trainer.log = shadowed


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval warns on every in-memory model and bootstraps with a process pool (unsafe mid-training)."""
    lm_logger = logging.getLogger("lm_eval")
    level, previous = lm_logger.level, os.environ.get("DISABLE_MULTIPROC")
    lm_logger.setLevel(max(level, logging.ERROR))
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        lm_logger.setLevel(level)
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous


# ------------------------------------------------------------------------------------------- the callback
class BudgetEvaluator(BudgetCallback):
    """Evaluate each budget's checkpoint when it is reached; summarize all budgets at the end of training.

    Runs first among the budget subscribers (``priority`` 100), so the card and the published branch hold
    the results.

    Args:
        eval_tasks: lm-eval task names: bundled (``wsd_next_passage``, ``wsd_cloze``), in ``eval_task_paths``,
            or built in (``hellaswag``, ``arc_easy``…, need their data online or cached). Empty: held-out only.
        eval_task_paths: directories of extra lm-eval task YAMLs.
        eval_limit: examples per task (an int, or a fraction < 1); ``None`` for all.
        eval_batch_size: lm-eval batch size.
        eval_max_length: lm-eval context length (default: the model config's).
        heldout: score the loss and perplexity on ``trainer.eval_dataset``.
        heldout_documents / train_documents: documents to build the bundled tasks from / to keep out of them;
            default: decoded from ``trainer.eval_dataset`` / ``trainer.train_dataset`` (split at EOS).
        bundled_examples, seed: examples per bundled task and their seed.
        tasks_dir: where bundled tasks are written (default ``{output_dir}/eval_tasks``).
        heldout_name: ``dataset_name`` of the held-out results (e.g. ``"kjv held-out chapters"``).
        bootstrap_iters: lm-eval bootstrap draws for stderr (0: none; ``mean`` metrics need no draws).
        barrier_timeout_s: how long other ranks wait for the main process's lm-eval run.
    """

    priority = 100

    def __init__(
        self,
        eval_tasks: str | Sequence[str] | None = (),
        eval_task_paths: str | Sequence[str] | None = (),
        eval_limit: int | float | None = None,
        eval_batch_size: int = 16,
        eval_max_length: int | None = None,
        heldout: bool = True,
        heldout_documents: Sequence[str] | None = None,
        train_documents: Sequence[str] | None = None,
        bundled_examples: int = 200,
        seed: int = 0,
        tasks_dir: str | Path | None = None,
        heldout_name: str = "held-out documents",
        bootstrap_iters: int = 100,
        barrier_timeout_s: float = 7 * 24 * 3600,
    ):
        self.eval_task_paths = [str(Path(p).expanduser().resolve()) for p in as_list(eval_task_paths)]
        self.eval_tasks = validate_tasks(eval_tasks, self.eval_task_paths)
        if eval_limit is not None and (isinstance(eval_limit, bool) or eval_limit <= 0):
            raise ValueError(f"`eval_limit` must be positive or None; got {eval_limit!r}.")
        self.eval_limit, self.eval_batch_size, self.eval_max_length = eval_limit, eval_batch_size, eval_max_length
        self.heldout, self.heldout_name = heldout, heldout_name
        self.heldout_documents, self.train_documents = heldout_documents, train_documents
        self.bundled_examples, self.seed, self.bootstrap_iters = bundled_examples, seed, bootstrap_iters
        self.tasks_dir = None if tasks_dir is None else Path(tasks_dir)
        self.barrier_timeout_s = barrier_timeout_s
        self._task_manager = None
        self._group = None
        self._train_start: float | None = None  # first on_train_begin; WSD branch restarts keep it
        self._eval_seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self.heldout or bool(self.eval_tasks)

    # ------------------------------------------------------------------------------ trainer hooks
    def on_train_begin(self, args, state, control, **kwargs):
        if self._train_start is None:
            self._train_start = time.perf_counter()

    def _train_seconds(self) -> float:
        """Wall time since training began, less the time spent evaluating."""
        if self._train_start is None:
            self._train_start = time.perf_counter()
        return time.perf_counter() - self._train_start - self._eval_seconds

    def on_budget_reached(self, args, state, control, *, event: BudgetReached, trainer: "Trainer", **kwargs):
        self._evaluate(args, state, trainer, event.budget, Path(event.folder), event.replayed, "budget")

    def on_preview_reached(self, args, state, control, *, event: PreviewReached, trainer: "Trainer", **kwargs):
        """An EMA preview is scored like a budget; its results say ``"preview": true`` and log as ``preview/...``."""
        self._evaluate(args, state, trainer, event.preview, Path(event.folder), event.replayed, "preview")

    def _evaluate(self, args, state, trainer: "Trainer", target, folder: Path, replayed: bool, kind: str) -> None:
        """Score ``trainer.model`` as ``target``: a budget or a preview (``name``, ``step``, ``tokens``)."""
        if not self.enabled:
            return
        # A budget evaluated before the run was interrupted is not evaluated again (the main process decides:
        # every rank must take the same path through the collective held-out evaluation).
        if replayed and _from_main(trainer, runs.read_eval_results(folder) is not None):
            logger.info("%s was evaluated before this resume; not evaluating it again.", target.name)
            return
        start = time.perf_counter()
        results: list[dict] = []
        with preserved_training_state(trainer.model, getattr(trainer, "model_wrapped", None)):
            if self.heldout:
                results += self._heldout_results(trainer, prefix=kind)
            if self.eval_tasks:
                results += self._lm_eval_results(args, state, trainer)
        seconds = time.perf_counter() - start
        self._eval_seconds += seconds
        train_seconds = max(self._train_seconds(), 1e-9)
        if state.is_world_process_zero:  # the card subscriber (hf_wsd.card.BudgetCard) shows them next
            record = {"budget": target.name, "step": target.step, "tokens": target.tokens,
                      "lm_eval_version": _lm_eval_version(), "seconds": round(seconds, 3), "results": results}
            if kind == "preview":
                record[runs.PREVIEW_KEY] = True
            runs.write_json(folder / runs.EVAL_FILE, record)
        logs = {f"{kind}/step": float(target.step)}
        if target.tokens is not None:
            logs[f"{kind}/tokens"] = float(target.tokens)
        logs.update({f"{kind}/{r['task']}_{r['metric']}": r["value"] for r in results})
        logs.update({f"{kind}/eval_seconds": seconds, f"{kind}/eval_share": self._eval_seconds / train_seconds})
        trainer.log(logs)
        logger.info(
            "%s %s evaluated in %.1f s (evaluation so far: %.1f%% of training time): %s", kind.capitalize(),
            target.name, seconds, 100 * self._eval_seconds / train_seconds,
            ", ".join(f"{r['task']} {r['metric']} {r['value']:.4g}" for r in results),
        )

    def on_train_end(self, args, state, control, **kwargs):
        if not (self.enabled and state.is_world_process_zero):
            return
        train_seconds = self._train_seconds()
        timing = {"eval_seconds": round(self._eval_seconds, 3), "train_seconds": round(train_seconds, 3),
                  "eval_share": self._eval_seconds / train_seconds if train_seconds > 0 else None}
        write_summary(args.output_dir, timing=timing)

    # ------------------------------------------------------------------------------ held-out
    def _heldout_results(self, trainer: "Trainer", prefix: str = "budget") -> list[dict]:
        datasets = trainer.eval_dataset
        if datasets is None:
            logger.warning("`heldout` is on but the trainer has no eval_dataset; skipping the held-out loss.")
            return []
        named = datasets.items() if isinstance(datasets, dict) else [("", datasets)]
        results = []
        for key, dataset in named:
            task = f"heldout_{key}" if key else "heldout"
            with _unlogged(trainer):  # logged once, as `budget/heldout_loss` (not also `budget_heldout_loss`)
                metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=f"{prefix}_{task}")
            if f"{prefix}_{task}_loss" not in metrics:  # no batch was scored (an empty or dropped held-out set)
                logger.warning("no held-out loss for %s: its dataloader yielded no batch", task)
                continue
            loss = float(metrics[f"{prefix}_{task}_loss"])
            for metric, value in (("loss", loss), ("perplexity", math.exp(min(loss, 700.0)))):
                results.append({"task": task, "task_type": "text-generation",
                                "dataset_name": self.heldout_name + (f" ({key})" if key else ""),
                                "dataset_type": "heldout", "metric": metric, "value": value, "stderr": None,
                                "samples": len(dataset)})
        return results

    # ------------------------------------------------------------------------------ lm-eval
    def _lm_eval_results(self, args, state, trainer: "Trainer") -> list[dict]:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed and self._group is None:
            # Every rank reaches this line at the same budget, so the collective group creation is safe.
            self._group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.barrier_timeout_s))
        # Sharded weights (FSDP, DeepSpeed) need every rank in each forward pass: all ranks run lm-eval alike.
        sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
        everyone = distributed and bool(sharded)
        main = state.is_world_process_zero
        ready = self._guarded(self._prepare_tasks, args, trainer, write=True) is not None if main else True
        if everyone:
            box = [ready]
            dist.broadcast_object_list(box, src=0, group=self._group)  # the task files exist (or nobody runs)
            ready = box[0] and (main or self._guarded(self._prepare_tasks, args, trainer, write=False) is not None)
        results = self._guarded(self._run_lm_eval, trainer) if ready and (main or everyone) else None
        if distributed:
            box = [results]
            dist.broadcast_object_list(box, src=0, group=self._group)  # the other ranks wait here
            results = box[0]
        elif not main and hasattr(trainer, "accelerator"):
            trainer.accelerator.wait_for_everyone()
        return results or []

    @staticmethod
    def _guarded(function, *args, **kwargs):
        """Run ``function``; on an exception log it and return ``None``: a broken benchmark must not end hours
        of training, nor leave the other ranks waiting for results that never come."""
        try:
            result = function(*args, **kwargs)
        except Exception:
            logger.exception("evaluation step %s failed; this budget gets no lm-eval results", function.__name__)
            return None
        return [] if result is None else result

    def _prepare_tasks(self, args, trainer: "Trainer", write: bool) -> None:
        if self._task_manager is not None:
            return
        paths = list(self.eval_task_paths)
        known = set(validation.task_index(tuple(paths), False)) if paths else set()
        bundled = [t for t in self.eval_tasks if t in BUNDLED_TASKS and t not in known]
        if bundled:
            directory = Path(self.tasks_dir or Path(args.output_dir) / runs.TASKS_DIR).resolve()
            if write:
                heldout = self.heldout_documents or _decode_documents(trainer.eval_dataset, trainer.processing_class)
                if not heldout:
                    raise ValueError(
                        "the bundled tasks in `eval_tasks` need held-out documents: pass `heldout_documents` to "
                        "BudgetEvaluator, or give the trainer an eval_dataset of packed blocks with EOS separators."
                    )
                train = self.train_documents
                if train is None:
                    train = _decode_documents(getattr(trainer, "train_dataset", None), trainer.processing_class)
                    if train is None:
                        logger.warning("bundled tasks are built without checking the training text for overlap")
                build_bundled_tasks(heldout, directory, self.bundled_examples, self.seed, train, bundled)
            paths.insert(0, str(directory))
        needs_defaults = any(t not in BUNDLED_TASKS and t not in known for t in self.eval_tasks)
        self._task_manager = validation.task_manager(tuple(paths), needs_defaults)

    def _run_lm_eval(self, trainer: "Trainer") -> list[dict]:
        import copy

        import lm_eval
        from lm_eval.models.huggingface import HFLM

        tokenizer = trainer.processing_class
        if tokenizer.pad_token is None:  # lm-eval would add one to the tokenizer the trainer saves
            tokenizer = copy.deepcopy(tokenizer)
        with _quiet_lm_eval():
            lm = HFLM(pretrained=trainer.model, tokenizer=tokenizer, batch_size=self.eval_batch_size,
                      max_length=self.eval_max_length)
            output = lm_eval.simple_evaluate(
                model=lm, tasks=list(self.eval_tasks), task_manager=self._task_manager, limit=self.eval_limit,
                bootstrap_iters=self.bootstrap_iters, log_samples=False,
            )
        return [] if output is None else lm_eval_rows(output)


def lm_eval_rows(output: dict) -> list[dict]:
    """Flatten ``lm_eval.simple_evaluate``'s output into ``eval_results.json`` result rows."""
    rows = []
    for task, metrics in output["results"].items():
        config = output.get("configs", {}).get(task, {})
        path = config.get("dataset_path")
        samples = output.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append({
                "task": task,
                "task_type": TASK_TYPES.get(config.get("output_type"), "text-generation"),
                "dataset_name": config.get("task_alias") or task,
                "dataset_type": f"local/{task}" if path in LOCAL_LOADERS else (path or f"group/{task}"),
                "metric": metric if filter_name == "none" else f"{metric}_{filter_name}",
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "samples": int(samples) if samples is not None else None,
            })
    return rows


def _decode_documents(dataset, tokenizer, max_tokens: int = 50_000_000) -> list[str] | None:
    """Recover documents from packed blocks: decode, split at EOS (a cut-off tail is dropped). ``None`` when
    there is no dataset, it has no ``input_ids``, no length, or more than ``max_tokens`` tokens."""
    try:
        column = dataset["input_ids"] if dataset is not None and len(dataset) else None
    except (KeyError, TypeError):
        return None
    if column is None or len(dataset) * len(column[0]) > max_tokens:
        return None
    eos, documents, current = tokenizer.eos_token_id, [], []
    for block in column:
        for token in block:
            if token == eos:
                documents.append(current)
                current = []
            else:
                current.append(token)
    texts = tokenizer.batch_decode(documents, clean_up_tokenization_spaces=False)
    return [text for text in texts if text.strip()]


def _lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


def _from_main(trainer: "Trainer", value):
    """``value`` as the main process sees it, on every process."""
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]
