"""Test helpers shared by every test module: one tiny model, tiny data and runs, the KJV-based corpus and
tokenizer, stand-ins for the trainer side of budget events, fake budget folders and the local Hub fixture.

Run as a script it is the tiny WSD run that the kill-and-resume tests SIGKILL:

    python tests/helpers.py OUTPUT_DIR --budgets 20 40 --schedule wsd [--kill-at 19] [--ema-beta 0.9] [--resume]
        [--request-at 5 40] [--wait-at 5 FLAG] [--per-device-batch 4]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

VOCAB, SEQ = 64, 16
HUB_TOKEN = "hf_test-token-do-not-leak-0123456789"  # fake; hyphens keep secret scanners quiet
# A valid 1×1 PNG, so the fake budget folders carry "plots" without importing matplotlib.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


# ----------------------------------------------------------------------------------------------- the model
def tiny_model(seed: int = 0, vocab_size: int = VOCAB, tokenizer=None, intermediate_size: int = 64,
               max_positions: int = 256, dropout: float = 0.0):
    """The tiny Llama of every test (hidden 32, 1 layer, 2 heads), random-init from ``seed``.

    ``tokenizer`` sets the vocabulary and special token ids from a tokenizer instead of ``vocab_size``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    special = {}
    if tokenizer is not None:
        vocab_size = len(tokenizer)
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=intermediate_size, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=max_positions,
        attention_dropout=dropout, **special,
    )
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------------------------- tiny runs
def tiny_data(n: int = 96, seed: int = 0):
    """Random token blocks; 96 examples at batch 4 make an epoch of 24 updates, so runs cross epochs."""
    import torch
    from datasets import Dataset

    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def tiny_config(output_dir, budgets, schedule="wsd-s", **overrides):
    from hf_wsd import WSDConfig

    settings = dict(
        output_dir=str(output_dir), budgets=[str(b) for b in budgets], schedule=schedule, warmup_steps=4,
        learning_rate=1e-2, per_device_train_batch_size=4, logging_steps=1, save_steps=1000, report_to="none",
        budget_eval=False, use_cpu=True, disable_tqdm=True, seed=0, budget_forecast=False,
    )
    settings.update(overrides)
    return WSDConfig(**settings)


def tiny_trainer(output_dir, budgets, schedule="wsd-s", callbacks=None, model=None, train_dataset=None, **overrides):
    from hf_wsd import WSDTrainer

    args = tiny_config(output_dir, budgets, schedule, **overrides)
    return WSDTrainer(model=model if model is not None else tiny_model(), args=args,
                      train_dataset=train_dataset if train_dataset is not None else tiny_data(), callbacks=callbacks)


def write_parquet_shards(folder, documents, n_shards=4, column="text"):
    """A local sharded parquet folder laid out like a Hub dataset (HuggingFaceFW/fineweb-edu's sample-10BT)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(documents) // n_shards)
    for shard in range(n_shards):
        chunk = documents[shard * size : (shard + 1) * size]
        table = pa.table(
            {column: chunk, "id": [f"<urn:{shard}:{i}>" for i in range(len(chunk))], "score": [3.0] * len(chunk)}
        )
        pq.write_table(table, folder / f"train-{shard:05d}-of-{n_shards:05d}.parquet", row_group_size=7)
    return folder


class CountingCollator:
    """The trainer's default collator, counting the rows it collates (a re-read batch would be collated again)."""

    def __init__(self):
        from hf_wsd.data import BlockCollator

        self.collate, self.rows = BlockCollator(), 0

    def __call__(self, rows):
        self.rows += len(rows)
        return self.collate(rows)


def tiny_stream(n: int = 96, shards: int = 3):
    """:func:`tiny_data` as a ``datasets.IterableDataset`` of ``shards`` shards (3: not a multiple of 2 ranks)."""
    return tiny_data(n).to_iterable_dataset(num_shards=shards)


def tiny_run(output_dir, budgets, schedule="wsd-s", callbacks=(), evaluate=False, push: str | None = None,
             streaming: bool = False, **overrides):
    """:func:`tiny_trainer` with held-out evaluation of every budget, publishing to ``push``, and a streamed
    training set (:func:`tiny_stream`, rows collated by a :class:`CountingCollator`) when asked."""
    settings = dict(overrides)
    if evaluate:
        settings.update(budget_eval=True, per_device_eval_batch_size=4)
    if push:
        settings.update(push_to_hub=True, hub_model_id=push)
    from hf_wsd import WSDTrainer

    args = tiny_config(output_dir, budgets, schedule, **settings)
    return WSDTrainer(model=tiny_model(), args=args, train_dataset=tiny_stream() if streaming else tiny_data(),
                      callbacks=list(callbacks), eval_dataset=tiny_data(n=8, seed=1) if evaluate else None,
                      data_collator=CountingCollator())


def budget_dirs(output_dir) -> dict[int, Path]:
    """A run's budget folders by step."""
    from hf_wsd import runs

    return {budget.step: budget.folder for budget in runs.budget_records(output_dir)}


def weights(output_dir, step: int):
    from safetensors.torch import load_file

    folder = budget_dirs(output_dir)[step]
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(folder / name)


def assert_bitwise_equal(a, b) -> None:
    import torch

    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def KillAt(step: int):  # noqa: N802 - a callback class, built lazily (importing transformers takes seconds)
    """A callback that SIGKILLs this process right after update ``step`` (no clean-up, like a node failure)."""
    from transformers import TrainerCallback

    class _KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    return _KillAt()


def KillOnBudget(step: int, priority: int):  # noqa: N802
    """A budget subscriber that SIGKILLs this process when budget ``step`` is reached, at ``priority`` among the
    subscribers (above evaluation's 100: the folder is written but not evaluated; between 100 and the card's -100:
    evaluated, no card; below the publisher's -200: queued for upload, the upload in flight)."""
    from hf_wsd import BudgetCallback

    class _KillOnBudget(BudgetCallback):
        def on_budget_reached(self, args, state, control, *, event, **kwargs):
            if event.budget.step == step and not event.replayed:
                os.kill(os.getpid(), signal.SIGKILL)

    _KillOnBudget.priority = priority
    return _KillOnBudget()


def RequestAt(step: int, output_dir, value: str, action: str = "add", unit: str | None = None):  # noqa: N802
    """A callback that writes an ``hf-wsd budget`` request right after update ``step`` (main process only), so the
    trainer picks it up at that update boundary."""
    from transformers import TrainerCallback

    from hf_wsd import live

    class _RequestAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and state.is_world_process_zero:
                live.write_request(output_dir, action, value, unit)

    return _RequestAt()


def WaitAt(step: int, flag):  # noqa: N802
    """A callback that, right after update ``step``, writes ``{flag}.waiting`` and waits until ``flag`` exists."""
    import time

    from transformers import TrainerCallback

    class _WaitAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                Path(f"{flag}.waiting").touch()
                deadline = time.monotonic() + 300
                while not Path(flag).exists() and time.monotonic() < deadline:
                    time.sleep(0.05)

    return _WaitAt()


# ----------------------------------------------------------------------------------------------- real text
@functools.lru_cache(maxsize=1)
def kjv_chapters() -> tuple[str, ...]:
    from hf_wsd.data import kjv_documents

    return tuple(kjv_documents())


def tiny_corpus(n_documents: int = 120) -> list[str]:
    """The first ``n_documents`` chapters of the KJV (Genesis, Exodus, …): real text, small enough to be fast."""
    return list(kjv_chapters()[:n_documents])


TINY_VOCAB, TINY_BLOCK = 512, 64


@functools.lru_cache(maxsize=1)
def tiny_lm_data():
    """``LMData`` of :func:`tiny_corpus`: a 512-token tokenizer, 64-token blocks, 20% of chapters held out."""
    from hf_wsd.data import build_lm_datasets

    return build_lm_datasets(
        corpus=tiny_corpus(), vocab_size=TINY_VOCAB, block_size=TINY_BLOCK, heldout_fraction=0.2, seed=0,
        cache_dir=tempfile.mkdtemp(prefix="hf_wsd-test-cache-"),
    )


def tiny_tokenizer():
    return tiny_lm_data().tokenizer


def text_model(seed: int = 0, dropout: float = 0.0):
    """:func:`tiny_model` over the KJV tokenizer's vocabulary."""
    return tiny_model(seed, tokenizer=tiny_lm_data().tokenizer, dropout=dropout)


# ----------------------------------------------------------------------------------------------- SFT (TRL)
@functools.lru_cache(maxsize=1)
def tiny_sft_rows() -> tuple[list[dict], list[dict]]:
    """KJV verse pairs (prompt/completion): the first 64 of the training chapters, 16 of the held-out chapters."""
    from hf_wsd.data.instructions import kjv_verse_split

    train, heldout = kjv_verse_split(0.05, 0)
    return train[:64], heldout[:16]


def tiny_sft_config(output_dir, budgets, schedule="wsd-s", **overrides):
    """:func:`tiny_config`'s settings as a ``WSDSFTConfig`` (TRL's bf16 and gradient checkpointing off, 64-token
    rows, decays of a quarter)."""
    from hf_wsd.integrations.trl import WSDSFTConfig

    settings = dict(
        output_dir=str(output_dir), budgets=[str(b) for b in budgets], schedule=schedule, warmup_steps=2,
        decay_fraction=0.25, learning_rate=1e-2, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        logging_steps=1,
        save_steps=1000, report_to="none", budget_eval=False, use_cpu=True, disable_tqdm=True, seed=0, bf16=False,
        gradient_checkpointing=False, max_length=64,
    )
    settings.update(overrides)
    return WSDSFTConfig(**settings)


def tiny_sft_trainer(output_dir, budgets, schedule="wsd-s", eval_dataset=None, **overrides):
    """``WSDSFTTrainer`` on :func:`text_model` and :func:`tiny_sft_rows` (held-out pairs + KJV blocks to evaluate)."""
    from datasets import Dataset

    from hf_wsd.integrations.trl import WSDSFTTrainer

    from hf_wsd.scripts.continual_sft import as_token_lists

    train, heldout = tiny_sft_rows()
    if eval_dataset is None:
        upstream = as_token_lists(tiny_lm_data().heldout.select(range(8)))
        eval_dataset = {"downstream": Dataset.from_list(heldout), "upstream": upstream}
    return WSDSFTTrainer(
        model=text_model(), args=tiny_sft_config(output_dir, budgets, schedule, **overrides),
        train_dataset=Dataset.from_list(train), eval_dataset=eval_dataset, processing_class=tiny_tokenizer(),
    )


# ----------------------------------------------------------------------------------------------- stand-ins
def fake_args(output_dir, **fields):
    """The few config fields subscribers read (building real ``TrainingArguments`` is slow)."""
    return SimpleNamespace(output_dir=str(output_dir), learning_rate=3e-4, **fields)


def hub_args(output_dir, repo_id: str | None = None, token: str | None = HUB_TOKEN, **overrides):
    """:func:`fake_args` with the Hub fields the publisher reads."""
    return fake_args(output_dir, push_to_hub=True, hub_model_id=repo_id, hub_token=token, hub_private_repo=None,
                     **overrides)


def trainer_state(main: bool = True):
    from transformers import TrainerState

    return TrainerState(is_world_process_zero=main, is_local_process_zero=main)


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
    num_processes: int = 1

    def wait_for_everyone(self) -> None:
        self.waits += 1


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
    settings = dict(model=model if model is not None else text_model(), processing_class=data.tokenizer,
                    eval_dataset=data.heldout, train_dataset=data.train)
    settings.update(overrides)
    return FakeTrainer(**settings)


# ----------------------------------------------------------------------------------------------- the Hub side
@pytest.fixture
def local_hub(monkeypatch):
    """A running local Hub (requires ``HUB_TOKEN`` for writes); huggingface_hub's default endpoint points at it.

    ``HfApi(endpoint=hub.endpoint)`` works without the patch; ``hf_hub_download`` and ``from_pretrained`` read
    ``constants.ENDPOINT`` / ``HUGGINGFACE_CO_URL_TEMPLATE`` at call time, so both are patched for the test.
    """
    from huggingface_hub import constants

    from hub_server import LocalHub

    with LocalHub(token=HUB_TOKEN) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield hub


def _char_tokenizer():
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
    tokenizer = _char_tokenizer()
    folders = []
    for seed in range(3):
        folder = root / f"model{seed}"
        tiny_model(seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


def write_budget_folders(
    output_dir: Path, models: list[Path] | None, steps=(100, 200, 400), evaluated: bool = True
) -> list[Path]:
    """Fake a WSD-S run's ``budgets/`` folders as the trainer and its subscribers leave them; returns them by step.

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
        write_model_card(folder)  # what the card subscriber does after evaluation
        folders.append(folder)
    return folders


@pytest.fixture
def fake_budget_dirs(tmp_path, tiny_model_dirs) -> list[Path]:
    """``tmp_path/run/budgets/{step100-tokens205K, step200-tokens410K, step400-tokens819K}``, evaluated."""
    return write_budget_folders(tmp_path / "run", tiny_model_dirs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--budgets", nargs="+", required=True)
    parser.add_argument("--schedule", default="wsd-s")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--save-steps", type=int, default=1000)
    parser.add_argument("--branch-restore", default="auto")
    parser.add_argument("--kill-on-budget", type=int, help="SIGKILL when this budget (a step) is reached ...")
    parser.add_argument("--kill-priority", type=int, default=200, help="... at this priority among the subscribers")
    parser.add_argument("--eval", action="store_true", help="evaluate every budget (held-out loss)")
    parser.add_argument("--push", help="publish every budget to this repo (HF_ENDPOINT, HF_TOKEN from the environment)")
    parser.add_argument("--ema-beta", type=float)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--request-at", nargs=2, metavar=("STEP", "VALUE"), help="add budget VALUE after update STEP")
    parser.add_argument("--wait-at", nargs=2, metavar=("STEP", "FLAG"), help="after update STEP, wait for FLAG")
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--streaming", action="store_true", help="train on tiny_stream() instead of tiny_data()")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (bf16), not the CPU")
    cli = parser.parse_args()
    callbacks = [KillAt(cli.kill_at)] if cli.kill_at is not None else []
    if cli.kill_on_budget is not None:
        callbacks.append(KillOnBudget(cli.kill_on_budget, cli.kill_priority))
    if cli.request_at:
        callbacks.append(RequestAt(int(cli.request_at[0]), cli.output_dir, cli.request_at[1]))
    if cli.wait_at:
        callbacks.append(WaitAt(int(cli.wait_at[0]), cli.wait_at[1]))
    trainer = tiny_run(cli.output_dir, cli.budgets, cli.schedule, callbacks, cli.eval, cli.push, cli.streaming,
                       save_steps=cli.save_steps, branch_restore=cli.branch_restore,
                       per_device_train_batch_size=cli.per_device_batch,
                       ema_beta=cli.ema_beta, **({"use_cpu": False, "bf16": True} if cli.gpu else {}))
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
