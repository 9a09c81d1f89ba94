"""Request files are data: anything malformed in wsd_requests/ is refused, recorded and moved aside, never a crash
of the run or of its resume; budgets past any sane horizon and step budgets that look like token counts are refused
(hf_wsd/live.py, hf_wsd/plan.py)."""

from __future__ import annotations

import json

import pytest
from helpers import budget_dirs, tiny_trainer

from hf_wsd import live, runs
from hf_wsd.plan import BudgetPlan

BAD_REQUESTS = {
    "1-wrong-types.json": {"id": 7, "run_id": ["x"], "action": "add", "value": 30, "unit": "steps", "created": 1.0},
    "2-huge-number.json": None,  # a 401-digit number as the value (written below: JSON parses it to an int)
    "3-huge-text.json": {"id": "a", "run_id": "b", "action": "add", "value": "9" * 401, "unit": "steps",
                         "created": 1.0},
    "4-a-list.json": [1, 2, 3],
    "5-bad-action.json": {"id": "a", "run_id": "b", "action": "rm -rf", "value": "30", "unit": "steps",
                          "created": 1.0},
}


def _write_bad_requests(output_dir, run_id: str) -> None:
    folder = output_dir / runs.REQUESTS_DIR
    folder.mkdir(exist_ok=True)
    for name, payload in BAD_REQUESTS.items():
        if payload is None:
            text = ('{"id": "h", "run_id": "%s", "action": "add", "value": %s, "unit": "steps", "created": 1}'
                    % (run_id, "1" * 401))
        else:
            text = json.dumps(payload)
        (folder / name).write_text(text)
    (folder / "6-a-folder.json").mkdir()
    (folder / "7-garbage.json").write_bytes(b"\xff\xfe{")


def test_malformed_request_files_are_refused_recorded_and_moved_aside_and_the_resume_goes_on(tmp_path):
    tiny_trainer(tmp_path, (10, 20), save_steps=5).train()
    run_id = runs.read_run(tmp_path)["run_id"]
    _write_bad_requests(tmp_path, run_id)
    valid = live.write_request(tmp_path, "add", "30")
    assert valid.path.is_file()

    # The resumed launch meets all of them at its first update boundary: it refuses the bad ones, takes the good one.
    tiny_trainer(tmp_path, (10, 20), save_steps=5).train(resume_from_checkpoint=True)
    assert sorted(budget_dirs(tmp_path)) == [10, 20, 30]
    changes = runs.read_run(tmp_path)["changes"]
    refused = {e["id"]: e["message"] for e in changes if e["status"] == "refused"}
    assert sorted(refused) == sorted([*BAD_REQUESTS, "6-a-folder.json", "7-garbage.json"])
    assert "it is a folder" in refused["6-a-folder.json"]
    assert "`value` must be a string" in refused["2-huge-number.json"] and "(401 characters)" in refused[
        "2-huge-number.json"]
    assert "`action` must be 'add' or 'remove'" in refused["5-bad-action.json"]
    assert [e["status"] for e in changes if e["id"] == valid.id] == ["accepted"]
    kept = sorted(p.name.split("-", 1)[1] for p in (tmp_path / runs.REQUESTS_DIR / live.REFUSED_DIR).iterdir())
    assert kept == sorted([*BAD_REQUESTS, "6-a-folder.json", "7-garbage.json"])  # nothing the user wrote is lost
    assert not live.has_pending(tmp_path)
    tiny_trainer(tmp_path, (10, 20, 30), save_steps=5).train(resume_from_checkpoint=True)  # and again: nothing left


def test_budgets_past_any_sane_horizon_and_step_budgets_with_token_suffixes_are_refused(tmp_path, capsys):
    from hf_wsd.cli import main

    with pytest.raises(ValueError, match="past any sane horizon"):
        BudgetPlan(["1000", "1e12"])
    with pytest.raises(ValueError, match=r"past any sane horizon \(1,000,000,000,000,000 tokens"):
        BudgetPlan(["1e16"], budget_unit="tokens", tokens_per_update=2**20)
    with pytest.raises(ValueError, match=r"past any sane horizon \(100,000,000 updates"):
        BudgetPlan(["1e12"], budget_unit="tokens", tokens_per_update=64)
    with pytest.raises(ValueError, match=r"'20K'.*20,000 updates.*budget_unit='tokens'.*allow_step_suffixes=True"):
        tiny_trainer(tmp_path, ("20K",))
    assert tiny_trainer(tmp_path, ("1K",), allow_step_suffixes=True).plan.total_steps == 1000

    runs.write_json(tmp_path / runs.PLAN_FILE, runs.new_run_record(BudgetPlan(["20", "40"], warmup_steps=4)))
    assert main(["budget", "add", str(tmp_path), "1e12"]) == 2
    assert "past any sane horizon" in capsys.readouterr().err
    assert main(["budget", "add", str(tmp_path), "1" * 401]) == 2
    assert "is not a budget" in capsys.readouterr().err
    assert main(["budget", "add", str(tmp_path), "2K"]) == 2
    assert "--allow-step-suffixes" in capsys.readouterr().err
    assert main(["budget", "add", str(tmp_path), "2K", "--allow-step-suffixes"]) == 0
    assert [(r.value, r.unit) for r in live.pending_requests(tmp_path)] == [("2K", "steps")]
