"""Reusable pieces for the data and evaluation tests: a small real corpus, its tokenizer and packed blocks, a
tiny Llama, and a stand-in for the trainer side of the *budget reached* event.

Everything is cached per process, so tests share one tokenizer training (~0.3 s) and one packing.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TINY_VOCAB = 512
TINY_BLOCK = 64


@functools.lru_cache(maxsize=1)
def kjv_chapters() -> tuple[str, ...]:
    from hf_wsd.data import kjv_documents

    return tuple(kjv_documents())


def tiny_corpus(n_documents: int = 120) -> list[str]:
    """The first ``n_documents`` chapters of the KJV (Genesis, Exodus, …): real text, small enough to be fast."""
    return list(kjv_chapters()[:n_documents])


@functools.lru_cache(maxsize=1)
def _cache_dir() -> str:
    return tempfile.mkdtemp(prefix="hf_wsd-test-cache-")


@functools.lru_cache(maxsize=1)
def tiny_lm_data():
    """``LMData`` of :func:`tiny_corpus`: a 512-token tokenizer, 64-token blocks, 20% of chapters held out."""
    from hf_wsd.data import build_lm_datasets

    return build_lm_datasets(
        corpus=tiny_corpus(), vocab_size=TINY_VOCAB, block_size=TINY_BLOCK, heldout_fraction=0.2, seed=0,
        cache_dir=_cache_dir(),
    )


def tiny_tokenizer():
    return tiny_lm_data().tokenizer


def tiny_model(seed: int = 0, dropout: float = 0.0):
    """A random-init LlamaForCausalLM (hidden 64, 2 layers) over the tiny tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, attention_dropout=dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def budget_event(folder: Path, index: int = 0, steps: tuple[int, ...] = (10, 20), tokens_per_update: int = 256):
    """A ``BudgetReached`` for budget ``index`` of a small WSD-S plan, its folder created."""
    from hf_wsd.events import BudgetReached
    from hf_wsd.plan import BudgetPlan

    plan = BudgetPlan(list(steps), schedule="wsd-s", tokens_per_update=tokens_per_update)
    budget = plan.budgets[index]
    folder = Path(folder) / "budgets" / budget.name
    folder.mkdir(parents=True, exist_ok=True)
    return BudgetReached(budget=budget, folder=folder, plan=plan)


@dataclass
class FakeAccelerator:
    waits: int = 0

    def wait_for_everyone(self) -> None:
        self.waits += 1


@dataclass
class FakeArgs:
    output_dir: str


@dataclass
class FakeTrainer:
    """What ``BudgetEvaluator`` uses of a ``Trainer``: model, tokenizer, datasets, ``evaluate``, ``log``, accelerator.

    ``evaluate`` mirrors ``Trainer.evaluate`` without a compute_metrics: the mean loss over the blocks, the
    model left in eval mode, the metrics logged with the prefix.
    """

    model: object
    processing_class: object
    eval_dataset: object = None
    train_dataset: object = None
    log_history: list = field(default_factory=list)
    accelerator: FakeAccelerator = field(default_factory=FakeAccelerator)
    batch_size: int = 16

    def evaluate(self, eval_dataset=None, metric_key_prefix: str = "eval") -> dict:
        import torch

        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        self.model.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, len(dataset), self.batch_size):
                ids = torch.tensor(dataset[start : start + self.batch_size]["input_ids"])
                losses.append(self.model(input_ids=ids, labels=ids).loss.item() * len(ids))
        metrics = {f"{metric_key_prefix}_loss": sum(losses) / len(dataset)}
        self.log(dict(metrics))
        return metrics

    def log(self, logs: dict) -> None:
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values()), logs
        self.log_history.append(dict(logs))


def fake_trainer(model=None, **overrides) -> FakeTrainer:
    data = tiny_lm_data()
    settings = dict(model=model if model is not None else tiny_model(), processing_class=data.tokenizer,
                    eval_dataset=data.heldout, train_dataset=data.train)
    settings.update(overrides)
    return FakeTrainer(**settings)


def trainer_state(main: bool = True):
    from transformers import TrainerState

    return TrainerState(is_world_process_zero=main, is_local_process_zero=main)
