"""WSD side branches in memory: keep the main branch aside at a branch point, put it back when the branch ends.

A WSD branch leaves the main branch at ``Tᵢ − Dᵢ``, decays for ``Dᵢ`` updates on the data the main branch
would see next, writes budget ``i``, and the main branch must then continue exactly as if the branch never
happened. :class:`MainBranchSnapshot` holds everything that makes that true — trainable weights and buffers,
optimizer, LR scheduler, gradient scaler, the Python/NumPy/torch/CUDA RNG states, the Trainer's state and
logging accumulators, and hf_wsd's own stateful parts (the data feed's position) — on the device or in host
memory, and restores it in place inside the same ``train()`` call: no checkpoint read, no Trainer restart,
no re-wrapping or recompiling of the model.

Under FSDP2 each rank keeps only its own shards: the local tensors of its DTensor parameters and optimizer state
(``DTensor.to_local()``), restored in place — the sharded storage FSDP all-gathers from is never replaced, so no
re-wrapping and no communication. DeepSpeed (ZeRO's flat fp32 partitions live inside its engine) and FSDP1 keep the
checkpoint path (save at the branch point, restart ``train()`` from it).

:func:`choose_branch_restore` picks how: the checkpoint path under DeepSpeed and FSDP1; otherwise (FSDP2 included)
a device copy when the device has room for it, else host memory, else the checkpoint path.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

BRANCH_RESTORES = ("auto", "device", "cpu", "checkpoint")
_HEADROOM = 1.25  # free memory needed, as a multiple of the snapshot's size


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: the local shard of an FSDP2 ``DTensor`` (a view of its storage), else itself."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _is_dtensor(tensor: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(tensor, DTensor)


def _copy(value: Any, device: torch.device | str | None) -> Any:
    """A deep copy of nested containers of tensors, tensors copied to ``device`` (``None``: where they are); a
    sharded ``DTensor`` becomes a copy of this rank's local shard."""
    if isinstance(value, torch.Tensor):
        value = _local(value)
        return value.detach().clone() if device is None else value.detach().to(device, copy=True)
    if isinstance(value, dict):
        return {key: _copy(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(item, device) for item in value)
    return copy.deepcopy(value)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a training update can change: trainable parameters and every buffer (frozen weights cannot)."""
    state = {f"param:{name}": p for name, p in model.named_parameters() if p.requires_grad}
    state.update({f"buffer:{name}": b for name, b in model.named_buffers()})
    return state


def _rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def snapshot_bytes(trainer: "Trainer") -> int:
    """Bytes a snapshot takes: the trainable weights and buffers plus the optimizer's state tensors."""
    total = sum(_local(t).numel() * t.element_size() for t in _trainable_state(trainer.model).values())
    for state in getattr(trainer.optimizer, "state", {}).values():
        total += sum(_local(v).numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def _reshard(trainer: "Trainer") -> None:
    """FSDP2: put every module back in its sharded state. A forward outside training (the budget's evaluation) can
    leave modules holding unsharded parameters, and the shards are what the snapshot keeps and restores."""
    if not in_place_only(trainer):
        return
    from torch.distributed.fsdp import FSDPModule

    for module in trainer.model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def in_place_only(trainer: "Trainer") -> bool:
    """FSDP2: model and optimizer tensors are sharded ``DTensor``s, restored shard by shard in place."""
    return bool(getattr(trainer, "is_fsdp_enabled", False)) and getattr(
        trainer.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2


def choose_branch_restore(trainer: "Trainer", requested: str) -> tuple[str, str]:
    """``(mode, reason)``: how WSD branches keep the main branch — ``"device"``, ``"cpu"`` or ``"checkpoint"``."""
    if requested not in BRANCH_RESTORES:
        raise ValueError(f"unknown `branch_restore` {requested!r}; choose one of {', '.join(BRANCH_RESTORES)}.")
    deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
    if deepspeed or (getattr(trainer, "is_fsdp_enabled", False) and not in_place_only(trainer)):
        engine = "DeepSpeed" if deepspeed else "FSDP1"
        if requested in ("device", "cpu"):
            raise ValueError(
                f"`branch_restore`={requested!r} cannot keep {engine} state (partitioned inside the engine): use "
                "'checkpoint' or 'auto' (FSDP2 keeps branches in memory)."
            )
        return "checkpoint", f"{engine} keeps its partitions inside the engine: branches restart from a checkpoint"
    if requested != "auto":
        return requested, "as configured (`branch_restore`)"
    sharded = " (this rank's FSDP2 shards)" if in_place_only(trainer) else ""
    needed = _HEADROOM * snapshot_bytes(trainer)
    device = trainer.args.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if free >= needed:
            return "device", f"{needed / 2**30:.2f} GiB{sharded} fit in the device's {free / 2**30:.1f} GiB free"
    available = _host_available_bytes()
    if device.type == "cpu" and (available is None or available >= needed):
        return "device", f"training on the CPU: the snapshot{sharded} is a copy in host memory"
    if available is None or available >= needed:
        return "cpu", f"{needed / 2**30:.2f} GiB{sharded} kept in host memory"
    return "checkpoint", f"no room for a {needed / 2**30:.2f} GiB snapshot: branches restart from a checkpoint"


def _host_available_bytes() -> int | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None
    return psutil.virtual_memory().available


@dataclass
class MainBranchSnapshot:
    """The main branch at a branch point, kept aside while a WSD branch runs (see :func:`take_snapshot`)."""

    step: int
    weights: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    rng: dict
    state: Any  # a copy of the Trainer's TrainerState
    logging: dict
    components: dict[str, dict]


def take_snapshot(trainer: "Trainer", components: dict[str, Any], device: str) -> MainBranchSnapshot:
    """Copy the main branch (``device``: ``"device"`` keeps copies where the tensors are, ``"cpu"`` in host memory)."""
    target = None if device == "device" else torch.device("cpu")
    scaler = getattr(trainer.accelerator, "scaler", None)
    _reshard(trainer)
    return MainBranchSnapshot(
        step=trainer.state.global_step,
        weights=_copy(_trainable_state(trainer.model), target),
        optimizer=_copy(_optimizer_state(trainer), target),
        scheduler=copy.deepcopy(trainer.lr_scheduler.state_dict()),
        scaler=None if scaler is None else copy.deepcopy(scaler.state_dict()),
        rng=_rng_states(),
        state=copy.deepcopy(trainer.state),
        logging={
            "tr_loss": _copy(getattr(trainer, "_tr_loss", None), None),
            "total_loss_scalar": getattr(trainer, "_total_loss_scalar", 0.0),
            "globalstep_last_logged": getattr(trainer, "_globalstep_last_logged", trainer.state.global_step),
            "current_flos": getattr(trainer, "current_flos", 0.0),
        },
        components={name: copy.deepcopy(component.state_dict()) for name, component in components.items()},
    )


@torch.no_grad()
def restore_snapshot(trainer: "Trainer", snapshot: MainBranchSnapshot, components: dict[str, Any]) -> None:
    """Put the main branch back in place: after this, training continues from the branch point exactly."""
    _reshard(trainer)
    live = _trainable_state(trainer.model)
    for key, tensor in snapshot.weights.items():
        _local(live[key]).copy_(tensor)  # in place: FSDP2 all-gathers from this very storage
    if in_place_only(trainer):
        _restore_optimizer_in_place(trainer.optimizer, snapshot.optimizer)
    else:
        trainer.optimizer.load_state_dict(snapshot.optimizer)
    trainer.lr_scheduler.load_state_dict(snapshot.scheduler)
    if snapshot.scaler is not None:
        trainer.accelerator.scaler.load_state_dict(snapshot.scaler)
    trainer.model.zero_grad(set_to_none=True)
    trainer.state.__dict__.update(snapshot.state.__dict__)
    saved = snapshot.logging
    if saved["tr_loss"] is not None and getattr(trainer, "_tr_loss", None) is not None:
        trainer._tr_loss.copy_(saved["tr_loss"])  # the loop keeps a reference to this tensor
    trainer._total_loss_scalar = saved["total_loss_scalar"]
    trainer._globalstep_last_logged = saved["globalstep_last_logged"]
    trainer.current_flos = saved["current_flos"]
    for name, component in components.items():
        component.load_state_dict(snapshot.components[name])
    _set_rng_states(snapshot.rng)


def _optimizer_state(trainer: "Trainer") -> dict:
    """What a snapshot keeps of the optimizer: its ``state_dict()``, or under FSDP2 the state tensors by parameter
    position plus the groups' hyperparameters (restored in place by :func:`_restore_optimizer_in_place`)."""
    if not in_place_only(trainer):
        return trainer.optimizer.state_dict()
    optimizer = trainer.optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {i: dict(optimizer.state[p]) for i, p in enumerate(params) if p in optimizer.state},
        "groups": [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups],
    }


def _restore_optimizer_in_place(optimizer, saved: dict) -> None:
    """Copy the saved local shards into the live optimizer state (state the branch added is dropped)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, param in enumerate(params):
        if i not in saved["state"]:
            optimizer.state.pop(param, None)
            continue
        live = optimizer.state[param]
        for key, value in saved["state"][i].items():
            if isinstance(value, torch.Tensor) and isinstance(live.get(key), torch.Tensor):
                _local(live[key]).copy_(value)
            else:
                live[key] = copy.deepcopy(value)
    for group, hyper in zip(optimizer.param_groups, saved["groups"]):
        group.update(copy.deepcopy(hyper))
