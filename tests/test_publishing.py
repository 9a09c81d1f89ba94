"""Publishing budgets to a local Hub: branches, main, retries, idempotence, the ledger, ``hf-wsd push``, secrets."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from helpers import HUB_TOKEN, hub_args, trainer_state
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from hf_wsd.cli import main as cli
from hf_wsd.events import BudgetReached
from hf_wsd.plan import BudgetPlan
from hf_wsd.publishing import BudgetUploader, HubPublisher, Ledger, UnpublishedBudgetsError, push_pending

REPO = "tester/tiny-wsd"
FAST = {"backoff": 0.01, "max_backoff": 0.05}


def _event(folder: Path) -> BudgetReached:
    record = json.loads((folder / "budget.json").read_text())
    plan = BudgetPlan(**{k: v for k, v in record["plan"].items() if k != "resolved"})
    return BudgetReached(budget=plan.budgets[record["index"]], folder=folder, plan=plan)


def _run(publisher: HubPublisher, folders: list[Path], args, state=None) -> None:
    """What the trainer does: one event per budget, then the end of training."""
    state = state or trainer_state()
    for folder in folders:
        publisher.on_budget_reached(args, state, None, event=_event(folder), trainer=None)
    publisher.on_train_end(args, state, None)


def _ledger(folders: list[Path]) -> dict:
    return json.loads((folders[0].parent / "published.json").read_text())


def _names(folders: list[Path]) -> list[str]:
    return [folder.name for folder in folders]


def _commit_requests(hub, repo: str) -> int:
    prefix = f"/api/models/{repo}/commit/"
    return sum(1 for method, path in hub.requests if method == "POST" and path.startswith(prefix))


def _assert_all_published(hub, repo: str, folders: list[Path]) -> None:
    """Every budget's branch holds its folder exactly, after exactly one commit; main holds the newest."""
    for folder in folders:
        files = hub.branch_files(repo, folder.name)
        local = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        assert {k: v for k, v in files.items() if k != ".gitattributes"} == local
        assert hub.commit_count(repo, folder.name) == 1, folder.name
    assert hub.branch_files(repo, "main") == hub.branch_files(repo, folders[-1].name)


def test_each_budget_gets_a_branch_and_main_holds_the_newest(local_hub, fake_budget_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    args = hub_args(tmp_path / "run", repo_id=None)  # default repo: the output dir's name, in the user's namespace
    publisher = HubPublisher.from_args(args, **FAST)
    _run(publisher, fake_budget_dirs, args)

    repo = "tester/run"
    branches = {ref.name for ref in HfApi(endpoint=local_hub.endpoint).list_repo_refs(repo).branches}
    assert branches == {"main", *_names(fake_budget_dirs)}
    _assert_all_published(local_hub, repo, fake_budget_dirs)
    assert local_hub.commit_count(repo, "main") == len(fake_budget_dirs)  # main follows each new budget, in order

    for folder in fake_budget_dirs:
        remote = AutoModelForCausalLM.from_pretrained(repo, revision=folder.name, cache_dir=tmp_path / "cache")
        local = AutoModelForCausalLM.from_pretrained(folder)
        for (name, a), (_, b) in zip(remote.state_dict().items(), local.state_dict().items()):
            assert a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all()), name

        card = ModelCard.load(hf_hub_download(repo, "README.md", revision=folder.name, cache_dir=tmp_path / "cache"))
        expected = json.loads((folder / "eval_results.json").read_text())["results"]
        assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
            (r["metric"], r["value"]) for r in expected
        ]
        assert f'from_pretrained("{repo}", revision="{folder.name}")' in card.text
        assert "lr_schedule.png" in local_hub.branch_files(repo, folder.name)

    ledger = _ledger(fake_budget_dirs)
    assert ledger["repo_id"] == repo
    published = {(e["budget"], e["branch"]) for e in ledger["published"]}
    assert published == {(n, n) for n in _names(fake_budget_dirs)} | {(n, "main") for n in _names(fake_budget_dirs)}
    heads = {e["branch"]: e["commit"] for e in ledger["published"]}
    assert heads[fake_budget_dirs[-1].name] == local_hub.head(repo, fake_budget_dirs[-1].name)
    assert heads["main"] == local_hub.head(repo, "main")


def test_submitting_a_budget_returns_before_the_upload(local_hub, fake_budget_dirs, tmp_path):
    local_hub.commit_delay = 0.3
    args = hub_args(tmp_path / "run", REPO)
    publisher = HubPublisher.from_args(args, **FAST)
    start = time.perf_counter()
    publisher.on_budget_reached(args, trainer_state(), None, event=_event(fake_budget_dirs[0]), trainer=None)
    assert time.perf_counter() - start < 0.1
    publisher.on_train_end(args, trainer_state(), None)
    assert local_hub.commit_count(REPO, fake_budget_dirs[0].name) == 1


def test_failed_commits_are_retried_and_each_budget_committed_once(local_hub, fake_budget_dirs, tmp_path):
    local_hub.fail_commits(2, status=500)
    local_hub.fail_commits(1, status=429)
    args = hub_args(tmp_path / "run", REPO)
    _run(HubPublisher.from_args(args, **FAST), fake_budget_dirs, args)
    _assert_all_published(local_hub, REPO, fake_budget_dirs)
    assert local_hub.commit_count(REPO, "main") == len(fake_budget_dirs)
    assert _commit_requests(local_hub, REPO) == 2 * len(fake_budget_dirs) + 3  # the 3 refused commits were re-sent


def test_lost_commit_response_does_not_commit_twice(local_hub, fake_budget_dirs, tmp_path):
    local_hub.lose_commit_responses(2)  # the first budget's branch commit and its main commit
    args = hub_args(tmp_path / "run", REPO)
    _run(HubPublisher.from_args(args, **FAST), fake_budget_dirs, args)
    _assert_all_published(local_hub, REPO, fake_budget_dirs)
    assert local_hub.commit_count(REPO, "main") == len(fake_budget_dirs)
    assert len(_ledger(fake_budget_dirs)["published"]) == 2 * len(fake_budget_dirs)
    assert _commit_requests(local_hub, REPO) == 2 * len(fake_budget_dirs)  # the applied commits were never re-sent


def test_a_failure_in_the_run_is_retried_once_more_at_the_end(local_hub, fake_budget_dirs, tmp_path):
    local_hub.fail_commits(1)
    args = hub_args(tmp_path / "run", REPO)
    _run(HubPublisher.from_args(args, max_retries=0, **FAST), fake_budget_dirs, args)
    _assert_all_published(local_hub, REPO, fake_budget_dirs)


def test_hub_down_for_the_whole_run_then_hf_wsd_push_publishes_all(local_hub, fake_budget_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr("hf_wsd.publishing.DEFAULT_BACKOFF", 0.01)  # what `hf-wsd push` waits between retries
    local_hub.down = True
    output_dir = tmp_path / "run"
    args = hub_args(output_dir, REPO)
    with pytest.raises(UnpublishedBudgetsError) as raised:
        _run(HubPublisher.from_args(args, max_retries=2, **FAST), fake_budget_dirs, args)
    error = raised.value
    assert set(error.failures) == set(_names(fake_budget_dirs))
    assert all(name in str(error) for name in _names(fake_budget_dirs))
    assert f"hf-wsd push {output_dir} --repo {REPO}" in str(error)
    assert all((folder / "model.safetensors").is_file() for folder in fake_budget_dirs)
    assert _ledger(fake_budget_dirs) == {"repo_id": REPO, "published": []}

    assert cli(["push", str(output_dir)]) == 1  # still down: the CLI fails, nothing lost
    local_hub.down = False
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)  # `hf-wsd push` takes the token from the environment
    assert cli(["push", str(output_dir)]) == 0  # the repo comes from the ledger
    _assert_all_published(local_hub, REPO, fake_budget_dirs)
    assert local_hub.commit_count(REPO, "main") == 1  # push points main at the newest budget once
    assert cli(["push", str(output_dir), "--repo", REPO]) == 0  # nothing left to do
    assert all(local_hub.commit_count(REPO, name) == 1 for name in _names(fake_budget_dirs))


def test_commit_that_got_out_before_a_crash_is_not_repeated_on_resume(local_hub, fake_budget_dirs, tmp_path):
    # The run died between the first budget's commit and the ledger update; the other budgets never left.
    BudgetUploader(REPO, HUB_TOKEN, endpoint=local_hub.endpoint).publish_branch(fake_budget_dirs[0], ledger=None)
    assert not (fake_budget_dirs[0].parent / "published.json").exists()

    assert push_pending(tmp_path / "run", REPO, token=HUB_TOKEN, **FAST) == 0
    _assert_all_published(local_hub, REPO, fake_budget_dirs)
    assert {e["branch"] for e in _ledger(fake_budget_dirs)["published"]} == {"main", *_names(fake_budget_dirs)}

    # A second publisher (a resumed run re-firing the events) finds everything in place: no commit at all.
    heads = {name: local_hub.head(REPO, name) for name in ["main", *_names(fake_budget_dirs)]}
    entries = _ledger(fake_budget_dirs)["published"]
    args = hub_args(tmp_path / "run", REPO)
    _run(HubPublisher.from_args(args, **FAST), fake_budget_dirs, args)
    assert {name: local_hub.head(REPO, name) for name in heads} == heads
    assert _ledger(fake_budget_dirs)["published"] == entries  # nothing new to record either


def test_a_late_older_budget_never_moves_main_back(local_hub, fake_budget_dirs, tmp_path):
    ledger = Ledger(fake_budget_dirs[0].parent)
    uploader = BudgetUploader(REPO, HUB_TOKEN, endpoint=local_hub.endpoint)
    uploader.publish(fake_budget_dirs[-1], ledger)
    uploader.publish(fake_budget_dirs[0], ledger)  # e.g. an older budget retried after an outage
    assert json.loads(local_hub.branch_files(REPO, "main")["budget.json"])["name"] == fake_budget_dirs[-1].name
    assert local_hub.commit_count(REPO, "main") == 1


def test_only_the_main_process_publishes(local_hub, fake_budget_dirs, tmp_path):
    args = hub_args(tmp_path / "run", REPO)
    _run(HubPublisher.from_args(args, **FAST), fake_budget_dirs, args, state=trainer_state(main=False))
    assert local_hub.requests == []
    assert not (fake_budget_dirs[0].parent / "published.json").exists()


def test_token_never_reaches_a_file_or_a_log_line(local_hub, fake_budget_dirs, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    local_hub.fail_commits(1)
    local_hub.lose_commit_responses(1)
    args = hub_args(tmp_path / "run", REPO)
    _run(HubPublisher.from_args(args, **FAST), fake_budget_dirs[:2], args)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    (fake_budget_dirs[0].parent / "published.json").unlink()
    with pytest.raises(ValueError, match="--repo"):
        push_pending(tmp_path / "run")
    assert push_pending(tmp_path / "run", REPO, **FAST) == 0

    assert local_hub.authorized_requests > 0  # the token was used...
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and HUB_TOKEN.encode() in p.read_bytes()]
    assert leaks == []  # ...but written nowhere: budget folders, cards, ledger, download cache
    assert "retry 1/5" in caplog.text and "Published step100-tokens205K" in caplog.text  # logs were captured
    assert HUB_TOKEN not in caplog.text
    for repo_file in local_hub.blobs.values():
        assert HUB_TOKEN.encode() not in repo_file



def test_transient_errors_are_told_apart_from_permanent_ones():
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from hf_wsd.hub_upload import is_transient

    def http_error(status: int) -> HfHubHTTPError:
        request = httpx2.Request("POST", "https://huggingface.co/api/models/a/b/commit/main")
        return HfHubHTTPError(f"{status}", response=httpx2.Response(status, request=request))

    assert all(is_transient(http_error(status)) for status in (500, 502, 503, 504, 429, 412, 409, 408))
    assert not any(is_transient(http_error(status)) for status in (400, 401, 403, 404, 413))
    assert is_transient(httpx2.ConnectError("refused")) and is_transient(httpx2.ReadTimeout("slow"))
    assert not is_transient(ValueError("Invalid metadata in README.md"))


def test_remote_files_compare_by_sha256_when_lfs_and_git_sha1_otherwise(tmp_path):
    import hashlib

    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.sha import git_hash

    from hf_wsd.hub_upload import _same_file

    local = tmp_path / "model.safetensors"
    local.write_bytes(b"weights" * 100)
    content = local.read_bytes()
    lfs = {"size": len(content), "oid": hashlib.sha256(content).hexdigest(), "pointerSize": 134}
    assert _same_file(local, RepoFile(path=local.name, size=len(content), oid="0" * 40, lfs=lfs))
    other = {**lfs, "oid": "1" * 64}
    assert not _same_file(local, RepoFile(path=local.name, size=len(content), oid="0" * 40, lfs=other))
    assert _same_file(local, RepoFile(path=local.name, size=len(content), oid=git_hash(content)))
    assert not _same_file(local, RepoFile(path=local.name, size=len(content) + 1, oid=git_hash(content)))
    assert not _same_file(local, None)


def test_publisher_reads_the_hub_fields_of_training_arguments(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "my-run"), push_to_hub=True, hub_token=HUB_TOKEN, hub_private_repo=True, report_to=[]
    )
    publisher = HubPublisher.from_args(args)
    assert publisher.repo_id == "my-run"  # resolved to the token's namespace on first contact
    assert publisher.uploader.private is True and publisher.uploader.api.token == HUB_TOKEN
    args.hub_model_id = "my-org/tiny"
    assert HubPublisher.from_args(args).repo_id == "my-org/tiny"


def test_files_holding_the_token_are_never_published(local_hub, fake_budget_dirs, tmp_path):
    import pickle
    from types import SimpleNamespace

    # Trainer.save_model pickles the TrainingArguments, hub_token included, next to the weights.
    (fake_budget_dirs[0] / "training_args.bin").write_bytes(pickle.dumps(SimpleNamespace(hub_token=HUB_TOKEN)))
    (fake_budget_dirs[1] / "notes.txt").write_text(f"pushed with {HUB_TOKEN}\n")
    args = hub_args(tmp_path / "run", REPO)
    with pytest.raises(UnpublishedBudgetsError) as raised:
        _run(HubPublisher.from_args(args, **FAST), fake_budget_dirs, args)
    assert list(raised.value.failures) == [fake_budget_dirs[1].name]
    assert "contains the Hub token" in str(raised.value) and HUB_TOKEN not in str(raised.value)
    assert "training_args.bin" not in local_hub.branch_files(REPO, fake_budget_dirs[0].name)
    assert not any(HUB_TOKEN.encode() in blob for blob in local_hub.blobs.values())
    assert local_hub.commit_count(REPO, fake_budget_dirs[1].name) == 0
