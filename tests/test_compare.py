"""The schedule comparison recipe (recipes/compare_schedules.py → hf_wsd.scripts.compare) on its quick configuration."""

from __future__ import annotations

import csv
import json
import logging
import math

import pytest

METHODS = ("wsd-s", "wsd", "cyclic-cosine", "cosine")
BUDGETS = (10, 20, 40, 80)  # config_quick.yaml


@pytest.fixture(scope="module")
def compare_module():
    from hf_wsd.scripts import compare

    return compare


@pytest.fixture(scope="module")
def quick_run(compare_module, tmp_path_factory):
    """The quick comparison on the first 150 KJV chapters: every method, every budget, held-out loss only.

    (The bundled tasks need blocks of 128 tokens at the quick 512-token vocabulary, which would double the time.)
    """
    import os

    import torch

    from hf_wsd.data import kjv_documents

    root = tmp_path_factory.mktemp("compare")
    corpus = root / "kjv150.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in kjv_documents()[:150]))
    threads, cache = torch.get_num_threads(), os.environ.get("HF_WSD_CACHE")
    os.environ["HF_WSD_CACHE"] = str(root / "cache")
    try:
        rows, _ = compare_module.main(["--quick", "--output_dir", str(root / "out"), "--corpus", str(corpus)])
    finally:
        torch.set_num_threads(threads)  # the quick config pins one thread; leave the session as it was
        if cache is None:
            os.environ.pop("HF_WSD_CACHE", None)
        else:
            os.environ["HF_WSD_CACHE"] = cache
    return root / "out", rows


def test_every_method_produces_every_budget_with_a_heldout_loss(quick_run):
    output_dir, rows = quick_run
    with (output_dir / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert sorted((r["method"], int(r["step"])) for r in table) == sorted((m, b) for m in METHODS for b in BUDGETS)
    for row in table:
        assert math.isfinite(float(row["heldout_loss"])) and float(row["heldout_loss"]) > 0
        assert int(row["budget"]) == BUDGETS.index(int(row["step"])) + 1
    for method in METHODS[:3]:
        for budget in BUDGETS:
            assert any((output_dir / method / "budgets").glob(f"step{budget}-*/eval_results.json"))
    assert len(rows) == len(table)


def test_compute_columns_follow_the_plans(quick_run):
    _, rows = quick_run
    by = {(r["method"], r["step"]): r for r in rows}
    # WSD-S and cyclic-cosine reach budget i at Ti; WSD pays its earlier branch decays (20% of each budget).
    wsd_branches = [round(0.2 * b) for b in BUDGETS[:-1]]
    for index, budget in enumerate(BUDGETS):
        assert by["wsd-s", budget]["compute"] == budget
        assert by["cyclic-cosine", budget]["compute"] == budget
        assert by["cosine", budget]["compute"] == budget
        assert by["wsd", budget]["compute"] == budget + sum(wsd_branches[:index])
    assert by["wsd-s", 80]["total_compute"] == 80
    assert by["wsd", 80]["total_compute"] == 80 + sum(wsd_branches)
    assert by["cosine", 80]["total_compute"] == sum(BUDGETS)
    assert by["cosine", 40]["gap_vs_cosine_pct"] == 0


def test_methods_share_initialisation_and_data_order(quick_run):
    """Where two schedules drive the same LR up to the first budget, their first checkpoints are identical."""
    _, rows = quick_run
    by = {(r["method"], r["step"]): r["heldout_loss"] for r in rows}
    # cyclic-cosine's first period is the cosine oracle of the first budget; WSD-S and WSD decay alike there.
    assert by["cyclic-cosine", 10] == by["cosine", 10]
    assert by["wsd-s", 10] == by["wsd", 10]
    assert by["wsd-s", 20] != by["cosine", 20]


def test_report_files(quick_run):
    output_dir, _ = quick_run
    text = (output_dir / "results.md").read_text()
    for heading in ("## Held-out loss per budget", "## Compute for all K checkpoints", "## Measured cost"):
        assert heading in text
    assert "| budget | WSD-S | WSD | cyclic-cosine | cosine oracle | WSD-S vs cosine |" in text
    assert "| cosine oracle | 150 | 1.88 | 1.00 |" in text
    summary = json.loads((output_dir / "compare.json").read_text())
    assert summary["total_updates"] == {"wsd-s": 80, "wsd": 94, "cyclic-cosine": 80, "cosine": 150}
    for method, costs in summary["costs"].items():
        assert all(c["updates_per_second"] > 0 and c["tokens_per_second"] > 0 for c in costs), method
    for name in ("heldout_vs_compute.png", "lr_schedules.png", "train_loss.png"):
        assert (output_dir / name).stat().st_size > 1000


def test_relaunch_reuses_finished_runs_and_report_only_rebuilds(compare_module, quick_run, caplog):
    output_dir, rows = quick_run
    corpus = output_dir.parent / "kjv150.jsonl"
    with caplog.at_level(logging.INFO, logger="hf_wsd.scripts.compare"):
        again, _ = compare_module.main(["--quick", "--output_dir", str(output_dir), "--corpus", str(corpus)])
    assert caplog.text.count("reusing the finished run") == 7  # 3 runs + 4 cosine runs
    assert again == rows
    (output_dir / "results.md").unlink()
    assert compare_module.main(["--quick", "--output_dir", str(output_dir), "--report_only"])[0] == rows
    assert (output_dir / "results.md").is_file()


def test_unknown_method_is_a_value_error(compare_module, tmp_path):
    with pytest.raises(ValueError, match="`methods`"):
        compare_module.main(["--quick", "--output_dir", str(tmp_path), "--methods", "wsd-s", "linear"])


def test_own_fields_and_the_recipe_fields_share_one_parser(compare_module, tmp_path):
    argv = ["--quick", "--seed", "3", "--wsd_decay_fraction", "0.1", "--output_dir", "x"]
    recipe = compare_module.parser(argv)
    compare, _, _, args = recipe.parse(argv)
    assert compare.quick and compare.wsd_decay_fraction == 0.1 and compare.torch_threads == 1
    assert args.seed == 3 and args.budgets == ["10", "20", "40", "80"]  # `--seed` is not a prefix match of our fields
    assert recipe.default_config == compare_module.QUICK_CONFIG
    # Where runs are written does not change what they compute.
    assert compare_module.fingerprint(*recipe.config(argv))["overrides"] == ["--seed", "3"]
