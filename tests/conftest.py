"""Shared fixtures: tiny model and data (tests/_tiny.py) and reference runs reused across tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory):
    """Uninterrupted tiny runs, built on first use and shared: {(schedule, budgets): output_dir}."""
    from _tiny import tiny_trainer

    cache: dict = {}

    def get(schedule: str, budgets: tuple[int, ...]) -> Path:
        key = (schedule, tuple(budgets))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ref-{schedule}")
            tiny_trainer(out, budgets, schedule).train()
            cache[key] = out
        return cache[key]

    return get
