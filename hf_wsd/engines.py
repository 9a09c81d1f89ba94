"""Which distributed engine a run really uses (DDP, FSDP2, ZeRO-n), and budget weights gathered from shards.

- :func:`engine_name` names the engine actually in use; :func:`check_engine` refuses, before any compute, a launch
  whose accelerate config asks for FSDP or DeepSpeed but would run something else (accelerate keeps FSDP off on a
  CPU and the Trainer would silently run DDP; a launch that found no process group would start several independent
  single-process runs on one output dir).
- :func:`enable_cpu_fsdp` (opt-in: ``HF_WSD_CPU_FSDP=1``) lets FSDP2 run on CPU processes over gloo, for tests and
  for checking an FSDP config on a laptop: accelerate's own FSDP branch of ``AcceleratorState.__init__``, applied
  to ``MULTI_CPU`` too (accelerate applies it only to accelerator types). FSDP1 is not supported on CPU.
- :func:`save_full_model` writes a budget as a normal ``from_pretrained`` folder under FSDP and DeepSpeed: every
  rank takes part in gathering the full weights (``accelerator.get_state_dict``), the main process writes them
  once. ``Trainer.save_model`` writes nothing for FSDP's sharded state dict.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

CPU_FSDP_ENV = "HF_WSD_CPU_FSDP"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_engine() -> str | None:
    """What the launch asked for (``accelerate launch`` exports it): ``"FSDP"``, ``"DeepSpeed"`` or ``None``."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    if _flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    return None


def enable_cpu_fsdp() -> None:
    """Let FSDP2 run on CPU processes (gloo): once ``AcceleratorState`` settles on ``MULTI_CPU`` with an FSDP plugin,
    switch it to ``FSDP`` exactly as accelerate does for GPUs. Idempotent; only when ``HF_WSD_CPU_FSDP=1``."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if getattr(AcceleratorState.__init__, "_hf_wsd_cpu_fsdp", False):
        return
    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        asked = fsdp_plugin is not None or _flag("ACCELERATE_USE_FSDP")
        if asked and self.distributed_type == DistributedType.MULTI_CPU:
            if fsdp_plugin is not None and fsdp_plugin.fsdp_version != 2:
                raise ValueError(
                    f"{CPU_FSDP_ENV}=1 runs FSDP2 only (FSDP1 on CPU loses Adam state on resume): set "
                    "`fsdp_version: 2` in the accelerate config."
                )
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._hf_wsd_cpu_fsdp = True
    AcceleratorState.__init__ = __init__
    logger.info("%s=1: FSDP2 runs on CPU processes (gloo)", CPU_FSDP_ENV)


def prepare_engine() -> None:
    """Before the Trainer builds its ``Accelerator``: apply the opt-ins the environment asks for."""
    if _flag(CPU_FSDP_ENV) and requested_engine() == "FSDP":
        enable_cpu_fsdp()


def engine_name(trainer: "Trainer") -> str:
    """The engine this run trains with: ``"FSDP2"``, ``"FSDP1"``, ``"ZeRO-2"``, ``"ZeRO-3"``, ``"DDP"`` or
    ``"single process"``."""
    accelerator = trainer.accelerator
    if getattr(trainer, "is_deepspeed_enabled", False):
        stage = accelerator.state.deepspeed_plugin.zero_stage
        return f"ZeRO-{stage}"
    if getattr(trainer, "is_fsdp_enabled", False):
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    return "DDP" if accelerator.num_processes > 1 else "single process"


def zero_stage(trainer: "Trainer") -> int | None:
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return None
    return int(trainer.accelerator.state.deepspeed_plugin.zero_stage)


def check_engine(trainer: "Trainer") -> str:
    """The engine in use, logged; a ``ValueError`` if the launch asked for another one (before any compute)."""
    name = engine_name(trainer)
    asked = requested_engine()
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    processes = trainer.accelerator.num_processes
    if asked == "FSDP" and not name.startswith("FSDP"):
        hint = (
            f"accelerate keeps FSDP off on CPU processes; set {CPU_FSDP_ENV}=1 to run FSDP2 on them (gloo)"
            if trainer.args.device.type == "cpu" else "check that the launch sees its accelerators"
        )
        raise ValueError(
            f"The accelerate config asks for FSDP (`distributed_type: FSDP`, ACCELERATE_USE_FSDP=true), but this run "
            f"would train with {name}: {hint}, or launch with a DDP config (recipes/accelerate_configs/cpu_2proc.yaml)."
        )
    if asked == "DeepSpeed" and not name.startswith("ZeRO"):
        raise ValueError(
            f"The accelerate config asks for DeepSpeed (`distributed_type: DEEPSPEED`, ACCELERATE_USE_DEEPSPEED=true), "
            f"but this run would train with {name}: on CPU processes DeepSpeed joins only with `use_cpu=False` and "
            "`ddp_backend='gloo'` (the recipes set both on a machine without a GPU)."
        )
    if launched > 1 and processes != launched:
        raise ValueError(
            f"The launch started {launched} processes (WORLD_SIZE={launched}), but each would train alone ({name}, "
            f"{processes} process): {launched} independent runs would race on one output_dir. No process group "
            "formed: on CPU set `use_cpu=True` (DDP over gloo) or, for DeepSpeed, `use_cpu=False` with "
            "`ddp_backend='gloo'`."
        )
    if name == "ZeRO-3":
        zero = trainer.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        if zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
            raise ValueError(
                "The DeepSpeed config runs ZeRO-3 without `stage3_gather_16bit_weights_on_model_save`: budget folders "
                "would hold DeepSpeed shards, not from_pretrained weights. Set `zero3_save_16bit_model: true` in the "
                "accelerate config (or that key in your DeepSpeed JSON)."
            )
    logger.info("Distributed engine: %s over %d process(es)", name, processes)
    return name


def gathers_weights(trainer: "Trainer") -> bool:
    """Whether budget weights are gathered (FSDP, DeepSpeed: separate full tensors, the main process writes them)
    rather than saved by ``save_model`` (which writes nothing for FSDP's sharded state dict)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))


def save_full_model(trainer: "Trainer", folder: str | Path) -> None:
    """Write the full model (and tokenizer) to ``folder`` as a ``from_pretrained`` folder. Every rank must call it:
    the weights are gathered collectively (FSDP: full tensors from every shard; ZeRO-3: the 16-bit gather, in the
    parameters' own dtype; ZeRO-1/2: copies of the whole parameters), then the main process writes them once
    through the Trainer's own ``_save`` (tied weights as the model declares them, PEFT adapters, the tokenizer)."""
    source = trainer.deepspeed if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    state_dict = trainer.accelerator.get_state_dict(source)  # every rank: a collective gather
    if trainer.args.should_save:
        model = trainer.accelerator.unwrap_model(trainer.model)
        trainer._save(str(folder), state_dict=drop_tied_copies(state_dict, model))


def drop_tied_copies(state_dict: dict, model) -> dict:
    """Gathered weights come as separate tensors, so ``save_pretrained`` (which finds ties by shared storage) would
    store a tied weight twice: keep only the source of each tie the model declares (``all_tied_weights_keys``,
    target → source), where both hold the same values."""
    import torch

    tied = getattr(model, "all_tied_weights_keys", None) or {}
    kept = dict(state_dict)
    for target, source in tied.items():
        if target in kept and source in kept and torch.equal(kept[target], kept[source]):
            del kept[target]
    return kept


def save_budget_weights(trainer: "Trainer", folder: str | Path) -> None:
    """A budget's weights: gathered under FSDP (any state dict type) and DeepSpeed, else ``Trainer.save_model``."""
    if gathers_weights(trainer):
        save_full_model(trainer, folder)
    else:
        trainer.save_model(str(folder), _internal_call=True)


def before_restart(trainer: "Trainer") -> None:
    """Before ``train()`` runs again in the same process (a WSD branch's checkpoint-path return): the Trainer's
    ``accelerator.free_memory()`` drops the DeepSpeed engine, and a still-wrapped ``model_wrapped`` would make it skip
    building a new one (``'NoneType' object has no attribute 'backward'``). Hand it the bare model instead."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        trainer.model_wrapped = trainer.model
        trainer.deepspeed = None
