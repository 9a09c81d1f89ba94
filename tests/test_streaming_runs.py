"""WSD on a stream (datasets.IterableDataset): branches restore the stream's position with everything else, and a
SIGKILL inside a branch resumes bitwise equal to the uninterrupted run without reading (collating) a batch twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_bitwise_equal, budget_dirs, tiny_run, weights

pytestmark = pytest.mark.slow
BUDGETS = (20, 40, 60)
SCRIPT = Path(__file__).parent / "helpers.py"


@pytest.fixture(scope="module")
def stream_runs(tmp_path_factory):
    """Uninterrupted streamed WSD runs, built on first use: {budgets: (output_dir, trainer)}."""
    cache: dict = {}

    def get(budgets: tuple[int, ...]):
        if budgets not in cache:
            out = tmp_path_factory.mktemp("stream")
            trainer = tiny_run(out, budgets, "wsd", streaming=True)
            trainer.train()
            cache[budgets] = out, trainer
        return cache[budgets]

    return get


def test_wsd_branches_on_a_stream_leave_the_main_branch_untouched(stream_runs):
    branched, trainer = stream_runs(BUDGETS)
    assert_bitwise_equal(weights(branched, 60), weights(stream_runs((60,))[0], 60))
    for step in BUDGETS[:-1]:  # each branch equals a one-budget run to that budget
        assert_bitwise_equal(weights(branched, step), weights(stream_runs((step,))[0], step))
    # Every update read its own batch once: branch updates too (the main branch then reads that data again).
    assert trainer.data_collator.rows == trainer.plan.total_compute * 4


def test_sigkill_in_a_wsd_branch_on_a_stream_resumes_bitwise_without_rereading(stream_runs, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), str(out), "--budgets", *map(str, BUDGETS), "--schedule", "wsd",
               "--streaming", "--kill-at", "39", "--save-steps", "10"]  # inside the branch of budget 40 (36–40)
    killed = subprocess.run(command, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-3000:]
    assert (out / "checkpoint-36" / "wsd_state" / "feed-rank0.pt").is_file()  # the stream's position, saved

    resumed = tiny_run(out, BUDGETS, "wsd", streaming=True, save_steps=10)
    resumed.train(resume_from_checkpoint=True)

    reference, _ = stream_runs(BUDGETS)
    assert sorted(budget_dirs(out)) == list(BUDGETS)
    for step in BUDGETS:
        assert_bitwise_equal(weights(out, step), weights(reference, step))
    # From checkpoint-36: the branch of budget 40 again (4 updates), then the main branch from 36 to 60.
    assert resumed._updates_done == 4 + 24
    assert resumed.data_collator.rows == resumed._updates_done * 4  # no batch of the first launch read again
