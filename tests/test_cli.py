"""``hf-wsd plan``: the phase table on stdout, a PNG with ``--plot``, exit status 2 naming the field on bad input."""

from __future__ import annotations

import pytest

from hf_wsd.cli import main
from hf_wsd.plan import BudgetPlan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plan_prints_the_same_table_as_describe(capsys):
    assert main(["plan", "100", "200", "400", "--warmup-steps", "10", "--decay-shape", "cosine"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == BudgetPlan([100, 200, 400], warmup_steps=10, decay_shape="cosine").describe()
    assert err == ""


def test_plan_converts_token_budgets_and_shows_absolute_lr(capsys):
    argv = ["plan", "33.6M", "1.5B", "--unit", "tokens", "--tokens-per-update", "524288", "--schedule", "wsd",
            "--peak-lr", "3e-4", "--min-lr-ratio", "0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "step64-tokens33.6M" in out and "step2861-tokens1.5B" in out
    assert "branch decay" in out
    assert "0.0003→0.0003" in out  # the stable phase at the peak LR, not the ratio 1
    assert "total compute: 2867 updates" in out  # 2861 + budget 0's 6 branch updates


@pytest.mark.parametrize("schedule", ["wsd-s", "wsd", "cyclic-cosine"])
def test_plan_plot_writes_a_png(schedule, tmp_path, capsys):
    path = tmp_path / "lr.png"
    assert main(["plan", "100", "300", "--schedule", schedule, "--warmup-steps", "10", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert str(path) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["200", "100"], "budgets"),
        (["100", "100"], "budgets"),
        (["1.5Q"], "budgets"),
        (["0"], "budgets"),
        (["100", "200", "--schedule", "cosine"], "budgets"),
        (["100", "--warmup-steps", "95"], "warmup_steps"),
        (["100", "110", "--decay-steps", "20"], "decay_steps"),
        (["100", "--decay-fraction", "1.5"], "decay_fraction"),
        (["100", "--decay-fraction", "0.1", "--decay-steps", "5"], "decay_steps"),
        (["100", "--min-lr-ratio", "1"], "min_lr_ratio"),
        (["100", "200", "--rewarmup-steps", "95"], "rewarmup_steps"),
        (["1B", "--unit", "tokens"], "tokens_per_update"),
        (["1K", "--unit", "tokens", "--tokens-per-update", "4096"], "budgets"),
    ],
)
def test_bad_plan_input_exits_2_naming_the_field_on_stderr(args, field, capsys):
    assert main(["plan", *args]) == 2
    out, err = capsys.readouterr()
    assert f"`{field}`" in err
    assert err.startswith("hf-wsd plan: ")
    assert out == ""  # no half-printed table


@pytest.mark.parametrize(
    ("args", "option"),
    [(["100", "--schedule", "step"], "--schedule"), (["100", "--decay-shape", "square"], "--decay-shape"),
     (["100", "--warmup-steps", "ten"], "--warmup-steps")],
)
def test_unknown_choices_exit_2_naming_the_option(args, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *args])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
