"""Shared fixtures: the local Hub and fake budget folders (tests/helpers.py), a small corpus, reference runs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models train several times faster on one intra-op thread (and 2-process tests get a core each);
# subprocesses inherit it. Bitwise comparisons stay valid: every run of the session uses the same count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Trained tokenizers are cached per test session, never in the user's ~/.cache.
os.environ["HF_WSD_CACHE"] = tempfile.mkdtemp(prefix="hf_wsd-cache-")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from helpers import fake_budget_dirs, local_hub, tiny_model_dirs  # noqa: E402,F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
# The default recipe shrunk to seconds: a 120-chapter corpus, 512-token vocabulary, a 1-layer Llama.
TINY_RECIPE = [
    "--vocab_size", "512", "--block_size", "32", "--hidden_size", "32", "--intermediate_size", "64",
    "--num_hidden_layers", "1", "--num_attention_heads", "2", "--num_key_value_heads", "2",
    "--warmup_steps", "2", "--logging_steps", "5", "--save_steps", "1000", "--disable_tqdm", "true",
    "--bundled_task_examples", "24", "--max_eval_blocks", "16", "--lm_eval_batch_size", "16",
    "--per_device_eval_batch_size", "8",
]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """The first 120 chapters of the embedded KJV as a local JSONL corpus."""
    from hf_wsd.data import kjv_documents

    path = tmp_path_factory.mktemp("corpus") / "kjv120.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in kjv_documents()[:120]))
    return path


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory):
    """Uninterrupted tiny runs, built on first use and shared: {(schedule, budgets): output_dir}."""
    from helpers import tiny_trainer

    cache: dict = {}

    def get(schedule: str, budgets: tuple[int, ...]) -> Path:
        key = (schedule, tuple(budgets))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ref-{schedule}")
            tiny_trainer(out, budgets, schedule).train()
            cache[key] = out
        return cache[key]

    return get
