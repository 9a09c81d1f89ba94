"""A diverging run stops before anything non-finite is written, evaluated or published (hf_wsd/divergence.py)."""

from __future__ import annotations

import logging
import math

import pytest
from helpers import budget_dirs, tiny_trainer, weights

from hf_wsd import runs
from hf_wsd.divergence import TrainingDiverged


def Poison(step: int):  # noqa: N802 - a callback class, built lazily
    """Makes one weight NaN right after update ``step``'s optimizer step (a loss spike blowing the weights up)."""
    from transformers import TrainerCallback

    class _Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step:
                next(model.parameters()).data[0, 0] = math.nan

    return _Poison()


def test_a_learning_rate_that_diverges_from_the_start_stops_with_nothing_written(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss of update \d+ is nan.*No checkpoint.*lower `learning_rate` "
                                               r"\(now 1e\+30\).*overwrite_output_dir=True"):
        tiny_trainer(tmp_path, (10,), learning_rate=1e30, save_steps=5).train()
    assert not budget_dirs(tmp_path) and not runs.checkpoints(tmp_path)


def test_divergence_mid_stable_stops_and_the_last_good_checkpoint_resumes(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"update 13 is nan.*checkpoint-10: lower `learning_rate`.*"
                                               r"resume_from_checkpoint=True"):
        tiny_trainer(tmp_path, (10, 20), save_steps=5, callbacks=[Poison(12)]).train()
    assert sorted(budget_dirs(tmp_path)) == [10]
    assert [s for s, _ in runs.checkpoints(tmp_path)] == [10, 5]
    tiny_trainer(tmp_path, (10, 20), save_steps=5, learning_rate=5e-3).train(resume_from_checkpoint=True)
    assert sorted(budget_dirs(tmp_path)) == [10, 20]
    assert all(bool(t.isfinite().all()) for t in weights(tmp_path, 20).values())


def test_weights_blown_up_before_a_checkpoint_stop_the_run_before_it_is_written(tmp_path):
    # The loss of update 10 was finite; the weights after it are not: neither budget 10 nor checkpoint-10 is written.
    with pytest.raises(TrainingDiverged, match=r"weights after update 10 are not finite \(model\.embed_tokens\.weight"
                                               r"\), so budget step10"):
        tiny_trainer(tmp_path, (10, 20), save_steps=5, callbacks=[Poison(10)]).train()
    assert not budget_dirs(tmp_path) and [s for s, _ in runs.checkpoints(tmp_path)] == [5]


def test_divergence_inside_a_decay_with_warn_trains_on_but_never_writes_the_non_finite_budget(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="hf_wsd"):
        tiny_trainer(tmp_path, (20, 40), decay_fraction=0.25, on_divergence="warn", callbacks=[Poison(37)]).train()
    assert "update 38 is nan" in caplog.text and "budget step40" in caplog.text
    assert sorted(budget_dirs(tmp_path)) == [20]  # budget 40's decay diverged: not written, so never published
    with pytest.raises(TrainingDiverged, match="update 38 is nan"):  # the default stops inside the decay
        tiny_trainer(tmp_path / "stop", (20, 40), decay_fraction=0.25, callbacks=[Poison(37)]).train()
    assert sorted(budget_dirs(tmp_path / "stop")) == [20]


def test_on_divergence_is_validated():
    with pytest.raises(ValueError, match="on_divergence"):
        tiny_trainer("unused", (10,), on_divergence="ignore")
