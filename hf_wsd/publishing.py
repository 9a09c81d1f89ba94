"""Publish every budget to the Hub: one branch per budget, ``main`` = the newest budget, in the background.

:class:`HubPublisher` subscribes to the *budget reached* event. It queues the budget folder and returns at
once; one worker thread renders the card with the repo id and commits the folder to the branch named after
the budget, then to ``main`` (Pythia convention: ``main`` holds the newest decayed checkpoint). Each step
retries transient failures (5xx, 429, connection errors) with exponential backoff.

A publish is idempotent: before committing, the branch's remote files are compared with the folder, and a
branch that already holds the folder gets no commit, so a retry after a lost response, a resumed run or
``hf-wsd push`` never duplicates a commit. A ledger, ``{output_dir}/budgets/published.json``, records what
is published (repo id, budget, branch, commit, time; never the token). At the end of training the
publisher waits for the queue; a budget that still could not be published stays on disk, is named in
:class:`UnpublishedBudgetsError`, and ``hf-wsd push OUTPUT_DIR`` (:func:`push_pending`) publishes it later.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, tqdm
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from .card import BUDGET_FILE, write_model_card
from .events import BudgetCallback, BudgetReached

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

LEDGER_FILE = "published.json"
# `Trainer.save_model` writes `training_args.bin`, a pickle of the TrainingArguments: it can hold `hub_token`, and
# loading it runs arbitrary code. A budget branch is a `from_pretrained` folder and does not need it.
NEVER_PUBLISHED = frozenset({"training_args.bin"})
SECRET_SCAN_MAX_BYTES = 50 * 1024 * 1024
BUDGETS_DIR = "budgets"
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
    """Whether retrying may help: 5xx, 408/409/412/423/425/429 answers and connection errors."""
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status >= 500 or status in _TRANSIENT_STATUSES
    return isinstance(error, _TRANSPORT_ERRORS)


def _describe(error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


class UnpublishedBudgetsError(RuntimeError):
    """Budgets that could not be published; they stay on disk and ``hf-wsd push`` publishes them later."""

    def __init__(self, repo_id: str, failures: dict[str, str], output_dir: str | Path | None = None):
        self.repo_id = repo_id
        self.failures = dict(failures)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        reasons = "; ".join(f"{name} ({reason})" for name, reason in self.failures.items())
        kept = f" in {self.output_dir / BUDGETS_DIR}" if self.output_dir is not None else ""
        command = f"hf-wsd push {self.output_dir if self.output_dir is not None else 'OUTPUT_DIR'} --repo {repo_id}"
        super().__init__(
            f"{len(self.failures)} budget(s) could not be published to {repo_id}: {reasons}. They are kept on "
            f"disk{kept}; publish them once the Hub is reachable with `{command}`."
        )


class Ledger:
    """``{output_dir}/budgets/published.json``: the repo id and every (budget, branch, commit) published.

    Format: ``{"repo_id": str, "published": [{"repo_id", "budget", "branch", "step", "commit",
    "published_at"}, ...]}``, appended in publishing order. Written atomically; holds no secret.
    """

    def __init__(self, budgets_dir: str | Path):
        self.path = Path(budgets_dir) / LEDGER_FILE
        self._lock = threading.Lock()

    def load(self) -> dict:
        if not self.path.is_file():
            return {"repo_id": None, "published": []}
        return json.loads(self.path.read_text())

    def _write(self, data: dict) -> None:
        tmp = self.path.with_name(f".{LEDGER_FILE}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    @property
    def repo_id(self) -> str | None:
        return self.load().get("repo_id")

    def set_repo(self, repo_id: str) -> None:
        with self._lock:
            data = self.load()
            if data.get("repo_id") != repo_id:
                data["repo_id"] = repo_id
                self._write(data)

    def record(self, repo_id: str, budget: str, branch: str, step: int, commit: str) -> None:
        with self._lock:
            data = self.load()
            latest = self._latest(data, repo_id).get(branch)
            if latest is not None and latest["commit"] == commit and latest["budget"] == budget:
                return  # already recorded (a resumed run or `hf-wsd push` found it published)
            data["repo_id"] = repo_id
            data["published"].append({
                "repo_id": repo_id, "budget": budget, "branch": branch, "step": step, "commit": commit,
                "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            self._write(data)

    def branches(self, repo_id: str) -> dict[str, dict]:
        """The latest entry per branch published to ``repo_id``."""
        return self._latest(self.load(), repo_id)

    @staticmethod
    def _latest(data: dict, repo_id: str) -> dict[str, dict]:
        latest: dict[str, dict] = {}
        for entry in data.get("published", []):
            if entry.get("repo_id") == repo_id:
                latest[entry["branch"]] = entry
        return latest


def budget_folders(budgets_dir: str | Path) -> list[Path]:
    """Complete budget folders (those with ``budget.json``) of ``budgets_dir``, by step."""
    budgets_dir = Path(budgets_dir)
    if not budgets_dir.is_dir():
        return []
    folders = [
        f for f in budgets_dir.iterdir() if f.is_dir() and not f.name.startswith(".") and (f / BUDGET_FILE).is_file()
    ]
    return sorted(folders, key=lambda f: json.loads((f / BUDGET_FILE).read_text())["step"])


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

    def ensure_repo(self) -> str:
        if self._repo_id is None:
            url = self.api.create_repo(self.requested_repo_id, private=self.private, exist_ok=True)
            self._repo_id = url.repo_id
        return self._repo_id

    def _main_budget(self) -> dict | None:
        """``budget.json`` on ``main``, or ``None`` when ``main`` holds no budget yet."""
        url = hf_hub_url(self.repo_id, BUDGET_FILE, revision=MAIN_BRANCH, endpoint=self.api.endpoint)
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
        record = json.loads((folder / BUDGET_FILE).read_text())
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
        """Make ``main`` hold ``folder`` unless it holds a newer budget of the same run; returns the commit or None."""
        folder = Path(folder)
        record = json.loads((folder / BUDGET_FILE).read_text())
        name = record["name"]

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


class HubPublisher(BudgetCallback):
    """Publish each budget to its own Hub branch (and ``main``) in the background, as training goes on.

    ``on_budget_reached`` queues the budget folder and returns at once; one worker thread uploads.
    ``on_train_end`` waits for the queue (with a progress bar), retries failed budgets once more and raises
    :class:`UnpublishedBudgetsError` naming those still unpublished. Only the main process publishes.

    Args:
        repo_id: the Hub repo (``org/name``; a bare ``name`` goes to the token's user).
        token: a Hub token; default: ``HF_TOKEN``, then the login cache. Never written anywhere.
        private: create the repo private (ignored when it exists).
        endpoint: the Hub address (default: ``HF_ENDPOINT``).
        max_retries: retries of each step (branch, main) on transient errors.
        backoff: seconds before the first retry, doubling each retry up to ``max_backoff``.
    """

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
        self.uploader = BudgetUploader(
            repo_id, token, private,
            endpoint=endpoint, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
        )
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()
        self._queued = 0
        self._finished = 0
        self._failures: dict[str, tuple[Path, str]] = {}
        self._ledger: Ledger | None = None
        self._output_dir: Path | None = None

    @classmethod
    def from_args(cls, args: "TrainingArguments", **kwargs) -> "HubPublisher":
        """From ``TrainingArguments``: ``hub_model_id`` (default: the output dir's name), ``hub_token``,
        ``hub_private_repo``; ``kwargs`` go to the constructor (``max_retries``, ``backoff``, ``endpoint``)."""
        repo_id = getattr(args, "hub_model_id", None) or Path(args.output_dir).absolute().name
        token, private = getattr(args, "hub_token", None), getattr(args, "hub_private_repo", None)
        return cls(repo_id, token=token, private=private, **kwargs)

    @property
    def repo_id(self) -> str:
        return self.uploader.repo_id

    # ------------------------------------------------------------------------------------ events
    def on_budget_reached(
        self,
        args: "TrainingArguments",
        state: "TrainerState",
        control: "TrainerControl",
        *,
        event: BudgetReached,
        trainer=None,
        **kwargs,
    ) -> None:
        if getattr(state, "is_world_process_zero", True):
            self.submit(event.folder)

    def on_train_end(self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs):
        if getattr(state, "is_world_process_zero", True):
            self.wait()

    # ------------------------------------------------------------------------------------ queue
    def submit(self, folder: str | Path) -> None:
        """Queue a budget folder for publishing and return at once (training never waits on the network)."""
        folder = Path(folder)
        if self._ledger is None:
            self._ledger = Ledger(folder.parent)
            self._output_dir = folder.parent.parent
        if self._ledger.repo_id is None:
            self._ledger.set_repo(self.repo_id)  # so `hf-wsd push OUTPUT_DIR` knows the repo even if nothing got out
        with self._progress:
            self._queued += 1
        self._queue.put(folder)
        if self._thread is None or not self._thread.is_alive():
            # Daemon: a crashed run must still exit; what did not get out is in the ledger's gaps for `hf-wsd push`.
            self._thread = threading.Thread(target=self._work, name="hf-wsd-publisher", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            folder = self._queue.get()
            if folder is None:
                return
            try:
                self.uploader.publish(folder, self._ledger)
                self._failures.pop(folder.name, None)
            except Exception as error:
                logger.error("Could not publish %s to %s: %s", folder.name, self.repo_id, _describe(error))
                self._failures[folder.name] = (folder, _describe(error))
            finally:
                with self._progress:
                    self._finished += 1
                    self._progress.notify_all()

    def _drain(self) -> None:
        with self._progress:
            if self._finished >= self._queued:
                return
            logger.info("Waiting for %d budget upload(s) to %s", self._queued - self._finished, self.repo_id)
            bar = tqdm(total=self._queued, initial=self._finished, desc=f"Publishing to {self.repo_id}", unit="budget")
            with bar:
                while self._finished < self._queued:
                    self._progress.wait(timeout=1.0)
                    bar.update(self._finished - bar.n)

    def wait(self) -> None:
        """Block until every queued budget is handled; raise :class:`UnpublishedBudgetsError` for those that failed."""
        self._drain()
        if self._failures:
            # One more round at the end: an outage in the middle of a long run should not need a manual push.
            logger.warning("Retrying %d unpublished budget(s) before giving up", len(self._failures))
            for folder, _ in sorted(self._failures.values(), key=lambda item: _step(item[0])):
                self.submit(folder)
            self._drain()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._failures:
            failures = {name: reason for name, (_, reason) in self._failures.items()}
            self._failures.clear()
            raise UnpublishedBudgetsError(self.repo_id, failures, self._output_dir)


def _step(folder: Path) -> int:
    return json.loads((folder / BUDGET_FILE).read_text())["step"]


def push_pending(
    output_dir: str | Path,
    repo_id: str | None = None,
    private: bool = False,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    max_retries: int | None = None,
    backoff: float | None = None,
    max_backoff: float | None = None,
) -> int:
    """Publish the budgets of ``output_dir`` that the ledger lacks, then point ``main`` at the newest budget.

    Synchronous, with the same retries and idempotence as :class:`HubPublisher` (a budget whose commit got out
    before a crash is recognised, not committed again). Returns 0 when everything is published, 1 otherwise.
    """
    budgets_dir = Path(output_dir) / BUDGETS_DIR
    if not budgets_dir.is_dir():
        raise ValueError(f"{budgets_dir} does not exist: OUTPUT_DIR must be the output directory of an hf_wsd run.")
    ledger = Ledger(budgets_dir)
    repo_id = repo_id or ledger.repo_id
    if not repo_id:
        raise ValueError(f"no repo recorded in {ledger.path}: pass the Hub repo with --repo ORG/NAME.")
    folders = budget_folders(budgets_dir)
    if not folders:
        logger.warning("No budget folders in %s: nothing to publish", budgets_dir)
        return 0
    uploader = BudgetUploader(
        repo_id, token, private or None, endpoint=endpoint,
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        backoff=DEFAULT_BACKOFF if backoff is None else backoff,
        max_backoff=DEFAULT_MAX_BACKOFF if max_backoff is None else max_backoff,
    )
    try:
        repo_id = uploader.retrying(f"creating {repo_id}", uploader.ensure_repo)
    except Exception as error:
        logger.error("Could not reach repo %s: %s", repo_id, _describe(error))
        return 1
    ledger.set_repo(repo_id)
    published = ledger.branches(repo_id)
    pending = [folder for folder in folders if folder.name not in published]
    failures: dict[str, str] = {}
    for folder in tqdm(pending, desc=f"Publishing to {repo_id}", unit="budget", disable=not pending):
        try:
            uploader.publish_branch(folder, ledger)
        except Exception as error:
            failures[folder.name] = _describe(error)
            logger.error("Could not publish %s to %s: %s", folder.name, repo_id, _describe(error))
    newest = folders[-1]
    if newest.name not in failures and ledger.branches(repo_id).get(MAIN_BRANCH, {}).get("budget") != newest.name:
        try:
            uploader.update_main(newest, ledger)
        except Exception as error:
            failures[MAIN_BRANCH] = f"could not point main at {newest.name}: {_describe(error)}"
    if failures:
        logger.error("%s", UnpublishedBudgetsError(repo_id, failures, output_dir))
        return 1
    logger.info("All %d budget(s) of %s are published to %s", len(folders), output_dir, repo_id)
    return 0
