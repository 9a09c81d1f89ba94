"""The upload engine of publishing: one budget folder → one Hub branch, synchronously, retried and idempotent.

:class:`BudgetUploader` commits a budget folder to the branch named after it (and to ``main``). Before a commit
it compares the branch's remote files with the folder, and a branch that already holds the folder gets no
commit, so a retry after a lost response, a resumed run or ``hf-wsd push`` never duplicates a commit. Transient
failures (5xx, 429, connection errors) are retried with exponential backoff. A file holding the Hub token is
never uploaded. The asynchronous front end and the ledger are :mod:`hf_wsd.publishing`.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from . import runs
from .card import write_model_card

if TYPE_CHECKING:
    from .publishing import Ledger

logger = logging.getLogger(__name__)

# `Trainer.save_model` writes `training_args.bin`, a pickle of the TrainingArguments: it can hold `hub_token`, and
# loading it runs arbitrary code. A budget branch is a `from_pretrained` folder and does not need it.
NEVER_PUBLISHED = frozenset({"training_args.bin"})
SECRET_SCAN_MAX_BYTES = 50 * 1024 * 1024
MAIN_BRANCH = "main"
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF = 2.0  # seconds before the first retry; doubles each retry
DEFAULT_MAX_BACKOFF = 120.0
# Statuses worth retrying besides 5xx: timeout, conflict (concurrent operation), precondition failed (the
# branch moved under us: re-check and retry), locked, too early, rate limited.
_TRANSIENT_STATUSES = {408, 409, 412, 423, 425, 429}
T = TypeVar("T")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exceptions of the HTTP clients huggingface_hub may use (httpx2 in 2.x, httpx, requests)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(errors)


_TRANSPORT_ERRORS = _transport_errors()


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: 5xx, 408/409/412/423/425/429 answers and connection errors (not offline mode)."""
    if isinstance(error, OfflineModeIsEnabled):  # HF_HUB_OFFLINE is set: no retry will reach the Hub
        return False
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status >= 500 or status in _TRANSIENT_STATUSES
    return isinstance(error, _TRANSPORT_ERRORS)


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _describe(error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _local_files(folder: Path) -> dict[str, Path]:
    """Files to publish: everything in the folder but hidden files (temporary files) and :data:`NEVER_PUBLISHED`."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            path.is_file()
            and not any(part.startswith(".") for part in relative.parts)
            and relative.name not in NEVER_PUBLISHED
        ):
            files[relative.as_posix()] = path
    return files


class HubAccessError(ValueError):
    """The Hub refused the token or the repo before training: the message names the fix (never the token)."""


_TOKEN_FIX = ("set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens), run "
              "`hf auth login`, or pass `hub_token`; or set push_to_hub=False and publish later with "
              "`hf-wsd push OUTPUT_DIR`.")


class SecretInUploadError(ValueError):
    """A file about to be published contains the Hub token; nothing is committed."""


def _check_no_secret(files: dict[str, Path], token: str | None) -> None:
    """Refuse to publish a file holding the token (weights are not scanned: too big, and never hold it)."""
    if not token:
        return
    needle = token.encode()
    for path_in_repo, path in files.items():
        if path.stat().st_size <= SECRET_SCAN_MAX_BYTES and needle in path.read_bytes():
            raise SecretInUploadError(
                f"refusing to publish {path}: it contains the Hub token. Remove the token from it and publish again."
            )


def _same_file(local: Path, remote: RepoFile | None) -> bool:
    """Whether the remote file has the local file's content (sha256 for LFS files, git blob sha1 otherwise)."""
    if remote is None or remote.size != local.stat().st_size:
        return False
    if remote.lfs is not None:
        with local.open("rb") as handle:
            return sha_fileobj(handle).hex() == remote.lfs.sha256
    return git_hash(local.read_bytes()) == remote.blob_id


class BudgetUploader:
    """Synchronous, retried, idempotent publishing of budget folders (the engine of both front ends)."""

    def __init__(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        *,
        endpoint: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ):
        if not repo_id:
            raise ValueError("`repo_id` must name the Hub repo to publish to, e.g. 'my-org/my-wsd-run'.")
        if max_retries < 0 or backoff < 0:
            raise ValueError(f"`max_retries` and `backoff` must be ≥ 0; got {max_retries} and {backoff}.")
        from . import __version__

        # token=None lets huggingface_hub resolve HF_TOKEN, then the login cache (get_token()).
        self.api = HfApi(endpoint=endpoint, token=token, library_name="hf_wsd", library_version=__version__)
        self.requested_repo_id = repo_id
        self.private = private
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._repo_id: str | None = None

    @property
    def repo_id(self) -> str:
        """The full repo id once the repo exists (``name`` resolves to ``user/name``), else the one asked for."""
        return self._repo_id or self.requested_repo_id

    def retrying(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``, retrying transient failures with exponential backoff; re-raise the last error."""
        for attempt in range(self.max_retries + 1):
            try:
                return action()
            except Exception as error:
                if not is_transient(error) or attempt == self.max_retries:
                    raise
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                logger.warning(
                    "%s failed (%s); retry %d/%d in %.3g s",
                    what, _describe(error), attempt + 1, self.max_retries, delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _token(self) -> str | None:
        return self.api.token or get_token()

    def check_access(self) -> None:
        """Before step 0: the token is accepted (``whoami``) and can write the repo (created now if missing). 401 and
        403 raise :class:`HubAccessError` naming the fix; offline mode or an unreachable Hub only log a warning (the
        budgets are published when it is back, or by ``hf-wsd push``)."""
        try:
            who = self.api.whoami()
        except OfflineModeIsEnabled:
            logger.warning("HF_HUB_OFFLINE is set: Hub access to %s not checked; budgets will wait for `hf-wsd push`.",
                           self.requested_repo_id)
            return
        except Exception as error:
            if _status(error) is None and is_transient(error):
                logger.warning("Could not reach the Hub to check access to %s (%s); training goes on, uploads "
                               "retry.", self.requested_repo_id, _describe(error))
                return
            if _status(error) in (None, 401, 403):  # no token at all, or one the Hub does not accept
                status = f"{_status(error)}, " if _status(error) else ""
                raise HubAccessError(f"push_to_hub: the Hub does not accept the token ({status}{_describe(error)}): "
                                     f"{_TOKEN_FIX}") from None
            raise
        user = who.get("name", "?") if isinstance(who, dict) else "?"
        role = (who.get("auth", {}).get("accessToken", {}) or {}).get("role") if isinstance(who, dict) else None
        if role == "read":
            raise HubAccessError(f"push_to_hub: the token of {user} is read-only: {_TOKEN_FIX}")
        try:
            self.retrying(f"creating {self.requested_repo_id}", self.ensure_repo)
        except Exception as error:
            if _status(error) in (401, 403, 404):
                raise HubAccessError(
                    f"push_to_hub: {user} cannot create or write {self.requested_repo_id} ({_status(error)}, "
                    f"{_describe(error)}): set "
                    f"`hub_model_id` to a repo in your namespace ({user}/NAME) or in an organization you can write "
                    "to, or use a token with write access to it."
                ) from None
            if is_transient(error):
                logger.warning("Could not create %s on the Hub (%s); uploads will retry.", self.requested_repo_id,
                               _describe(error))
                return
            raise
        logger.info("Hub access checked: %s can write %s", user, self.repo_id)

    def ensure_repo(self) -> str:
        if self._repo_id is None:
            url = self.api.create_repo(self.requested_repo_id, private=self.private, exist_ok=True)
            self._repo_id = url.repo_id
        return self._repo_id

    def _main_budget(self) -> dict | None:
        """``budget.json`` on ``main``, or ``None`` when ``main`` holds no budget yet."""
        url = hf_hub_url(self.repo_id, runs.BUDGET_FILE, revision=MAIN_BRANCH, endpoint=self.api.endpoint)
        response = get_session().get(url, headers=build_hf_headers(token=self.api.token))
        if response.status_code == 404:
            return None
        hf_raise_for_status(response)
        try:
            return json.loads(response.content)
        except ValueError:
            return None

    def commit_folder(self, folder: Path, branch: str, message: str) -> str:
        """Make ``branch`` hold exactly ``folder``'s files; returns its head commit. No commit if it already does."""
        repo_id = self.ensure_repo()
        heads = {ref.name: ref.target_commit for ref in self.api.list_repo_refs(repo_id).branches}
        if branch not in heads:
            self.api.create_branch(repo_id, branch=branch, revision=heads.get(MAIN_BRANCH), exist_ok=True)
            heads = {ref.name: ref.target_commit for ref in self.api.list_repo_refs(repo_id).branches}
        head = heads[branch]
        # The tree of the head commit, not of the branch name, so that `parent_commit` below matches what was
        # compared: if the branch moves in between, the commit is refused (412) and retried from scratch.
        remote = {
            item.path: item
            for item in self.api.list_repo_tree(repo_id, revision=head, recursive=True)
            if isinstance(item, RepoFile)
        }
        local = _local_files(folder)
        additions = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file))
            for path, file in local.items() if not _same_file(file, remote.get(path))
        ]
        deletions = [  # mirror the folder, so that `main` drops files an older budget had and this one lacks
            CommitOperationDelete(path_in_repo=path)
            for path in remote if path not in local and path != ".gitattributes"
        ]
        if not additions and not deletions:
            logger.info("%s@%s already holds %s; nothing to commit", repo_id, branch, folder.name)
            return head
        _check_no_secret({op.path_in_repo: local[op.path_in_repo] for op in additions}, self._token())
        info = self.api.create_commit(
            repo_id, additions + deletions, commit_message=message, revision=branch, parent_commit=head,
            commit_description=f"Budget folder `{folder.name}`, published by hf_wsd.",
        )
        return info.oid

    def publish_branch(self, folder: Path, ledger: Ledger | None = None) -> str:
        """Publish ``folder`` to the branch named after its budget (card re-rendered with the repo id)."""
        folder = Path(folder)
        record = runs.read_budget(folder)
        name = record["name"]

        def attempt() -> str:
            repo_id = self.ensure_repo()
            write_model_card(folder, repo_id, endpoint=self.api.endpoint)
            return self.commit_folder(folder, name, f"Publish budget {name} (step {record['step']})")

        commit = self.retrying(f"publishing {name}", attempt)
        if ledger is not None:
            ledger.record(self.repo_id, name, name, record["step"], commit)
        logger.info("Published %s to %s (branch %s, commit %s)", name, self.repo_id, name, commit[:8])
        return commit

    def update_main(self, folder: Path, ledger: Ledger | None = None) -> str | None:
        """Make ``main`` hold ``folder`` unless it holds a newer budget of the same run; returns the commit or None.

        ``main`` never holds an EMA preview: for a preview folder this does nothing and returns None.
        """
        folder = Path(folder)
        record = runs.read_budget(folder)
        name = record["name"]
        if runs.is_preview(record):
            return None

        def attempt() -> str | None:
            self.ensure_repo()
            current = self._main_budget()
            # A late retry of an older budget must never move `main` back (another run's budget is replaced).
            same_run = current is not None and current.get("run_id") == record.get("run_id")
            if same_run and current.get("step", -1) > record["step"]:
                logger.info("main already holds %s, newer than %s; main left as is", current.get("name"), name)
                return None
            write_model_card(folder, self.repo_id, endpoint=self.api.endpoint)
            return self.commit_folder(folder, MAIN_BRANCH, f"Update main to budget {name} (step {record['step']})")

        commit = self.retrying(f"updating main to {name}", attempt)
        if commit is not None:
            if ledger is not None:
                ledger.record(self.repo_id, name, MAIN_BRANCH, record["step"], commit)
            logger.info("main of %s now holds %s (commit %s)", self.repo_id, name, commit[:8])
        return commit

    def publish(self, folder: Path, ledger: Ledger | None = None, update_main: bool = True) -> None:
        """Publish the budget branch, then ``main``; raises the last error when either gives up."""
        self.publish_branch(folder, ledger)
        if update_main:
            try:
                self.update_main(folder, ledger)
            except Exception as error:
                raise RuntimeError(f"branch published, but main could not be updated ({_describe(error)})") from error
