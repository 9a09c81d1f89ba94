"""The local Hub speaks enough of the Hub API for huggingface_hub, and its fault knobs do what they say."""

from __future__ import annotations

import pytest
from helpers import HUB_TOKEN
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RevisionNotFoundError

REPO = "tester/server-check"


@pytest.fixture
def api(local_hub) -> HfApi:
    api = HfApi(endpoint=local_hub.endpoint, token=HUB_TOKEN)
    api.create_repo(REPO)
    return api


def _commit(api: HfApi, content: bytes, revision: str = "main", **kwargs):
    operation = CommitOperationAdd(path_in_repo="file.txt", path_or_fileobj=content)
    return api.create_commit(REPO, [operation], commit_message="add", revision=revision, **kwargs)


def test_repos_branches_commits_and_downloads_round_trip(local_hub, api, tmp_path):
    assert api.whoami()["name"] == "tester"
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # the 409 answer carries the url
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_repo(REPO)
    api.create_branch(REPO, branch="b1", exist_ok=True)
    api.create_branch(REPO, branch="b1", exist_ok=True)
    info = _commit(api, b"hello", revision="b1")
    assert {ref.name: ref.target_commit for ref in api.list_repo_refs(REPO).branches}["b1"] == info.oid
    assert [c.title for c in api.list_repo_commits(REPO, revision="b1")] == ["add", "initial commit"]
    assert {f.path for f in api.list_repo_tree(REPO, revision="b1", recursive=True)} == {".gitattributes", "file.txt"}
    assert api.model_info(REPO, revision="b1").sha == info.oid
    path = hf_hub_download(REPO, "file.txt", revision="b1", cache_dir=tmp_path, endpoint=local_hub.endpoint)
    assert open(path, "rb").read() == b"hello"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", revision="b1", cache_dir=tmp_path, endpoint=local_hub.endpoint)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "file.txt", revision="nope", cache_dir=tmp_path, endpoint=local_hub.endpoint)


def test_writes_need_the_token(local_hub):
    with pytest.raises(HfHubHTTPError, match="401"):
        HfApi(endpoint=local_hub.endpoint, token=False).create_repo("tester/anonymous")
    with pytest.raises(HfHubHTTPError, match="401"):
        HfApi(endpoint=local_hub.endpoint, token="hf_wrong").create_repo("tester/wrong")


def test_a_stale_parent_commit_is_refused(api):
    first = _commit(api, b"one")
    _commit(api, b"two")
    with pytest.raises(HfHubHTTPError, match="412"):
        _commit(api, b"three", parent_commit=first.oid)


def test_fault_knobs_fail_lose_and_go_down(local_hub, api):
    local_hub.fail_commits(1)
    with pytest.raises(HfHubHTTPError, match="500"):
        _commit(api, b"one")
    assert local_hub.commit_count(REPO, "main") == 0

    local_hub.lose_commit_responses(1)
    with pytest.raises(HfHubHTTPError, match="500"):
        _commit(api, b"two")
    assert local_hub.commit_count(REPO, "main") == 1 and local_hub.branch_files(REPO, "main")["file.txt"] == b"two"

    local_hub.down = True
    with pytest.raises(HfHubHTTPError, match="503"):
        api.list_repo_refs(REPO)
