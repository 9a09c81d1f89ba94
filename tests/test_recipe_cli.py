"""The recipe command line and the CLI as a user meets them: resuming with ``--resume_from_checkpoint true``,
Trainer fields a WSD run cannot honour refused, typos named first with suggestions, Ctrl-C ending with the line
that resumes, ``hf-wsd status`` after the process is gone, and one owner of the recipe's defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import tiny_config

from hf_wsd import runs
from hf_wsd.plan import BudgetPlan


def _parse(*argv):
    from hf_wsd.scripts import pretrain

    return pretrain.parser().parse(list(argv))


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("false", None), ("runs/x/checkpoint-20",
                                                                                                "runs/x/checkpoint-20")])
def test_resume_from_checkpoint_true_on_the_command_line_resumes_the_newest_checkpoint(value, expected):
    _, _, args = _parse("--resume_from_checkpoint", value)
    assert args.resume_from_checkpoint == expected


@pytest.mark.parametrize("field, value, names", [
    ("lr_scheduler_type", "cosine", ("`lr_scheduler_type`='cosine'", "`schedule`")),
    ("num_train_epochs", "1", ("`num_train_epochs`=1.0", "`budgets`")),
])
def test_trainer_fields_a_wsd_run_cannot_honour_are_refused_naming_the_wsd_field(field, value, names, tmp_path):
    with pytest.raises(ValueError) as error:
        _parse(f"--{field}", value)
    assert all(name in str(error.value) for name in names), str(error.value)
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_config(tmp_path, [10], **{field: value if field != "num_train_epochs" else 2.0})
    import hf_wsd

    hf_wsd.register()
    tiny_config(tmp_path, [10], lr_scheduler_type="wsd-s")  # the plan's own schedule by its registered name


def test_typos_are_reported_before_plan_errors_with_the_closest_fields():
    with pytest.raises(ValueError) as error:
        _parse("--budgets", "40", "20", "--learnin_rate", "1e-3", "--decay_frac", "0.2")
    message = str(error.value)  # decreasing budgets: a plan error, reported only once the arguments are known
    assert "--learnin_rate (did you mean --learning_rate?)" in message and "--decay_fraction" in message, message
    from hf_wsd.scripts.parser import read_config

    config = os.path.join(os.path.dirname(__file__), "..", "recipes", "llama-tiny", "pretrain", "config_wsd_s.yaml")
    from pathlib import Path

    broken = Path(os.environ.get("TMPDIR", "/tmp")) / f"typo-{os.getpid()}.yaml"
    broken.write_text(Path(config).read_text() + "\nwarmup_step: 10\n")
    with pytest.raises(ValueError, match=r"warmup_step \(did you mean warmup_steps"):
        read_config(broken, {"warmup_steps", "budgets"})
    broken.unlink()


def test_ctrl_c_ends_with_the_command_that_resumes(tmp_path):
    """A recipe interrupted by Ctrl-C (SIGINT) or by accelerate's SIGTERM: one line, exit status 130, no traceback."""
    script = tmp_path / "recipe.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from hf_wsd.scripts import run_recipe\n"
        "with run_recipe():\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    for signal_name in ("SIGINT", "SIGTERM"):
        process = subprocess.Popen([sys.executable, str(script), "config.yaml", "--resume_from_checkpoint", "false",
                                    "--budgets", "20", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env)
        assert process.stdout.readline().strip() == "ready"
        import signal

        process.send_signal(getattr(signal, signal_name))
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert f"accelerate launch {script} config.yaml --budgets 20 40 --resume_from_checkpoint true" in err, err


def test_status_says_interrupted_without_an_eta_once_the_process_is_gone(tmp_path, capsys):
    from hf_wsd.cli import main
    from hf_wsd.status import read_status, status_record

    plan = BudgetPlan(["20", "40"], schedule="wsd-s")
    record = runs.new_run_record(plan)
    runs.write_json(tmp_path / runs.PLAN_FILE, record)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = status_record(run_id=record["run_id"], state="training", step=7, branch=None, plan=plan,
                         updates_per_second=2.0, tokens_per_second=None, peak_lr=1e-3, world_size=1)
    runs.write_json(tmp_path / runs.STATUS_FILE, live)
    status = read_status(tmp_path)
    assert status["state"] == "training" and status["budgets"][0]["eta_seconds"] is not None  # this process lives
    runs.write_json(tmp_path / runs.STATUS_FILE, {**live, "pid": int(gone.stdout)})
    status = read_status(tmp_path)
    assert status["state"] == "interrupted" and all(b["eta_seconds"] is None for b in status["budgets"])
    assert main(["status", str(tmp_path)]) == 0
    assert "interrupted, update 7 of 40" in capsys.readouterr().out


def test_plan_previews_the_recipes_plan_from_its_config(capsys):
    from hf_wsd.cli import RECIPE_SEED, main

    config = os.path.join(os.path.dirname(__file__), "..", "recipes", "llama-tiny", "pretrain", "config_wsd_s.yaml")
    _, _, args = _parse(config)
    assert main(["plan", "--config", config]) == 0
    shown = capsys.readouterr().out
    recipe = BudgetPlan(args.budgets, schedule=args.schedule, warmup_steps=args.warmup_steps,
                        decay_fraction=args.decay_fraction, decay_shape=args.decay_shape)
    assert recipe.describe(args.learning_rate) in shown  # decay_fraction 0.2, warmup 50, the recipe's peak LR
    assert main(["plan", "--config", config, "100", "200"]) == 0  # options given win over the config
    assert "step400" not in capsys.readouterr().out
    assert args.seed == RECIPE_SEED  # `hf-wsd prepare` holds out the same documents as the recipe


def test_prepare_splits_with_the_recipes_seed():
    from hf_wsd.cli import RECIPE_SEED, _add_prepare_arguments
    import argparse

    parser = argparse.ArgumentParser()
    _add_prepare_arguments(parser)
    assert parser.parse_args(["kjv", "out"]).seed == RECIPE_SEED == json.loads(json.dumps(42))


# ----------------------------------------------------------------------------------------------- quiet output
def _python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


@pytest.mark.slow
def test_importing_hf_wsd_silences_bitsandbytes_cpu_kernel_warning():
    bare = _python("import bitsandbytes")
    if "gemm_4bit_forward" not in bare.stderr:
        pytest.skip("bitsandbytes does not warn on this CPU (it needs AVX-512 BF16)")
    assert "gemm_4bit_forward" not in _python("import hf_wsd, bitsandbytes").stderr


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_recipes_log_info_on_the_main_process_only(rank, shown):
    result = _python(
        "import logging\nfrom hf_wsd.scripts import run_recipe\nwith run_recipe():\n"
        "    logging.getLogger('hf_wsd.x').info('plan table')\n    logging.getLogger('hf_wsd.x').warning('trouble')\n",
        RANK=rank,
    )
    assert ("plan table" in result.stderr) == shown and "trouble" in result.stderr, result.stderr


def test_push_logs_no_http_request_lines():
    import logging

    from hf_wsd.quiet import quiet_http

    quiet_http()
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)


def test_hf_wsd_names_the_closest_option_before_any_plan_error(capsys):
    from hf_wsd.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["plan", "200", "100", "--warmupsteps", "3"])  # decreasing budgets too: the typo comes first
    assert exit_.value.code == 2
    assert "--warmupsteps: did you mean --warmup-steps" in capsys.readouterr().err


def test_processes_that_do_not_log_keep_hf_wsd_at_the_replica_level(tmp_path):
    import logging

    from hf_wsd.quiet import follow_replica_log_level

    hf_wsd_logger = logging.getLogger("hf_wsd")
    level = hf_wsd_logger.level
    try:
        follow_replica_log_level(SimpleNamespace(should_log=True))
        assert hf_wsd_logger.level == level
        follow_replica_log_level(SimpleNamespace(should_log=False, get_process_log_level=lambda: logging.WARNING))
        assert not logging.getLogger("hf_wsd.trainer").isEnabledFor(logging.INFO)
    finally:
        hf_wsd_logger.setLevel(level)
