"""Decay-window mixtures without a trainer: the spec, the exact counts, the placement, the positions of every source
on every path, and the feed that fills micro-batches from them (map-style sources, streams, DDP shares)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_wsd.data.feed import UpdateFeed
from hf_wsd.data.mixture import (
    MAIN,
    MixturePlan,
    check_names,
    check_resume,
    default_mixture,
    parse_mixture,
    parse_mixture_per_budget,
)
from hf_wsd.plan import BudgetPlan


def rows(source: str, n: int) -> list[dict]:
    return [{"source": source, "index": i} for i in range(n)]


def identity(batch):
    return batch


def plan(schedule="wsd-s", budgets=(20, 40, 60), **kwargs):
    return BudgetPlan(list(budgets), schedule=schedule, warmup_steps=2, decay_fraction=0.25, tokens_per_update=64,
                      **kwargs)


# ----------------------------------------------------------------------------------------------- the spec
def test_a_mixture_reads_from_a_mapping_name_weight_strings_or_one_comma_string():
    expected = {"main": 0.7, "quality": 0.3}
    assert parse_mixture({"main": 0.7, "quality": 0.3}) == expected
    assert parse_mixture(["main=0.7", "quality=0.3"]) == expected
    assert parse_mixture("main=0.7,quality=0.3") == expected
    assert parse_mixture(None) is None and parse_mixture([]) is None
    assert parse_mixture_per_budget(["60:main=0.5,quality=0.5"]) == {"60": {"main": 0.5, "quality": 0.5}}
    assert parse_mixture_per_budget({60: {"main": 1}}) == {"60": {"main": 1.0}}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"main": 0.7, "quality": -0.3}, "negative"),
        ({"main": 0, "quality": 0}, "sum to 0"),
        ({"main": float("nan")}, "finite"),
        ({"main": "lots"}, "number"),
        (["main:0.7"], "name=weight"),
        (["main=0.5", "main=0.5"], "twice"),
        ({"": 1.0}, "non-empty"),
        (3, "must map"),
    ],
)
def test_bad_weights_are_refused_naming_the_field(value, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_mixture(value)
    assert "`decay_mixture`" in str(error.value)


def test_unknown_sources_and_a_dataset_named_main_are_refused():
    with pytest.raises(ValueError, match="unknown source 'quallity'.*quality"):
        check_names({"main": 0.5, "quallity": 0.5}, {}, {"quality": object()})
    with pytest.raises(ValueError, match=r"decay_mixture_per_budget\['60'\]"):
        check_names(None, {"60": {"other": 1.0}}, {"quality": object()})
    with pytest.raises(ValueError, match="may not use the name 'main'"):
        check_names({"main": 1.0}, {}, {"main": object()})


def test_one_decay_dataset_fills_every_decay_update_several_need_a_mixture():
    assert default_mixture(None, {}, {"decay": object()}) == {"decay": 1.0}
    assert default_mixture(None, {}, {}) is None
    with pytest.raises(ValueError, match="no `decay_mixture`"):
        default_mixture(None, {}, {"a": object(), "b": object()})


def test_per_budget_keys_must_be_budgets_of_the_plan():
    with pytest.raises(ValueError, match="names budget '50', which is not in `budgets`"):
        MixturePlan(plan(), {"main": 1.0}, {"50": {"main": 1.0}}, examples_per_update=4)
    tokens = BudgetPlan(["1280", "2560"], budget_unit="tokens", tokens_per_update=64, decay_fraction=0.25)
    mixture = MixturePlan(tokens, None, {"2.56K": {"main": 0.5, "q": 0.5}}, examples_per_update=4)
    assert [w.budget for w in mixture.windows] == [1]


def test_cosine_schedules_need_a_tail_to_have_a_decay_window():
    with pytest.raises(ValueError, match="decay_mixture_tail"):
        MixturePlan(plan("cosine", (40,)), {"main": 0.5, "q": 0.5}, examples_per_update=4)
    cyclic = MixturePlan(plan("cyclic-cosine"), {"main": 0.5, "q": 0.5}, tail=0.25, examples_per_update=4)
    assert [(w.start, w.end) for w in cyclic.windows] == [(16, 20), (35, 40), (55, 60)]  # last quarter of each period
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        MixturePlan(plan(), {"main": 1.0}, tail=0, examples_per_update=4)


# ----------------------------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("weights", [{"main": 0.7, "q": 0.3}, {"main": 1, "a": 1, "b": 1}, {"a": 0.123, "b": 0.877}])
@pytest.mark.parametrize("batch", [1, 4, 7, 16])
def test_every_prefix_of_a_window_holds_its_shares_to_within_one_example(weights, batch):
    mixture = MixturePlan(plan(), weights, examples_per_update=batch)
    total = sum(weights.values())
    for window in mixture.windows:
        for k in range(window.length + 1):
            counts = mixture.counts(window, k)
            assert sum(counts.values()) == batch * k
            for name, weight in weights.items():
                assert abs(counts[name] - weight / total * batch * k) < 1, (name, k)


def test_a_whole_window_draws_exactly_its_shares_and_the_placement_scatters_them():
    mixture = MixturePlan(plan(budgets=(100,)), {"main": 0.7, "q": 0.3}, examples_per_update=16, seed=3)
    window = mixture.windows[0]
    assert (window.start, window.end) == (75, 100)
    sources = np.stack([mixture.slots(t)[0] for t in range(window.start, window.end)])
    assert (sources == mixture.sources.index("q")).sum() == 0.3 * 16 * 25  # 120, exactly
    per_update = (sources == mixture.sources.index("q")).sum(axis=1)
    assert set(per_update) <= {4, 5}  # 4.8 per update on average, never further off than one example
    slot_share = (sources == mixture.sources.index("q")).mean(axis=0)  # each slot position is sometimes q
    assert slot_share.min() > 0 and slot_share.max() < 1
    other = MixturePlan(plan(budgets=(100,)), {"main": 0.7, "q": 0.3}, examples_per_update=16, seed=4)
    assert not np.array_equal(sources, np.stack([other.slots(t)[0] for t in range(75, 100)]))
    again = MixturePlan(plan(budgets=(100,)), {"main": 0.7, "q": 0.3}, examples_per_update=16, seed=3)
    assert np.array_equal(sources, np.stack([again.slots(t)[0] for t in range(75, 100)]))


def consumed(mixture, path):
    """{source: positions drawn} over the (step, branch) updates of ``path``."""
    drawn = {name: [] for name in mixture.sources}
    for step, branch in path:
        sources, positions = mixture.slots(step, branch)
        for index, name in enumerate(mixture.sources):
            drawn[name] += positions[sources == index].tolist()
    return drawn


def test_each_source_reads_its_positions_in_order_without_gaps_along_the_main_path():
    mixture = MixturePlan(plan(), {"main": 0.6, "a": 0.3, "b": 0.1}, examples_per_update=8)
    drawn = consumed(mixture, [(t, None) for t in range(60)])
    for name, positions in drawn.items():
        assert positions == list(range(len(positions))), name
    assert len(drawn["a"]) + len(drawn["b"]) + len(drawn["main"]) == 8 * 60
    outside = [t for t in range(60) if mixture.window_at(t) is None]
    assert all((mixture.slots(t)[0] == 0).all() for t in outside)  # outside the windows: main data only
    assert mixture.positions(60) == {name: len(p) for name, p in drawn.items()}


def test_a_wsd_branch_starts_its_decay_sources_where_the_main_path_has_them_and_moves_nothing():
    wsd = plan("wsd")  # branches for 20 (15-20) and 40 (30-40), the last budget in-line (45-60)
    mixture = MixturePlan(wsd, {"main": 0.5, "q": 0.5}, examples_per_update=4)
    branch = consumed(mixture, [(t, None) for t in range(30)] + [(t, 1) for t in range(30, 40)])
    one_budget = MixturePlan(plan("wsd", (40,)), {"main": 0.5, "q": 0.5}, examples_per_update=4)
    alone = consumed(one_budget, [(t, None) for t in range(40)])
    assert branch == alone  # a branch draws what a one-budget run draws
    assert mixture.positions(30, None) == {"main": 120, "q": 0}  # the main branch never saw the branch
    assert mixture.positions(40, 1) == {"main": 140, "q": 20}
    assert mixture.window_at(35, None) is None and mixture.window_at(35, 1) is not None


def test_the_main_data_order_is_unchanged_without_a_window_before_the_step():
    mixture = MixturePlan(plan(), {"main": 0.5, "q": 0.5}, examples_per_update=4)
    sources, positions = mixture.slots(3)
    assert (sources == 0).all() and positions.tolist() == [12, 13, 14, 15]  # G·t, as without a mixture


def test_budgets_without_an_override_decay_on_the_main_data_when_there_is_no_base_mixture():
    mixture = MixturePlan(plan(), None, {"60": {"main": 0.5, "q": 0.5}}, examples_per_update=4)
    assert [w.name for w in mixture.windows] == [plan().budgets[2].name]
    assert mixture.record(0)["window"] is None
    record = mixture.record(2)
    assert record["window"] == [55, 60]  # WSD-S: a quarter of the period 40-60
    assert {s["name"]: s["examples"] for s in record["sources"]} == {"main": 10, "q": 10}
    assert record["sources"][0]["tokens"] == 10 * 16 and record["drawn_on_path"]["q"]["examples"] == 10


def test_resuming_with_another_mixture_for_a_window_already_trained_is_refused():
    old = MixturePlan(plan(), {"main": 0.5, "q": 0.5}, examples_per_update=4).to_dict()
    same_until_60 = MixturePlan(plan(), {"main": 0.5, "q": 0.5}, {"60": {"main": 1.0}}, examples_per_update=4)
    check_resume(old, same_until_60, 55)  # the changed window starts at 55: not trained yet
    with pytest.raises(ValueError, match="before update 58"):
        check_resume(old, same_until_60, 58)
    with pytest.raises(ValueError, match="decay mixture"):
        check_resume(None, same_until_60, 20)


# ----------------------------------------------------------------------------------------------- the feed
def feed(mixture, batch=2, accumulation=2, world_size=1, rank=0, main=None, decay=None):
    return UpdateFeed(main if main is not None else rows("main", 50), identity, batch, accumulation, world_size, rank,
                      seed=1, decay_datasets={"q": decay if decay is not None else rows("q", 7)}, mixture=mixture)


def test_batches_inside_the_windows_come_from_the_mixture_and_outside_from_the_main_data_only():
    mixture = MixturePlan(plan(), {"main": 0.5, "q": 0.5}, examples_per_update=4)
    data = feed(mixture)
    for step in range(60):
        got = [row["source"] for micro in range(2) for row in data.micro_batch(step, micro)]
        if mixture.window_at(step) is None:
            assert got == ["main"] * 4, step
        else:
            assert got.count("q") == mixture.slots(step)[0].tolist().count(1)
    q_indices = [row["index"] for step in range(15, 20) for micro in range(2)
                 for row in feed(mixture).micro_batch(step, micro) if row["source"] == "q"]
    assert sorted(q_indices[:7]) == list(range(7))  # a small decay set is read a permutation per epoch


def test_two_ranks_together_see_the_micro_batches_of_one_process_with_the_same_global_batch():
    mixture = MixturePlan(plan(), {"main": 0.7, "q": 0.3}, examples_per_update=8)
    one = feed(mixture, batch=4, accumulation=2)
    ranks = [feed(mixture, batch=2, accumulation=2, world_size=2, rank=r) for r in range(2)]
    for step in (3, 16, 17, 58):
        for micro in range(2):
            joined = [row for rank in ranks for row in rank.micro_batch(step, micro)]
            assert joined == one.micro_batch(step, micro)


def test_a_decay_stream_resumes_from_the_feed_state_and_a_branch_restore_rewinds_it():
    from datasets import Dataset

    from hf_wsd.data.validation import probe_rows

    stream = Dataset.from_dict({"source": ["q"] * 30, "index": list(range(30))}).to_iterable_dataset()
    assert probe_rows(stream)[0]["index"] == 0  # the trainer's check reads it before training: no harm done
    mixture = MixturePlan(plan("wsd"), {"main": 0.5, "q": 0.5}, examples_per_update=4)
    data = feed(mixture, decay=stream)
    assert data.needs_state
    for step in range(15):
        data.micro_batch(step, 0), data.micro_batch(step, 1)
    snapshot = data.state_dict()
    branch = [row["index"] for step in range(15, 20) for micro in range(2)
              for row in data.micro_batch(step, micro, 0) if row["source"] == "q"]
    assert branch == list(range(10))  # the stream is read in order: 2 of each branch update's 4 slots
    data.load_state_dict(snapshot)  # back to the branch point: the main path goes on, the stream is rewound
    again = [row["index"] for step in range(15, 20) for micro in range(2)
             for row in data.micro_batch(step, micro, 0) if row["source"] == "q"]
    assert again == branch  # a second branch from the same point draws the same decay examples
    data.load_state_dict(snapshot)
    resumed = feed(mixture, decay=Dataset.from_dict({"source": ["q"] * 30, "index": list(range(30))})
                   .to_iterable_dataset())
    resumed.load_state_dict(snapshot)
    for step in range(15, 60):
        for micro in range(2):
            assert data.micro_batch(step, micro) == resumed.micro_batch(step, micro)


def test_a_token_folder_can_be_a_decay_source(tmp_path):
    from hf_wsd.data import TokenBlocks

    path = tmp_path / "q.bin"
    np.arange(64 * 3, dtype=np.uint16).tofile(path)
    blocks = TokenBlocks([path], "uint16", 16)
    mixture = MixturePlan(plan(), {"q": 1.0}, examples_per_update=4)
    data = UpdateFeed(rows("main", 50), identity, 2, 2, seed=0, decay_datasets={"q": blocks}, mixture=mixture)
    batch = data.micro_batch(16, 0)
    assert all(len(row["input_ids"]) == 16 for row in batch)


def test_the_feed_refuses_a_mixture_made_for_another_batch_or_without_its_datasets():
    mixture = MixturePlan(plan(), {"main": 0.5, "q": 0.5}, examples_per_update=8)
    with pytest.raises(ValueError, match="examples_per_update=4"):
        feed(mixture)
    with pytest.raises(ValueError, match="lacks"):
        UpdateFeed(rows("main", 8), identity, 2, 2, mixture=MixturePlan(plan(), {"q": 1.0}, examples_per_update=4))


def test_the_source_check_names_length_vocabulary_and_column_mismatches():
    from hf_wsd.data.validation import check_decay_sources

    main = [{"input_ids": [1] * 16} for _ in range(4)]
    check_decay_sources(main, {"q": [{"input_ids": [2] * 16}]}, vocab_size=64)
    with pytest.raises(ValueError, match=r"decay_datasets\['q'\].*\[32\] tokens.*16"):
        check_decay_sources(main, {"q": [{"input_ids": [2] * 32}]})
    with pytest.raises(ValueError, match="token id 99.*vocab_size` is 64"):
        check_decay_sources(main, {"q": [{"input_ids": [99] * 16}]}, vocab_size=64)
    with pytest.raises(ValueError, match="columns"):
        check_decay_sources(main, {"q": [{"input_ids": [2] * 16, "labels": [2] * 16}]})
    with pytest.raises(ValueError, match="empty"):
        check_decay_sources(main, {"q": []})


def test_the_plan_table_shows_every_window_with_its_sources():
    mixture = MixturePlan(plan("wsd"), {"main": 0.7, "q": 0.3}, {"60": {"q": 1.0}}, examples_per_update=4)
    text = mixture.describe()
    lines = text.splitlines()
    assert "branch decay" in lines[2] and "main 70%" in lines[2] and "q 30%" in lines[2]
    assert lines[4].startswith("decay") and "q 100% (960 tokens)" in lines[4]  # 15 updates × 4 × 16 tokens
    assert math.isclose(sum(s["weight"] for s in mixture.record(0)["sources"]), 1.0)
    assert MAIN == "main"


# ----------------------------------------------------------------------------------------------- hf-wsd plan
def test_hf_wsd_plan_shows_the_mixture_of_every_window(capsys):
    from hf_wsd.cli import main

    argv = ["plan", "1000", "2000", "--schedule", "wsd", "--tokens-per-update", "2048", "--examples-per-update", "16",
            "--decay-mixture", "main=0.7", "quality=0.3", "--decay-mixture-per-budget", "2000:main=0.5,quality=0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "decay mixture (16 examples per update):" in out
    lines = out.splitlines()
    assert "branch decay         900–1000  step1000-tokens2.05M  main 70% (143K tokens), quality 30% (61.4K tokens)" \
        in lines
    assert "decay               1800–2000  step2000-tokens4.1M   main 50% (205K tokens), quality 50% (205K tokens)" \
        in lines
    assert main(["plan", "1000", "--tokens-per-update", "2048", "--decay-mixture", "main=1", "q=1"]) == 0
    assert "main 50% (≈102K tokens)" in capsys.readouterr().out  # without the global batch: shares only


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--decay-mixture", "main=-1"], "decay_mixture"), (["--decay-mixture", "main=1", "--schedule", "cosine"],
                                                         "decay_mixture_tail"),
     (["--decay-mixture-per-budget", "300:main=1"], "decay_mixture_per_budget")],
)
def test_hf_wsd_plan_refuses_a_bad_mixture_before_printing(args, field, capsys):
    from hf_wsd.cli import main

    assert main(["plan", "100", *args]) == 2
    out, err = capsys.readouterr()
    assert f"`{field}`" in err and out == ""
