"""Shared test helpers for the Hub side: the local Hub fixture and fake budget folders.

``conftest.py`` can expose them to every test with
``from _hub import budget_dirs, local_hub, tiny_model_dirs  # noqa: F401``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from hub_server import LocalHub

HUB_TOKEN = "hf_test-token-do-not-leak-0123456789"  # fake; hyphens keep secret scanners quiet
# A valid 1×1 PNG, so the fake budget folders carry "plots" without importing matplotlib.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def local_hub(monkeypatch) -> LocalHub:
    """A running local Hub (requires ``HUB_TOKEN`` for writes); huggingface_hub's default endpoint points at it.

    ``HfApi(endpoint=hub.endpoint)`` works without the patch; ``hf_hub_download`` and ``from_pretrained`` read
    ``constants.ENDPOINT`` / ``HUGGINGFACE_CO_URL_TEMPLATE`` at call time, so both are patched for the test.
    """
    from huggingface_hub import constants

    with LocalHub(token=HUB_TOKEN) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield hub


def _tiny_model(seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=128,
    )
    return LlamaForCausalLM(config)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> list[Path]:
    """Three tiny Llama checkpoints with different weights (+ a tokenizer), saved once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = _tiny_tokenizer()
    folders = []
    for seed in range(3):
        folder = root / f"model{seed}"
        _tiny_model(seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


def write_budget_folders(
    output_dir: Path, models: list[Path] | None, steps=(100, 200, 400), evaluated: bool = True
) -> list[Path]:
    """Fake a WSD-S run's ``budgets/`` folders as the trainer (and evaluator) leave them; returns them by step.

    ``models``: saved checkpoints to copy in, one per budget; ``None`` writes stub config/tokenizer files only
    (enough for the card, and no torch import).
    """
    from hf_wsd.card import write_model_card
    from hf_wsd.plan import BudgetPlan

    plan = BudgetPlan(list(steps), warmup_steps=10, tokens_per_update=2048)
    folders = []
    for budget, model in zip(plan.budgets, models or [None] * len(plan.budgets)):
        folder = output_dir / "budgets" / budget.name
        if model is None:
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
            (folder / "tokenizer_config.json").write_text("{}")
        else:
            shutil.copytree(model, folder)
        (folder / "lr_schedule.png").write_bytes(PNG_1X1)
        (folder / "loss_curve.png").write_bytes(PNG_1X1)
        record = {
            "name": budget.name, "index": budget.index, "step": budget.step, "tokens": budget.tokens,
            "tokens_per_update": plan.tokens_per_update, "schedule": plan.schedule, "decay_shape": plan.decay_shape,
            "decay_start": budget.decay_start, "decay_steps": budget.decay_steps, "branch": budget.branch,
            "compute": budget.compute, "peak_lr": 3e-4, "min_lr_ratio": plan.min_lr_ratio,
            "warmup_steps": plan.warmup_steps, "train_loss": 4.0 - 0.5 * budget.index, "base_model": None,
            "model_type": "llama", "num_parameters": 12_416, "seed": 42, "run_id": "run0", "plan": plan.to_dict(),
        }
        (folder / "budget.json").write_text(json.dumps(record, indent=2))
        if evaluated:
            (folder / "eval_results.json").write_text(json.dumps({
                "budget": budget.name, "step": budget.step, "tokens": budget.tokens, "lm_eval_version": "0.4.13",
                "seconds": 1.5, "results": [
                    {"task": "heldout", "task_type": "text-generation", "dataset_name": "held-out text",
                     "dataset_type": "hf_wsd/heldout", "metric": "perplexity", "value": 60.0 - 10 * budget.index,
                     "stderr": None, "samples": 256},
                    {"task": "tiny_cloze", "task_type": "multiple-choice", "dataset_name": "tiny cloze",
                     "dataset_type": "json", "metric": "acc", "value": 0.25 + 0.05 * budget.index, "stderr": 0.02,
                     "samples": 64},
                ],
            }, indent=2))
        write_model_card(folder)  # what the trainer does right after saving
        folders.append(folder)
    return folders


@pytest.fixture
def budget_dirs(tmp_path, tiny_model_dirs) -> list[Path]:
    """``tmp_path/run/budgets/{step100-tokens205K, step200-tokens410K, step400-tokens819K}``, evaluated."""
    return write_budget_folders(tmp_path / "run", tiny_model_dirs)


def training_args(output_dir: Path, repo_id: str | None = None, token: str | None = HUB_TOKEN, **overrides):
    """The few ``TrainingArguments`` fields the publisher reads (building real ones is slow and needs no Hub)."""
    return SimpleNamespace(
        output_dir=str(output_dir), push_to_hub=True, hub_model_id=repo_id, hub_token=token, hub_private_repo=None,
        **overrides,
    )


def main_state(is_world_process_zero: bool = True):
    return SimpleNamespace(is_world_process_zero=is_world_process_zero, global_step=0)
