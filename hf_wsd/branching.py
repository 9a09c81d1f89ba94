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
re-wrapping and no communication. Under DeepSpeed ZeRO-1/2/3 each rank keeps its own partitions from inside the
ZeRO optimizer — the flat fp32 master partitions, the base optimizer's state for them, the 16-bit parameters the
model computes with (ZeRO-1/2: the whole flat buffers; ZeRO-3: this rank's flat partitions) — and the engine's step
counters, copied back into the same storage: no checkpoint read, no new engine. FSDP1, ZeRO with NVMe offload and
DeepSpeed without a ZeRO optimizer keep the checkpoint path (save at the branch point, restart ``train()`` from it).

:func:`choose_branch_restore` picks how: the checkpoint path under FSDP1 and those DeepSpeed runs; otherwise (FSDP2
and ZeRO included) a device copy when the device has room for it, else host memory, else the checkpoint path.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

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
    state.update(_buffers(model))
    return state


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"buffer:{name}": b for name, b in model.named_buffers()}


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested containers."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


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
    """Bytes a snapshot takes: the trainable weights and buffers plus the optimizer's state tensors (under ZeRO:
    this rank's partitions, see :func:`_zero_state`)."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return sum(t.numel() * t.element_size() for t in tensors_in(_zero_state(trainer)))
    total = sum(_local(t).numel() * t.element_size() for t in _trainable_state(trainer.model).values())
    for state in getattr(trainer.optimizer, "state", {}).values():
        total += sum(_local(v).numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def _reshard(trainer: "Trainer") -> None:
    """FSDP2 and ZeRO-3: put every parameter back in its partitioned state. A forward outside training (the budget's
    evaluation, the gather that writes it) can leave whole parameters behind, which the next forward would use as
    they are, and the partitions are what the snapshot keeps and restores. ZeRO-3's persistent parameters are
    gathered again, from the restored partitions, by the next forward."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        if _zero_optimizer(trainer)[1] == 3:
            _zero_engine(trainer).optimizer.parameter_offload.empty_partition_cache()
        return
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
    unsupported = _zero_unsupported(trainer) if deepspeed else None
    if unsupported or (getattr(trainer, "is_fsdp_enabled", False) and not in_place_only(trainer)):
        engine = unsupported or "FSDP1"
        if requested in ("device", "cpu"):
            raise ValueError(
                f"`branch_restore`={requested!r} cannot keep {engine} state in memory: use 'checkpoint' or 'auto' "
                "(FSDP2 and ZeRO-1/2/3 without NVMe offload keep branches in memory)."
            )
        return "checkpoint", f"{engine} keeps its state outside memory reach: branches restart from a checkpoint"
    if requested != "auto":
        return requested, "as configured (`branch_restore`)"
    sharded = (f" (this rank's ZeRO-{_zero_optimizer(trainer)[1]} partitions)" if deepspeed
               else " (this rank's FSDP2 shards)" if in_place_only(trainer) else "")
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
    zero = getattr(trainer, "is_deepspeed_enabled", False)
    return MainBranchSnapshot(
        step=trainer.state.global_step,
        weights=_copy(_buffers(trainer.model) if zero else _trainable_state(trainer.model), target),
        optimizer=_copy(_zero_state(trainer), target) if zero else _copy(_optimizer_state(trainer), target),
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
    if getattr(trainer, "is_deepspeed_enabled", False):
        _restore_zero_state(trainer, snapshot.optimizer)
    elif in_place_only(trainer):
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


# DeepSpeed ZeRO: this rank's partitions, from inside the ZeRO optimizer (deepspeed/runtime/zero/stage_1_and_2.py,
# stage3.py). Its own state_dict()/load_state_dict() would also do, but they return live references, strip padding
# and, for ZeRO-3, reload through the base optimizer's load_state_dict: copying the flat tensors is the exact minimum.
_ENGINE_COUNTERS = ("global_steps", "global_samples", "skipped_steps", "micro_steps")
_ZERO_SCALARS = ("loss_scaler", "dynamic_loss_scale", "overflow")


def _zero_engine(trainer: "Trainer"):
    return getattr(trainer, "deepspeed", None) or trainer.model_wrapped


def _zero_optimizer(trainer: "Trainer") -> tuple[Any, int]:
    """The engine's ZeRO optimizer and its stage (0 when the engine runs without a ZeRO optimizer)."""
    optimizer = getattr(_zero_engine(trainer), "optimizer", None)
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):
        return optimizer, 3
    if hasattr(optimizer, "single_partition_of_fp32_groups"):
        return optimizer, 2 if optimizer.partition_gradients else 1
    return optimizer, 0


def _zero_unsupported(trainer: "Trainer") -> str | None:
    """Why this DeepSpeed run's state cannot be kept in memory (a name for the log), or ``None`` when it can."""
    optimizer, stage = _zero_optimizer(trainer)
    if stage == 0:
        return "DeepSpeed without a ZeRO optimizer"
    if getattr(optimizer, "swap_optimizer", False) or getattr(optimizer, "params_in_nvme_and_cpu", False):
        return f"ZeRO-{stage} with NVMe offload"
    return None


def _zero_state(trainer: "Trainer") -> dict:
    """Live references to what makes this rank's ZeRO state (copy before keeping): the fp32 master partitions, the
    base optimizer's state for each (it is keyed by them) and its groups' hyperparameters, the 16-bit weights (ZeRO-1/2:
    the whole flat buffers the model's parameters view; ZeRO-3: this rank's flat partitions, which its parameters'
    ``ds_tensor`` view), loss-scaling flags and the engine's step counters."""
    engine = _zero_engine(trainer)
    optimizer, stage = _zero_optimizer(trainer)
    if stage == 3:
        fp32 = list(optimizer.fp32_partitioned_groups_flat)
        bit16 = list(optimizer.fp16_partitioned_groups_flat)
    else:
        fp32, bit16 = list(optimizer.single_partition_of_fp32_groups), list(optimizer.bit16_groups_flat)
    base = optimizer.optimizer
    return {
        "fp32": fp32,
        "bit16": bit16,
        "state": [dict(base.state[p]) if p in base.state else None for p in fp32],
        "groups": [{k: v for k, v in group.items() if k != "params"} for group in base.param_groups],
        "scalars": {name: getattr(optimizer, name) for name in _ZERO_SCALARS if hasattr(optimizer, name)},
        "engine": {name: getattr(engine, name) for name in _ENGINE_COUNTERS if hasattr(engine, name)},
    }


def _restore_zero_state(trainer: "Trainer", saved: dict) -> None:
    """Copy a rank's saved ZeRO partitions back into the live storage: the model's parameters (ZeRO-1/2 views of the
    flat 16-bit buffers, ZeRO-3 ``ds_tensor`` views of the flat partitions) follow without communication."""
    engine = _zero_engine(trainer)
    optimizer, _ = _zero_optimizer(trainer)
    live = _zero_state(trainer)
    for current, value in zip(live["fp32"] + live["bit16"], saved["fp32"] + saved["bit16"]):
        current.data.copy_(value)
    base = optimizer.optimizer
    for param, state in zip(live["fp32"], saved["state"]):
        if state is None:
            base.state.pop(param, None)
            continue
        current = base.state[param]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and isinstance(current.get(key), torch.Tensor):
                current[key].copy_(value)
            else:
                current[key] = copy.deepcopy(value)
    for group, hyper in zip(base.param_groups, saved["groups"]):
        group.update(copy.deepcopy(hyper))
    for name, value in saved["scalars"].items():
        setattr(optimizer, name, copy.deepcopy(value))
    for name, value in saved["engine"].items():
        setattr(engine, name, value)
