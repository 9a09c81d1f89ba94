"""Checkpoints of the main branch written off the critical path, crash-safe (``async_checkpoints``).

At a save (branch points, in-line budgets, ``save_steps``) training stops only to capture the state: references to
the model's and the optimizer's tensors (and hf_wsd's stateful parts), copies of everything else (LR in the
optimizer's groups, data positions, ``trainer_state.json``'s text), and the small files — LR scheduler, gradient
scaler, RNG states — written at once by the Trainer's own methods. A background thread then copies the tensors into
host buffers (pinned and on a side stream on a GPU; reused from one save to the next) while the next update's
forward and backward run — they only read them, and the optimizer's next step waits for the copy (a step pre-hook:
it is what changes them) — and writes the rest of the files the Trainer writes (``save_pretrained`` weights,
config, tokenizer, ``training_args.bin``, ``optimizer.pt``, hf_wsd's ``wsd_state/``) into ``.tmp-checkpoint-N/``,
syncs them to disk and renames the folder to ``checkpoint-N``. The files are bitwise those of a synchronous save.
So:

- a kill mid-write leaves a hidden ``.tmp-checkpoint-N`` that no resume reads (:func:`hf_wsd.runs.checkpoints`
  and the Trainer's ``get_last_checkpoint`` only see ``checkpoint-N``): the previous checkpoint is the resume point;
  the next launch removes the leftover;
- one write is in flight at a time (the next save first waits for it), and ``save_total_limit`` rotation runs only
  once the new folder is in place, so the checkpoint a resume would use is never deleted before its successor
  exists;
- ``train()`` returns only when the last write is on disk, and a failed write is raised (at the next save or the
  end of ``train()``), never lost.

Under FSDP and DeepSpeed (sharded state, written by their own collective savers) and with best-model tracking
(``load_best_model_at_end`` / ``metric_for_best_model``), checkpoints stay synchronous: :func:`sync_reason` says why.
Optimizers that step inside the backward pass (``*_layerwise``, LOMO) or swap the weights for evaluation
(schedule-free) get the copy before training goes on.
Callbacks' ``on_save`` runs when the state is captured; the folder appears when its write is done.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from . import runs
from .branching import tensors_in

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

TMP_PREFIX = f".tmp-{runs.CHECKPOINT_PREFIX}"  # a checkpoint being written: hidden, never matched as a checkpoint
OLD_PREFIX = f".old-{runs.CHECKPOINT_PREFIX}"  # a stale checkpoint of the same step, moved aside for the new one
OPTIMIZER_FILE = "optimizer.pt"  # transformers.trainer.OPTIMIZER_NAME
SCHEDULER_FILE = "scheduler.pt"  # transformers.trainer.SCHEDULER_NAME
TRAINER_STATE_FILE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint in the background failed; the previous checkpoint is still the resume point."""


def sync_reason(trainer: "Trainer") -> str | None:
    """Why this run's checkpoints must be written synchronously, or ``None`` when they can be asynchronous."""
    args = trainer.args
    if not getattr(args, "async_checkpoints", True):
        return "async_checkpoints=False"
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return "FSDP / DeepSpeed write their sharded checkpoints with their own collective savers"
    if args.load_best_model_at_end or args.metric_for_best_model is not None:
        return "best-model tracking reads the checkpoint folders as they are saved"
    if getattr(trainer, "hp_search_backend", None) is not None:
        return "hyperparameter search"
    try:
        from transformers.utils import is_sagemaker_mp_enabled, is_torch_xla_available
    except ImportError:  # pragma: no cover
        return None
    if is_torch_xla_available() or is_sagemaker_mp_enabled():
        return "XLA / SageMaker model parallelism save through their own writers"
    return None


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Remove the half-written checkpoint folders a kill left in ``run_dir`` (main process, before training)."""
    root = Path(run_dir)
    found = sorted(p for p in root.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX))) if root.is_dir() else []
    for leftover in found:
        logger.warning("Removing %s, a checkpoint an interrupted launch left half-written", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    return found


# ----------------------------------------------------------------------------------------------- host copies
def detached(tree: Any) -> Any:
    """``tree`` with its containers rebuilt and its non-tensor leaves copied, its tensors still the live ones: what a
    save must capture at once (an LR in ``param_groups``, a data position), leaving the tensors to copy later."""
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return type(tree)((key, detached(value)) for key, value in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(detached(value) for value in tree)
    return copy.deepcopy(tree)


class HostBuffers:
    """Host copies of state tensors, reused from one save to the next (a write finishes before the next copy).

    Tensors that share storage (tied weights) stay shared in the copy, so ``save_pretrained`` sees the ties.
    On a GPU the buffers are pinned and the copies run on a side stream, after the work queued before the save.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._stream = None

    def copy(self, tree: Any, prefix: str, after: tuple[Any, int] | None = None) -> Any:
        """Host copies of the tensors in ``tree`` (a :func:`detached` tree); ``after``: ``(CUDA event, device)``, the
        copies wait for the event (recorded where the state was captured)."""
        aliases: dict[tuple, torch.Tensor] = {}
        if after is None:
            return self._copy(tree, prefix, aliases)
        event, device = after
        with torch.cuda.device(device):
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(event)
                copied = self._copy(tree, prefix, aliases)
            self._stream.synchronize()
        return copied

    def _copy(self, value: Any, key: str, aliases: dict) -> Any:
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            alias = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if tensor.numel() and alias in aliases:
                return aliases[alias]
            buffer = self._buffers.get(key)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                pin = tensor.is_cuda
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
                self._buffers[key] = buffer
            buffer.copy_(tensor, non_blocking=tensor.is_cuda)
            aliases[alias] = buffer
            return buffer
        if isinstance(value, dict):
            return type(value)((k, self._copy(v, f"{key}/{k}", aliases)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy(v, f"{key}/{i}", aliases) for i, v in enumerate(value))
        return copy.deepcopy(value)


class _Copied:
    """A stateful part's state as copied at the save (for :func:`hf_wsd.trainer.save_state_parts`)."""

    def __init__(self, state: dict, per_rank: bool) -> None:
        self._state, self.per_rank = state, per_rank

    def state_dict(self) -> dict:
        return self._state


# ----------------------------------------------------------------------------------------------- the writer
class AsyncCheckpointWriter:
    """Saves the Trainer's checkpoints in the background (see the module docstring); one per trainer."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers = HostBuffers()
        self._copied = threading.Event()  # the state of the write in flight is in host memory
        self._copied.set()
        self._guarded: set[int] = set()  # optimizers whose step waits for the copy
        self.pending: Path | None = None  # the checkpoint folder being written, until it is in place
        self.sync_reason: str | None = None  # why this run's saves are synchronous ("": they are not)

    def save(self, trainer: "Trainer", parts: dict[str, Any], save_parts: Callable, *args, **kwargs) -> bool:
        """``Trainer._save_checkpoint(model, trial)``'s job, in the background: ``False`` when this run's checkpoints
        must be synchronous (:func:`sync_reason`; decided and logged at the first save), else the state is copied
        now and ``checkpoint-{global_step}`` written by a thread. ``parts``: hf_wsd's stateful parts, written by
        ``save_parts`` (:func:`hf_wsd.trainer.save_state_parts`) into ``wsd_state/``."""
        if self.sync_reason is None:
            self.sync_reason = sync_reason(trainer) or ""
            logger.info("Checkpoints are written %s", f"synchronously ({self.sync_reason})" if self.sync_reason
                        else "in the background (async_checkpoints)")
        if self.sync_reason:
            return False
        self._start(trainer, parts, save_parts, trial=kwargs.get("trial", args[1] if len(args) > 1 else None))
        return True

    def _start(self, trainer: "Trainer", parts: dict[str, Any], save_parts: Callable, trial) -> None:
        self.wait()  # one write in flight: its buffers are reused, and rotation must see it in place
        args = trainer.args
        run_dir = Path(trainer._get_output_dir(trial=trial))
        final = runs.checkpoint_folder(run_dir, trainer.state.global_step)
        tmp = run_dir / f".tmp-{final.name}"
        if args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.accelerator.wait_for_everyone()  # the folder exists before other ranks write their files into it
        if getattr(trainer, "hp_search_backend", None) is None and trial is None:
            trainer.store_flos()

        # The large tensors: captured now, copied to host memory by the thread while the next update's forward and
        # backward run (they only read them); the next optimizer step waits for the copy. The small files: now.
        trees: dict[str, Any] = {}
        if args.should_save:
            trees["model"] = detached(trainer.model.state_dict())
            if not args.save_only_model:
                trees["optimizer"] = detached(trainer.optimizer.state_dict())
        per_rank = {name: getattr(part, "per_rank", True) for name, part in parts.items()}
        trees.update({f"parts/{name}": detached(part.state_dict()) for name, part in parts.items()})
        if not args.save_only_model:
            if args.should_save:
                torch.save(trainer.lr_scheduler.state_dict(), tmp / SCHEDULER_FILE)
            trainer._save_scaler(str(tmp))
            trainer._save_rng_state(str(tmp))
        if not args.should_save:  # this rank's own parts, small (data positions): written now
            save_parts({name: _Copied(trees[f"parts/{name}"], True) for name in parts if per_rank[name]}, tmp,
                       args.process_index, False)
        trainer_state = None
        if args.should_save:  # the text TrainerState.save_to_json writes, as the state is now
            _update_stateful_callbacks(trainer)
            trainer_state = json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n"
        trainer.accelerator.wait_for_everyone()  # every rank's small files are in the folder
        if not args.should_save:
            self.pending = final
            return

        after = None
        if any(t.is_cuda for t in tensors_in(trees)):
            after = (torch.cuda.Event(), torch.cuda.current_device())
            after[0].record()  # the copies start once the update that produced the state is done on the device

        def write() -> None:
            try:
                copied = {key: self._buffers.copy(tree, key, after) for key, tree in trees.items()}
            finally:
                self._copied.set()
            write_model(trainer, tmp, copied["model"])
            if "optimizer" in copied:
                torch.save(copied["optimizer"], tmp / OPTIMIZER_FILE)
            save_parts({name: _Copied(copied[f"parts/{name}"], per_rank[name]) for name in parts}, tmp,
                       args.process_index, True)
            # trainer_state.json last: a folder without it is never taken for a checkpoint, even once renamed.
            (tmp / TRAINER_STATE_FILE).write_text(trainer_state, encoding="utf-8")
            put_in_place(tmp, final)
            _rotate(run_dir, args.save_total_limit, best_model_checkpoint)

        best_model_checkpoint = trainer.state.best_model_checkpoint
        self.pending, self._error = final, None
        self._copied.clear()
        self._thread = threading.Thread(target=self._run, args=(write, final), name=f"hf_wsd-save-{final.name}",
                                        daemon=True)
        self._thread.start()
        if not self._guard_optimizer_step(trainer):
            self._copied.wait()  # nothing tells us when the state changes next: copy before training goes on

    def _guard_optimizer_step(self, trainer: "Trainer") -> bool:
        """Make the optimizer's next step wait for the host copy (the step is what changes the copied tensors)."""
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
        if "layerwise" in str(trainer.args.optim) or "lomo" in str(trainer.args.optim):
            return False  # these step inside the backward pass
        if callable(getattr(optimizer, "eval", None)):
            return False  # schedule-free optimizers swap the weights in place for evaluation (optimizer.eval())
        if not hasattr(optimizer, "register_step_pre_hook"):
            return False
        if id(optimizer) not in self._guarded:
            optimizer.register_step_pre_hook(lambda *_: self._copied.wait() and None)
            self._guarded.add(id(optimizer))
        return True

    def _run(self, write: Callable[[], None], final: Path) -> None:
        try:
            write()
        except BaseException as error:  # noqa: BLE001 - kept and raised in the training thread
            logger.error("Writing %s in the background failed: %s", final, error)
            self._error = error

    def wait(self, trainer: "Trainer | None" = None, raise_errors: bool = True) -> None:
        """Block until the write in flight is on disk; raise its error (``raise_errors``) as a
        :class:`CheckpointWriteError`. With ``trainer``, every rank leaves only once the folder is in place."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if trainer is not None and self.pending is not None:
            trainer.accelerator.wait_for_everyone()
        final, error = self.pending, self._error
        self.pending, self._error = None, None
        if error is not None and raise_errors:
            raise CheckpointWriteError(
                f"writing the checkpoint {final} in the background failed ({type(error).__name__}: {error}); the "
                "previous checkpoint is still the resume point. Fix the cause (disk space, permissions) and resume, "
                "or set async_checkpoints=False to write checkpoints synchronously."
            ) from error

    @contextlib.contextmanager
    def finishing(self, trainer: "Trainer") -> Iterator[None]:
        """Around ``train()``: it returns only once the last checkpoint is on disk; an error while training still
        lets the write in flight finish (a resume can use it) and is raised as it was."""
        try:
            yield
        except BaseException:
            self.wait(raise_errors=False)
            raise
        self.wait(trainer)



def write_model(trainer: "Trainer", folder: Path, state_dict: dict | None) -> None:
    """The model files of a Trainer checkpoint (weights, config, tokenizer, ``training_args.bin``) from a copied
    state dict: the Trainer's own ``_save``, so the files are those a synchronous save writes."""
    trainer._save(str(folder), state_dict=state_dict)


def put_in_place(tmp: Path, final: Path) -> None:
    """Sync ``tmp``'s files to disk and rename it to ``final`` (a stale ``final`` is moved aside, then removed)."""
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            _fsync(path)
    _fsync(tmp)
    stale = final.with_name(OLD_PREFIX + final.name[len(runs.CHECKPOINT_PREFIX):]) if final.exists() else None
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
    os.replace(tmp, final)
    _fsync(final.parent)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


def _rotate(run_dir: Path, save_total_limit: int | None, best_model_checkpoint: str | None) -> None:
    from transformers.trainer_utils import rotate_checkpoints

    rotate_checkpoints(output_dir=str(run_dir), save_total_limit=save_total_limit,
                       best_model_checkpoint=best_model_checkpoint, use_mtime=True)


def _update_stateful_callbacks(trainer: "Trainer") -> None:
    """What ``Trainer._save_checkpoint`` does before writing ``trainer_state.json``: store each exportable
    callback's state (and the control's) in ``state.stateful_callbacks``."""
    from transformers.trainer_callback import ExportableState

    for callback in [*trainer.callback_handler.callbacks, trainer.control]:
        if isinstance(callback, ExportableState):
            name = callback.__class__.__name__
            if isinstance(trainer.state.stateful_callbacks.get(name), list):
                trainer.state.stateful_callbacks[name].append(callback.state())
            else:
                trainer.state.stateful_callbacks[name] = callback.state()
