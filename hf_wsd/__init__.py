"""hf_wsd: warmup-stable-decay pretraining for the Hugging Face stack.

Light names (the plan, the scheduler) import at once; trainer-side names import lazily, since loading
``transformers.Trainer`` takes seconds. ``WSDSFTConfig`` / ``WSDSFTTrainer`` need TRL (``pip install 'hf_wsd[trl]'``).
"""

from .plan import Budget, BudgetPlan, Phase, budget_name, format_tokens, parse_quantity
from .quiet import drop_known_noise

drop_known_noise()  # before transformers / PEFT import bitsandbytes (hf_wsd/quiet.py)

__version__ = "0.1.0"

_LAZY = {
    "get_budget_plan_scheduler": "lr_scheduler",
    "BudgetPlanLR": "lr_scheduler",
    "BudgetReached": "events",
    "BudgetCallback": "events",
    "WSDConfig": "config",
    "WSDTrainer": "trainer",
    "WSDMixin": "trainer",
    "wsd_config_class": "config",
    "register": "registry",
    "WSDSFTConfig": "integrations.trl",
    "WSDSFTTrainer": "integrations.trl",
}

_OPTIONAL = ("WSDSFTConfig", "WSDSFTTrainer")  # need an extra: left out of `import *`
__all__ = [
    "Budget", "BudgetPlan", "Phase", "budget_name", "format_tokens", "parse_quantity",
    *(name for name in _LAZY if name not in _OPTIONAL),
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_wsd' has no attribute {name!r}")
