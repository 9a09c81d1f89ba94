"""A run as its user relaunches it: an output dir holding a run is resumed or refused, starting over removes the old
run first, and one launch at a time owns a run (hf_wsd/run_lock.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HUB_TOKEN, budget_dirs, tiny_run, tiny_trainer

from hf_wsd import run_lock, runs

TINY = Path(__file__).parent / "helpers.py"


def test_a_relaunch_is_refused_with_the_way_out_and_starting_over_removes_the_old_run(tmp_path, local_hub,
                                                                                      monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    tiny_run(tmp_path, (10, 20), push="me/run", save_steps=5).train()
    assert (tmp_path / "budgets" / runs.LEDGER_FILE).is_file() and runs.checkpoints(tmp_path)
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=True \(recipe: --resume_from_checkpoint true\).*"
                                         r"--overwrite_output_dir true"):
        tiny_trainer(tmp_path, (15,)).train()

    (tmp_path / runs.REQUESTS_DIR).mkdir(exist_ok=True)
    (tmp_path / "checkpoint-99").mkdir()  # cut short by a crash: no trainer_state.json
    (tmp_path / "notes.txt").write_text("mine")
    old_run = runs.read_run(tmp_path)["run_id"]
    tiny_run(tmp_path, (15,), push="me/run", overwrite_output_dir=True).train()

    assert sorted(budget_dirs(tmp_path)) == [15]  # the old run's 10 and 20 are gone: summary and push see one run
    assert [step for step, _ in runs.checkpoints(tmp_path)] == [15]
    assert not (tmp_path / "checkpoint-99").exists() and not (tmp_path / runs.REQUESTS_DIR).exists()
    assert {e.get("step") for e in runs.read_log(tmp_path)} <= set(range(16))
    assert runs.read_run(tmp_path)["run_id"] != old_run
    # The ledger was the new run's own: main holds its budget, not the old run's newest (20).
    main = json.loads(local_hub.branch_files("me/run", "main")["budget.json"])
    assert main["step"] == 15 and main["run_id"] == runs.read_run(tmp_path)["run_id"]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files are removed
    assert not run_lock.lock_path(tmp_path).exists()  # released when training ends


def test_budget_folders_without_a_plan_file_still_count_as_a_run(tmp_path):
    tiny_trainer(tmp_path, (10,)).train()
    (tmp_path / runs.PLAN_FILE).unlink()
    with pytest.raises(ValueError, match="files of an earlier run"):
        tiny_trainer(tmp_path, (10,)).train()


def test_the_recipe_configs_do_not_start_over_silently():
    from pathlib import Path

    configs = list((Path(__file__).resolve().parents[1] / "recipes").rglob("config*.yaml"))
    assert configs and not [c for c in configs if "overwrite_output_dir: true" in c.read_text()]


def _write_lock(output_dir, **holder):
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"pid": 1, "host": socket.gethostname(), "process_start": None, "started": "then", "command": "x"}
    payload.update(holder)
    run_lock.lock_path(output_dir).write_text(json.dumps(payload))


def test_a_resume_while_the_first_launch_trains_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    out, flag = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, str(TINY), str(out), "--budgets", "10", "20", "--save-steps", "2",
                              "--wait-at", "5", str(flag)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{flag}.waiting").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        # A requeued or double-submitted job resumes while the first still trains; a fresh start over is refused too.
        for resume, overwrite in ((True, False), (None, True)):
            with pytest.raises(run_lock.RunInUse, match=rf"another launch \(pid {first.pid} on "):
                tiny_trainer(out, (10, 20), save_steps=2, overwrite_output_dir=overwrite).train(resume)
        assert runs.checkpoints(out)  # the refused start over removed nothing
    finally:
        first.send_signal(signal.SIGKILL)  # its node dies: the lock stays behind, naming a pid that is gone
        first.wait()
    assert json.loads(run_lock.lock_path(out).read_text())["pid"] == first.pid
    tiny_trainer(out, (10, 20), save_steps=2).train(resume_from_checkpoint=True)  # the stale lock is broken
    assert sorted(budget_dirs(out)) == [10, 20] and not run_lock.lock_path(out).exists()


def test_a_lock_breaks_only_when_its_holder_is_gone(tmp_path, monkeypatch):
    import threading

    _write_lock(tmp_path, pid=os.getpid(), process_start="0")  # this pid, but another process (pid reused)
    run_lock.acquire(tmp_path)
    assert json.loads(run_lock.lock_path(tmp_path).read_text())["process_start"] == run_lock._process_start(os.getpid())
    run_lock.release(tmp_path)

    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.2)
    _write_lock(tmp_path, host="node-17", pid=4242)  # another host whose launch still beats: refused
    beating = threading.Event()

    def beat():
        while not beating.wait(0.05):
            os.utime(run_lock.lock_path(tmp_path))

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(run_lock.RunInUse, match="pid 4242 on node-17"):
            run_lock.acquire(tmp_path)
    finally:
        beating.set()
        thread.join()
    run_lock.acquire(tmp_path)  # its node died (a requeued job): the heartbeat stands still, the lock is broken
    run_lock.release(tmp_path)
    _write_lock(tmp_path, host="node-17", pid=4242)
    stale = time.time() - run_lock.STALE_AFTER_S - 5
    os.utime(run_lock.lock_path(tmp_path), (stale, stale))  # long dead: broken at once
    started = time.monotonic()
    run_lock.acquire(tmp_path)
    assert time.monotonic() - started < 0.5
    run_lock.release(tmp_path)
    assert not run_lock.lock_path(tmp_path).exists()


def test_the_lock_is_released_when_training_fails(tmp_path):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_trainer(tmp_path, (10,), callbacks=[Boom()]).train()
    assert not run_lock.lock_path(tmp_path).exists()


# ----------------------------------------------------------------------------------------------- the Hub
def test_a_refused_token_or_repo_is_reported_before_step_0_with_the_fix(tmp_path, local_hub, monkeypatch):
    from hf_wsd.hub_upload import HubAccessError

    monkeypatch.setenv("HF_TOKEN", "hf_wrong-token-not-a-secret")
    with pytest.raises(HubAccessError, match=r"does not accept the token \(.*401.*HF_TOKEN.*hf auth login") as refused:
        tiny_run(tmp_path, (10,), push="tester/run")
    assert "hf_wrong" not in str(refused.value)  # the token itself is never shown
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    local_hub.forbidden_namespaces.add("someone-else")
    with pytest.raises(HubAccessError, match=r"tester cannot create or write someone-else/run \(.*403.*"
                                             r"`hub_model_id` to a repo in your namespace \(tester/NAME\)"):
        tiny_run(tmp_path, (10,), push="someone-else/run")
    assert not (tmp_path / runs.PLAN_FILE).exists()  # refused when the trainer is built: nothing trained
    tiny_run(tmp_path, (10,), push="tester/run")  # a good token and repo: the repo exists before step 0
    assert "tester/run" in local_hub.repos


def test_a_changed_hub_model_id_on_resume_publishes_the_whole_run_to_the_new_repo(tmp_path, local_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    tiny_run(tmp_path, (10, 20), push="tester/model", save_steps=5).train()
    # Moved to an organization's repo of the same name (the ledger knew only the name's last part as "the repo").
    tiny_run(tmp_path, (10, 20, 30), push="my-org/model", save_steps=5).train(resume_from_checkpoint=True)
    names = {folder.name for folder in budget_dirs(tmp_path).values()}
    assert names - {"step30-tokens1.92K"} <= set(local_hub.repos["tester/model"].branches)
    assert names <= set(local_hub.repos["my-org/model"].branches)  # the whole run, not only budget 30
    main = json.loads(local_hub.branch_files("my-org/model", "main")["budget.json"])
    assert main["step"] == 30
    tiny_run(tmp_path, (10, 20, 30), push="model", save_steps=5).train(resume_from_checkpoint=True)  # bare name
    assert names <= set(local_hub.repos["tester/model"].branches)


def test_hf_wsd_push_never_publishes_a_budget_folder_of_another_run(tmp_path, local_hub, monkeypatch):
    import shutil

    from hf_wsd.publishing import push_pending

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    tiny_trainer(tmp_path, (10,)).train()
    stale = runs.budgets_dir(tmp_path) / "step99-tokens6.34K"  # left by an older hf_wsd that did not clean up
    shutil.copytree(budget_dirs(tmp_path)[10], stale)
    record = json.loads((stale / runs.BUDGET_FILE).read_text())
    (stale / runs.BUDGET_FILE).write_text(json.dumps({**record, "name": stale.name, "step": 99, "run_id": "old"}))
    assert push_pending(tmp_path, "tester/pushed", endpoint=local_hub.endpoint) == 0
    assert "step99-tokens6.34K" not in local_hub.repos["tester/pushed"].branches
    assert json.loads(local_hub.branch_files("tester/pushed", "main")["budget.json"])["step"] == 10
