"""One process tree owns a run: a lock file in the output dir, and starting over in an output dir that holds a run.

The lock, ``{output_dir}/wsd_lock.json``, names its holder (pid, host, process start, launch time) and is created
atomically (``O_CREAT | O_EXCL``), so of two launches racing on one run exactly one trains. A background thread
touches it every :data:`HEARTBEAT_S` seconds while the holder lives. It is released when training ends (normally or
by an exception) and broken only when its holder is gone: on this host, a pid that no longer runs (or now runs
another process); on another host (a job requeued on another node after a crash or a preemption), a heartbeat that
does not move for :data:`HEARTBEAT_WAITS` heartbeats while the new launch watches it, or is older than
:data:`STALE_AFTER_S` seconds (watching needs no agreement between the hosts' clocks: only whether the stamp
moves). Under ``accelerate launch`` only the main process takes it: the ranks of one launch are one owner, and every
rank learns the answer from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from . import runs

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
HEARTBEAT_WAITS = 3  # heartbeats a launch watches another host's lock for before it breaks it (shared FS caching)
STALE_AFTER_S = 300.0


class RunInUse(RuntimeError):
    """Another launch holds the run; the message names it and the way out."""


# ----------------------------------------------------------------------------------------------- holders
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a reused pid from its first owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


def this_holder() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)[:500]}


def holder_is_gone(holder: dict, lock_age_s: float, path: Path | None = None) -> bool:
    """Whether the launch that wrote ``holder`` no longer runs (its lock may be broken). For another host, with the
    lock's ``path``, watch its heartbeat for :data:`HEARTBEAT_WAITS` heartbeats: a stamp that moves is a live holder."""
    if holder.get("host") != socket.gethostname():
        if lock_age_s > STALE_AFTER_S or path is None:
            return lock_age_s > STALE_AFTER_S
        return not _heartbeat_moves(path, holder)
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_runs(pid):
        return True
    started = holder.get("process_start")
    return started is not None and _process_start(pid) not in (None, started)


def _heartbeat_moves(path: Path, holder: dict) -> bool:
    try:
        first = path.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    logger.warning("%s is locked by %s: watching its heartbeat for up to %.0f s", path, describe(holder),
                   HEARTBEAT_WAITS * HEARTBEAT_S)
    deadline = time.monotonic() + HEARTBEAT_WAITS * HEARTBEAT_S
    while time.monotonic() < deadline:
        time.sleep(min(1.0, HEARTBEAT_S / 4))
        try:
            if path.stat().st_mtime_ns != first:
                return True
        except FileNotFoundError:
            return False  # released meanwhile: the caller takes it
    return False


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
            f"({holder.get('command') or 'unknown command'})")


# ----------------------------------------------------------------------------------------------- the lock
def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / runs.LOCK_FILE


def acquire(output_dir: str | Path) -> None:
    """Take the run's lock for this process, or raise :class:`RunInUse` naming the live holder."""
    path = lock_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_holder()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, age = _read(path)
            if holder is None:
                continue  # released meanwhile
            mine = holder.get("host") == me["host"] and holder.get("pid") == me["pid"]
            if mine or holder_is_gone(holder, age, path):
                if not mine:
                    logger.warning("Breaking the lock of a launch that is gone (%s)", describe(holder))
                path.unlink(missing_ok=True)
                continue
            raise RunInUse(
                f"{Path(output_dir)} is being trained by another launch ({describe(holder)}; lock {path}). Two "
                "launches on one run would train the same updates twice and interleave its budgets: wait for it to "
                "end, or stop it and resume with resume_from_checkpoint=True. If that launch is gone, its lock is "
                "broken by the next launch (on its host: its pid no longer runs; elsewhere: its heartbeat stopped), "
                f"or delete {path}."
            )
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(me, indent=2) + "\n")
        return
    raise RunInUse(f"could not take the lock {path}: other launches keep taking it; retry, or delete {path}.")


def release(output_dir: str | Path) -> None:
    """Remove the lock if this process holds it."""
    path = lock_path(output_dir)
    holder, _ = _read(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _read(path: Path) -> tuple[dict | None, float]:
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None, 0.0
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        holder = {}  # half-written by a launch killed while taking it: gone once stale
        age = time.time() - path.stat().st_mtime if path.exists() else 0.0
    return (holder if isinstance(holder, dict) else {}), age


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(name="hf_wsd-run-lock", daemon=True)
        self.path, self.stopped = path, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)


@contextlib.contextmanager
def hold(output_dir: str | Path, is_main: bool, share: Callable = lambda value: value) -> Iterator[None]:
    """Hold the run's lock for the ``with`` block: the main process takes it, ``share`` (a broadcast from it) tells
    every rank whether it got it, and all raise :class:`RunInUse` together when it did not."""
    refusal = None
    if is_main:
        try:
            acquire(output_dir)
        except RunInUse as error:
            refusal = str(error)
    refusal = share(refusal)
    if refusal is not None:
        raise RunInUse(refusal)
    beat = _Heartbeat(lock_path(output_dir)) if is_main else None
    if beat is not None:
        beat.start()
    try:
        yield
    finally:
        if beat is not None:
            beat.stopped.set()
            release(output_dir)


# ----------------------------------------------------------------------------------------------- starting over
def run_files(output_dir: str | Path) -> list[Path]:
    """What a run of hf_wsd left in ``output_dir`` (its record, log, status, requests, checkpoints, budgets and
    ledger); nothing else in the folder is the run's."""
    output_dir = Path(output_dir)
    names = (runs.PLAN_FILE, runs.LOG_FILE, runs.STATUS_FILE, runs.REQUESTS_DIR, runs.BUDGETS_DIR)
    found = [output_dir / name for name in names if (output_dir / name).exists()]
    found += [path for _, path in runs.checkpoints(output_dir)]
    if output_dir.is_dir():  # checkpoints cut short by a crash (no trainer_state.json) belong to the run too
        found += [p for p in output_dir.iterdir() if runs.checkpoint_step(p) is not None and p not in found]
    return sorted(found)


def clear_run(output_dir: str | Path) -> None:
    """Start over: remove the previous run's files so nothing of it is resumed, summarised or published again.
    Hub branches it published stay on the Hub (logged): the new run publishes its own budgets and moves ``main``."""
    output_dir = Path(output_dir)
    ledger = runs.budgets_dir(output_dir) / runs.LEDGER_FILE
    published = _published_branches(ledger)
    removed = run_files(output_dir)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.warning("overwrite_output_dir=True: removed the previous run from %s (%s)", output_dir,
                       ", ".join(p.name for p in removed))
    if published:
        logger.warning("The previous run's Hub branches stay on the Hub (%s); `main` moves to this run's first budget "
                       "when it is published. Delete stale branches with huggingface_hub.delete_branch.",
                       ", ".join(published))


def _published_branches(ledger: Path) -> list[str]:
    try:
        payload = json.loads(ledger.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    entries = payload.get("published", []) if isinstance(payload, dict) else []
    return sorted({f"{e.get('repo_id')}@{e.get('branch')}" for e in entries if isinstance(e, dict)})


def start_fresh(output_dir: str | Path, saved: dict | None, overwrite: bool, is_main: bool) -> None:
    """A launch without ``resume_from_checkpoint``: refuse an output dir that holds a run (the way out named), or,
    with ``overwrite_output_dir=True``, remove that run first (main process only; the caller waits for it)."""
    output_dir = Path(output_dir)
    leftovers = run_files(output_dir)
    if not overwrite and (saved is not None or leftovers):
        what = (f"a WSD run ({runs.plan_from_dict(saved['plan'])!r})" if saved is not None
                else f"files of an earlier run ({', '.join(p.name for p in leftovers[:6])})")
        raise ValueError(
            f"`output_dir` {output_dir} already holds {what}. To continue or extend it, resume: "
            "resume_from_checkpoint=True (recipe: --resume_from_checkpoint true). To start over, set "
            "overwrite_output_dir=True (recipe: --overwrite_output_dir true): it removes that run's checkpoints, "
            "budgets, records, log and publishing ledger first. Or choose another output_dir."
        )
    if overwrite and is_main:
        clear_run(output_dir)
