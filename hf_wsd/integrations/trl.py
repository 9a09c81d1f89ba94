"""TRL's ``SFTTrainer`` with WSD budgets: :class:`WSDSFTConfig` and :class:`WSDSFTTrainer` (``hf_wsd[trl]``).

``WSDSFTTrainer`` is :class:`~hf_wsd.trainer.WSDMixin` on ``SFTTrainer``: TRL prepares the data (tokenizing,
completion masks, truncation, packing), builds its collator and computes its loss; hf_wsd owns the schedule, the
data order (an update-indexed feed over the dataset TRL prepared, with TRL's collator), the budget folders, their
evaluation and publishing, WSD branches and resume.

What the pairing adds to the mixin, and why:

- Token budgets need tokens per update. SFT rows vary in length, so the mixin cannot read a sequence length
  from the data; with ``packing=True`` each row holds at most ``max_length`` tokens, and that is the figure used
  when ``seq_length`` is not set (exact with ``packing_strategy="wrapped"``, an upper bound with ``"bfd"``, whose
  rows are padding-free bins of at most ``max_length`` tokens). Without packing, use step budgets or set
  ``seq_length``.
- ``SFTTrainer`` keeps running token and accuracy counters (``num_tokens``, ``mean_token_accuracy`` …) outside the
  ``TrainerState``. They are a stateful part (:meth:`WSDMixin._stateful_parts`), so a WSD branch leaves the main
  branch's logged ``num_tokens`` untouched and a resumed run continues the count (plain ``SFTTrainer`` restarts
  it at 0).
"""

from __future__ import annotations

import logging
from typing import Any

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hf_wsd's SFT pairing (WSDSFTConfig, WSDSFTTrainer) needs TRL, an optional extra: "
        "pip install 'hf_wsd[trl]'."
    ) from error

from ..config import wsd_config_class
from ..trainer import WSDMixin

logger = logging.getLogger(__name__)

WSDSFTConfig = wsd_config_class(SFTConfig)
WSDSFTConfig.__doc__ = (
    "``SFTConfig`` (TRL) with the WSD fields of :class:`~hf_wsd.config.WSDArguments`: the configuration of "
    ":class:`WSDSFTTrainer`. TRL's defaults hold (``bf16`` on unless ``fp16``, ``gradient_checkpointing=True``, "
    "``learning_rate=2e-5``).\n\n" + (WSDSFTConfig.__doc__ or "")
)


class SFTCounters:
    """``SFTTrainer``'s running metrics (``_metrics``, ``_total_train_tokens``) as a stateful part of the run.

    The counters are gathered across processes, so every rank holds the same values: the main process's are saved.
    """

    per_rank = False

    def __init__(self, trainer: SFTTrainer):
        self.trainer = trainer

    def state_dict(self) -> dict:
        metrics = getattr(self.trainer, "_metrics", None) or {}
        return {
            "total_train_tokens": int(getattr(self.trainer, "_total_train_tokens", 0)),
            "metrics": {mode: {key: list(vals) for key, vals in by_key.items()} for mode, by_key in metrics.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        trainer = self.trainer
        trainer._total_train_tokens = state.get("total_train_tokens", 0)
        for mode, by_key in state.get("metrics", {}).items():
            live = trainer._metrics[mode]
            live.clear()
            live.update({key: list(values) for key, values in by_key.items()})


class WSDSFTTrainer(WSDMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` with WSD budgets: ``args`` is a :class:`WSDSFTConfig`; other arguments as ``SFTTrainer``.

    ``peft_config`` (or ``use_peft`` and the ``lora_*`` fields) trains an adapter as :class:`~hf_wsd.WSDTrainer`
    does (:mod:`hf_wsd.lean`): budgets hold the adapter and ``budget.json`` says how to load it. The LR scheduler
    comes from the budget plan: pass ``optimizers=(optimizer, None)`` at most.
    """

    def __init__(self, model=None, args=None, *pargs, **kwargs):
        if isinstance(model, str) and (kwargs.get("peft_config") is not None or getattr(args, "use_peft", False)):
            raise ValueError(
                "`model` is a name and an adapter is requested (`peft_config` / `use_peft`): load the model first "
                "(AutoModelForCausalLM.from_pretrained(name)) and pass it, so that the adapter wraps it."
            )
        super().__init__(model, args, *pargs, **kwargs)

    def _tokens_per_update(self) -> int | None:
        args = self.args
        if args.seq_length is None and args.packing and args.max_length:
            return self._examples_per_update * args.max_length
        return super()._tokens_per_update()

    def _stateful_parts(self) -> dict[str, Any]:
        return {**super()._stateful_parts(), "sft_counters": SFTCounters(self)}


__all__ = ["SFTCounters", "WSDSFTConfig", "WSDSFTTrainer"]
