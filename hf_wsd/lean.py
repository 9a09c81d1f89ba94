"""Lean WSD runs: PEFT (LoRA) adapters and bitsandbytes 8-bit optimizers through budgets, branches and resume.

Adapters. :class:`~hf_wsd.WSDTrainer` wraps the model with ``peft.get_peft_model`` when it is given a
``peft_config`` (or ``use_peft=True`` in :class:`~hf_wsd.WSDConfig`), as TRL's ``SFTTrainer`` does, or trains a
``PeftModel`` it is given. ``Trainer.save_model`` saves a ``PeftModel`` as the adapter only
(``adapter_config.json`` + ``adapter_model.safetensors``), so every budget folder and every resumable checkpoint
holds just the adapter; ``budget.json`` names the frozen base model and how to load the adapter, and
``save_merged_budgets`` adds merged full weights in ``{budget}/merged/``. WSD branches and resume go through the
Trainer's own adapter checkpoints (``PeftModel.load_adapter`` copies the saved weights into the live parameters).

Optimizers. bitsandbytes' 8-bit optimizers keep their quantized states (``uint8`` codes, per-block ``absmax``,
the quantization map) in the optimizer's state dict, so the Trainer's checkpoints restore them bit for bit.
:func:`forget_stale_bnb_overrides` removes one process-wide leak that made a run's numbers depend on what ran
before it in the same process.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft import PeftConfig

    from .config import WSDConfig

logger = logging.getLogger(__name__)

MERGED_DIR = "merged"


# ------------------------------------------------------------------------------------------------ adapters
def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep plain runs working without it
        return False
    return isinstance(model, PeftModel)


def lora_config_from_args(args: "WSDConfig") -> "PeftConfig | None":
    """The ``LoraConfig`` described by ``args``' ``lora_*`` fields, or ``None`` unless ``args.use_peft``."""
    if not args.use_peft:
        return None
    from peft import LoraConfig

    target_modules = args.lora_target_modules
    if target_modules is not None and len(target_modules) == 1 and _is_pattern(target_modules[0]):
        # PEFT reads a string as "all-linear" or a regex over full module names, a list as module names.
        target_modules = target_modules[0]
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
        modules_to_save=args.lora_modules_to_save,
    )


def _is_pattern(value: str) -> bool:
    return value == "all-linear" or any(char in value for char in ".*+?[](){}|^$\\")


def prepare_model(model: Any, args: "WSDConfig", peft_config: "PeftConfig | None" = None) -> Any:
    """Wrap ``model`` with ``get_peft_model`` when ``peft_config`` or ``args.use_peft`` asks for an adapter."""
    if peft_config is not None and args.use_peft:
        raise ValueError(
            "`peft_config` was passed to WSDTrainer and `use_peft=True` is set in WSDConfig: give the adapter "
            "settings once (drop `use_peft`, or the `peft_config` argument)."
        )
    peft_config = peft_config if peft_config is not None else lora_config_from_args(args)
    if peft_config is None:
        if args.save_merged_budgets and not is_peft_model(model):
            logger.warning("`save_merged_budgets` has no effect without an adapter: budget folders hold full weights.")
        return model
    if model is None:
        raise ValueError("`peft_config` / `use_peft` wrap the `model` argument: pass a model (not `model_init`).")
    if is_peft_model(model):
        raise ValueError(
            "the model is already a PeftModel, and `peft_config` / `use_peft` would wrap it again: pass the "
            "PeftModel without adapter settings, or the base model with them."
        )
    from peft import get_peft_model

    if args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        # Checkpointed blocks need an input that requires grad when the embeddings are frozen.
        model.enable_input_require_grads()
    model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Training a %s adapter: %d of %d parameters (%.2f%%)", peft_config.peft_type, trainable, total,
                100 * trainable / max(total, 1))
    return model


def base_model_name(model: Any) -> str | None:
    """``base_model_name_or_path`` of a ``PeftModel``'s active adapter (``None`` for other models)."""
    if not is_peft_model(model):
        return None
    return model.peft_config[model.active_adapter].base_model_name_or_path or None


def adapter_record(model: Any, revision: str, base_model: str | None, merged: bool) -> dict | None:
    """What ``budget.json`` says about a ``PeftModel``'s adapter (``None`` for other models)."""
    if not is_peft_model(model):
        return None
    config = model.peft_config[model.active_adapter]
    record: dict[str, Any] = {
        "peft_type": str(getattr(config.peft_type, "value", config.peft_type)),
        "adapter_name": model.active_adapter,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save"):
        value = getattr(config, key, None)
        if isinstance(value, (set, list, tuple)):
            # PEFT expands "all-linear" into every module path; one name per kind of module reads better.
            value = sorted({name.rsplit(".", 1)[-1] for name in value})
        record[key] = value
    base = repr(base_model) if base_model else "BASE_MODEL"
    record["load"] = (
        f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base}), REPO_OR_FOLDER, "
        f"revision={revision!r})"
    )
    record["merged"] = MERGED_DIR if merged else None
    return record


def save_merged(model: Any, folder: Path, processing_class: Any = None) -> Path:
    """Write the base weights with the adapter merged in to ``folder`` (``AutoModelForCausalLM``-ready).

    Merges a copy (``copy.deepcopy`` + ``merge_and_unload``), so the model in training is not touched; the copy
    costs one more model in memory while it is written.
    """
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(str(folder))
    if processing_class is not None:
        processing_class.save_pretrained(str(folder))
    del merged
    return folder


# ------------------------------------------------------------------------------------------------ optimizers
def forget_stale_bnb_overrides(optimizer: Any) -> None:
    """Drop bitsandbytes' positional per-parameter overrides left by earlier optimizers in this process.

    bitsandbytes keeps overrides (the Trainer's "optimize embeddings with 32-bit state") in a process-wide
    ``GlobalOptimManager``, keyed by parameter id *and* by (group index, parameter index). The positional keys of
    an earlier optimizer apply to whatever parameter of a new optimizer sits at the same position, so a run's
    choice of 8-bit or 32-bit state, and hence its numbers, depended on what ran before it in the process. The
    id keys still serve live optimizers; a new optimizer re-registers its own positions at its first step.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's AcceleratedOptimizer
    if "bitsandbytes" not in type(inner).__module__:
        return
    from bitsandbytes.optim import GlobalOptimManager

    manager = GlobalOptimManager.get_instance()
    if manager.index2config:
        logger.debug("Forgetting %d positional bitsandbytes overrides of earlier optimizers", len(manager.index2config))
        manager.index2config.clear()
