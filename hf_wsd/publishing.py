"""Publish every budget to the Hub: one branch per budget, ``main`` = the newest budget, in the background.

:class:`HubPublisher` subscribes to the *budget reached* event and runs last among the subscribers, once the
folder is final. It queues the budget folder and returns at once; one worker thread publishes it with
:class:`~hf_wsd.hub_upload.BudgetUploader` (the card re-rendered with the repo id, the folder committed to the
branch named after the budget, then to ``main``: Pythia convention, ``main`` holds the newest decayed
checkpoint), retrying transient failures.

A ledger, ``{output_dir}/budgets/published.json``, records what is published (repo id, budget, branch, commit,
time; never the token). Every start of training resumes from it: budgets on disk that it lacks (an upload cut
short by a crash) are queued again, and ``main`` is moved to the newest budget, with no manual step. At the
end of training the publisher waits for the queue; a budget that still could not be published stays on disk,
is named in :class:`UnpublishedBudgetsError`, and ``hf-wsd push OUTPUT_DIR`` (:func:`push_pending`) publishes
it later.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub.utils import tqdm

from . import runs
from .events import BudgetCallback, BudgetReached, PreviewReached
from .hub_upload import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_RETRIES,
    MAIN_BRANCH,
    BudgetUploader,
    _describe,
    is_transient,
)

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

__all__ = ["HubPublisher", "Ledger", "UnpublishedBudgetsError", "push_pending", "BudgetUploader", "is_transient"]

logger = logging.getLogger(__name__)

_LEDGER_FIX = (
    "delete it and run `hf-wsd push OUTPUT_DIR --repo ORG/NAME`: it re-derives the ledger from the remote branches "
    "(a branch that already holds a budget gets no new commit)."
)


class UnpublishedBudgetsError(RuntimeError):
    """Budgets that could not be published; they stay on disk and ``hf-wsd push`` publishes them later."""

    def __init__(self, repo_id: str, failures: dict[str, str], output_dir: str | Path | None = None):
        self.repo_id = repo_id
        self.failures = dict(failures)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        reasons = "; ".join(f"{name} ({reason})" for name, reason in self.failures.items())
        kept = f" in {runs.budgets_dir(self.output_dir)}" if self.output_dir is not None else ""
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
        self.path = Path(budgets_dir) / runs.LEDGER_FILE
        self._lock = threading.Lock()

    def load(self) -> dict:
        """The ledger's content; a damaged file raises :class:`~hf_wsd.runs.RunFileError` naming it and the fix."""
        if not self.path.is_file():
            return {"repo_id": None, "published": []}
        data = runs.read_json(self.path, _LEDGER_FIX)
        if not isinstance(data, dict) or not isinstance(data.get("published"), list):
            raise runs.RunFileError(f"{self.path} is not a publishing ledger; {_LEDGER_FIX}")
        return data

    def _write(self, data: dict) -> None:
        runs.write_json(self.path, data)

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


class HubPublisher(BudgetCallback):
    """Publish each budget to its own Hub branch (and ``main``) in the background, as training goes on.

    ``on_budget_reached`` queues the budget folder and returns at once; one worker thread uploads.
    ``on_train_begin`` queues what an interrupted earlier launch left unpublished (from the ledger).
    ``on_train_end`` waits for the queue (with a progress bar), retries failed budgets once more and raises
    :class:`UnpublishedBudgetsError` naming those still unpublished. Only the main process publishes.

    Args:
        repo_id: the Hub repo (``org/name``; a bare ``name`` goes to the token's user).
        token: a Hub token; default: ``HF_TOKEN``, then the login cache. Never written anywhere.
        private: create the repo private (ignored when it exists).
        endpoint: the Hub address (default: ``HF_ENDPOINT``).
        max_retries: retries of each step (branch, main) on transient errors.
        backoff: seconds before the first retry, doubling each retry up to ``max_backoff``.
        output_dir: the run's output directory: its ledger is read now (a damaged one is an error before
            training) and resumed from at every start of training. Default: set by the first budget.
        previews: also publish EMA previews (``preview_push_to_hub``), each to the branch named after its folder;
            ``main`` never holds one. Off: previews stay local.
    """

    priority = -200  # last: the folder is final (evaluated, carded) when it is queued

    def __init__(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        *,
        output_dir: str | Path | None = None,
        endpoint: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        previews: bool = False,
    ):
        self.previews = previews
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
        if output_dir is not None:
            self._use_output_dir(Path(output_dir))

    def _use_output_dir(self, output_dir: Path) -> None:
        self._output_dir = output_dir
        self._ledger = Ledger(runs.budgets_dir(output_dir))
        self._ledger.load()  # a damaged ledger is reported now, naming the file and the fix

    @classmethod
    def from_args(cls, args: "TrainingArguments", **kwargs) -> "HubPublisher":
        """From ``TrainingArguments``: ``hub_model_id`` (default: the output dir's name), ``hub_token``,
        ``hub_private_repo``; ``kwargs`` go to the constructor (``max_retries``, ``backoff``, ``endpoint``)."""
        repo_id = getattr(args, "hub_model_id", None) or Path(args.output_dir).absolute().name
        token, private = getattr(args, "hub_token", None), getattr(args, "hub_private_repo", None)
        kwargs.setdefault("previews", bool(getattr(args, "preview_push_to_hub", False)))
        return cls(repo_id, token=token, private=private, output_dir=args.output_dir, **kwargs)

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

    def on_preview_reached(self, args, state, control, *, event: PreviewReached, trainer=None, **kwargs) -> None:
        if self.previews and getattr(state, "is_world_process_zero", True):
            self.submit(event.folder)

    def on_train_begin(self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs):
        if getattr(state, "is_world_process_zero", True) and self._output_dir is not None:
            for folder in self.pending():
                logger.info("Publishing %s, which an earlier launch of this run did not publish", folder.name)
                self.submit(folder)

    def on_train_end(self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs):
        if getattr(state, "is_world_process_zero", True):
            self.wait()

    def pending(self) -> list[Path]:
        """This run's budget folders the ledger lacks, by step, or the newest one if ``main`` does not hold it; then
        the previews the ledger lacks when ``previews`` is on."""
        saved = runs.read_run(self._output_dir)
        run_id = saved["run_id"] if saved else None
        folders = [b for b in runs.budget_records(self._output_dir) if b.record.get("run_id") == run_id]
        previews = [p for p in runs.preview_records(self._output_dir) if p.record.get("run_id") == run_id]
        if not folders and not (self.previews and previews):
            return []
        recorded = self._ledger.repo_id  # resolved (`user/name`) once a first upload got out
        published = self._ledger.branches(recorded if _same_repo(recorded, self.repo_id) else self.repo_id)
        missing = [b.folder for b in folders if b.name not in published]
        if folders and not missing and published.get(MAIN_BRANCH, {}).get("budget") != folders[-1].name:
            missing = [folders[-1].folder]  # every branch is out, but main was not moved to the newest
        if self.previews:  # EMA previews (preview_push_to_hub): their own branches, never main
            missing += [p.folder for p in previews if p.name not in published]
        return missing

    # ------------------------------------------------------------------------------------ queue
    def submit(self, folder: str | Path) -> None:
        """Queue a budget folder for publishing and return at once (training never waits on the network)."""
        folder = Path(folder)
        if self._ledger is None:
            self._use_output_dir(folder.parent.parent)
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


def _same_repo(recorded: str | None, wanted: str) -> bool:
    """Whether the ledger's repo is the one asked for: the same ``owner/name``, or a bare ``name`` (the token's user)
    with that name. ``tester/model`` and ``my-org/model`` are two repos: a run moved to the other one publishes every
    budget there, not only those that come after the move."""
    if recorded is None:
        return False
    return recorded == wanted if "/" in wanted else recorded.split("/")[-1] == wanted


def _step(folder: Path) -> int:
    return runs.read_budget(folder)["step"]


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
    budgets_dir = runs.budgets_dir(output_dir)
    if not budgets_dir.is_dir():
        raise ValueError(f"{budgets_dir} does not exist: OUTPUT_DIR must be the output directory of an hf_wsd run.")
    ledger = Ledger(budgets_dir)
    ledger.load()  # a damaged ledger is named before anything is sent
    repo_id = repo_id or ledger.repo_id
    if not repo_id:
        raise ValueError(f"no repo recorded in {ledger.path}: pass the Hub repo with --repo ORG/NAME.")
    saved = runs.read_run(Path(output_dir))
    records = runs.budget_records(output_dir)
    if saved is not None:  # budget folders another run left behind are never published (nor pointed main at)
        stale = [r.name for r in records if r.record.get("run_id") not in (None, saved.get("run_id"))]
        if stale:
            logger.warning("Not publishing %s: written by another run than the one in %s", ", ".join(stale),
                           runs.PLAN_FILE)
        records = [r for r in records if r.name not in stale]
    folders = [budget.folder for budget in records]
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
